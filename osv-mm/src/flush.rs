//! TLB invalidation as a value: every page-table change returns a [`MapperFlush`] that lists
//! what to invalidate, and the kernel's [`TlbFlush`] does it (locally or as a shootdown).

use core::ops::Range;

use crate::VirtAddr;

/// How many separate ranges a [`MapperFlush`] remembers before it degrades to "flush all".
pub const MAX_FLUSH_RANGES: usize = 8;
/// How many entries (4 KiB or large pages) a [`MapperFlush`] invalidates one by one before
/// it degrades to "flush all" (a full flush is cheaper than this many `invlpg`s).
pub const FLUSH_ALL_THRESHOLD: u64 = 64;

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
}

/// A pending TLB invalidation returned by every page-table change.
///
/// Call [`flush`](Self::flush) (or [`ignore`](Self::ignore) when the address space is not
/// live, e.g. while building tables before loading CR3). It is `#[must_use]`, so dropping it
/// silently is a compiler warning, and an error with the workspace's `-D warnings`.
#[must_use = "the TLB still holds the old translations: call `flush` (or `ignore` if not live)"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapperFlush {
    ranges: [Range<u64>; MAX_FLUSH_RANGES],
    len: usize,
    entries: u64,
    all: bool,
}

impl MapperFlush {
    /// Nothing to invalidate (e.g. only not-present entries became present: the SDM,
    /// vol. 3A §4.10.4.3, does not require a flush for that).
    pub fn none() -> Self {
        Self { ranges: core::array::from_fn(|_| 0..0), len: 0, entries: 0, all: false }
    }

    /// Everything must be invalidated.
    pub fn all() -> Self {
        Self { all: true, ..Self::none() }
    }

    /// Adds `[start, start + bytes)`, made of `entries` page-table entries, to the
    /// invalidation, merging with the last range when contiguous and degrading to "flush all"
    /// past the thresholds.
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
        if self.len > 0 && self.ranges[self.len - 1].end == start {
            self.ranges[self.len - 1].end = end;
        } else if self.len == MAX_FLUSH_RANGES {
            self.all = true;
        } else {
            self.ranges[self.len] = start..end;
            self.len += 1;
        }
    }

    /// Adds everything `other` must invalidate.
    pub fn merge(&mut self, other: Self) {
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

    /// Performs the invalidation through the kernel's `tlb`.
    pub fn flush<T: TlbFlush + ?Sized>(self, tlb: &T) {
        if self.all {
            tlb.flush_all();
        } else {
            for r in self.ranges() {
                tlb.flush_range(r);
            }
        }
    }

    /// Drops the invalidation on purpose: the tables are not live on any CPU.
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
        f.clone().flush(&log);
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
