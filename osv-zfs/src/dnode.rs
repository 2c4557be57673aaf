//! Dnodes (`dnode_phys_t`, include/sys/dnode.h) and objsets
//! (`objset_phys_t`, include/sys/dmu_objset.h).
//!
//! A dnode describes one object: its type, its block size, and a tree of
//! block pointers (`dn_nlevels` levels; level 0 holds data, upper levels
//! hold arrays of block pointers of `1 << dn_indblkshift` bytes). Layout of
//! the 512-byte slot (`DNODE_SHIFT` = 9):
//!
//! ```text
//! 0x00 dn_type u8, dn_indblkshift u8, dn_nlevels u8, dn_nblkptr u8,
//!      dn_bonustype u8, dn_checksum u8, dn_compress u8, dn_flags u8
//! 0x08 dn_datablkszsec u16, dn_bonuslen u16, dn_extra_slots u8 (0x0c), pad[3]
//! 0x10 dn_maxblkid u64      0x18 dn_used u64      0x20 pad[4] u64
//! 0x40 dn_blkptr[dn_nblkptr], then the bonus buffer, then (with
//!      DNODE_FLAG_SPILL_BLKPTR) a spill block pointer in the last 128 bytes
//! ```
//!
//! A large dnode (`dn_extra_slots` > 0) takes `1 + dn_extra_slots` slots;
//! its bonus area grows with it (`DN_SLOTS_TO_BONUSLEN`).
//!
//! The fields are in the byte order of the block holding the dnode (its
//! block pointer's `BP_GET_BYTEORDER`). Every accessor here is checked;
//! [`DnodePhys::new_checked`] validates the sizes once so the accessors
//! cannot go out of bounds.

use crate::blkptr::{BlockPointer, BLKPTR_SIZE};
use crate::bytes::{u64_at, Endian};
use crate::{Error, Result};

/// `DNODE_SHIFT`: a dnode slot is 512 bytes.
pub const DNODE_SIZE: usize = 512;
/// `DNODE_CORE_SIZE`: the fixed header before the block pointers.
pub const DNODE_CORE_SIZE: usize = 64;
/// `SPA_MAXBLOCKSIZE` (include/sys/spa.h): 16 MiB, the largest block.
pub const SPA_MAXBLOCKSIZE: u64 = 16 << 20;
/// `DNODE_FLAG_USED_BYTES` (include/sys/dnode.h): `dn_used` counts bytes,
/// not 512-byte sectors.
pub const DNODE_FLAG_USED_BYTES: u8 = 1 << 0;
/// `DNODE_FLAG_SPILL_BLKPTR` (include/sys/dnode.h).
pub const DNODE_FLAG_SPILL_BLKPTR: u8 = 1 << 2;
/// `DN_MAX_LEVELS` bound used here: no real tree is deeper.
pub const MAX_LEVELS: u8 = 9;
/// `DNODE_MAX_SLOTS`... a dnode spans at most 32 slots (16 KiB).
pub const MAX_SLOTS: usize = 32;

/// `dmu_object_type_t` values used by this crate (include/sys/dmu.h).
pub mod ot {
    /// `DMU_OT_NONE`: a free slot.
    pub const NONE: u8 = 0;
    /// `DMU_OT_OBJECT_DIRECTORY`.
    pub const OBJECT_DIRECTORY: u8 = 1;
    /// `DMU_OT_DNODE`: the meta-dnode's data.
    pub const DNODE: u8 = 10;
    /// `DMU_OT_OBJSET`.
    pub const OBJSET: u8 = 11;
    /// `DMU_OT_DSL_DIR`.
    pub const DSL_DIR: u8 = 12;
    /// `DMU_OT_DSL_DIR_CHILD_MAP`.
    pub const DSL_DIR_CHILD_MAP: u8 = 13;
    /// `DMU_OT_DSL_DS_SNAP_MAP`.
    pub const DSL_DS_SNAP_MAP: u8 = 14;
    /// `DMU_OT_DSL_DATASET`.
    pub const DSL_DATASET: u8 = 16;
    /// `DMU_OTN_ZAP_METADATA`: new-style types have bit 7 set and encode
    /// their byteswap class (include/sys/dmu.h, `DMU_OT_NEWTYPE`).
    pub const NEWTYPE: u8 = 0x80;
}

/// A checked view of one `dnode_phys_t` (one or more slots).
#[derive(Debug, Clone, Copy)]
pub struct DnodePhys<'a> {
    buf: &'a [u8],
    endian: Endian,
}

