//! A sequence count for data that several writers may change at once (each
//! under its own byte range of a [`RangeLock`](crate::RangeLock)) and that
//! readers copy without writing anything shared: a seqlock whose writers need
//! not exclude each other.
//!
//! # Protocol
//!
//! Two counters: `begun` counts writes that have started, `ended` writes that
//! have finished. A writer increments `begun`, then issues a release fence,
//! changes the data (with atomic stores, relaxed), and increments `ended`
//! with release ordering. A reader:
//!
//! 1. loads `ended` (acquire), then `begun` (acquire). If they differ, a
//!    write is in flight: no snapshot ([`WriteSeq::read_begin`] returns
//!    `None`) and the reader takes the slow path (a range lock).
//! 2. copies the data with relaxed atomic loads;
//! 3. issues an acquire fence and loads `begun` again: the copy is good if
//!    it did not move ([`WriteSeq::read_validate`]).
//!
//! Why it is enough: `ended` only ever trails `begun`, and a writer's
//! `ended` increment comes after its own `begun` increment, so when the
//! reader sees `begun == ended` with `ended` loaded first, every write
//! counted in `begun` has finished, and the acquire load of `ended`
//! synchronises with all of them (each increment continues the release
//! sequence): the reader's loads see their data. A write counted later that
//! the copy saw any byte of made its `begun` increment happen before the
//! reader's re-check (its release fence before the store the reader read,
//! the reader's acquire fence after the load: fence-to-fence
//! synchronisation, C++ [atomics.fences]), so the re-check fails. A write
//! whose bytes the copy did not see did not change what the copy holds. So
//! a validated copy is the data as it was at one instant when no write was
//! in progress (H.-J. Boehm, "Can seqlocks get along with programming
//! language memory models?", MSPC 2012, gives the fence argument for the
//! single-writer seqlock; two counters extend it to concurrent writers).
//!
//! Readers only load: they write no shared cache line. Writers increment two
//! counters per call; concurrent writers of one file share that line.
//!
//! `tests/loom_seq.rs` checks the protocol with a reader against two
//! concurrent writers and against a truncate-like writer.

use crate::sync::{fence, AtomicU64, Ordering};

/// A sequence count with concurrent writers (see the module docs).
#[derive(Debug)]
pub struct WriteSeq {
    begun: AtomicU64,
    ended: AtomicU64,
}

impl Default for WriteSeq {
    fn default() -> Self {
        Self::new()
    }
}

/// What a reader validates its copy against ([`WriteSeq::read_begin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot(u64);

/// An open write ([`WriteSeq::write_begin`]): dropping it ends the write.
#[must_use = "the write ends as soon as the token is dropped"]
#[derive(Debug)]
pub struct WriteToken<'a>(&'a WriteSeq);

impl Drop for WriteToken<'_> {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::Release);
    }
}

impl WriteSeq {
    /// No write ever.
    pub fn new() -> Self {
        Self { begun: AtomicU64::new(0), ended: AtomicU64::new(0) }
    }

    /// Starts a write: call before the first store to the data; the write
    /// ends when the token is dropped, which must be after the last store.
    pub fn write_begin(&self) -> WriteToken<'_> {
        self.begun.fetch_add(1, Ordering::Relaxed);
        // Orders the increment before the data stores that follow (see the
        // module docs).
        fence(Ordering::Release);
        WriteToken(self)
    }

    /// A snapshot to copy against, or `None` while a write is in flight.
    pub fn read_begin(&self) -> Option<Snapshot> {
        let ended = self.ended.load(Ordering::Acquire);
        let begun = self.begun.load(Ordering::Acquire);
        (begun == ended).then_some(Snapshot(begun))
    }

    /// Was the copy made since `snap` free of writes? Call after the last
    /// data load of the copy.
    pub fn read_validate(&self, snap: Snapshot) -> bool {
        fence(Ordering::Acquire);
        self.begun.load(Ordering::Relaxed) == snap.0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn snapshots_fail_across_writes() {
        let s = WriteSeq::new();
        let a = s.read_begin().unwrap();
        assert!(s.read_validate(a));
        let w = s.write_begin();
        assert_eq!(s.read_begin(), None, "a write is in flight");
        assert!(!s.read_validate(a), "a write started during the copy");
        let w2 = s.write_begin();
        drop(w);
        assert_eq!(s.read_begin(), None, "one of two writes is still in flight");
        drop(w2);
        let b = s.read_begin().unwrap();
        assert_ne!(a, b);
        assert!(s.read_validate(b));
    }
}
