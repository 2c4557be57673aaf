//! Every block pointer reachable from the active uberblock, each with its
//! bookmark: the traversal `zdb -b` counts (`traverse_pool`,
//! module/zfs/dmu_traverse.c, plus the extras of `dump_block_stats`,
//! cmd/zdb/zdb.c).
//!
//! [`traverse`] visits, calling back once per block pointer:
//!
//! 1. the MOS: its objset block, its meta-dnode's tree, every object's
//!    tree (indirect blocks, then level 0; spill blocks) and the
//!    user/group/project-used objects of objsets large enough to hold them
//!    (`OBJSET_PHYS_SIZE_V2`/`_V3`);
//! 2. every dataset of the MOS (every object whose bonus is a
//!    `dsl_dataset_phys_t`), in object order, skipping the blocks born at
//!    or before its previous snapshot (`ds_prev_snap_txg`), since those
//!    belong to that snapshot (so shared blocks are visited once);
//! 3. the intent log of every head dataset (not of snapshots), as
//!    `traverse_zil` does for a read-only pool: the chain of log blocks
//!    from `zh_log` up to the first one that does not verify, or, when the
//!    log was never claimed, up to the first one born after the last synced
//!    txg; `TX_WRITE` records' block pointers only when the log was claimed;
//! 4. the blocks freed but not yet released: the deferred-free list
//!    (`sync_bplist`, a bpobj or the older bplist) and the pool's
//!    `free_bpobj`, with their sub-bpobjs (zdb counts them as "deferred
//!    free").
//!
//! Holes are not visited. A block that cannot be read to find its children
//! is reported as a [`TraverseError`] naming its bookmark, and the
//! traversal goes on with its siblings (`TRAVERSE_HARD`).
//!
//! The work is bounded whatever the bytes: levels must descend, dnode
//! blocks are only followed from the meta-dnode, objsets only at a root,
//! bpobjs nest at most [`MAX_BPOBJ_DEPTH`] deep and never twice, and the
//! whole traversal stops after [`Limits::max_visits`] blocks.

use crate::blkptr::{BlockPointer, BLKPTR_SIZE};
use crate::bytes::{u64_at, Endian};
use crate::checksum::func as ck;
use crate::device::BlockDevice;
use crate::dnode::{ot, DnodePhys, DNODE_SIZE};
use crate::pool::{BlockReader, Pool, DMU_POOL_DIRECTORY_OBJECT};
use crate::{Error, Result};
use alloc::collections::BTreeSet;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// `ZB_ROOT_OBJECT`, `ZB_ROOT_LEVEL`, `ZB_ROOT_BLKID` (include/sys/zio.h):
/// the bookmark of an objset's own block.
pub const ZB_ROOT_OBJECT: u64 = 0;
/// See [`ZB_ROOT_OBJECT`].
pub const ZB_ROOT_LEVEL: i64 = -1;
/// `ZB_ZIL_OBJECT`/`ZB_ZIL_LEVEL`: intent log blocks and records.
pub const ZB_ZIL_OBJECT: u64 = 0;
/// See [`ZB_ZIL_OBJECT`].
pub const ZB_ZIL_LEVEL: i64 = -2;
/// `ZB_DNODE_LEVEL`: the bookmark level of a dnode itself (errors about a
/// dnode carry it).
pub const ZB_DNODE_LEVEL: i64 = -3;
/// `DMU_SPILL_BLKID` (include/sys/dmu.h): the spill block's block id.
pub const DMU_SPILL_BLKID: u64 = u64::MAX - 1;
/// `DMU_USERUSED_OBJECT` (-1), `DMU_GROUPUSED_OBJECT` (-2),
/// `DMU_PROJECTUSED_OBJECT` (-3) (include/sys/dmu.h).
pub const DMU_USERUSED_OBJECT: u64 = u64::MAX;
/// See [`DMU_USERUSED_OBJECT`].
pub const DMU_GROUPUSED_OBJECT: u64 = u64::MAX - 1;
/// See [`DMU_USERUSED_OBJECT`].
pub const DMU_PROJECTUSED_OBJECT: u64 = u64::MAX - 2;
/// Deepest nesting of sub-bpobjs followed.
pub const MAX_BPOBJ_DEPTH: usize = 16;

