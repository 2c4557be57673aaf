//! TLB invalidation as a value: every page-table change returns a [`MapperFlush`] that lists
//! what to invalidate, and the kernel's [`TlbFlush`] does it (locally or as a shootdown).
//!
//! # Deferred freeing of page-table frames
//!
//! A page-table frame that a change unlinks (a table that became empty after an unmap, or a
//! level-0 table replaced by one 2 MiB entry when its pages were merged) may still be cached
//! in some CPU's paging-structure caches, and a CPU with a stale cached entry keeps walking
//! it. So the frame is not freed by the change: it travels in the token, and only
//! [`Mapper::flush`](crate::Mapper::flush) frees it, after the shootdown has run (or
//! [`Mapper::discard`](crate::Mapper::discard), for tables that were never live). This is
//! OSv's `tlb_gather` (`core/mmu.cc`), with the frames carried by the token itself.
//!
//! The frames are carried in *list pages* chained through their first word: a table that
//! became empty becomes a list page itself (it is all zeros), and a merged table's frame is
//! written into a free slot of one. Every word written is a 4 KiB-aligned address or zero,
//! bit 0 (P) clear, so a CPU still walking an emptied table through a stale cache entry
//! reads "not present", which is the truth. A merged table is never written to before the
//! flush: its entries still give the same translations as the 2 MiB page that replaced it.
//!
//! # Multi-CPU shootdown
//!
//! [`TlbFlush::shootdown`] receives the whole batch at once: the ranges (or "all") of one
//! token. A single-CPU kernel implements only `flush_range`/`flush_all` (the default
//! `shootdown` calls them); an SMP kernel overrides `shootdown` to invalidate locally and
//! send one IPI carrying the batch to every other CPU that may cache the address space,
//! returning once all have acknowledged (OSv's `mmu::flush_tlb_all` with its IPI
//! rendezvous). Frames the token carries are freed only after `shootdown` returns.

use core::ops::Range;

use crate::VirtAddr;

/// How many separate ranges a [`MapperFlush`] remembers before it degrades to "flush all".
pub const MAX_FLUSH_RANGES: usize = 8;
/// How many entries (4 KiB or large pages) a [`MapperFlush`] invalidates one by one before
/// it degrades to "flush all" (a full flush is cheaper than this many `invlpg`s).
pub const FLUSH_ALL_THRESHOLD: u64 = 64;
/// How many separate chains of freed table frames one [`MapperFlush`] holds (one per token
/// merged into it with [`MapperFlush::merge`]; [`Mapper::merge_flush`](crate::Mapper::merge_flush)
/// links chains and has no limit).
pub const MAX_FRAME_CHAINS: usize = 4;
/// Frame-address slots in one list page (word 0 links to the next list page).
#[cfg_attr(loom, allow(dead_code))]
pub(crate) const LIST_SLOTS: u16 = 511;

/// The TLB shootdown the kernel implements: invalidate on this CPU and on every CPU that may
/// cache translations of the address space (OSv's `mmu::flush_tlb_all`/batched IPIs).
pub trait TlbFlush {
    /// Invalidates translations (and paging-structure caches) for every page in `range`.
    ///
    /// The range may cover large pages: one `invlpg` per 4 KiB step is always correct, and
    /// a single `invlpg` anywhere in a large page drops that page's TLB entry.
    fn flush_range(&self, range: Range<VirtAddr>);
    /// Invalidates all non-global translations.
    fn flush_all(&self);

    /// Invalidates one batch: every range of `batch`, or everything when
    /// [`batch.is_all()`](MapperFlush::is_all), on every CPU that may cache the address space,
    /// and returns only when all of them are done (the frames `batch` carries are freed right
    /// after).
    ///
    /// The default runs `flush_range`/`flush_all` on the calling CPU, which is all a
    /// single-CPU kernel needs. An SMP kernel overrides it with one IPI per batch (not per
    /// range): invalidate locally, send the ranges to the other CPUs, wait for their
    /// acknowledgements.
    fn shootdown(&self, batch: &MapperFlush) {
        if batch.is_all() {
            self.flush_all();
        } else {
            for r in batch.ranges() {
                self.flush_range(r);
            }
        }
    }
}

