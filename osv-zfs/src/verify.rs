//! `osv-zfs verify`: every block of the pool read and checked, our
//! `zdb -bcc` (cmd/zdb/zdb.c, `dump_block_stats` and `zdb_blkptr_cb`).
//!
//! [`verify`] runs the [`traverse`](crate::traverse) traversal and, for
//! every block pointer, counts it the way zdb does (`zdb_count_block`: the
//! block count, `BP_GET_LSIZE`, `BP_GET_PSIZE` and `BP_GET_ASIZE` sums,
//! per type, checksum and compression) and reads it the way `-cc` does:
//! every copy (each DVA, each mirror side, raidz parity checked, as a
//! `ZIO_FLAG_SCRUB` read), checksum verified; then, beyond zdb, the first
//! good copy decompressed to its logical size (not for encrypted data,
//! which needs the key; its checksum is over the ciphertext and is
//! checked). Embedded block pointers are decoded. Freed blocks still
//! allocated (the deferred-free list) are counted, not read, as zdb does:
//! their space may already hold other data.
//!
//! Outcome per block:
//! - **bad** ([`VerifyReport::bad`]): no copy verifies, or the data does
//!   not decompress, or the traversal could not read a block it needed:
//!   zdb reports these (`zdb_blkptr_cb: Got error ...`) and so does the
//!   tool, exiting non-zero;
//! - **repaired** ([`VerifyReport::repaired`]): some copy was damaged
//!   (a ditto DVA, a mirror side, raidz data rebuilt from parity, raidz
//!   parity that does not match) but another had the data: the read
//!   succeeds, as zdb's scrub read does (zdb prints nothing then), and the
//!   tool lists them without failing;
//! - intent log blocks that do not verify end their log chain: zdb reads
//!   them speculatively and ignores the failure, and so do we
//!   ([`VerifyReport::zil_unreadable`]).

use crate::blkptr::{checksum_name, compression_name, BlockPointer};
use crate::compress;
use crate::device::BlockDevice;
use crate::pool::Pool;
use crate::traverse::{traverse, Bookmark, Limits, Origin, TraverseError, Visit};
use crate::vdev::ScrubFindings;
use crate::Error;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Counts and sizes of a set of block pointers (zdb's `zdb_blkstats_t`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Block pointers.
    pub count: u64,
    /// Sum of `BP_GET_LSIZE`.
    pub logical: u64,
    /// Sum of `BP_GET_PSIZE` (embedded: 0).
    pub physical: u64,
    /// Sum of `BP_GET_ASIZE` (every copy's allocation).
    pub allocated: u64,
}

impl BlockStats {
    fn add(&mut self, bp: &BlockPointer) {
        self.count += 1;
        self.logical = self.logical.wrapping_add(bp.logical_size());
        self.physical = self.physical.wrapping_add(bp.physical_size());
        self.allocated = self.allocated.wrapping_add(bp.asize());
    }
}

/// What was wrong with one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// No copy verified: the error of the most telling one.
    Unreadable(Error),
    /// The data verified but did not decompress (or decode, embedded).
    Decompress(Error),
    /// Copy `dva` (index into the block pointer's DVAs) failed; another
    /// copy had the data.
    BadCopy {
        /// The DVA's index.
        dva: usize,
        /// Why it failed.
        error: Error,
    },
    /// Damage below the DVAs that the read repaired (mirror sides, raidz).
    Repaired(ScrubFindings),
    /// The traversal could not read a block it needed to go further.
    Traverse(TraverseError),
}

/// A block with a [`Problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadBlock {
    /// Where it sits.
    pub bookmark: Bookmark,
    /// How it was reached.
    pub origin: Origin,
    /// Its block pointer (`None` for traversal errors).
    pub bp: Option<BlockPointer>,
    /// What was wrong.
    pub problem: Problem,
}

impl fmt::Display for BadBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = match self.origin {
            Origin::Tree => "",
            Origin::ZilBlock => " (intent log block)",
            Origin::ZilWrite => " (intent log write)",
            Origin::Deferred => " (deferred free)",
        };
        let level = match self.bp {
            Some(bp) => alloc::format!(" [L{} {}]", bp.level(), type_name(bp.object_type()),),
            None => alloc::string::String::new(),
        };
        write!(f, "{}{origin}{level}: ", self.bookmark)?;
        match self.problem {
            Problem::Unreadable(e) => write!(f, "no valid copy: {e}"),
            Problem::Decompress(e) => write!(f, "checksum ok, but {e}"),
            Problem::BadCopy { dva, error } => {
                let d = self.bp.map(|bp| bp.dva[dva]).unwrap_or_default();
                write!(
                    f,
                    "copy DVA[{dva}]=<{}:{:x}:{:x}> bad ({error}), another copy is good",
                    d.vdev(),
                    d.offset(),
                    d.asize()
                )
            }
            Problem::Repaired(s) => write!(
                f,
                "repaired: {} bad mirror side(s), {} raidz rebuild(s), {} raidz parity mismatch(es)",
                s.bad_mirror_sides, s.raidz_rebuilt, s.raidz_bad_parity
            ),
            Problem::Traverse(t) => write!(f, "cannot read {}: {}", t.what, t.error),
        }
    }
}

