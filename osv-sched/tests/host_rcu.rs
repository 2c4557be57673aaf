//! RCU on host threads: three threads play CPUs 1-3, each running
//! read-side sections and passing quiescent states (and idling now and
//! then), while CPU 0 replaces the object 2000 times, reclaiming half of the
//! old copies synchronously and half through a `DeferQueue`. Every copy is
//! poisoned when freed; no reader may see the poison.
#![cfg(all(feature = "std", not(loom)))]

use osv_sched::rcu::{DeferQueue, Rcu, RcuPtr, ReadGuard};
use osv_sched::CpuId;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const MAGIC: u64 = 0x5eed_5eed;
const POISON: u64 = 0xdead;

struct Node {
    magic: AtomicU64,
    generation: u64,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.magic.store(POISON, Ordering::Relaxed);
    }
}

fn node(generation: u64) -> Box<Node> {
    Box::new(Node { magic: AtomicU64::new(MAGIC), generation })
}

#[test]
fn readers_never_see_reclaimed_copies() {
    const ROUNDS: u64 = 2_000;
    let rcu: Arc<Rcu<4>> = Arc::new(Rcu::new());
    let p = Arc::new(RcuPtr::new(node(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (1..4u32)
        .map(|cpu| {
            let (rcu, p, stop) = (rcu.clone(), p.clone(), stop.clone());
            std::thread::spawn(move || {
                let cpu = CpuId::new(cpu);
                let (mut reads, mut last) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    {
                        // SAFETY: this thread reports no quiescent state
                        // while the guard lives (this block).
                        let g = unsafe { ReadGuard::new() };
                        let n = p.read(&g).expect("never null");
                        for _ in 0..10 {
                            assert_eq!(n.magic.load(Ordering::Relaxed), MAGIC, "read a reclaimed copy");
                            std::hint::spin_loop();
                        }
                        assert!(n.generation >= last, "went back in time");
                        last = n.generation;
                    }
                    reads += 1;
                    if reads.is_multiple_of(64) {
                        rcu.enter_idle(cpu);
                        std::thread::yield_now();
                        rcu.exit_idle(cpu);
                    } else {
                        rcu.quiescent(cpu);
                    }
                }
                rcu.enter_idle(cpu);
                reads
            })
        })
        .collect();
    let mut q: DeferQueue<4> = DeferQueue::new();
    for generation in 1..=ROUNDS {
        let old = p.replace(Some(node(generation))).expect("never null");
        if generation.is_multiple_of(2) {
            let mut d = rcu.retire(old);
            loop {
                rcu.quiescent(CpuId::new(0));
                match d.try_reclaim(&rcu) {
                    Ok(b) => break drop(b),
                    Err(back) => d = back,
                }
                std::thread::yield_now();
            }
        } else {
            q.defer_free(&rcu, old);
        }
        rcu.quiescent(CpuId::new(0));
        q.run_completed(&rcu);
    }
    while !q.is_empty() {
        rcu.quiescent(CpuId::new(0));
        q.run_completed(&rcu);
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().expect("reader panicked")).sum();
    assert!(reads > 0);
}
