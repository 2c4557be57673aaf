//! Arbitrary bytes into `osv-zfs`'s dnode, objset and DSL parsers.
//!
//! Needs `osv-zfs` with the `std` feature (only for the fuzz workspace's
//! shared dependency line; the parsers themselves are `no_std`).
//!
//! Input layout: byte 0 bit 0 picks the byte order (1 = big-endian); the
//! rest is a dnode (or an objset, or a bonus buffer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use osv_zfs::dnode::{DnodePhys, ObjsetPhys};
use osv_zfs::dsl::{DslDataset, DslDir};
use osv_zfs::Endian;

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else {
        return;
    };
    let endian = if flags & 1 != 0 { Endian::Big } else { Endian::Little };
    if let Ok(d) = DnodePhys::new_checked(rest, endian) {
        let _ = (d.object_type(), d.nlevels(), d.indblkshift(), d.data_block_size(), d.max_blkid(), d.used());
        for i in 0..4 {
            let _ = d.blkptr(i).map(|bp| bp.to_string());
        }
        let _ = d.spill();
        let bonus = d.bonus();
        assert!(bonus.len() <= d.as_bytes().len());
        let _ = DslDir::parse(bonus, endian);
        let _ = DslDataset::parse(bonus, endian);
    }
    if let Ok(os) = ObjsetPhys::new_checked(rest, endian) {
        let _ = (os.os_type(), os.flags(), os.meta_dnode().is_ok());
    }
    let _ = DslDir::parse(rest, endian);
    let _ = DslDataset::parse(rest, endian);
});
