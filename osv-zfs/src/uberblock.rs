//! Uberblocks (`struct uberblock`, include/sys/uberblock_impl.h).
//!
//! Each label ends in a 128 KiB ring of uberblock slots; every txg sync
//! writes the next slot. A slot is `1 << max(ashift, 10)` bytes, at most
//! 8 KiB (`VDEV_UBERBLOCK_SHIFT`, include/sys/vdev_impl.h), and ends in a
//! `zio_eck_t` with a SHA-256 label checksum. The uberblock is written in the
//! host's byte order, which `ub_magic` tells.
//!
//! The active uberblock is the greatest by [`Uberblock::cmp_active`]: txg,
//! then timestamp, then the MMP sequence number (`vdev_uberblock_compare`,
//! module/zfs/vdev_label.c).

use crate::blkptr::BlockPointer;
use crate::bytes::{array, u64_at, Endian};
use crate::{Error, Result};
use core::cmp::Ordering;

/// `UBERBLOCK_MAGIC` (include/sys/uberblock_impl.h): "oo-ba-bloc!".
pub const UBERBLOCK_MAGIC: u64 = 0x00ba_b10c;
/// `MMP_MAGIC` (include/sys/uberblock_impl.h).
pub const MMP_MAGIC: u64 = 0xa11c_ea11;
/// `UBERBLOCK_SHIFT`: the smallest slot is 1 KiB.
pub const UBERBLOCK_SHIFT: u32 = 10;
/// `MAX_UBERBLOCK_SHIFT` (include/sys/vdev_impl.h): the largest slot is 8 KiB.
pub const MAX_UBERBLOCK_SHIFT: u32 = 13;

/// The bytes of the fields we decode (through `ub_checkpoint_txg`).
pub const UBERBLOCK_FIELDS_SIZE: usize = 208;

/// A transaction group number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Txg(pub u64);

impl core::fmt::Display for Txg {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The uberblock slot size shift for a top-level vdev with `ashift`
/// (`VDEV_UBERBLOCK_SHIFT`: `MIN(MAX(ashift, UBERBLOCK_SHIFT),
/// MAX_UBERBLOCK_SHIFT)`).
pub fn slot_shift(ashift: u64) -> u32 {
    (ashift.clamp(UBERBLOCK_SHIFT as u64, MAX_UBERBLOCK_SHIFT as u64)) as u32
}

/// A decoded uberblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uberblock {
    /// Byte order the uberblock (and its root block pointer) was written in.
    pub endian: Endian,
    /// `ub_version`: SPA version (5000 for feature-flag pools).
    pub version: u64,
    /// `ub_txg`: txg of the sync that wrote it.
    pub txg: Txg,
    /// `ub_guid_sum`: sum of all vdev guids, to check every vdev is present.
    pub guid_sum: u64,
    /// `ub_timestamp`: UTC seconds of that sync.
    pub timestamp: u64,
    /// `ub_rootbp`: the MOS objset.
    pub rootbp: BlockPointer,
    /// `ub_software_version`.
    pub software_version: u64,
    /// `ub_mmp_magic`: `MMP_MAGIC` when the MMP fields are valid.
    pub mmp_magic: u64,
    /// `ub_mmp_delay`.
    pub mmp_delay: u64,
    /// `ub_mmp_config`: valid bits, write interval, sequence, fail intervals.
    pub mmp_config: u64,
    /// `ub_checkpoint_txg`: non-zero when this uberblock is a checkpoint.
    pub checkpoint_txg: u64,
}

impl Uberblock {
    /// Decodes the uberblock fields at the start of `buf`. Checks the magic
    /// (`uberblock_verify`, module/zfs/uberblock.c), not the checksum: see
    /// [`crate::checksum::verify_label_checksum`].
    pub fn parse(buf: &[u8]) -> Result<Uberblock> {
        let endian = Endian::detect(array(buf, 0)?, UBERBLOCK_MAGIC).ok_or(Error::BadUberblockMagic)?;
        let w = |i: usize| u64_at(buf, i * 8, endian);
        Ok(Uberblock {
            endian,
            version: w(1)?,
            txg: Txg(w(2)?),
            guid_sum: w(3)?,
            timestamp: w(4)?,
            rootbp: BlockPointer::parse(buf.get(40..).ok_or(Error::Truncated)?, endian)?,
            software_version: w(21)?,
            mmp_magic: w(22)?,
            mmp_delay: w(23)?,
            mmp_config: w(24)?,
            checkpoint_txg: w(25)?,
        })
    }

    /// Whether the MMP fields hold data (`MMP_VALID`).
    pub fn mmp_valid(&self) -> bool {
        self.mmp_magic == MMP_MAGIC
    }

    /// The MMP sequence number when valid (`MMP_SEQ_VALID`/`MMP_SEQ`:
    /// config bit 1, bits 32..48), else 0.
    pub fn mmp_seq(&self) -> u64 {
        if self.mmp_valid() && self.mmp_config & 0x2 != 0 {
            (self.mmp_config >> 32) & 0xffff
        } else {
            0
        }
    }

    /// Orders uberblocks by recency as `vdev_uberblock_compare`
    /// (module/zfs/vdev_label.c): txg, then timestamp, then MMP sequence.
    pub fn cmp_active(&self, other: &Uberblock) -> Ordering {
        self.txg
            .cmp(&other.txg)
            .then(self.timestamp.cmp(&other.timestamp))
            .then(self.mmp_seq().cmp(&other.mmp_seq()))
    }

    /// Whether this uberblock can be chosen at all: `vdev_uberblock_load`
    /// starts from a zeroed best and keeps only strictly greater ones.
    pub fn is_selectable(&self) -> bool {
        self.txg.0 != 0 || self.timestamp != 0 || self.mmp_seq() != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn build(endian: Endian, txg: u64, ts: u64) -> [u8; 1024] {
        let mut b = [0u8; 1024];
        let mut put = |i: usize, v: u64| b[i * 8..i * 8 + 8].copy_from_slice(&endian.u64_to(v));
        put(0, UBERBLOCK_MAGIC);
        put(1, 5000);
        put(2, txg);
        put(3, 42);
        put(4, ts);
        b
    }

    #[test]
    fn parses_both_orders() {
        for e in [Endian::Big, Endian::Little] {
            let ub = Uberblock::parse(&build(e, 9, 100)).unwrap();
            assert_eq!(ub.endian, e);
            assert_eq!((ub.version, ub.txg, ub.guid_sum, ub.timestamp), (5000, Txg(9), 42, 100));
        }
        assert_eq!(Uberblock::parse(&[0; 1024]), Err(Error::BadUberblockMagic));
        assert_eq!(Uberblock::parse(&build(Endian::Little, 1, 1)[..100]), Err(Error::Truncated));
    }

    #[test]
    fn ordering_is_txg_then_timestamp() {
        let a = Uberblock::parse(&build(Endian::Little, 9, 100)).unwrap();
        let b = Uberblock::parse(&build(Endian::Big, 9, 101)).unwrap();
        let c = Uberblock::parse(&build(Endian::Little, 10, 1)).unwrap();
        assert_eq!(a.cmp_active(&b), Ordering::Less);
        assert_eq!(c.cmp_active(&b), Ordering::Greater);
        assert_eq!(slot_shift(9), 10);
        assert_eq!(slot_shift(12), 12);
        assert_eq!(slot_shift(16), 13);
    }
}
