//! An intrusive FIFO of waiters, protected by a tiny spin lock: the shared
//! slow path of the mutex, the condition variable and the semaphore.
//!
//! The spin lock is taken only with preemption disabled through the
//! [`Park::preempt_disable`] hook and released before re-enabling it, so it
//! is never held across a preemption point: no thread of the same CPU can
//! spin on a preempted holder (on one CPU that would waste whole slices, or
//! deadlock a spinner that itself runs with preemption disabled, such as an
//! interrupt handler posting a semaphore). Nothing under the lock blocks:
//! waiters park only after the guard is dropped (`tests/loom_waitq.rs`).
//!
//! Each waiter's node lives on its own stack for as long as it waits, so the
//! queue needs no allocation (the same idea as OSv's `wait_record` on the
//! waiter's stack). A node is granted exactly once: the granter clones the
//! waiter's [`Unpark`] handle, then sets `granted` (Release), and never
//! touches the node again, after which the waiter may return and free it.
#![allow(unsafe_code)]

use crate::park::{Park, Unpark};
use crate::sync::{spin_loop, AtomicBool, Ordering};
use core::cell::{Cell, UnsafeCell};
use core::ptr;

/// One waiter, on the waiter's stack.
pub(crate) struct Node<U> {
    /// Next node; read and written only under the queue's lock.
    next: Cell<*const Node<U>>,
    unparker: U,
    granted: AtomicBool,
}

impl<U: Unpark + Clone> Node<U> {
    pub(crate) fn new(unparker: U) -> Self {
        Node { next: Cell::new(ptr::null()), unparker, granted: AtomicBool::new(false) }
    }

    /// Blocks until granted. Acquire: sees what the granter did before.
    pub(crate) fn wait<P: Park<Unparker = U>>(&self) {
        while !self.granted.load(Ordering::Acquire) {
            P::park();
        }
    }
}

struct List<U> {
    head: *const Node<U>,
    tail: *const Node<U>,
}

/// The queue: a spin lock and the list it protects.
pub(crate) struct WaitQueue<U> {
    lock: AtomicBool,
    list: UnsafeCell<List<U>>,
}

// SAFETY: the list is only touched under `lock`; the nodes it points to are
// shared with granters on other threads, which clone `U` (needs `Sync`) and
// unpark from there (needs `Send` for the clone).
unsafe impl<U: Send + Sync> Send for WaitQueue<U> {}
// SAFETY: as above; every access to `list` goes through `lock`.
unsafe impl<U: Send + Sync> Sync for WaitQueue<U> {}

impl<U: Unpark + Clone> WaitQueue<U> {
    pub(crate) fn new() -> Self {
        WaitQueue {
            lock: AtomicBool::new(false),
            list: UnsafeCell::new(List { head: ptr::null(), tail: ptr::null() }),
        }
    }

    /// Locks the queue with preemption disabled (`P`'s hooks) until the
    /// guard drops.
    pub(crate) fn lock<P: Park<Unparker = U>>(&self) -> QueueGuard<'_, U> {
        P::preempt_disable();
        while self.lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            while self.lock.load(Ordering::Relaxed) {
                spin_loop();
            }
        }
        QueueGuard { q: self, preempt_enable: P::preempt_enable }
    }
}

/// The queue, locked (and preemption disabled).
pub(crate) struct QueueGuard<'a, U> {
    q: &'a WaitQueue<U>,
    preempt_enable: fn(),
}

impl<U: Unpark + Clone> QueueGuard<'_, U> {
    fn list(&mut self) -> &mut List<U> {
        // SAFETY: we hold the lock, so no one else references the list, and
        // `&mut self` makes this the only reference through this guard.
        unsafe { &mut *self.q.list.get() }
    }

    /// Appends `node`.
    ///
    /// # Safety
    /// 1. `node` stays alive and in place until it is granted (its owner
    ///    calls [`Node::wait`] before dropping it).
    /// 2. `node` is in no queue.
    pub(crate) unsafe fn push(&mut self, node: &Node<U>) {
        node.next.set(ptr::null());
        let p: *const Node<U> = node;
        let list = self.list();
        if list.tail.is_null() {
            list.head = p;
        } else {
            // SAFETY: `tail` is a queued node, alive until granted (push's
            // contract), and only touched under the lock we hold.
            unsafe { (*list.tail).next.set(p) };
        }
        list.tail = p;
    }

    /// Whether no one waits.
    pub(crate) fn is_empty(&mut self) -> bool {
        self.list().head.is_null()
    }

    /// Takes the oldest waiter out and grants it; returns its handle for the
    /// caller to unpark (after dropping the guard, preferably).
    pub(crate) fn grant_one(&mut self) -> Option<U> {
        let list = self.list();
        let p = list.head;
        if p.is_null() {
            return None;
        }
        // SAFETY: `p` is queued, hence alive until we set `granted` below
        // (push's contract); `next` is only touched under our lock.
        let node = unsafe { &*p };
        list.head = node.next.get();
        if list.head.is_null() {
            list.tail = ptr::null();
        }
        let unparker = node.unparker.clone();
        // After this store the waiter may free the node: no access follows.
        node.granted.store(true, Ordering::Release);
        Some(unparker)
    }
}

impl<U> Drop for QueueGuard<'_, U> {
    fn drop(&mut self) {
        self.q.lock.store(false, Ordering::Release);
        // Only after the release: a preemption here finds the lock free.
        (self.preempt_enable)();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::cell::Cell;

    std::thread_local! {
        static DEPTH: Cell<u32> = const { Cell::new(0) };
    }

    /// Records the preemption depth; parking with preemption disabled (or
    /// with the queue locked) is a bug.
    struct Counting;

    #[derive(Clone)]
    struct Handle;
    impl Unpark for Handle {
        fn unpark(&self) {}
    }
    impl Park for Counting {
        type Unparker = Handle;
        fn current() -> Handle {
            Handle
        }
        fn park() {
            assert_eq!(DEPTH.with(Cell::get), 0, "parked with preemption disabled");
        }
        fn preempt_disable() {
            DEPTH.with(|d| d.set(d.get() + 1));
        }
        fn preempt_enable() {
            DEPTH.with(|d| d.set(d.get() - 1));
        }
    }

    #[test]
    fn lock_is_held_only_with_preemption_disabled() {
        let q: WaitQueue<Handle> = WaitQueue::new();
        let node = Node::new(Handle);
        {
            let mut g = q.lock::<Counting>();
            assert_eq!(DEPTH.with(Cell::get), 1);
            assert!(q.lock.load(Ordering::Relaxed));
            // SAFETY: `node` outlives its queueing: it is granted below
            // before this frame ends.
            unsafe { g.push(&node) };
        }
        assert_eq!(DEPTH.with(Cell::get), 0);
        assert!(!q.lock.load(Ordering::Relaxed), "released before preemption is re-enabled");
        assert!(q.lock::<Counting>().grant_one().is_some());
        node.wait::<Counting>();
        assert_eq!(DEPTH.with(Cell::get), 0);
    }
}
