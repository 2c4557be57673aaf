//! A condition variable for [`Mutex`] (OSv's `condvar`): a waiter enqueues
//! itself *before* releasing the mutex, so a notify issued after the waiter
//! checked its predicate under the mutex always finds it.
#![allow(unsafe_code)]

use crate::mutex::{Mutex, MutexGuard};
use crate::park::{Park, Unpark};
use crate::waitq::{Node, WaitQueue};
use core::marker::PhantomData;

/// Waiters for a condition protected by a [`Mutex`].
pub struct Condvar<P: Park> {
    queue: WaitQueue<P::Unparker>,
    _park: PhantomData<fn() -> P>,
}

impl<P: Park> Default for Condvar<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Park> core::fmt::Debug for Condvar<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Condvar").finish_non_exhaustive()
    }
}

impl<P: Park> Condvar<P> {
    /// No waiters.
    pub fn new() -> Self {
        Condvar { queue: WaitQueue::new(), _park: PhantomData }
    }

    /// Atomically releases the mutex and waits for a notification, then
    /// relocks. Like every condition variable, re-check the predicate
    /// ([`Condvar::wait_while`]).
    pub fn wait<'a, T: ?Sized>(&self, guard: MutexGuard<'a, T, P>) -> MutexGuard<'a, T, P> {
        let node = Node::new(P::current());
        {
            let mut q = self.queue.lock::<P>();
            // SAFETY: `node` lives on this frame, which waits below until it
            // is granted; it was in no queue.
            unsafe { q.push(&node) };
        }
        let mutex: &'a Mutex<T, P> = guard.mutex();
        drop(guard);
        node.wait::<P>();
        mutex.lock()
    }

    /// Waits while `cond` holds of the protected value.
    pub fn wait_while<'a, T: ?Sized>(
        &self,
        mut guard: MutexGuard<'a, T, P>,
        mut cond: impl FnMut(&mut T) -> bool,
    ) -> MutexGuard<'a, T, P> {
        while cond(&mut guard) {
            guard = self.wait(guard);
        }
        guard
    }

    /// Wakes the oldest waiter, if any.
    pub fn notify_one(&self) {
        let next = self.queue.lock::<P>().grant_one();
        if let Some(u) = next {
            u.unpark();
        }
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        loop {
            let next = self.queue.lock::<P>().grant_one();
            match next {
                Some(u) => u.unpark(),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::park::StdPark;
    use std::sync::Arc;

    /// Threads take turns through a mutex and condvar: thread `i` adds one
    /// when the counter is `i` modulo the thread count.
    #[test]
    fn ping_pong_ring() {
        const THREADS: u64 = 4;
        const ROUNDS: u64 = 500;
        let shared: Arc<(Mutex<u64, StdPark>, Condvar<StdPark>)> = Arc::new(Default::default());
        let hs: std::vec::Vec<_> = (0..THREADS)
            .map(|i| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let (m, cv) = &*shared;
                    for _ in 0..ROUNDS {
                        let mut g = cv.wait_while(m.lock(), |n| *n % THREADS != i);
                        *g += 1;
                        drop(g);
                        cv.notify_all();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*shared.0.lock(), THREADS * ROUNDS);
    }
}
