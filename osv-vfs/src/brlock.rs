//! A reader-writer lock whose readers write only their own cache line: the
//! "big-reader" lock (Linux's old `brlock`, the idea behind its per-CPU
//! `percpu_rw_semaphore`), for data read on every I/O call and changed
//! rarely: the descriptor table, a file's page map.
//!
//! # Protocol
//!
//! The lock has a writer flag and 8 reader counts (2 under loom), each
//! on its own 64-byte cache line. A reader picks a stripe (a hint derived from
//! its stack, so concurrent threads mostly pick different ones), increments
//! that stripe's count, then checks the writer flag; if it is set, the reader
//! takes its increment back and waits for the flag to clear, then retries. A
//! writer sets the flag (one writer at a time), then waits for every stripe's
//! count to reach zero.
//!
//! Why a reader and a writer cannot both get in, without relying on a
//! sequentially consistent order (which loom does not model): the writer
//! reads each stripe with a read-modify-write (`fetch_add(0)`), and an RMW
//! reads the latest value of the stripe's modification order. If the
//! reader's increment comes first in that order, the writer sees it and
//! waits. Otherwise the reader's increment (an acquiring RMW) reads from the
//! writer's (releasing) RMW, so the writer's flag store happens before the
//! reader's look at the flag, and the reader sees the flag up, or a later
//! release of it. A reader's release (a decrement) synchronises with the
//! writer's read of zero; a writer's release of the flag with the next
//! reader's or writer's read of it.
//!
//! So a reader writes one cache line no other reader on another stripe
//! touches, and reads the flag's line, which only writers change. Writers are
//! preferred: once the flag is up, new readers wait, so a stream of readers
//! cannot starve a writer. The lock is not reentrant: a thread holding a read
//! guard must not take it again (a writer waiting between the two would
//! deadlock them), nor the write side.
//!
//! `tests/loom_brlock.rs` checks the protocol with the data in a loom cell
//! (any reader overlapping a writer fails the model).

use crate::sync::{
    spin_loop, stripe_hint, AtomicBool, AtomicUsize, ConstPtr, MutPtr, Ordering, UnsafeCell, STRIPES,
};

/// One reader count on a cache line of its own.
#[repr(align(64))]
struct Stripe(AtomicUsize);

/// A reader-writer lock with per-stripe reader counts (see the module docs).
pub struct BrLock<T> {
    writer: AtomicBool,
    readers: [Stripe; STRIPES],
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&T` to several threads at once (needs `T:
// Sync`) and `&mut T` to one thread at a time, possibly another than the one
// that created it (needs `T: Send`), exactly as `std::sync::RwLock`.
#[allow(unsafe_code)]
unsafe impl<T: Send + Sync> Sync for BrLock<T> {}
// SAFETY: owning the lock is owning the `T`.
#[allow(unsafe_code)]
unsafe impl<T: Send> Send for BrLock<T> {}

impl<T: Default> Default for BrLock<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> core::fmt::Debug for BrLock<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BrLock").field("writer", &self.writer.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl<T> BrLock<T> {
    /// An unlocked lock around `value`.
    pub fn new(value: T) -> Self {
        Self {
            writer: AtomicBool::new(false),
            readers: core::array::from_fn(|_| Stripe(AtomicUsize::new(0))),
            data: UnsafeCell::new(value),
        }
    }

    /// Shared access: waits while a writer holds or waits for the lock.
    pub fn read(&self) -> BrReadGuard<'_, T> {
        let stripe = &self.readers[stripe_hint() % STRIPES].0;
        loop {
            stripe.fetch_add(1, Ordering::AcqRel);
            if !self.writer.load(Ordering::Acquire) {
                return BrReadGuard { ptr: self.data.get(), _release: ReadRelease(stripe) };
            }
            stripe.fetch_sub(1, Ordering::Release);
            while self.writer.load(Ordering::Relaxed) {
                spin_loop();
            }
        }
    }

    /// Exclusive access: waits for the other writers, then for every reader.
    pub fn write(&self) -> BrWriteGuard<'_, T> {
        while self.writer.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            spin_loop();
        }
        for s in &self.readers {
            // The deciding read is an RMW, not a load (see the module docs);
            // the waiting is done with loads, which do not take the line
            // from the readers.
            while s.0.fetch_add(0, Ordering::AcqRel) != 0 {
                while s.0.load(Ordering::Relaxed) != 0 {
                    spin_loop();
                }
            }
        }
        BrWriteGuard { ptr: self.data.get_mut(), _release: WriteRelease(&self.writer) }
    }
}

/// Shared access to a [`BrLock`]'s value; dropping it releases the stripe.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct BrReadGuard<'a, T> {
    // Fields drop in declaration order: the pointer (under loom, the tracked
    // access) ends before the stripe is released.
    ptr: ConstPtr<T>,
    _release: ReadRelease<'a>,
}

/// Releases a reader's stripe when dropped.
struct ReadRelease<'a>(&'a AtomicUsize);

impl Drop for ReadRelease<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// Releases the writer flag when dropped.
struct WriteRelease<'a>(&'a AtomicBool);

impl Drop for WriteRelease<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<T> core::ops::Deref for BrReadGuard<'_, T> {
    type Target = T;
    #[allow(unsafe_code)]
    fn deref(&self) -> &T {
        // SAFETY: the guard holds a reader count on its stripe, so no writer
        // holds the lock (a writer waits for every count to be zero before it
        // makes its pointer, and readers back off while the flag is up); the
        // value lives as long as the lock the guard borrows.
        unsafe { self.ptr.deref() }
    }
}

/// Exclusive access to a [`BrLock`]'s value; dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct BrWriteGuard<'a, T> {
    // Declaration order matters, as in `BrReadGuard`.
    ptr: MutPtr<T>,
    _release: WriteRelease<'a>,
}

impl<T> core::ops::Deref for BrWriteGuard<'_, T> {
    type Target = T;
    #[allow(unsafe_code)]
    fn deref(&self) -> &T {
        self.ptr.with(|p| {
            // SAFETY: the guard is the only holder of the lock (flag set by
            // it, every reader count seen at zero with the flag up); the
            // borrow of the guard keeps its `deref_mut` from overlapping this.
            unsafe { &*p }
        })
    }
}

impl<T> core::ops::DerefMut for BrWriteGuard<'_, T> {
    #[allow(unsafe_code)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { self.ptr.deref() }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn readers_share_writers_exclude() {
        let l = BrLock::new(5u32);
        {
            let (a, b) = (l.read(), l.read());
            assert_eq!(*a + *b, 10);
        }
        *l.write() += 1;
        assert_eq!(*l.read(), 6);
        assert!(l.readers.iter().all(|s| s.0.load(Ordering::SeqCst) == 0));
        assert!(!l.writer.load(Ordering::SeqCst));
    }

    /// Threads add to a pair under the write side and check under the read
    /// side that both halves always agree.
    #[test]
    fn threads_never_see_a_half_update() {
        let l = BrLock::new((0u64, 0u64));
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let mut g = l.write();
                        g.0 += 1;
                        g.1 += 1;
                    }
                });
                s.spawn(|| {
                    for _ in 0..2000 {
                        let g = l.read();
                        assert_eq!(g.0, g.1);
                    }
                });
            }
        });
        assert_eq!(*l.read(), (4000, 4000));
    }
}
