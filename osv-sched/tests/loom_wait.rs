//! loom model of wait/wake (`osv_sched::wait`): a waiter blocked in
//! `wait_until` is never left asleep after its condition came true (a lost
//! wakeup shows up as a deadlock), and a thread is claimed (queued) at most
//! once per wait.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_wait`
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use osv_sched::wait::{wait_until, Block, Parker, State, WaitState};

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    // `LOOM_MAX_PREEMPTIONS` (read by `Builder::new`) wins; 2 otherwise.
    b.preemption_bound = b.preemption_bound.or(Some(2));
    b
}

/// The host stand-in for `schedule()`: sleep while not running.
struct ParkUntilRunning;

impl Block for ParkUntilRunning {
    fn block(&self, state: &WaitState) {
        while state.state() != State::Running {
            thread::park();
        }
    }
}

/// What a CPU does with a claimed thread: queue it, later switch it in.
fn queue_and_run(state: &WaitState, waiter: &thread::Thread) {
    state.set_queued();
    state.set_running();
    waiter.unpark();
}

/// The same, checking that the thread is never in a run queue twice at once.
fn queue_once_and_run(state: &WaitState, waiter: &thread::Thread, queued: &AtomicUsize) {
    assert_eq!(queued.fetch_add(1, Ordering::SeqCst), 0, "queued twice");
    state.set_queued();
    queued.fetch_sub(1, Ordering::SeqCst);
    state.set_running();
    waiter.unpark();
}

#[test]
fn no_lost_wakeup() {
    builder().check(|| {
        let st = Arc::new(WaitState::new());
        let flag = Arc::new(AtomicBool::new(false));
        let (st2, flag2) = (st.clone(), flag.clone());
        let waiter = thread::spawn(move || {
            wait_until(&st2, &ParkUntilRunning, || flag2.load(Ordering::Acquire));
            assert_eq!(st2.state(), State::Running);
        });
        let wt = waiter.thread().clone();
        flag.store(true, Ordering::Release);
        if st.wake() {
            queue_and_run(&st, &wt);
        }
        waiter.join().unwrap();
    });
}

/// Two wakers: the thread is queued at most once at a time (a second claim is
/// possible only after the waiter ran again and re-armed its wait, as in OSv),
/// and the waiter always gets out.
#[test]
fn two_wakers_queue_once() {
    builder().check(|| {
        let st = Arc::new(WaitState::new());
        let flag = Arc::new(AtomicBool::new(false));
        let claims = Arc::new(AtomicUsize::new(0));
        let (st2, flag2) = (st.clone(), flag.clone());
        let waiter = thread::spawn(move || {
            wait_until(&st2, &ParkUntilRunning, || flag2.load(Ordering::Acquire));
        });
        let wt = waiter.thread().clone();
        let wakers: Vec<_> = (0..2)
            .map(|_| {
                let (st, flag, claims, wt) = (st.clone(), flag.clone(), claims.clone(), wt.clone());
                thread::spawn(move || {
                    flag.store(true, Ordering::Release);
                    if st.wake() {
                        queue_once_and_run(&st, &wt, &claims);
                    }
                })
            })
            .collect();
        for w in wakers {
            w.join().unwrap();
        }
        waiter.join().unwrap();
    });
}

#[test]
fn parker_token_is_not_lost() {
    builder().check(|| {
        let p = Arc::new(Parker::new());
        let p2 = p.clone();
        let waiter = thread::spawn(move || p2.park(&ParkUntilRunning));
        let wt = waiter.thread().clone();
        if p.unpark() {
            queue_and_run(p.state(), &wt);
        }
        waiter.join().unwrap();
    });
}
