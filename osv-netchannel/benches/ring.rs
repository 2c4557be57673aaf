//! Push+pop throughput of `NetChannel` against `std::sync::mpsc::sync_channel`
//! (a bounded queue of the same capacity) in the same run.
//!
//! `cargo bench -p osv-netchannel --bench ring -- --quick`
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::mpsc::{sync_channel, TrySendError};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use osv_netchannel::{Full, NetChannel};

const CAP: usize = 256;
const BATCH: u64 = 64;
/// Items per iteration across threads, so thread start-up is amortised.
const CROSS: u64 = 4096;

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("single_thread");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("netchannel", |b| {
        let mut ring = NetChannel::<u64, CAP>::new();
        let (mut p, mut cons) = ring.split();
        b.iter(|| {
            for i in 0..BATCH {
                p.push(black_box(i)).unwrap();
            }
            for _ in 0..BATCH {
                black_box(cons.pop());
            }
        });
    });
    g.bench_function("std_sync_channel", |b| {
        let (tx, rx) = sync_channel::<u64>(CAP);
        b.iter(|| {
            for i in 0..BATCH {
                tx.try_send(black_box(i)).unwrap();
            }
            for _ in 0..BATCH {
                black_box(rx.try_recv().ok());
            }
        });
    });
    g.finish();
}

/// Moves `iters * CROSS` items from a producer thread to this one.
fn two_threads_netchannel(iters: u64) -> Duration {
    let iters = iters * CROSS;
    let mut ring = NetChannel::<u64, CAP>::new();
    let (mut p, mut c) = ring.split();
    std::thread::scope(|s| {
        let start = Instant::now();
        s.spawn(move || {
            for i in 0..iters {
                let mut item = i;
                while let Err(Full(back)) = p.push(item) {
                    item = back;
                    std::thread::yield_now();
                }
            }
        });
        let mut got = 0;
        while got < iters {
            if let Some(v) = c.pop() {
                black_box(v);
                got += 1;
            } else {
                std::thread::yield_now();
            }
        }
        start.elapsed()
    })
}

fn two_threads_std(iters: u64) -> Duration {
    let iters = iters * CROSS;
    let (tx, rx) = sync_channel::<u64>(CAP);
    std::thread::scope(|s| {
        let start = Instant::now();
        s.spawn(move || {
            for i in 0..iters {
                let mut item = i;
                while let Err(TrySendError::Full(back)) = tx.try_send(item) {
                    item = back;
                    std::thread::yield_now();
                }
            }
        });
        let mut got = 0;
        while got < iters {
            if let Ok(v) = rx.try_recv() {
                black_box(v);
                got += 1;
            } else {
                std::thread::yield_now();
            }
        }
        start.elapsed()
    })
}

fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_threads");
    g.throughput(Throughput::Elements(CROSS));
    g.bench_function("netchannel", |b| b.iter_custom(two_threads_netchannel));
    g.bench_function("std_sync_channel", |b| b.iter_custom(two_threads_std));
    g.finish();
}

criterion_group!(benches, single_thread, two_threads);
criterion_main!(benches);