/// `OBJSET_PHYS_SIZE_V2`: objsets this large hold the user and group used
/// dnodes at 1 KiB and 1.5 KiB (include/sys/dmu_objset.h).
const OBJSET_PHYS_SIZE_V2: usize = 2048;
/// `OBJSET_PHYS_SIZE_V3`: and the project used dnode at 2 KiB.
const OBJSET_PHYS_SIZE_V3: usize = 4096;
/// `zil_header_t` in `objset_phys_t`.
const ZIL_HEADER_OFFSET: usize = 0x200;
/// `ZIL_CLAIM_LR_SEQ_VALID` (include/sys/zil.h).
const ZIL_CLAIM_LR_SEQ_VALID: u64 = 0x2;
/// `TX_WRITE` (include/sys/zil.h).
const TX_WRITE: u64 = 9;
/// `ZIL_ZC_SEQ`: the checksum word holding a log block's sequence number.
const ZIL_ZC_SEQ: usize = 3;
/// `sizeof (zil_chain_t)`.
const ZIL_CHAIN_SIZE: usize = 184;
/// `sizeof (lr_t)`: txtype, reclen, txg, seq.
const LR_SIZE: usize = 32;

/// Where a block pointer sits (`zbookmark_phys_t`, include/sys/zio.h):
/// objset (the DSL dataset object, 0 for the MOS), object, level and block
/// id. Objset roots have level -1, intent log blocks level -2 (their block
/// id is their sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bookmark {
    /// `zb_objset`.
    pub objset: u64,
    /// `zb_object`.
    pub object: u64,
    /// `zb_level`.
    pub level: i64,
    /// `zb_blkid`.
    pub blkid: u64,
}

impl fmt::Display for Bookmark {
    /// As zdb prints one: `<objset, object, level, blkid>` (blkid in hex).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}, {}, {}, {:x}>", self.objset, self.object, self.level, self.blkid)
    }
}

/// How a block pointer was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// Through an objset's tree (objset, dnodes, indirect blocks).
    Tree,
    /// An intent log block of a head dataset's ZIL chain (reading it may
    /// fail at the end of the chain: that is how a chain ends).
    ZilBlock,
    /// The block pointer of a `TX_WRITE` log record.
    ZilWrite,
    /// A freed block still allocated: the deferred-free list or the
    /// pool's free bpobj.
    Deferred,
}

/// One block pointer found by [`traverse`].
#[derive(Debug, Clone, Copy)]
pub struct Visit<'a> {
    /// Where it sits (for [`Origin::Deferred`]: objset 0, the bpobj's
    /// object, level 0, the entry's index).
    pub bookmark: Bookmark,
    /// The block pointer.
    pub bp: &'a BlockPointer,
    /// How it was reached.
    pub origin: Origin,
}

/// A block the traversal needed (to find the block pointers below it) and
/// could not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraverseError {
    /// The block's (or the dnode's, or the bpobj's) bookmark.
    pub bookmark: Bookmark,
    /// What it was.
    pub what: &'static str,
    /// What went wrong.
    pub error: Error,
}

impl fmt::Display for TraverseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.bookmark, self.what, self.error)
    }
}

/// Bounds on one traversal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most block pointers visited; past it the traversal stops with an
    /// [`Error::LimitExceeded`] error.
    pub max_visits: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_visits: 1 << 32 }
    }
}

/// What a traversal did.
#[derive(Debug, Clone, Default)]
pub struct Traversal {
    /// Block pointers visited.
    pub visits: u64,
    /// Blocks that could not be used to go further.
    pub errors: Vec<TraverseError>,
}

/// The callback of [`traverse`]: gets the pool's block reader (to read the
/// block if it wants) and the visit.
pub type Visitor<'v, D> = dyn FnMut(&mut BlockReader<D>, &Visit<'_>) + 'v;

struct Walk<'a, 'v, D> {
    pool: &'a mut Pool<D>,
    visit: &'a mut Visitor<'v, D>,
    limits: Limits,
    out: Traversal,
    stopped: bool,
    /// Objsets of the current traversal: the dataset object (0: MOS).
    objset: u64,
    min_txg: u64,
    /// MOS objects with a DSL dataset bonus, found while walking the MOS.
    datasets: Vec<(u64, DatasetRoot)>,
}

