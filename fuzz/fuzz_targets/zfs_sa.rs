//! Arbitrary bytes into `osv-zfs`'s ZPL parsers: the SA header and its
//! attributes (`sa_hdr_phys_t`), the old `znode_phys_t` bonus, inline
//! symlink targets and directory entries.
//!
//! Needs `osv-zfs` with the `std` feature (only for the fuzz workspace's
//! shared dependency line; the parsers themselves are `no_std`).
//!
//! Input layout: byte 0 bit 0 picks the byte order of the znode (1 =
//! big-endian; the SA header finds its own from `SA_MAGIC`); byte 1 is the
//! layout length n, the next 2n bytes the layout's attribute numbers
//! (little-endian u16); the rest is the bonus buffer. Attribute `a` is
//! registered with length `(a % 3) * 8` (0: variable) when `a < 24`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osv_zfs::zpl::{attr_u64, old_symlink_inline, DirEntry, SaHdr, ZnodeAttrs};
use osv_zfs::Endian;

fuzz_target!(|data: &[u8]| {
    let [flags, n, rest @ ..] = data else {
        return;
    };
    let endian = if flags & 1 != 0 { Endian::Big } else { Endian::Little };
    let n = usize::from(*n).min(rest.len() / 2);
    let layout: Vec<u16> = rest[..2 * n].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let bonus = &rest[2 * n..];
    if let Ok(h) = SaHdr::new_checked(bonus) {
        assert!(h.hdr_size() <= bonus.len());
        let reg = |a: u16| if a < 24 { Some((a % 3) * 8) } else { None };
        let mut total = 0usize;
        let _ = h.attrs(&layout, &reg, &mut |_, bytes| {
            total += bytes.len();
            assert!(total <= bonus.len());
            let _ = attr_u64(bytes, h.endian());
            Ok(())
        });
        for i in 0..64 {
            let _ = h.var_len(i);
        }
    }
    if let Ok(z) = ZnodeAttrs::parse_znode_phys(bonus, endian) {
        let _ = z.file_type().as_str();
        if let Ok(Some(t)) = old_symlink_inline(bonus, z.size, 320) {
            assert!(t.len() <= bonus.len());
        }
    }
    for w in bonus.chunks_exact(8) {
        let e = DirEntry::decode(endian.u64_from([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]));
        assert!(e.object < 1 << 48);
        let _ = e.file_type();
    }
});
