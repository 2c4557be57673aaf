//! Arbitrary bytes into `osv-zfs`'s label, uberblock and block pointer
//! parsers.
//!
//! Needs `osv-zfs` with the `alloc` feature (`VdevLabels`):
//! `osv-zfs = { path = "../osv-zfs", features = ["std"] }`.
//!
//! Random bytes almost never carry a valid SHA-256, so besides feeding the
//! raw parsers, the target builds a 1 MiB device whose label 0 holds the
//! input *with correct checksums*, so the decoders behind the checksums run
//! on fuzzed content. Input layout:
//! - byte 0: bit 0 = trailer byte order (1 = big-endian), bits 1..8 = the
//!   uberblock slot to fill;
//! - bytes 1..3: length `n` (little-endian u16) of the nvlist part;
//! - then `n` bytes written to the `vdev_phys_t`, the rest to the uberblock
//!   slot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osv_zfs::blkptr::BlockPointer;
use osv_zfs::checksum::{fill_label_checksum, verify_label_checksum, ECK_SIZE};
use osv_zfs::label::{VdevLabels, VDEV_PHYS_OFFSET, VDEV_PHYS_SIZE, VDEV_UBERBLOCK_RING_OFFSET};
use osv_zfs::uberblock::Uberblock;
use osv_zfs::{Endian, MemDevice};

const SLOT: usize = 1024; // ashift 9 -> 1 KiB uberblock slots

fuzz_target!(|data: &[u8]| {
    // The raw parsers, on the input as it is.
    let _ = verify_label_checksum(data, 0);
    let _ = Uberblock::parse(data);
    let _ = BlockPointer::parse(data, Endian::Little).map(|bp| bp.to_string());
    let _ = BlockPointer::parse(data, Endian::Big).map(|bp| bp.to_string());

    let [flags, lo, hi, body @ ..] = data else {
        return;
    };
    let endian = if flags & 1 != 0 { Endian::Big } else { Endian::Little };
    let slot = (*flags >> 1) as usize % 128;
    let split = (u16::from_le_bytes([*lo, *hi]) as usize).min(body.len());
    let (phys_part, ub_part) = body.split_at(split);

    let mut disk = vec![0u8; 1 << 20];
    let start = VDEV_PHYS_OFFSET as usize;
    let phys = &mut disk[start..start + VDEV_PHYS_SIZE];
    let n = phys_part.len().min(VDEV_PHYS_SIZE - ECK_SIZE);
    phys[..n].copy_from_slice(&phys_part[..n]);
    fill_label_checksum(phys, start as u64, endian).unwrap();

    let start = VDEV_UBERBLOCK_RING_OFFSET as usize + slot * SLOT;
    let ub = &mut disk[start..start + SLOT];
    let n = ub_part.len().min(SLOT - ECK_SIZE);
    ub[..n].copy_from_slice(&ub_part[..n]);
    fill_label_checksum(ub, start as u64, endian).unwrap();

    let labels = VdevLabels::read(&mut MemDevice(&disk[..])).expect("1 MiB holds labels");
    // Labels 1..3 were never written.
    assert!(labels.labels[1..].iter().all(|l| !l.is_valid()));
    if let Ok(config) = &labels.labels[0].config {
        let mut text = String::new();
        config.write_zdb(&mut text, 4).unwrap();
    }
    if let Some(active) = labels.active_uberblock() {
        assert_eq!((active.label, active.slot), (0, slot));
        let _ = active.uberblock.rootbp.to_string();
    }
});