#[derive(Debug, Clone, Copy)]
struct DatasetRoot {
    bp: BlockPointer,
    prev_snap_txg: u64,
    is_snapshot: bool,
}

/// Visits every block pointer of the pool (see the module doc) and calls
/// `visit` for each, in the order zdb's traversal would (pre-order).
pub fn traverse<D: BlockDevice>(pool: &mut Pool<D>, limits: Limits, visit: &mut Visitor<'_, D>) -> Traversal {
    let mut w = Walk {
        pool,
        visit,
        limits,
        out: Traversal::default(),
        stopped: false,
        objset: 0,
        min_txg: 0,
        datasets: Vec::new(),
    };
    w.deferred();
    let rootbp = w.pool.uberblock.rootbp;
    w.objset = 0;
    w.min_txg = 0;
    w.visit_bp(&rootbp, Bookmark { objset: 0, object: ZB_ROOT_OBJECT, level: ZB_ROOT_LEVEL, blkid: 0 }, 0);
    let mut datasets = core::mem::take(&mut w.datasets);
    datasets.sort_by_key(|(obj, _)| *obj);
    datasets.dedup_by_key(|(obj, _)| *obj);
    for (obj, ds) in datasets {
        if w.stopped {
            break;
        }
        w.objset = obj;
        w.min_txg = ds.prev_snap_txg;
        let root = Bookmark { objset: obj, object: ZB_ROOT_OBJECT, level: ZB_ROOT_LEVEL, blkid: 0 };
        if !ds.is_snapshot && !ds.bp.is_hole() {
            match w.pool.read_block(&ds.bp) {
                Ok(os) => w.zil(&os, ds.bp.byte_order(), root),
                Err(error) => w.error(root, "objset (for its intent log)", error),
            }
        }
        w.visit_bp(&ds.bp, root, 0);
    }
    w.out
}

impl<D: BlockDevice> Walk<'_, '_, D> {
    fn error(&mut self, bookmark: Bookmark, what: &'static str, error: Error) {
        self.out.errors.push(TraverseError { bookmark, what, error });
    }

    /// Calls the visitor; false when the traversal must stop.
    fn emit(&mut self, bp: &BlockPointer, bookmark: Bookmark, origin: Origin) -> bool {
        if self.stopped {
            return false;
        }
        if self.out.visits >= self.limits.max_visits {
            self.stopped = true;
            self.error(bookmark, "traversal", Error::LimitExceeded);
            return false;
        }
        self.out.visits += 1;
        (self.visit)(self.pool.reader(), &Visit { bookmark, bp, origin });
        true
    }

    /// `traverse_visitbp`: `depth` counts objset/dnode nesting, for the
    /// bound on what may be followed.
    fn visit_bp(&mut self, bp: &BlockPointer, zb: Bookmark, depth: usize) {
        if bp.is_hole() || (bp.birth != 0 && bp.birth <= self.min_txg) {
            return;
        }
        if !self.emit(bp, zb, Origin::Tree) {
            return;
        }
        if bp.is_embedded() {
            return;
        }
        let level = i64::from(bp.level());
        if level > 0 {
            // The bookmark's level is what the tree says this block is; a
            // pointer claiming another level is not followed.
            if zb.level >= 0 && zb.level != level {
                self.error(zb, "indirect block", Error::BadDnode);
                return;
            }
            let data = match self.pool.read_block(bp) {
                Ok(d) => d,
                Err(e) => return self.error(zb, "indirect block", e),
            };
            let epb = data.len() / BLKPTR_SIZE;
            for i in 0..epb {
                let child = match BlockPointer::parse(&data[i * BLKPTR_SIZE..], bp.byte_order()) {
                    Ok(c) => c,
                    Err(e) => return self.error(zb, "indirect block", e),
                };
                let blkid = zb.blkid.wrapping_mul(epb as u64).wrapping_add(i as u64);
                let czb = Bookmark { level: level - 1, blkid, ..zb };
                self.visit_bp(&child, czb, depth);
                if self.stopped {
                    return;
                }
            }
        } else if bp.object_type() == ot::DNODE && zb.object == 0 && zb.level == 0 && depth == 1 {
            let data = match self.pool.read_block(bp) {
                Ok(d) => d,
                Err(e) => return self.error(zb, "dnode block", e),
            };
            let endian = bp.byte_order();
            let epb = data.len() / DNODE_SIZE;
            let mut i = 0;
            while i < epb {
                let raw = &data[i * DNODE_SIZE..];
                let object = zb.blkid.wrapping_mul(epb as u64).wrapping_add(i as u64);
                self.dnode(raw, endian, object, depth + 1);
                if self.stopped {
                    return;
                }
                i += 1 + usize::from(raw[12]);
            }
        } else if bp.object_type() == ot::OBJSET && zb.level == ZB_ROOT_LEVEL && depth == 0 {
            let data = match self.pool.read_block(bp) {
                Ok(d) => d,
                Err(e) => return self.error(zb, "objset", e),
            };
            let endian = bp.byte_order();
            self.dnode(&data, endian, 0, depth + 1);
            if data.len() >= OBJSET_PHYS_SIZE_V2 {
                if data.len() >= OBJSET_PHYS_SIZE_V3 {
                    self.dnode(&data[2048..], endian, DMU_PROJECTUSED_OBJECT, depth + 1);
                }
                self.dnode(&data[1536..], endian, DMU_GROUPUSED_OBJECT, depth + 1);
                self.dnode(&data[1024..], endian, DMU_USERUSED_OBJECT, depth + 1);
            }
        }
    }

