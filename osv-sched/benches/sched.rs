//! Host benchmarks of the two hot structures, each against a named baseline
//! in the same run:
//! - wakeup ring push+pop vs `std::sync::Mutex<VecDeque>`;
//! - run queue insert+pick vs `std::collections::BinaryHeap` (min-heap on the
//!   same key).
//!
//! Run: `cargo bench -p osv-sched --features std --bench sched -- --quick`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use osv_sched::fair::{Fair, FairParams, RunQueue, Runtime, Weight};
use osv_sched::time::Nanos;
use osv_sched::wakeup::{ThreadId, WakeRing};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hint::black_box;
use std::sync::Mutex;

const BATCH: usize = 32;

fn wakeup(c: &mut Criterion) {
    let mut g = c.benchmark_group("wakeup_push_pop_32");
    let ring: WakeRing<64> = WakeRing::new();
    g.bench_function("osv_sched::WakeRing", |b| {
        b.iter(|| {
            for i in 0..BATCH {
                ring.push(ThreadId(i)).unwrap();
            }
            while let Some(t) = ring.pop() {
                black_box(t);
            }
        })
    });
    let q: Mutex<VecDeque<usize>> = Mutex::new(VecDeque::with_capacity(64));
    g.bench_function("baseline Mutex<VecDeque>", |b| {
        b.iter(|| {
            for i in 0..BATCH {
                q.lock().unwrap().push_back(i);
            }
            while let Some(t) = q.lock().unwrap().pop_front() {
                black_box(t);
            }
        })
    });
    g.finish();
}

fn runqueue(c: &mut Criterion) {
    let mut fair = Fair::new(FairParams::default());
    let runtimes: Vec<Runtime> = (0..64u64)
        .map(|i| {
            let mut rt = Runtime::new(Weight::NORMAL);
            let _ = fair.charge(&mut rt, Nanos((i * 7919) % 1000 * 1000));
            rt
        })
        .collect();
    let mut g = c.benchmark_group("runqueue_insert_pick_64");
    g.bench_function("osv_sched::RunQueue", |b| {
        b.iter_batched_ref(
            RunQueue::<usize>::new,
            |q| {
                for (i, rt) in runtimes.iter().enumerate() {
                    q.insert(*rt, i);
                }
                while let Some(x) = q.pop() {
                    black_box(x);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("baseline BinaryHeap", |b| {
        b.iter_batched_ref(
            || BinaryHeap::with_capacity(64),
            |h| {
                for (i, rt) in runtimes.iter().enumerate() {
                    h.push(Reverse((rt.scaled().to_bits(), i as u64, i)));
                }
                while let Some(x) = h.pop() {
                    black_box(x);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, wakeup, runqueue);
criterion_main!(benches);
