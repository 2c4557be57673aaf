//! The DSL: dataset directories and datasets, as bonus buffers of MOS
//! objects.
//!
//! - `dsl_dir_phys_t` (include/sys/dsl_dir.h), the bonus of a
//!   `DMU_OT_DSL_DIR` object: one node of the dataset name tree. Offsets:
//!   `dd_creation_time` 0, `dd_head_dataset_obj` 8, `dd_parent_obj` 16,
//!   `dd_origin_obj` 24 (the snapshot a clone was made from; in pools of
//!   version 11 and later every filesystem points at `$ORIGIN@$ORIGIN`),
//!   `dd_child_dir_zapobj` 32 (a ZAP: child name → dir object).
//! - `dsl_dataset_phys_t` (include/sys/dsl_dataset.h), the bonus of a
//!   `DMU_OT_DSL_DATASET` object: a filesystem, volume or snapshot.
//!   Offsets: `ds_dir_obj` 0, `ds_prev_snap_obj` 8, `ds_prev_snap_txg` 16,
//!   `ds_next_snap_obj` 24, `ds_snapnames_zapobj` 32 (a ZAP: snapshot name →
//!   dataset object), `ds_num_children` 40, `ds_creation_time` 48,
//!   `ds_creation_txg` 56, `ds_deadlist_obj` 64, `ds_referenced_bytes` 72,
//!   `ds_guid` 112, `ds_flags` 120, `ds_bp` 128 (the
//!   block pointer of its objset; `blk_fill` counts its objects).

use crate::blkptr::BlockPointer;
use crate::bytes::{u64_at, Endian};
use crate::{Error, Result};

/// Smallest `dsl_dir_phys_t` accepted (up to `dd_child_dir_zapobj`).
const DSL_DIR_MIN: usize = 40;
/// Smallest `dsl_dataset_phys_t` accepted (through `ds_bp`).
const DSL_DATASET_MIN: usize = 256;

/// The fields of `dsl_dir_phys_t` this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DslDir {
    /// `dd_head_dataset_obj`: the live dataset of this directory (0: none).
    pub head_dataset_obj: u64,
    /// `dd_parent_obj`: 0 for the root.
    pub parent_obj: u64,
    /// `dd_origin_obj`: the origin snapshot (clones, and `$ORIGIN`).
    pub origin_obj: u64,
    /// `dd_child_dir_zapobj`.
    pub child_dir_zapobj: u64,
}

impl DslDir {
    /// Parses a DSL dir bonus buffer in byte order `endian`.
    pub fn parse(bonus: &[u8], endian: Endian) -> Result<DslDir> {
        if bonus.len() < DSL_DIR_MIN {
            return Err(Error::Truncated);
        }
        Ok(DslDir {
            head_dataset_obj: u64_at(bonus, 8, endian)?,
            parent_obj: u64_at(bonus, 16, endian)?,
            origin_obj: u64_at(bonus, 24, endian)?,
            child_dir_zapobj: u64_at(bonus, 32, endian)?,
        })
    }
}

/// The fields of `dsl_dataset_phys_t` this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DslDataset {
    /// `ds_dir_obj`.
    pub dir_obj: u64,
    /// `ds_prev_snap_obj`.
    pub prev_snap_obj: u64,
    /// `ds_next_snap_obj`: non-zero on snapshots.
    pub next_snap_obj: u64,
    /// `ds_snapnames_zapobj`.
    pub snapnames_zapobj: u64,
    /// `ds_creation_txg`.
    pub creation_txg: u64,
    /// `ds_referenced_bytes`: the space the dataset refers to.
    pub referenced_bytes: u64,
    /// `ds_guid`.
    pub guid: u64,
    /// `ds_flags`.
    pub flags: u64,
    /// `ds_bp`: the objset.
    pub bp: BlockPointer,
}

impl DslDataset {
    /// Parses a DSL dataset bonus buffer in byte order `endian`.
    pub fn parse(bonus: &[u8], endian: Endian) -> Result<DslDataset> {
        if bonus.len() < DSL_DATASET_MIN {
            return Err(Error::Truncated);
        }
        Ok(DslDataset {
            dir_obj: u64_at(bonus, 0, endian)?,
            prev_snap_obj: u64_at(bonus, 8, endian)?,
            next_snap_obj: u64_at(bonus, 24, endian)?,
            snapnames_zapobj: u64_at(bonus, 32, endian)?,
            creation_txg: u64_at(bonus, 56, endian)?,
            referenced_bytes: u64_at(bonus, 72, endian)?,
            guid: u64_at(bonus, 112, endian)?,
            flags: u64_at(bonus, 120, endian)?,
            bp: BlockPointer::parse(&bonus[128..], endian)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_both_orders() {
        for e in [Endian::Big, Endian::Little] {
            let mut b = [0u8; 320];
            for (i, v) in [(8, 5u64), (16, 2), (24, 9), (32, 7)] {
                b[i..i + 8].copy_from_slice(&e.u64_to(v));
            }
            let d = DslDir::parse(&b, e).unwrap();
            assert_eq!((d.head_dataset_obj, d.parent_obj, d.origin_obj, d.child_dir_zapobj), (5, 2, 9, 7));
            b[56..64].copy_from_slice(&e.u64_to(44));
            b[72..80].copy_from_slice(&e.u64_to(19_968));
            b[128 + 88..128 + 96].copy_from_slice(&e.u64_to(305)); // blk_fill
            let ds = DslDataset::parse(&b, e).unwrap();
            assert_eq!((ds.creation_txg, ds.bp.fill, ds.prev_snap_obj), (44, 305, 5));
            assert_eq!(ds.referenced_bytes, 19_968);
            assert_eq!(DslDataset::parse(&b[..200], e), Err(Error::Truncated));
            assert_eq!(DslDir::parse(&b[..39], e), Err(Error::Truncated));
        }
    }
}
