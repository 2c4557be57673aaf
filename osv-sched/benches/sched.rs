//! Host benchmarks of the scheduler's hot paths, each against a baseline
//! measured in the same run:
//! - run queue: 64 inserts then 64 picks, and one enqueue+pick on a queue of
//!   16 (the steady state of a busy CPU), against the previous
//!   `BTreeMap<(rtt, seq), (Runtime, T)>` run queue (same keys) and a
//!   `std::collections::BinaryHeap` min-heap of the same keys;
//! - the fair policy: one `charge` plus one `time_until` (what every
//!   reschedule does) in fixed point, against the previous `f64`
//!   implementation (reproduced below as the baseline);
//! - wakeup ring push+pop vs `std::sync::Mutex<VecDeque>`.
//!
//! Run: `cargo bench -p osv-sched --features std --bench sched -- --quick`.

use criterion::{criterion_group, criterion_main, Criterion};
use osv_sched::fair::{Fair, FairParams, RunQueue, Runtime, Weight};
use osv_sched::time::Nanos;
use osv_sched::wakeup::{ThreadId, WakeRing};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
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

/// The previous run queue, kept here as the baseline: a `BTreeMap` keyed by
/// (scaled runtime, arrival), one node allocation per insert.
struct BTreeQueue {
    map: BTreeMap<(u64, u64), (Runtime, usize)>,
    seq: u64,
}

impl BTreeQueue {
    fn insert(&mut self, rt: Runtime, t: usize) {
        self.map.insert((rt.scaled(), self.seq), (rt, t));
        self.seq += 1;
    }
    fn pop(&mut self) -> Option<(Runtime, usize)> {
        self.map.pop_first().map(|(_, v)| v)
    }
}

fn runtimes(n: u64) -> Vec<Runtime> {
    let mut fair = Fair::new(FairParams::default());
    (0..n)
        .map(|i| {
            let mut rt = Runtime::new(Weight::NORMAL);
            let _ = fair.clone().charge(&mut rt, Nanos((i * 7919) % 1000 * 1000));
            let _ = fair.charge(&mut Runtime::new(Weight::NORMAL), Nanos(10));
            rt
        })
        .collect()
}

fn runqueue(c: &mut Criterion) {
    let rts = runtimes(64);
    let mut g = c.benchmark_group("runqueue_insert_pick_64");
    let mut q = RunQueue::<usize>::with_capacity(64);
    g.bench_function("osv_sched::RunQueue", |b| {
        b.iter(|| {
            for (i, rt) in rts.iter().enumerate() {
                q.insert(*rt, i);
            }
            while let Some(x) = q.pop() {
                black_box(x);
            }
        })
    });
    let mut old = BTreeQueue { map: BTreeMap::new(), seq: 0 };
    g.bench_function("baseline BTreeMap (previous RunQueue)", |b| {
        b.iter(|| {
            for (i, rt) in rts.iter().enumerate() {
                old.insert(*rt, i);
            }
            while let Some(x) = old.pop() {
                black_box(x);
            }
        })
    });
    let mut h = BinaryHeap::with_capacity(64);
    g.bench_function("baseline BinaryHeap", |b| {
        b.iter(|| {
            for (i, rt) in rts.iter().enumerate() {
                h.push(Reverse((rt.scaled(), i as u64, i)));
            }
            while let Some(x) = h.pop() {
                black_box(x);
            }
        })
    });
    g.finish();

    // Steady state: 16 queued; each iteration enqueues one and picks one.
    let mut g = c.benchmark_group("runqueue_enqueue_pick_at_16");
    let mut q = RunQueue::<usize>::with_capacity(17);
    for (i, rt) in rts.iter().take(16).enumerate() {
        q.insert(*rt, i);
    }
    let mut i = 0;
    g.bench_function("osv_sched::RunQueue", |b| {
        b.iter(|| {
            i = (i + 1) % 64;
            q.insert(rts[i], i);
            black_box(q.pop())
        })
    });
    let mut old = BTreeQueue { map: BTreeMap::new(), seq: 0 };
    for (i, rt) in rts.iter().take(16).enumerate() {
        old.insert(*rt, i);
    }
    g.bench_function("baseline BTreeMap (previous RunQueue)", |b| {
        b.iter(|| {
            i = (i + 1) % 64;
            old.insert(rts[i], i);
            black_box(old.pop())
        })
    });
    g.finish();
}