    /// `traverse_dnode`: the dnode's block pointers, then its spill block.
    fn dnode(&mut self, raw: &[u8], endian: Endian, object: u64, depth: usize) {
        let zb = Bookmark { objset: self.objset, object, level: ZB_DNODE_LEVEL, blkid: 0 };
        let d = match DnodePhys::new_checked(raw, endian) {
            Ok(d) => d,
            Err(e) => return self.error(zb, "dnode", e),
        };
        if d.object_type() == ot::NONE {
            return;
        }
        if self.objset == 0 && depth == 2 && d.bonus_type() == ot::DSL_DATASET {
            let b = d.bonus();
            let parsed = (|| -> Result<DatasetRoot> {
                Ok(DatasetRoot {
                    // dsl_dataset_phys_t: ds_prev_snap_txg at 16,
                    // ds_num_children at 40, ds_bp at 128.
                    prev_snap_txg: u64_at(b, 16, endian)?,
                    is_snapshot: u64_at(b, 40, endian)? != 0,
                    bp: BlockPointer::parse(b.get(128..).ok_or(Error::Truncated)?, endian)?,
                })
            })();
            match parsed {
                Ok(ds) => self.datasets.push((object, ds)),
                Err(e) => self.error(zb, "dsl_dataset bonus", e),
            }
        }
        let top = i64::from(d.nlevels()) - 1;
        for j in 0..usize::from(d.nblkptr()) {
            let bp = match d.blkptr(j) {
                Ok(bp) => bp,
                Err(e) => return self.error(zb, "dnode", e),
            };
            self.visit_bp(&bp, Bookmark { objset: self.objset, object, level: top, blkid: j as u64 }, depth);
            if self.stopped {
                return;
            }
        }
        if let Some(spill) = d.spill() {
            let szb = Bookmark { objset: self.objset, object, level: 0, blkid: DMU_SPILL_BLKID };
            self.visit_bp(&spill, szb, depth);
        }
    }

