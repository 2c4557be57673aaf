//! Arbitrary bytes as a `ZPL_DXATTR` system attribute: the packed XDR
//! nvlist of SA-stored xattrs (`zfs_sa_set_xattr`, module/zfs/zfs_sa.c),
//! decoded by `osv_zfs::fs::sa_xattr_pairs`. Errors are fine; a panic, or
//! a value that claims more bytes than the input had, is a bug.
//!
//! Needs `osv-zfs` with the `std` feature (the decoder needs `alloc`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = osv_zfs::fs::sa_xattr_pairs(data) {
        let total: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert!(total <= data.len());
    }
});
