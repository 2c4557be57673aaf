//! A byte-range lock: the lock a filesystem takes around one read or write
//! of a file, so that calls on disjoint ranges run at the same time while
//! calls on overlapping ranges exclude each other (shared for reads,
//! exclusive for writes).
//!
//! # Protocol
//!
//! Every request enters a list under a short mutex, with a ticket (its
//! arrival number), and stays there until its guard is dropped. A request may
//! proceed when no *earlier* entry in the list (granted or still waiting)
//! conflicts with it: two ranges conflict when they overlap and at least one
//! of them is exclusive. So:
//! - requests on disjoint ranges never wait for each other;
//! - overlapping shared requests (readers) never wait for each other unless
//!   an exclusive request on an overlapping range arrived between them;
//! - conflicting requests are granted in arrival order, so a writer is not
//!   starved by a stream of overlapping readers, nor the other way round;
//! - it cannot deadlock: the earliest waiting request conflicts only with
//!   entries earlier than itself, which are all granted (everything earlier
//!   than the earliest waiter is granted) and will be released, because a
//!   holder never waits for a second range of the same lock.
//!
//! A waiting request spins (re-checking under the mutex), like the crate's
//! other locks. The ranges are half-open, `[start, end)`; `end == u64::MAX`
//! stands for "to infinity" (a truncate or an append locks everything from a
//! point on).
//!
//! The list is a `Vec`: a file has a handful of calls in flight at once, so a
//! linear scan beats an interval tree here.

use alloc::vec::Vec;

use crate::sync::{spin_loop, AtomicU64, Mutex, Ordering};

struct Entry {
    ticket: u64,
    start: u64,
    end: u64,
    exclusive: bool,
}

impl Entry {
    fn conflicts(&self, start: u64, end: u64, exclusive: bool) -> bool {
        let overlap = self.start.max(start) < self.end.min(end);
        (self.exclusive || exclusive) && overlap
    }
}

struct Inner {
    next_ticket: u64,
    entries: Vec<Entry>,
}

/// A byte-range reader-writer lock over one file (see the module docs for
/// the protocol and its guarantees).
pub struct RangeLock {
    inner: Mutex<Inner>,
    /// Bumped after every release. A waiter spins reading it and re-checks
    /// under the mutex only when it moved, so waiters do not fight the
    /// holder for the mutex it needs to release its range.
    releases: AtomicU64,
}

impl Default for RangeLock {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for RangeLock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RangeLock").field("entries", &self.inner.lock().entries.len()).finish()
    }
}

impl RangeLock {
    /// An unlocked range lock.
    pub fn new() -> Self {
        Self { inner: Mutex::new(Inner { next_ticket: 0, entries: Vec::new() }), releases: AtomicU64::new(0) }
    }

    /// Locks `[start, end)` shared: waits for earlier exclusive holders and
    /// waiters of overlapping ranges. An empty range (`end <= start`) locks
    /// nothing and never waits.
    pub fn read(&self, start: u64, end: u64) -> RangeGuard<'_> {
        self.acquire(start, end, false)
    }

    /// Locks `[start, end)` exclusively: waits for every earlier holder or
    /// waiter of an overlapping range. An empty range never waits.
    pub fn write(&self, start: u64, end: u64) -> RangeGuard<'_> {
        self.acquire(start, end, true)
    }

    /// How many requests are held or waiting (for tests and debugging).
    pub fn pending(&self) -> usize {
        self.inner.lock().entries.len()
    }

    fn acquire(&self, start: u64, end: u64, exclusive: bool) -> RangeGuard<'_> {
        // Read before the check: a release after the check moves it, so the
        // wait below cannot miss that release.
        let mut seen = self.releases.load(Ordering::Acquire);
        let mut inner = self.inner.lock();
        let ticket = inner.next_ticket;
        inner.next_ticket += 1;
        inner.entries.push(Entry { ticket, start, end, exclusive });
        // The uncontended case checks in the same critical section.
        while Self::blocked(&inner.entries, ticket, start, end, exclusive) {
            drop(inner);
            while self.releases.load(Ordering::Acquire) == seen {
                spin_loop();
            }
            seen = self.releases.load(Ordering::Acquire);
            inner = self.inner.lock();
        }
        RangeGuard { lock: self, ticket }
    }

    /// Does an entry earlier than `ticket` conflict with its range? Entries
    /// are pushed in ticket order and removed from anywhere, so the earlier
    /// ones are the prefix before `ticket`'s own.
    fn blocked(entries: &[Entry], ticket: u64, start: u64, end: u64, exclusive: bool) -> bool {
        entries.iter().take_while(|e| e.ticket != ticket).any(|e| e.conflicts(start, end, exclusive))
    }

    fn release(&self, ticket: u64) {
        let mut inner = self.inner.lock();
        if let Some(i) = inner.entries.iter().position(|e| e.ticket == ticket) {
            // `remove`, not `swap_remove`: the list stays in ticket order.
            inner.entries.remove(i);
        }
        drop(inner);
        self.releases.fetch_add(1, Ordering::Release);
    }
}

/// A held range of a [`RangeLock`]; dropping it releases the range.
#[must_use = "the range is unlocked as soon as the guard is dropped"]
pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    ticket: u64,
}

impl core::fmt::Debug for RangeGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RangeGuard").field("ticket", &self.ticket).finish()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        self.lock.release(self.ticket);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn conflicts() {
        let e = Entry { ticket: 0, start: 10, end: 20, exclusive: false };
        assert!(!e.conflicts(0, 10, true), "touching ranges are disjoint");
        assert!(!e.conflicts(20, 30, true));
        assert!(e.conflicts(19, 30, true));
        assert!(!e.conflicts(0, 100, false), "readers share");
        assert!(!e.conflicts(15, 15, true), "an empty range conflicts with nothing");
        let w = Entry { ticket: 0, start: 10, end: u64::MAX, exclusive: true };
        assert!(w.conflicts(1 << 62, (1 << 62) + 1, false));
    }

    #[test]
    fn disjoint_and_shared_do_not_wait() {
        let l = RangeLock::new();
        let a = l.write(0, 10);
        let b = l.write(10, 20); // would spin forever if it conflicted
        let c = l.read(20, 30);
        let d = l.read(25, 40);
        assert_eq!(l.pending(), 4);
        drop((a, b, c, d));
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn overlapping_writers_exclude_each_other() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let l = std::sync::Arc::new(RangeLock::new());
        let inside = std::sync::Arc::new(AtomicBool::new(false));
        let g = l.write(0, 100);
        let (l2, in2) = (l.clone(), inside.clone());
        let t = std::thread::spawn(move || {
            let _g = l2.write(50, 60);
            in2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!inside.load(Ordering::SeqCst), "the overlapping writer got in");
        drop(g);
        t.join().unwrap();
        assert!(inside.load(Ordering::SeqCst));
        assert_eq!(l.pending(), 0);
    }
}