    /// `traverse_zil` + `zil_parse` for a read-only pool.
    fn zil(&mut self, os: &[u8], endian: Endian, root: Bookmark) {
        let h = match os.get(ZIL_HEADER_OFFSET..ZIL_HEADER_OFFSET + 192) {
            Some(h) => h,
            None => return self.error(root, "intent log header", Error::Truncated),
        };
        let field = |at| u64_at(h, at, endian).unwrap_or(0);
        let claim_txg = field(0);
        let mut blk = match BlockPointer::parse(&h[16..], endian) {
            Ok(bp) => bp,
            Err(e) => return self.error(root, "intent log header", e),
        };
        let claimed = claim_txg != 0;
        let claim_blk_seq = if claimed { field(144) } else { u64::MAX };
        let claim_lr_seq =
            if claimed && field(152) & ZIL_CLAIM_LR_SEQ_VALID != 0 { field(160) } else { u64::MAX };
        // spa_min_claim_txg: the checkpoint's txg + 1, or the first txg
        // after the last synced one (spa_first_txg of a read-only import).
        let ub = &self.pool.uberblock;
        let min_claim_txg = if ub.checkpoint_txg != 0 { ub.checkpoint_txg + 1 } else { ub.txg.0 + 1 };
        let mut seen = BTreeSet::new();
        let (mut max_blk_seq, mut max_lr_seq) = (0u64, 0u64);
        while !blk.is_hole() && !self.stopped {
            let seq = blk.cksum.0[ZIL_ZC_SEQ];
            if seq > claim_blk_seq || seq <= max_blk_seq && max_blk_seq != 0 {
                break;
            }
            // traverse_zil_block
            if !claimed && blk.birth >= min_claim_txg {
                break;
            }
            let zb = Bookmark { objset: self.objset, object: ZB_ZIL_OBJECT, level: ZB_ZIL_LEVEL, blkid: seq };
            // zil_bp_tree_add: each log block once (by its first DVA).
            if seen.insert(blk.dva[0].0) && !self.emit(&blk, zb, Origin::ZilBlock) {
                return;
            }
            max_blk_seq = seq;
            if max_lr_seq == claim_lr_seq && max_blk_seq == claim_blk_seq {
                break;
            }
            // zil_read_log_block: a block that does not verify ends the chain.
            let Ok(data) = self.pool.read_block(&blk) else { break };
            let mut next_cksum = blk.cksum;
            next_cksum.0[ZIL_ZC_SEQ] = next_cksum.0[ZIL_ZC_SEQ].wrapping_add(1);
            let Some((next, records)) = zil_chain(&data, &blk, endian_of_log(&data, &blk)) else { break };
            if next.cksum != next_cksum {
                break;
            }
            // Records: TX_WRITE block pointers of a claimed log.
            let mut at = 0usize;
            while at + LR_SIZE <= records.len() {
                let r = &records[at..];
                let le = endian_of_log(&data, &blk);
                let txtype = u64_at(r, 0, le).unwrap_or(0);
                let reclen = u64_at(r, 8, le).unwrap_or(0) as usize;
                let lr_seq = u64_at(r, 24, le).unwrap_or(0);
                if reclen < LR_SIZE || reclen > records.len() - at || lr_seq > claim_lr_seq {
                    break;
                }
                if txtype == TX_WRITE && claimed && reclen >= 64 + BLKPTR_SIZE {
                    if let Ok(bp) = BlockPointer::parse(&r[64..], le) {
                        let foid = u64_at(r, 32, le).unwrap_or(0);
                        let off = u64_at(r, 40, le).unwrap_or(0);
                        if !bp.is_hole() && bp.birth >= claim_txg {
                            let blkid = off / bp.logical_size().max(1);
                            let wzb =
                                Bookmark { objset: self.objset, object: foid, level: ZB_ZIL_LEVEL, blkid };
                            if seen.insert(bp.dva[0].0) && !self.emit(&bp, wzb, Origin::ZilWrite) {
                                return;
                            }
                        }
                    }
                }
                max_lr_seq = lr_seq;
                at += reclen;
            }
            blk = next;
        }
    }

    /// The deferred-free list and the free bpobj (`dump_block_stats`).
    fn deferred(&mut self) {
        let mos = self.pool.mos.clone();
        let root = Bookmark { objset: 0, object: DMU_POOL_DIRECTORY_OBJECT, level: 0, blkid: 0 };
        let dir = match self.pool.dnode(&mos, DMU_POOL_DIRECTORY_OBJECT) {
            Ok(d) => d,
            Err(e) => return self.error(root, "object directory", e),
        };
        let mut seen = BTreeSet::new();
        for key in [&b"sync_bplist"[..], b"free_bpobj"] {
            match self.pool.zap_lookup(&dir, key) {
                Ok(v) if v.first != 0 => self.bpobj(v.first, 0, &mut seen),
                Ok(_) | Err(Error::NotFound) => {}
                Err(e) => self.error(root, "object directory", e),
            }
        }
    }

