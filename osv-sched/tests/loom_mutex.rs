//! loom models of the mutex, the condition variable and the semaphore
//! (`osv_sched::{mutex, condvar, semaphore}`), blocking through loom's
//! `park`/`unpark`: mutual exclusion, no lost wakeup (a lost handoff is a
//! deadlock), checked final counts.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_mutex`
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use osv_sched::condvar::Condvar;
use osv_sched::mutex::Mutex;
use osv_sched::park::{Park, Unpark};
use osv_sched::semaphore::Semaphore;

/// Blocking through loom's threads.
struct LoomPark;

#[derive(Clone)]
struct LoomThread(thread::Thread);

impl Unpark for LoomThread {
    fn unpark(&self) {
        self.0.unpark();
    }
}

impl Park for LoomPark {
    type Unparker = LoomThread;
    fn current() -> LoomThread {
        LoomThread(thread::current())
    }
    fn park() {
        thread::park();
    }
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    // `LOOM_MAX_PREEMPTIONS` (read by `Builder::new`) wins; 2 otherwise.
    b.preemption_bound = b.preemption_bound.or(Some(2));
    // The waiter queue's spin lock yields in loom; allow its longer paths.
    b.max_branches = 20_000;
    b
}

#[test]
fn mutex_excludes_and_hands_off() {
    builder().check(|| {
        let m: Arc<Mutex<usize, LoomPark>> = Arc::new(Mutex::new(0));
        let inside = Arc::new(AtomicUsize::new(0));
        let critical = |m: &Mutex<usize, LoomPark>, inside: &AtomicUsize| {
            let mut g = m.lock();
            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
            *g += 1;
            inside.fetch_sub(1, Ordering::SeqCst);
        };
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let (m, inside) = (m.clone(), inside.clone());
                thread::spawn(move || critical(&m, &inside))
            })
            .collect();
        critical(&m, &inside);
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*m.lock(), 3);
    });
}

#[test]
fn condvar_no_lost_notify() {
    builder().check(|| {
        let pair: Arc<(Mutex<bool, LoomPark>, Condvar<LoomPark>)> =
            Arc::new((Mutex::new(false), Condvar::new()));
        let p2 = pair.clone();
        let waiter = thread::spawn(move || {
            let (m, cv) = &*p2;
            let g = cv.wait_while(m.lock(), |ready| !*ready);
            assert!(*g);
        });
        let (m, cv) = &*pair;
        *m.lock() = true;
        cv.notify_one();
        waiter.join().unwrap();
    });
}

#[test]
fn semaphore_hands_units_to_waiters() {
    builder().check(|| {
        let sem: Arc<Semaphore<LoomPark>> = Arc::new(Semaphore::new(0));
        let s2 = sem.clone();
        let taker = thread::spawn(move || {
            s2.acquire();
            s2.acquire();
        });
        sem.release();
        sem.release();
        taker.join().unwrap();
        assert!(!sem.try_acquire());
    });
}

/// Repeated locking: the handoff path taken several times in one execution.
#[test]
fn mutex_repeated_handoffs() {
    builder().check(|| {
        let m: Arc<Mutex<usize, LoomPark>> = Arc::new(Mutex::new(0));
        let m2 = m.clone();
        let h = thread::spawn(move || {
            for _ in 0..2 {
                *m2.lock() += 1;
            }
        });
        for _ in 0..2 {
            *m.lock() += 1;
        }
        h.join().unwrap();
        assert_eq!(*m.lock(), 4);
    });
}

/// `notify_all` reaches both waiters whatever the interleaving.
#[test]
fn condvar_notify_all_wakes_everyone() {
    builder().check(|| {
        let pair: Arc<(Mutex<bool, LoomPark>, Condvar<LoomPark>)> =
            Arc::new((Mutex::new(false), Condvar::new()));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let p = pair.clone();
                thread::spawn(move || {
                    let (m, cv) = &*p;
                    drop(cv.wait_while(m.lock(), |ready| !*ready));
                })
            })
            .collect();
        let (m, cv) = &*pair;
        *m.lock() = true;
        cv.notify_all();
        for w in waiters {
            w.join().unwrap();
        }
    });
}