/// Everything [`verify`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// All block pointers (zdb's `bp count`, `bp logical`, `bp physical`,
    /// `bp allocated`).
    pub total: BlockStats,
    /// By object type (`dmu_object_type_t`; new-style types together under
    /// 0xff, as zdb's `ZDB_OT_OTHER`); freed blocks still allocated are
    /// only in `deferred`.
    pub by_type: BTreeMap<u8, BlockStats>,
    /// Blocks of the deferred-free list and free bpobj (zdb's
    /// "deferred free").
    pub deferred: BlockStats,
    /// By checksum function (embedded pointers not included).
    pub by_checksum: BTreeMap<u8, BlockStats>,
    /// By compression function.
    pub by_compression: BTreeMap<u8, BlockStats>,
    /// Embedded block pointers.
    pub embedded: u64,
    /// Block pointers with a gang DVA (zdb's `ganged count`).
    pub ganged: u64,
    /// Copies (DVAs) read and verified.
    pub copies_checked: u64,
    /// Intent log blocks that did not verify (the end of a log chain).
    pub zil_unreadable: u64,
    /// Unrecoverable problems (the tool fails on any).
    pub bad: Vec<BadBlock>,
    /// Damage that another copy or parity made up for.
    pub repaired: Vec<BadBlock>,
}

impl VerifyReport {
    /// Whether every block was read, verified and decompressed.
    pub fn is_clean(&self) -> bool {
        self.bad.is_empty()
    }
}

/// zdb's name of a `dmu_object_type_t` (`dmu_ot[].ot_name`, module/zfs/dmu.c).
pub fn type_name(ty: u8) -> &'static str {
    const NAMES: [&str; 54] = [
        "unallocated",
        "object directory",
        "object array",
        "packed nvlist",
        "packed nvlist size",
        "bpobj",
        "bpobj header",
        "SPA space map header",
        "SPA space map",
        "ZIL intent log",
        "DMU dnode",
        "DMU objset",
        "DSL directory",
        "DSL directory child map",
        "DSL dataset snap map",
        "DSL props",
        "DSL dataset",
        "ZFS znode",
        "ZFS V0 ACL",
        "ZFS plain file",
        "ZFS directory",
        "ZFS master node",
        "ZFS delete queue",
        "zvol object",
        "zvol prop",
        "other uint8[]",
        "other uint64[]",
        "other ZAP",
        "persistent error log",
        "SPA history",
        "SPA history offsets",
        "Pool properties",
        "DSL permissions",
        "ZFS ACL",
        "ZFS SYSACL",
        "FUID table",
        "FUID table size",
        "DSL dataset next clones",
        "scan work queue",
        "ZFS user/group/project used",
        "ZFS user/group/project quota",
        "snapshot refcount tags",
        "DDT ZAP algorithm",
        "DDT statistics",
        "System attributes",
        "SA master node",
        "SA attr registration",
        "SA attr layouts",
        "scan translations",
        "deduplicated block",
        "DSL deadlist map",
        "DSL deadlist map hdr",
        "DSL dir clones",
        "bpobj subobj",
    ];
    NAMES.get(usize::from(ty)).copied().unwrap_or("other")
}