/// Page-table frames a [`MapperFlush`] carries until the flush has happened.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FrameChains {
    /// Heads of chains of list pages (0: none). Chain 0 is the one the mapper adds to.
    pub(crate) heads: [u64; MAX_FRAME_CHAINS],
    /// Slots used in the head list page of chain 0.
    pub(crate) head_used: u16,
    /// Frames carried (list pages included).
    pub(crate) frames: u64,
    /// Chains given up because `merge` ran out of slots (never freed, never reused).
    pub(crate) leaked: u64,
}

/// A pending TLB invalidation returned by every page-table change, carrying the page-table
/// frames the change unlinked (see the [module docs](self)).
///
/// Hand it to [`Mapper::flush`](crate::Mapper::flush), which runs the shootdown and then
/// frees the carried frames (or [`Mapper::discard`](crate::Mapper::discard) when the tables
/// are not live, e.g. while building tables before loading CR3). [`flush`](Self::flush) and
/// [`ignore`](Self::ignore) on the token alone cannot free frames (they have no allocator):
/// they are for tokens with [`table_frames`](Self::table_frames) `== 0`, and otherwise leave
/// those frames allocated forever (safe, but a leak). It is `#[must_use]`, so dropping it
/// silently is a compiler warning, and an error with the workspace's `-D warnings`. It is
/// not `Clone`: a copy would free the same frames twice.
#[must_use = "the TLB still holds the old translations: pass it to `Mapper::flush` (or `Mapper::discard` if not live)"]
#[derive(Debug, PartialEq, Eq)]
pub struct MapperFlush {
    ranges: [Range<u64>; MAX_FLUSH_RANGES],
    len: usize,
    entries: u64,
    all: bool,
    pub(crate) chains: FrameChains,
}

impl MapperFlush {
    /// Nothing to invalidate (e.g. only not-present entries became present: the SDM,
    /// vol. 3A §4.10.4.3, does not require a flush for that).
    pub fn none() -> Self {
        Self {
            ranges: core::array::from_fn(|_| 0..0),
            len: 0,
            entries: 0,
            all: false,
            chains: FrameChains { heads: [0; MAX_FRAME_CHAINS], head_used: 0, frames: 0, leaked: 0 },
        }
    }

    /// Everything must be invalidated.
    pub fn all() -> Self {
        Self { all: true, ..Self::none() }
    }

    /// Adds `[start, start + bytes)`, made of `entries` page-table entries, to the
    /// invalidation, merging with the last range when contiguous or overlapping from its
    /// start, and degrading to "flush all" past the thresholds.
    pub(crate) fn add(&mut self, start: u64, bytes: u64, entries: u64) {
        if self.all || bytes == 0 {
            return;
        }
        self.entries = self.entries.saturating_add(entries);
        if self.entries > FLUSH_ALL_THRESHOLD {
            self.all = true;
            return;
        }
        let end = start + bytes;
        let last = self.len.checked_sub(1).map(|i| &mut self.ranges[i]);
        if let Some(last) = last.filter(|l| l.start <= start && start <= l.end) {
            // Contiguous with or inside the last range (a freed table's range repeats the
            // page's): extend it.
            last.end = last.end.max(end);
        } else if self.len == MAX_FLUSH_RANGES {
            self.all = true;
        } else {
            self.ranges[self.len] = start..end;
            self.len += 1;
        }
    }

    /// Adds everything `other` must invalidate, and takes over the table frames it carries.
    ///
    /// Frames are kept as whole chains, at most [`MAX_FRAME_CHAINS`] of them per token;
    /// should a merge exceed that, the extra chain's frames are given up: never freed, so
    /// never reused while stale (counted by [`abandoned_chains`](Self::abandoned_chains)).
    /// [`Mapper::merge_flush`](crate::Mapper::merge_flush) links chains instead and never
    /// gives frames up.
    pub fn merge(&mut self, mut other: Self) {
        self.take_chains(&mut other.chains);
        self.merge_ranges(&other);
    }

