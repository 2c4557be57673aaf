//! A mutex whose uncontended lock and unlock are one compare-exchange each,
//! and whose contended unlock hands ownership straight to the oldest waiter
//! (FIFO, so no waiter starves), after OSv's `lockfree_mutex`.
//!
//! State word: `LOCKED` (bit 0) and `WAITERS` (bit 1, set exactly while the
//! waiter queue is non-empty, outside its lock).
//! - lock: `0 → LOCKED`; else under the queue lock either take a free mutex
//!   or set `WAITERS` *while still locked* (one compare-exchange, so the
//!   owner cannot slip out unseen), enqueue, wait to be granted.
//! - unlock: `LOCKED → 0`; that fails only if `WAITERS` is set, and then
//!   under the queue lock the oldest waiter is dequeued and granted the mutex
//!   with `LOCKED` still set (clearing `WAITERS` if it was the last). No one
//!   can barge in between: the word is never 0 during the handoff.
#![allow(unsafe_code)]

use crate::park::Park;
use crate::sync::{AtomicUsize, Ordering};
use crate::waitq::{Node, WaitQueue};
use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

const LOCKED: usize = 1;
const WAITERS: usize = 2;

/// A mutual-exclusion lock over `T`, blocking through `P`.
pub struct Mutex<T: ?Sized, P: Park> {
    state: AtomicUsize,
    waiters: WaitQueue<P::Unparker>,
    _park: PhantomData<fn() -> P>,
    data: UnsafeCell<T>,
}

// SAFETY: the mutex gives one thread at a time access to `T`, so sharing it
// needs only `T: Send` (as `std::sync::Mutex`); the queue is Send + Sync.
unsafe impl<T: ?Sized + Send, P: Park> Send for Mutex<T, P> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send, P: Park> Sync for Mutex<T, P> {}

impl<T, P: Park> Mutex<T, P> {
    /// An unlocked mutex.
    pub fn new(value: T) -> Self {
        Mutex {
            state: AtomicUsize::new(0),
            waiters: WaitQueue::new(),
            _park: PhantomData,
            data: UnsafeCell::new(value),
        }
    }

    /// The protected value.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized, P: Park> Mutex<T, P> {
    /// Locks, blocking while another thread holds the mutex.
    pub fn lock(&self) -> MutexGuard<'_, T, P> {
        if self.state.compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.lock_slow();
        }
        MutexGuard { mutex: self }
    }

    /// Locks if free.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T, P>> {
        self.state
            .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then_some(MutexGuard { mutex: self })
    }

    /// Mutable access without locking (the borrow proves exclusivity).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    #[cold]
    fn lock_slow(&self) {
        let node = Node::new(P::current());
        {
            let mut q = self.waiters.lock::<P>();
            loop {
                let s = self.state.load(Ordering::Relaxed);
                if s & LOCKED == 0 {
                    if self
                        .state
                        .compare_exchange(s, s | LOCKED, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return;
                    }
                } else if self
                    .state
                    .compare_exchange(s, s | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    // SAFETY: `node` lives on this frame, which waits below
                    // until it is granted; it was in no queue.
                    unsafe { q.push(&node) };
                    break;
                }
            }
        }
        // Granted: the previous owner handed us the mutex (LOCKED stayed set);
        // the Acquire in `wait` pairs with the grant's Release.
        node.wait::<P>();
    }

    fn unlock(&self) {
        if self.state.compare_exchange(LOCKED, 0, Ordering::Release, Ordering::Relaxed).is_err() {
            self.unlock_slow();
        }
    }

    #[cold]
    fn unlock_slow(&self) {
        let next = {
            let mut q = self.waiters.lock::<P>();
            let next = q.grant_one();
            if next.is_none() {
                // Unreachable by the WAITERS invariant; release anyway.
                self.state.store(0, Ordering::Release);
            } else if q.is_empty() {
                // Only we write the word now: LOCKED|WAITERS blocks the fast
                // paths and slow lockers need the queue lock we hold.
                self.state.store(LOCKED, Ordering::Relaxed);
            }
            next
        };
        if let Some(u) = next {
            crate::park::Unpark::unpark(&u);
        }
    }
}

impl<T: Default, P: Park> Default for Mutex<T, P> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: ?Sized, P: Park> core::fmt::Debug for Mutex<T, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mutex").field("state", &self.state.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

/// Proof of holding a [`Mutex`]; unlocks on drop.
#[must_use = "dropping the guard unlocks at once"]
pub struct MutexGuard<'a, T: ?Sized, P: Park> {
    mutex: &'a Mutex<T, P>,
}

impl<'a, T: ?Sized, P: Park> MutexGuard<'a, T, P> {
    /// The mutex this guard holds (for [`crate::condvar::Condvar::wait`]).
    pub(crate) fn mutex(&self) -> &'a Mutex<T, P> {
        self.mutex
    }
}

impl<T: ?Sized, P: Park> Deref for MutexGuard<'_, T, P> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves we hold the lock, so no `&mut T` exists
        // elsewhere.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T: ?Sized, P: Park> DerefMut for MutexGuard<'_, T, P> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves we hold the lock and `&mut self` makes
        // this the only reference through it.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T: ?Sized, P: Park> Drop for MutexGuard<'_, T, P> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::park::StdPark;
    use std::sync::Arc;

    #[test]
    fn uncontended() {
        let m: Mutex<u32, StdPark> = Mutex::new(1);
        *m.lock() += 1;
        assert!(m.try_lock().is_some());
        let g = m.lock();
        assert!(m.try_lock().is_none());
        drop(g);
        assert_eq!(m.into_inner(), 2);
    }

    #[test]
    fn contended_counts() {
        let m: Arc<Mutex<u64, StdPark>> = Arc::new(Mutex::new(0));
        let hs: std::vec::Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..5_000 {
                        *m.lock() += 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*m.lock(), 40_000);
    }
}
