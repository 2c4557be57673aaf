//! Arbitrary bytes into `osv-zfs`'s ZAP parsers: micro ZAP blocks, the fat
//! ZAP header and its embedded pointer table, fat ZAP leaves.
//!
//! Input layout: byte 0 bit 0 picks the byte order (1 = big-endian), bits
//! 1..3 which block type word to force into the first 8 bytes (0: keep,
//! 1: micro, 2: header, 3: leaf, which also forces the leaf magic), so the
//! parsers get past their first check; the rest is the block, cut to a
//! power of two.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osv_zfs::zap::{micro_entries, FatHeader, Leaf, ZAP_LEAF_MAGIC, ZBT_HEADER, ZBT_LEAF, ZBT_MICRO};
use osv_zfs::Endian;

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else {
        return;
    };
    let endian = if flags & 1 != 0 { Endian::Big } else { Endian::Little };
    let mut block = rest.to_vec();
    let len = if block.len().is_power_of_two() { block.len() } else { block.len().next_power_of_two() / 2 };
    block.truncate(len);
    if block.len() >= 28 {
        let ty = match (flags >> 1) & 3 {
            1 => Some(ZBT_MICRO),
            2 => Some(ZBT_HEADER),
            3 => Some(ZBT_LEAF),
            _ => None,
        };
        if let Some(ty) = ty {
            block[..8].copy_from_slice(&endian.u64_to(ty));
        }
        if ty == Some(ZBT_LEAF) {
            let magic = match endian {
                Endian::Big => ZAP_LEAF_MAGIC.to_be_bytes(),
                Endian::Little => ZAP_LEAF_MAGIC.to_le_bytes(),
            };
            block[24..28].copy_from_slice(&magic);
        }
    }
    let mut names = 0usize;
    let _ = micro_entries(&block, endian, &mut |name, _| {
        assert!(!name.is_empty() && name.len() <= 50);
        names += 1;
        Ok(())
    });
    if let Ok(h) = FatHeader::parse(&block, endian) {
        let _ = h.embedded_table(&block, endian, &mut |_| Ok(()));
    }
    if let Ok(leaf) = Leaf::new_checked(&block, endian) {
        let _ = leaf.entries(&mut |name, v| {
            assert!(name.len() <= 1024);
            assert!(matches!(v.int_len, 1 | 2 | 4 | 8));
            Ok(())
        });
    }
});