    /// Takes over `other`'s chains (each head into a free slot, chain 0 kept where it is).
    pub(crate) fn take_chains(&mut self, other: &mut FrameChains) {
        self.chains.leaked += other.leaked;
        for (i, &h) in other.heads.iter().enumerate() {
            if h == 0 {
                continue;
            }
            let slot = if self.chains.heads[0] == 0 && i == 0 {
                Some(0)
            } else {
                (1..MAX_FRAME_CHAINS).find(|&k| self.chains.heads[k] == 0)
            };
            match slot {
                Some(k) => {
                    self.chains.heads[k] = h;
                    if k == 0 {
                        self.chains.head_used = other.head_used;
                    }
                }
                None => self.chains.leaked += 1,
            }
        }
        self.chains.frames += other.frames;
        *other = FrameChains { heads: [0; MAX_FRAME_CHAINS], head_used: 0, frames: 0, leaked: 0 };
    }

    pub(crate) fn merge_ranges(&mut self, other: &Self) {
        if other.all {
            self.all = true;
            return;
        }
        for r in other.ranges[..other.len].iter() {
            self.add(r.start, r.end - r.start, 0);
        }
        self.entries = self.entries.saturating_add(other.entries);
        if self.entries > FLUSH_ALL_THRESHOLD {
            self.all = true;
        }
    }

    /// How many page-table frames the token carries (freed by
    /// [`Mapper::flush`](crate::Mapper::flush) after the shootdown).
    pub fn table_frames(&self) -> u64 {
        self.chains.frames
    }

    /// Chains of frames given up by [`merge`](Self::merge) (see there); zero in normal use.
    /// [`table_frames`](Self::table_frames) still counts their frames.
    pub fn abandoned_chains(&self) -> u64 {
        self.chains.leaked
    }

    /// Whether the whole TLB must be flushed.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.all && self.len == 0
    }

    /// The ranges to invalidate (meaningless when [`is_all`](Self::is_all)).
    pub fn ranges(&self) -> impl Iterator<Item = Range<VirtAddr>> + '_ {
        self.ranges[..self.len].iter().map(|r| VirtAddr::new(r.start)..VirtAddr::new(r.end))
    }

    /// Performs the invalidation through the kernel's `tlb` ([`TlbFlush::shootdown`]).
    /// Carried table frames are not freed (use [`Mapper::flush`](crate::Mapper::flush)).
    pub fn flush<T: TlbFlush + ?Sized>(self, tlb: &T) {
        tlb.shootdown(&self);
    }

    /// Drops the invalidation on purpose: the tables are not live on any CPU. Carried table
    /// frames are not freed (use [`Mapper::discard`](crate::Mapper::discard)).
    pub fn ignore(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;

    #[derive(Default)]
    struct Log(RefCell<Vec<Option<Range<VirtAddr>>>>);
    impl TlbFlush for Log {
        fn flush_range(&self, range: Range<VirtAddr>) {
            self.0.borrow_mut().push(Some(range));
        }
        fn flush_all(&self) {
            self.0.borrow_mut().push(None);
        }
    }

    #[test]
    fn merges_and_degrades() {
        let mut f = MapperFlush::none();
        assert!(f.is_empty());
        f.add(0x1000, 0x1000, 1);
        f.add(0x2000, 0x2000, 2);
        f.add(0x10_0000, 0x1000, 1);
        let log = Log::default();
        let copy = {
            let mut c = MapperFlush::none();
            c.merge_ranges(&f);
            c
        };
        copy.flush(&log);
        assert_eq!(
            *log.0.borrow(),
            vec![
                Some(VirtAddr::new(0x1000)..VirtAddr::new(0x4000)),
                Some(VirtAddr::new(0x10_0000)..VirtAddr::new(0x10_1000))
            ]
        );
        for i in 0..MAX_FLUSH_RANGES as u64 {
            f.add(0x100_0000 + i * 0x2000, 0x1000, 1);
        }
        assert!(f.is_all());
        let mut g = MapperFlush::none();
        g.add(0, (FLUSH_ALL_THRESHOLD + 1) * 4096, FLUSH_ALL_THRESHOLD + 1);
        assert!(g.is_all());
        let mut h = MapperFlush::none();
        h.merge(MapperFlush::all());
        assert!(h.is_all());
        let log = Log::default();
        h.flush(&log);
        assert_eq!(*log.0.borrow(), vec![None]);
        MapperFlush::none().ignore();
    }
}