/// The previous floating-point policy arithmetic, as the baseline: `c`
/// and `rtt` in `f64`, `e^x` by range reduction and a Taylor series, and
/// `ln(1+x)` by exponent extraction and an `atanh` series.
mod f64_policy {
    const LN2: f64 = std::f64::consts::LN_2;

    fn pow2(e: i32) -> f64 {
        f64::from_bits(((1023 + e) as u64) << 52)
    }

    fn exp_nonneg(x: f64) -> f64 {
        let k = (x / LN2) as i32;
        let r = x - f64::from(k) * LN2;
        let (mut sum, mut term) = (1.0, 1.0);
        for n in 1..18 {
            term *= r / f64::from(n);
            sum += term;
        }
        sum * pow2(k)
    }

    fn ln_1p(x: f64) -> f64 {
        if x < 1e-8 {
            return x;
        }
        let y = 1.0 + x;
        let bits = y.to_bits();
        let e = ((bits >> 52) & 0x7ff) as i32 - 1023;
        let m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
        let z = (m - 1.0) / (m + 1.0);
        let z2 = z * z;
        let (mut sum, mut term) = (0.0, z);
        for n in 0..16 {
            sum += term / f64::from(2 * n + 1);
            term *= z2;
        }
        f64::from(e) * LN2 + 2.0 * sum
    }

    pub struct Fair {
        pub c: f64,
        pub inv_tau: f64,
        pub tau: f64,
    }

    impl Fair {
        pub fn charge(&mut self, rtt: &mut f64, scale: f64, ran: u64) {
            let cnew = self.c * exp_nonneg(ran as f64 * self.inv_tau);
            *rtt += (cnew - self.c) * scale;
            self.c = cnew;
            if self.c > pow2(500) {
                self.c *= pow2(-1000);
                *rtt *= pow2(-1000);
            }
        }
        pub fn time_until(&self, p: f64, t: f64, scale: f64) -> u64 {
            if p >= t {
                return 0;
            }
            let x = (t - p) / (self.c * scale);
            (self.tau * ln_1p(x) * 1.0001 + 1.0) as u64 + 1
        }
    }
}

fn policy(c: &mut Criterion) {
    let mut g = c.benchmark_group("charge_and_time_until");
    let slices: Vec<u64> = (0..64u64).map(|i| 200_000 + (i * 7919) % 1000 * 1000).collect();
    let mut fair = Fair::new(FairParams::default());
    let (mut a, mut h) = (Runtime::new(Weight::NORMAL), Runtime::new(Weight::new(3 * 1024).unwrap()));
    let _ = fair.charge(&mut h, Nanos::from_millis(30));
    let mut i = 0;
    g.bench_function("osv_sched::Fair (fixed point)", |b| {
        b.iter(|| {
            i = (i + 1) % 64;
            let (p, t) = if i % 2 == 0 { (&mut a, &mut h) } else { (&mut h, &mut a) };
            if fair.charge(p, Nanos(black_box(slices[i]))).0 {
                fair.sync(t);
            }
            black_box(fair.time_until(p, t))
        })
    });
    let mut old =
        f64_policy::Fair { c: f64::from_bits((1023 - 500) << 52), inv_tau: 1.0 / 200e6, tau: 200e6 };
    let (mut a, mut h) = (0.0f64, 0.0f64);
    old.charge(&mut h, 1.0 / 3.0, 30_000_000);
    g.bench_function("baseline f64 (previous Fair)", |b| {
        b.iter(|| {
            i = (i + 1) % 64;
            let (p, t, s) = if i % 2 == 0 { (&mut a, &mut h, 1.0) } else { (&mut h, &mut a, 1.0 / 3.0) };
            old.charge(p, s, black_box(slices[i]));
            black_box(old.time_until(*p, *t, s))
        })
    });
    g.finish();
}

criterion_group!(benches, wakeup, runqueue, policy);
criterion_main!(benches);
