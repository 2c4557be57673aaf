//! Arbitrary raidz geometries, column contents and damage into
//! `osv-zfs`'s raidz map and reconstruction (`vdev::RaidzMap`,
//! `vdev::reconstruct`): never a panic, and a rebuilt read is only ever
//! returned when it passes the caller's check.
//!
//! Needs `osv-zfs` with the `alloc` feature. Input layout:
//! - byte 0: parity count (1..=3) and width (parity + 1..=8);
//! - bytes 1..3: sector offset; byte 3: sectors; byte 4: bad-column mask;
//! - the rest fills the columns as read (missing where the mask says so).
#![no_main]

use libfuzzer_sys::fuzz_target;
use osv_zfs::vdev::{reconstruct, RaidzMap};

fuzz_target!(|data: &[u8]| {
    let [g, o0, o1, s, mask, body @ ..] = data else {
        return;
    };
    let nparity = 1 + (*g as usize % 3);
    let width = nparity + 1 + (*g as usize / 3) % 8;
    let offset = u64::from(u16::from_le_bytes([*o0, *o1])) << 9;
    let size = (1 + u64::from(*s) % 32) << 9;
    let Ok(map) = RaidzMap::new(offset, size, 9, width, nparity) else {
        return;
    };
    let mut at = 0usize;
    let mut cols = Vec::new();
    let mut bad = Vec::new();
    for (i, c) in map.columns.iter().enumerate() {
        let len = c.size as usize;
        let mut col = vec![0u8; len];
        for b in col.iter_mut() {
            *b = body.get(at % body.len().max(1)).copied().unwrap_or(0);
            at += 1;
        }
        if mask & (1 << (i % 8)) != 0 && bad.len() < nparity {
            bad.push(i);
            cols.push(None);
        } else {
            cols.push(Some(col));
        }
    }
    if let Some(rebuilt) = reconstruct(&map, &cols, &bad) {
        for (c, d) in rebuilt {
            assert!(bad.contains(&c));
            assert_eq!(d.len() as u64, map.columns[c].size);
        }
    }
});
