//! A counting semaphore (OSv's `semaphore`): acquire takes a unit without
//! locking when one is free; release hands its unit directly to the oldest
//! waiter if there is one.
#![allow(unsafe_code)]

use crate::park::{Park, Unpark};
use crate::sync::{AtomicUsize, Ordering};
use crate::waitq::{Node, WaitQueue};
use core::marker::PhantomData;

/// A counting semaphore blocking through `P`.
pub struct Semaphore<P: Park> {
    count: AtomicUsize,
    queue: WaitQueue<P::Unparker>,
    _park: PhantomData<fn() -> P>,
}

impl<P: Park> core::fmt::Debug for Semaphore<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Semaphore")
            .field("count", &self.count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<P: Park> Semaphore<P> {
    /// A semaphore holding `units`.
    pub fn new(units: usize) -> Self {
        Semaphore { count: AtomicUsize::new(units), queue: WaitQueue::new(), _park: PhantomData }
    }

    /// Takes a unit if one is free.
    pub fn try_acquire(&self) -> bool {
        let mut c = self.count.load(Ordering::Relaxed);
        while c > 0 {
            match self.count.compare_exchange_weak(c, c - 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
        false
    }

    /// Takes a unit, blocking until one is released.
    pub fn acquire(&self) {
        if self.try_acquire() {
            return;
        }
        let node = Node::new(P::current());
        {
            let mut q = self.queue.lock::<P>();
            // Releases add units only under the queue lock: a unit that is
            // not here now will be handed to us directly.
            if self.try_acquire() {
                return;
            }
            // SAFETY: `node` lives on this frame, which waits below until it
            // is granted; it was in no queue.
            unsafe { q.push(&node) };
        }
        node.wait::<P>();
    }

    /// Returns a unit (to the oldest waiter, if any).
    pub fn release(&self) {
        let next = {
            let mut q = self.queue.lock::<P>();
            let next = q.grant_one();
            if next.is_none() {
                self.count.fetch_add(1, Ordering::Release);
            }
            next
        };
        if let Some(u) = next {
            u.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::park::StdPark;
    use crate::sync::AtomicUsize as StdAtomic;
    use std::sync::Arc;

    #[test]
    fn bounds_concurrency() {
        let sem: Arc<Semaphore<StdPark>> = Arc::new(Semaphore::new(2));
        let inside = Arc::new(StdAtomic::new(0));
        let done = Arc::new(StdAtomic::new(0));
        let hs: std::vec::Vec<_> = (0..6)
            .map(|_| {
                let (sem, inside, done) = (sem.clone(), inside.clone(), done.clone());
                std::thread::spawn(move || {
                    for _ in 0..300 {
                        sem.acquire();
                        let n = inside.fetch_add(1, Ordering::SeqCst);
                        assert!(n < 2, "{} inside", n + 1);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        done.fetch_add(1, Ordering::Relaxed);
                        sem.release();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(done.load(Ordering::Relaxed), 1800);
        assert!(sem.try_acquire() && sem.try_acquire() && !sem.try_acquire());
    }
}
