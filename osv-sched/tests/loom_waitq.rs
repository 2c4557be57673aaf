//! loom model of the waiter queue's preemption safety (`src/waitq.rs`,
//! behind the mutex, the condition variable and the semaphore): the queue's
//! spin lock is held only with preemption disabled through the
//! `Park::preempt_disable` hook, never across a park, and the hooks balance.
//!
//! The `Park` here keeps each loom thread's preemption depth. The granter
//! clones the waiter's unpark handle inside the locked section, so the
//! handle's `clone` observes the depth there: it must be positive (taking the
//! lock without the hook fails this). `park` must see depth 0 (blocking with
//! the lock held or preemption disabled would deadlock a CPU). Every thread
//! ends at depth 0. All interleavings of contended lock/unlock, wait/notify
//! and acquire/release, with the usual exclusion and count checks.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_waitq`
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use osv_sched::condvar::Condvar;
use osv_sched::mutex::Mutex;
use osv_sched::park::{Park, Unpark};
use osv_sched::semaphore::Semaphore;
use std::cell::Cell;

loom::thread_local! {
    static DEPTH: Cell<usize> = Cell::new(0);
}

fn depth() -> usize {
    DEPTH.with(Cell::get)
}

/// loom's park/unpark plus a preemption depth per thread.
struct PreemptPark;

struct Handle(thread::Thread);

impl Clone for Handle {
    fn clone(&self) -> Self {
        // Only the granter clones, under the queue lock.
        assert!(depth() > 0, "queue lock held with preemption enabled");
        Handle(self.0.clone())
    }
}

impl Unpark for Handle {
    fn unpark(&self) {
        self.0.unpark();
    }
}

impl Park for PreemptPark {
    type Unparker = Handle;
    fn current() -> Handle {
        Handle(thread::current())
    }
    fn park() {
        assert_eq!(depth(), 0, "parked with preemption disabled (queue lock held?)");
        thread::park();
    }
    fn preempt_disable() {
        DEPTH.with(|d| d.set(d.get() + 1));
    }
    fn preempt_enable() {
        DEPTH.with(|d| {
            assert!(d.get() > 0, "unbalanced preempt_enable");
            d.set(d.get() - 1);
        });
    }
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    // `LOOM_MAX_PREEMPTIONS` (read by `Builder::new`) wins; 2 otherwise.
    b.preemption_bound = b.preemption_bound.or(Some(2));
    b.max_branches = 20_000;
    b
}

#[test]
fn mutex_queue_lock_is_preemption_safe() {
    builder().check(|| {
        let m: Arc<Mutex<usize, PreemptPark>> = Arc::new(Mutex::new(0));
        let inside = Arc::new(AtomicUsize::new(0));
        let critical = |m: &Mutex<usize, PreemptPark>, inside: &AtomicUsize| {
            let mut g = m.lock();
            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
            *g += 1;
            inside.fetch_sub(1, Ordering::SeqCst);
            drop(g);
            assert_eq!(depth(), 0);
        };
        let (m2, i2) = (m.clone(), inside.clone());
        let h = thread::spawn(move || critical(&m2, &i2));
        critical(&m, &inside);
        h.join().unwrap();
        assert_eq!(*m.lock(), 2);
        assert_eq!(depth(), 0);
    });
}

#[test]
fn condvar_and_semaphore_queue_locks_are_preemption_safe() {
    builder().check(|| {
        let pair: Arc<(Mutex<bool, PreemptPark>, Condvar<PreemptPark>)> =
            Arc::new((Mutex::new(false), Condvar::new()));
        let sem: Arc<Semaphore<PreemptPark>> = Arc::new(Semaphore::new(0));
        let (p2, s2) = (pair.clone(), sem.clone());
        let waiter = thread::spawn(move || {
            let (m, cv) = &*p2;
            let g = cv.wait_while(m.lock(), |ready| !*ready);
            drop(g);
            s2.release();
            assert_eq!(depth(), 0);
        });
        {
            let (m, cv) = &*pair;
            *m.lock() = true;
            cv.notify_one();
        }
        sem.acquire();
        assert_eq!(depth(), 0);
        waiter.join().unwrap();
    });
}
