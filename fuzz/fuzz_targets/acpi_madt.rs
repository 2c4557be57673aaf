//! ACPI tables come from firmware: arbitrary bytes as an RSDP, a MADT, or a
//! whole physical memory image walked from an RSDP must give a typed error or
//! a well-formed CPU list, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osv_boot::acpi::{find_madt, parse_rsdp, Madt, PhysMem};

/// The input as physical memory starting at address 0.
struct Image<'a>(&'a [u8]);

impl PhysMem for Image<'_> {
    fn read(&self, paddr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(paddr).ok()?;
        self.0.get(start..start.checked_add(len)?)
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_rsdp(data);
    if let Ok(m) = Madt::parse(data) {
        let n = m.cpus().count();
        assert!(n <= data.len() / 8, "more CPUs than entries fit");
        let _ = (m.lapic_address(), m.has_8259());
    }
    // The RSDP at offset 0 of the image; table addresses point into it.
    if let Ok(m) = find_madt(&Image(data), 0) {
        let _ = m.cpus().count();
    }
});