/// Reads and checks every block of `pool` (see the module doc).
pub fn verify<D: BlockDevice>(pool: &mut Pool<D>, limits: Limits) -> VerifyReport {
    let mut r = VerifyReport::default();
    let trav = traverse(pool, limits, &mut |reader, v: &Visit<'_>| check(reader, v, &mut r));
    for t in trav.errors {
        let origin = Origin::Tree;
        r.bad.push(BadBlock { bookmark: t.bookmark, origin, bp: None, problem: Problem::Traverse(t) });
    }
    r
}

fn check<D: BlockDevice>(reader: &mut crate::pool::BlockReader<D>, v: &Visit<'_>, r: &mut VerifyReport) {
    let bp = v.bp;
    r.total.add(bp);
    if v.origin == Origin::Deferred {
        r.deferred.add(bp);
    } else {
        let ty = if bp.object_type() & 0x80 != 0 { 0xff } else { bp.object_type() };
        r.by_type.entry(ty).or_default().add(bp);
    }
    r.by_compression.entry(bp.compression()).or_default().add(bp);
    let bad = |problem| BadBlock { bookmark: v.bookmark, origin: v.origin, bp: Some(*bp), problem };
    if bp.is_embedded() {
        r.embedded += 1;
        if let Err(e) = reader.read_block(bp) {
            r.bad.push(bad(Problem::Decompress(e)));
        }
        return;
    }
    r.by_checksum.entry(bp.checksum()).or_default().add(bp);
    if bp.dvas().iter().any(|d| d.is_valid() && d.is_gang()) {
        r.ganged += 1;
    }
    // Freed blocks (zdb's bpobj_count_block_cb) are counted, not read:
    // their space may already hold other data.
    if v.origin == Origin::Deferred {
        return;
    }
    let scrub = reader.scrub_block(bp);
    r.copies_checked += scrub.copies.len() as u64;
    let data = match scrub.data {
        Ok(d) => d,
        Err(_) if v.origin == Origin::ZilBlock => {
            r.zil_unreadable += 1;
            return;
        }
        Err(e) => {
            r.bad.push(bad(Problem::Unreadable(e)));
            return;
        }
    };
    for (i, (dva, res)) in scrub.copies.iter().enumerate() {
        if let Err(error) = res {
            let index = bp.dva.iter().position(|d| d == dva).unwrap_or(i);
            r.repaired.push(bad(Problem::BadCopy { dva: index, error: *error }));
        }
    }
    if scrub.found.any() {
        r.repaired.push(bad(Problem::Repaired(scrub.found)));
    }
    let c = bp.compression();
    if !bp.is_ciphertext() && c != compress::func::OFF && c != 0 && c != compress::func::EMPTY {
        let Ok(lsize) = usize::try_from(bp.lsize()) else {
            r.bad.push(bad(Problem::Decompress(Error::TooLarge)));
            return;
        };
        let mut out = vec![0u8; lsize];
        if let Err(e) = compress::decompress(c, &data, &mut out) {
            r.bad.push(bad(Problem::Decompress(e)));
        }
    }
}

/// Prints a report the way the host tool does: zdb's totals, then the
/// tables, then every bad and repaired block.
impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.total;
        writeln!(f, "\tbp count:      {:>12}", t.count)?;
        writeln!(f, "\tganged count:  {:>12}", self.ganged)?;
        writeln!(f, "\tembedded count:{:>12}", self.embedded)?;
        writeln!(f, "\tbp logical:    {:>12}", t.logical)?;
        writeln!(f, "\tbp physical:   {:>12}", t.physical)?;
        writeln!(f, "\tbp allocated:  {:>12}", t.allocated)?;
        writeln!(f, "\tcopies checked:{:>12}", self.copies_checked)?;
        let row = |f: &mut fmt::Formatter<'_>, s: &BlockStats, name: &str| {
            writeln!(f, "{:>8} {:>10} {:>10} {:>10}  {name}", s.count, s.logical, s.physical, s.allocated)
        };
        writeln!(f, "\n  Blocks      LSIZE      PSIZE      ASIZE  Type")?;
        for (ty, s) in &self.by_type {
            row(f, s, type_name(*ty))?;
        }
        if self.deferred.count != 0 {
            row(f, &self.deferred, "deferred free")?;
        }
        writeln!(f, "\n  Blocks      LSIZE      PSIZE      ASIZE  Checksum")?;
        for (c, s) in &self.by_checksum {
            row(f, s, checksum_name(*c))?;
        }
        writeln!(f, "\n  Blocks      LSIZE      PSIZE      ASIZE  Compression")?;
        for (c, s) in &self.by_compression {
            row(f, s, compression_name(*c))?;
        }
        if self.zil_unreadable != 0 {
            writeln!(
                f,
                "\n{} intent log block(s) past the end of their chain (not an error)",
                self.zil_unreadable
            )?;
        }
        for b in &self.repaired {
            writeln!(f, "repaired {b}")?;
        }
        for b in &self.bad {
            writeln!(f, "BAD {b}")?;
        }
        if self.bad.is_empty() {
            writeln!(
                f,
                "\nno errors ({} block(s) with damage repaired from other copies)",
                self.repaired.len()
            )
        } else {
            writeln!(f, "\n{} error(s)", self.bad.len())
        }
    }
}
