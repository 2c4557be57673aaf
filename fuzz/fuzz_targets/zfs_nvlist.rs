//! Arbitrary bytes into `osv-zfs`'s XDR nvlist decoder.
//!
//! Needs `osv-zfs` with the `alloc` feature (the decoded `NvList` lives on
//! the heap): `osv-zfs = { path = "../osv-zfs", features = ["std"] }`.
//!
//! Must never panic, and whatever decodes must survive a round trip: packing
//! the decoded list and decoding that again gives the same bytes (compared as
//! bytes, so a NaN double does not count as a difference).
#![no_main]

use libfuzzer_sys::fuzz_target;
use osv_zfs::nvlist::{packed_endian, NvList};

fuzz_target!(|data: &[u8]| {
    let Ok(list) = NvList::unpack(data) else {
        return;
    };
    let endian = packed_endian(data).expect("unpack accepted the header");
    let packed = list.pack(endian).expect("a decoded list packs");
    let again = NvList::unpack(&packed).expect("our own packing decodes");
    assert_eq!(again.pack(endian).expect("packs again"), packed);
    // The zdb-style printer on whatever came out.
    let mut text = String::new();
    list.write_zdb(&mut text, 4).expect("writing to a String");
});
