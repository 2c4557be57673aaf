//! loom model of RCU (`osv_sched::rcu`): no reader sees reclaimed memory.
//! The writer replaces the object, waits for the grace period, then
//! overwrites the old object (its "free") through loom's `UnsafeCell`, so a
//! read-side section that could still reach it is a data race loom reports,
//! besides the reader's own check of the value.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_rcu`
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use osv_sched::rcu::{Rcu, RcuPtr, ReadGuard};
use osv_sched::CpuId;

const POISON: usize = usize::MAX;

struct Node {
    v: UnsafeCell<usize>,
}

impl Node {
    fn new(v: usize) -> Box<Node> {
        Box::new(Node { v: UnsafeCell::new(v) })
    }
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = b.preemption_bound.or(Some(2));
    b
}

/// One read-side section on the reader's CPU.
fn read_section(p: &RcuPtr<Node>) {
    // SAFETY: the section reports no quiescent state until the guard drops.
    let g = unsafe { ReadGuard::new() };
    if let Some(n) = p.read(&g) {
        // SAFETY: loom checks this read against the writer's poisoning.
        let v = n.v.with(|x| unsafe { *x });
        assert_ne!(v, POISON, "a reader saw reclaimed memory");
    }
    // The section ends here, with the guard.
}

/// The writer on CPU 0: replace, wait for the grace period (its own CPU
/// passes quiescent states while it waits, as a waiting kernel thread
/// does), then "free".
fn write_and_reclaim(rcu: &Rcu<2>, p: &RcuPtr<Node>) {
    let old = p.replace(Some(Node::new(2))).expect("there was an object");
    let mut d = rcu.retire(old);
    loop {
        match d.try_reclaim(rcu) {
            Ok(node) => {
                // SAFETY: loom checks this write against every read.
                node.v.with_mut(|x| unsafe { *x = POISON });
                return;
            }
            Err(back) => {
                d = back;
                rcu.quiescent(CpuId::new(0));
                thread::yield_now();
            }
        }
    }
}

#[test]
fn reader_never_sees_reclaimed_object() {
    builder().check(|| {
        let rcu = Arc::new(Rcu::<2>::new());
        let p = Arc::new(RcuPtr::new(Node::new(1)));
        let reader = {
            let (rcu, p) = (rcu.clone(), p.clone());
            thread::spawn(move || {
                for _ in 0..2 {
                    read_section(&p);
                    rcu.quiescent(CpuId::new(1));
                }
                rcu.enter_idle(CpuId::new(1));
            })
        };
        write_and_reclaim(&rcu, &p);
        reader.join().unwrap();
    });
}

#[test]
fn reader_leaving_idle_sees_the_new_object() {
    builder().check(|| {
        let rcu = Arc::new(Rcu::<2>::new());
        // CPU 1 idle from the start: it holds up no grace period, so the
        // writer may reclaim at once; a section after `exit_idle` must then
        // see the new object.
        rcu.enter_idle(CpuId::new(1));
        let p = Arc::new(RcuPtr::new(Node::new(1)));
        let reader = {
            let (rcu, p) = (rcu.clone(), p.clone());
            thread::spawn(move || {
                rcu.exit_idle(CpuId::new(1));
                read_section(&p);
                rcu.enter_idle(CpuId::new(1));
            })
        };
        write_and_reclaim(&rcu, &p);
        reader.join().unwrap();
    });
}