impl<'a> DnodePhys<'a> {
    /// Checks `buf` (starting at the dnode, as many slots as it spans or
    /// more) and the fields that size everything else: levels, block
    /// pointer count, bonus length, slots.
    pub fn new_checked(buf: &'a [u8], endian: Endian) -> Result<DnodePhys<'a>> {
        if buf.len() < DNODE_SIZE {
            return Err(Error::Truncated);
        }
        let slots = 1 + buf[12] as usize;
        if slots > MAX_SLOTS {
            return Err(Error::BadDnode);
        }
        let size = slots * DNODE_SIZE;
        let buf = buf.get(..size).ok_or(Error::Truncated)?;
        let d = DnodePhys { buf, endian };
        if d.object_type() == ot::NONE {
            return Ok(d);
        }
        let nblkptr = d.nblkptr() as usize;
        let spill = if d.flags() & DNODE_FLAG_SPILL_BLKPTR != 0 { BLKPTR_SIZE } else { 0 };
        let room = size - DNODE_CORE_SIZE - spill;
        if nblkptr == 0 || nblkptr * BLKPTR_SIZE > room || d.bonus_len() > room - nblkptr * BLKPTR_SIZE {
            return Err(Error::BadDnode);
        }
        if d.nlevels() == 0 || d.nlevels() > MAX_LEVELS {
            return Err(Error::BadDnode);
        }
        if d.nlevels() > 1 && !(7..=17).contains(&d.indblkshift()) {
            return Err(Error::BadDnode);
        }
        if d.data_block_size() == 0 || d.data_block_size() > SPA_MAXBLOCKSIZE {
            return Err(Error::BadDnode);
        }
        Ok(d)
    }

    /// The byte order of the fields.
    pub fn endian(&self) -> Endian {
        self.endian
    }

    /// `dn_type` (`dmu_object_type_t`).
    pub fn object_type(&self) -> u8 {
        self.buf[0]
    }

    /// `dn_indblkshift`: log2 of the indirect block size.
    pub fn indblkshift(&self) -> u8 {
        self.buf[1]
    }

    /// `dn_nlevels`: 1 when the block pointers point at data.
    pub fn nlevels(&self) -> u8 {
        self.buf[2]
    }

    /// `dn_nblkptr`: 1 to 3 block pointers.
    pub fn nblkptr(&self) -> u8 {
        self.buf[3]
    }

    /// `dn_bonustype`.
    pub fn bonus_type(&self) -> u8 {
        self.buf[4]
    }

    /// `dn_flags`.
    pub fn flags(&self) -> u8 {
        self.buf[7]
    }

    fn u16_at(&self, at: usize) -> u16 {
        let b = [self.buf[at], self.buf[at + 1]];
        match self.endian {
            Endian::Big => u16::from_be_bytes(b),
            Endian::Little => u16::from_le_bytes(b),
        }
    }

    /// Data block size in bytes (`dn_datablkszsec` << `SPA_MINBLOCKSHIFT`).
    pub fn data_block_size(&self) -> u64 {
        u64::from(self.u16_at(8)) << 9
    }

    /// `dn_bonuslen`.
    pub fn bonus_len(&self) -> usize {
        usize::from(self.u16_at(10))
    }

    /// Slots this dnode spans (`dn_extra_slots` + 1).
    pub fn slots(&self) -> usize {
        self.buf.len() / DNODE_SIZE
    }

    /// `dn_maxblkid`: the last level-0 block id in use.
    pub fn max_blkid(&self) -> u64 {
        u64_at(self.buf, 0x10, self.endian).unwrap_or(0)
    }

    /// `dn_used`: bytes (or sectors, before `DNODE_FLAG_USED_BYTES`) used.
    pub fn used(&self) -> u64 {
        u64_at(self.buf, 0x18, self.endian).unwrap_or(0)
    }

    /// Block pointer `i` of `dn_blkptr`.
    pub fn blkptr(&self, i: usize) -> Result<BlockPointer> {
        if i >= self.nblkptr() as usize {
            return Err(Error::BadDnode);
        }
        let at = DNODE_CORE_SIZE + i * BLKPTR_SIZE;
        BlockPointer::parse(self.buf.get(at..).ok_or(Error::Truncated)?, self.endian)
    }

    /// The bonus buffer (`DN_BONUS`): `dn_bonuslen` bytes after the block
    /// pointers.
    pub fn bonus(&self) -> &'a [u8] {
        let at = DNODE_CORE_SIZE + self.nblkptr() as usize * BLKPTR_SIZE;
        self.buf.get(at..at.saturating_add(self.bonus_len())).unwrap_or(&[])
    }

    /// The spill block pointer (`DN_SPILL_BLKPTR`), when flagged.
    pub fn spill(&self) -> Option<BlockPointer> {
        if self.flags() & DNODE_FLAG_SPILL_BLKPTR == 0 {
            return None;
        }
        BlockPointer::parse(self.buf.get(self.buf.len() - BLKPTR_SIZE..)?, self.endian).ok()
    }

    /// The raw bytes of the dnode (all its slots).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
}

/// `objset_phys_t` (include/sys/dmu_objset.h): the meta-dnode at 0, the
/// ZIL header at 0x200 (`zil_header_t`, 192 bytes), `os_type` at 0x2c0,
/// `os_flags` at 0x2c8. Later versions append the user/group/project used
/// dnodes; 1 KiB is the smallest objset.
#[derive(Debug, Clone, Copy)]
pub struct ObjsetPhys<'a> {
    buf: &'a [u8],
    endian: Endian,
}

