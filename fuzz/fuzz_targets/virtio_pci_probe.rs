//! A virtio PCI function's configuration space comes from the device: an
//! arbitrary capability list (virtio structures, MSI-X) must give a typed
//! error or regions inside their BAR, never a panic; enabling MSI-X and
//! programming vectors on what the probe accepted must not panic either.
//! The body lives in `osv_virtio::fake` so the unit tests run the seed
//! corpus through it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = osv_virtio::fake::fuzz_pci_probe(data);
});