    /// `bpobj_iterate_nofree`: a bpobj's (or an old bplist's) block
    /// pointers, then its sub-bpobjs.
    fn bpobj(&mut self, object: u64, depth: usize, seen: &mut BTreeSet<u64>) {
        let zb = Bookmark { objset: 0, object, level: 0, blkid: 0 };
        if depth > MAX_BPOBJ_DEPTH || !seen.insert(object) {
            return self.error(zb, "bpobj", Error::LimitExceeded);
        }
        let mos = self.pool.mos.clone();
        let dn = match self.pool.dnode(&mos, object) {
            Ok(d) => d,
            Err(e) => return self.error(zb, "bpobj", e),
        };
        let (bonus, endian) = match dn.phys() {
            Ok(p) => (Vec::from(p.bonus()), dn.endian()),
            Err(e) => return self.error(zb, "bpobj", e),
        };
        // bpobj_phys_t: bpo_num_blkptrs at 0, bpo_subobjs at 32 and
        // bpo_num_subobjs at 40 when the bonus is larger than
        // BPOBJ_SIZE_V1 (32 bytes).
        let Ok(num) = u64_at(&bonus, 0, endian) else { return self.error(zb, "bpobj", Error::Truncated) };
        let mut buf = vec![0u8; BLKPTR_SIZE];
        for i in 0..num {
            if self.stopped {
                return;
            }
            let at = i.checked_mul(BLKPTR_SIZE as u64);
            let read = at.ok_or(Error::BadLength).and_then(|at| self.pool.read_object(&dn, at, &mut buf));
            if let Err(e) = read {
                return self.error(Bookmark { blkid: i, ..zb }, "bpobj entry", e);
            }
            // The entries are in the byte order of the block holding them,
            // which the dnode shares.
            match BlockPointer::parse(&buf, endian) {
                Ok(bp) if !bp.is_hole() => {
                    if !self.emit(&bp, Bookmark { blkid: i, ..zb }, Origin::Deferred) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => return self.error(zb, "bpobj entry", e),
            }
        }
        if bonus.len() > 32 {
            let subobjs = u64_at(&bonus, 32, endian).unwrap_or(0);
            let nsub = u64_at(&bonus, 40, endian).unwrap_or(0);
            if subobjs == 0 || nsub == 0 {
                return;
            }
            let sdn = match self.pool.dnode(&mos, subobjs) {
                Ok(d) => d,
                Err(e) => return self.error(zb, "bpobj subobjs", e),
            };
            let mut w = [0u8; 8];
            for i in 0..nsub {
                if self.stopped {
                    return;
                }
                if let Err(e) = self.pool.read_object(&sdn, i.saturating_mul(8), &mut w) {
                    return self.error(zb, "bpobj subobjs", e);
                }
                let sub = sdn.endian().u64_from(w);
                self.bpobj(sub, depth + 1, seen);
            }
        }
    }
}

/// The byte order of a log block: its embedded checksum's magic, else the
/// block pointer's.
fn endian_of_log(data: &[u8], bp: &BlockPointer) -> Endian {
    let eck = if bp.checksum() == ck::ZILOG2 {
        data.get(crate::checksum::ZIL_CHAIN_ECK_OFFSET..crate::checksum::ZIL_CHAIN_ECK_OFFSET + 40)
    } else {
        data.get(data.len().saturating_sub(40)..)
    };
    eck.and_then(|e| crate::checksum::eck_endian(e).ok()).unwrap_or(bp.byte_order())
}

/// `zil_read_log_block`'s view of a verified log block: the next block's
/// pointer and the used record bytes (`zil_chain_t` first in a `zilog2`
/// block, last in an old `zilog` one).
fn zil_chain<'d>(data: &'d [u8], bp: &BlockPointer, endian: Endian) -> Option<(BlockPointer, &'d [u8])> {
    if bp.checksum() == ck::ZILOG2 {
        let next = BlockPointer::parse(data.get(8..)?, endian).ok()?;
        let nused = usize::try_from(u64_at(data, 136, endian).ok()?).ok()?;
        if nused < ZIL_CHAIN_SIZE || nused > data.len() {
            return None;
        }
        Some((next, &data[ZIL_CHAIN_SIZE..nused]))
    } else {
        let at = data.len().checked_sub(ZIL_CHAIN_SIZE)?;
        let next = BlockPointer::parse(&data[at + 8..], endian).ok()?;
        let nused = usize::try_from(u64_at(data, at + 136, endian).ok()?).ok()?;
        if nused > at {
            return None;
        }
        Some((next, &data[..nused]))
    }
}