/// `OBJSET_PHYS_SIZE_V1`: the smallest `objset_phys_t`.
pub const OBJSET_PHYS_SIZE_V1: usize = 1024;

/// `dmu_objset_type_t` (include/sys/fs/zfs.h... `DMU_OST_*`).
pub mod ost {
    /// `DMU_OST_META`: the MOS.
    pub const META: u64 = 1;
    /// `DMU_OST_ZFS`: a POSIX filesystem (ZPL).
    pub const ZFS: u64 = 2;
    /// `DMU_OST_ZVOL`: a volume.
    pub const ZVOL: u64 = 3;
}

impl<'a> ObjsetPhys<'a> {
    /// Checks the length and the meta-dnode.
    pub fn new_checked(buf: &'a [u8], endian: Endian) -> Result<ObjsetPhys<'a>> {
        if buf.len() < OBJSET_PHYS_SIZE_V1 {
            return Err(Error::BadObjset);
        }
        let os = ObjsetPhys { buf, endian };
        os.meta_dnode().map_err(|_| Error::BadObjset)?;
        Ok(os)
    }

    /// `os_meta_dnode`: the dnode whose data is the array of all dnodes.
    pub fn meta_dnode(&self) -> Result<DnodePhys<'a>> {
        DnodePhys::new_checked(&self.buf[..DNODE_SIZE], self.endian)
    }

    /// `os_type` (`DMU_OST_*`).
    pub fn os_type(&self) -> u64 {
        u64_at(self.buf, 0x2c0, self.endian).unwrap_or(0)
    }

    /// `os_flags`.
    pub fn flags(&self) -> u64 {
        u64_at(self.buf, 0x2c8, self.endian).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal dnode: type, 1 level, 1 block pointer, 16 KiB blocks,
    /// bonus of `bonus` bytes.
    pub(crate) fn dnode(ty: u8, endian: Endian, bonus: &[u8]) -> [u8; DNODE_SIZE] {
        let mut d = [0u8; DNODE_SIZE];
        d[0] = ty;
        d[1] = 14;
        d[2] = 1;
        d[3] = 1;
        let w16 = |v: u16| match endian {
            Endian::Big => v.to_be_bytes(),
            Endian::Little => v.to_le_bytes(),
        };
        d[8..10].copy_from_slice(&w16(32));
        d[10..12].copy_from_slice(&w16(bonus.len() as u16));
        d[192..192 + bonus.len()].copy_from_slice(bonus);
        d
    }

    #[test]
    fn fields_and_bonus_both_orders() {
        for endian in [Endian::Big, Endian::Little] {
            let raw = dnode(ot::DSL_DIR, endian, b"bonus!");
            let d = DnodePhys::new_checked(&raw, endian).unwrap();
            assert_eq!(d.object_type(), ot::DSL_DIR);
            assert_eq!(d.data_block_size(), 16384);
            assert_eq!(d.bonus(), b"bonus!");
            assert_eq!(d.slots(), 1);
            assert!(d.blkptr(0).unwrap().is_hole());
            assert!(d.blkptr(1).is_err());
            assert!(d.spill().is_none());
        }
    }

    #[test]
    fn bad_dnodes_are_rejected() {
        let mut raw = dnode(1, Endian::Little, &[]);
        raw[3] = 4; // four block pointers do not fit
        assert_eq!(DnodePhys::new_checked(&raw, Endian::Little).unwrap_err(), Error::BadDnode);
        let mut raw = dnode(1, Endian::Little, &[]);
        raw[10..12].copy_from_slice(&400u16.to_le_bytes());
        assert_eq!(DnodePhys::new_checked(&raw, Endian::Little).unwrap_err(), Error::BadDnode);
        let mut raw = dnode(1, Endian::Little, &[]);
        raw[12] = 3; // extra slots beyond the buffer
        assert_eq!(DnodePhys::new_checked(&raw, Endian::Little).unwrap_err(), Error::Truncated);
        assert_eq!(DnodePhys::new_checked(&raw[..100], Endian::Little).unwrap_err(), Error::Truncated);
        assert_eq!(ObjsetPhys::new_checked(&[0u8; 100], Endian::Little).unwrap_err(), Error::BadObjset);
    }

    proptest! {
        #[test]
        fn arbitrary_dnodes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), big in any::<bool>()) {
            let endian = if big { Endian::Big } else { Endian::Little };
            if let Ok(d) = DnodePhys::new_checked(&bytes, endian) {
                let _ = (d.bonus(), d.spill(), d.max_blkid(), d.used(), d.data_block_size());
                for i in 0..4 {
                    let _ = d.blkptr(i);
                }
            }
            if let Ok(os) = ObjsetPhys::new_checked(&bytes, endian) {
                let _ = (os.os_type(), os.flags(), os.meta_dnode());
            }
        }
    }
}
