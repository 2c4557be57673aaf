//! The PVH start info, memory map and command line come from the hypervisor:
//! arbitrary bytes must give a typed error or a well-formed map, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osv_boot::memmap::{MemoryMap, PhysRange, PAGE};
use osv_boot::start_info::{cmdline_from_bytes, Cmdline, StartInfo};

fuzz_target!(|data: &[u8]| {
    let _ = StartInfo::parse(data);
    let line = Cmdline::new(cmdline_from_bytes(data));
    let _ = (line.value("tests"), line.has_flag("test.fail"));
    if let Ok(mut map) = MemoryMap::from_pvh_table(data) {
        let mut prev_end = None;
        for r in map.ranges() {
            assert!(r.start() < r.end() && r.start() % PAGE == 0 && r.end() % PAGE == 0);
            if let Some(e) = prev_end {
                assert!(e < r.start(), "ranges overlap, touch or are unsorted");
            }
            prev_end = Some(r.end());
        }
        // Taking out the first MiB, as the boot code does, keeps it well formed.
        let before = map.total();
        if map.remove(PhysRange::new(0, 0x10_0000).unwrap()).is_ok() {
            assert!(map.total() <= before);
            assert!(!map.contains(0x8_0000));
        }
    }
});
