//! loom models of the net channel: SPSC hand-off and the sleep/wake protocol.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release -p osv-netchannel --test loom_ring`.
#![cfg(loom)]

use loom::thread;
use osv_netchannel::{Full, NetChannel, Park};

/// A builder honouring `LOOM_MAX_PREEMPTIONS`, bounded at 3 otherwise.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

/// Pushes `item`, yielding while the ring is full.
fn push_spin<const N: usize>(p: &mut osv_netchannel::SharedProducer<u32, N>, mut item: u32) {
    loop {
        match p.push(item) {
            Ok(()) => return,
            Err(Full(back)) => {
                item = back;
                thread::yield_now();
            }
        }
    }
}

/// Four items through a ring of two: all arrive, once each, in order, and
/// the producer sees `Full` only when the consumer really lags.
#[test]
fn spsc_moves_items_in_order() {
    model(|| {
        let (mut p, mut c) = NetChannel::<u32, 2>::new_shared();
        let producer = thread::spawn(move || {
            for i in 0..4 {
                push_spin(&mut p, i);
            }
        });
        let mut next = 0;
        while next < 4 {
            match c.pop() {
                Some(v) => {
                    assert_eq!(v, next);
                    next += 1;
                }
                None => thread::yield_now(),
            }
        }
        assert_eq!(c.pop(), None);
        producer.join().unwrap();
        assert!(c.is_empty());
    });
}

/// Items left in the ring when both handles go are dropped exactly once,
/// whichever thread drops the last handle.
#[test]
fn leftover_items_dropped_once() {
    use loom::sync::Arc;
    model(|| {
        let item = Arc::new(());
        let (mut p, mut c) = NetChannel::<Arc<()>, 2>::new_shared();
        let i2 = item.clone();
        let producer = thread::spawn(move || {
            p.push(i2.clone()).unwrap();
            p.push(i2).unwrap();
        });
        // Maybe take one, maybe none, then drop our handle concurrently.
        drop(c.pop());
        drop(c);
        producer.join().unwrap();
        // Only our reference is left: everything else was dropped.
        assert_eq!(Arc::strong_count(&item), 1);
    });
}

/// The consumer parks whenever it finds the ring empty; the producer wakes it
/// only when `notify` says so. A lost wakeup leaves the consumer parked
/// forever, which loom reports as a deadlock.
///
/// The consumer is the spawned thread and nobody waits in `join` while it can
/// be unparked: loom 0.7 trips over an `unpark` aimed at a thread blocked in
/// `join` (tokio-rs/loom#249).
#[test]
fn sleep_wake_no_lost_wakeup() {
    model(|| {
        let (mut p, mut c) = NetChannel::<u32, 2>::new_shared();
        let consumer = thread::spawn(move || {
            let mut next = 0;
            while next < 3 {
                match c.pop() {
                    Some(v) => {
                        assert_eq!(v, next);
                        next += 1;
                    }
                    None => {
                        if c.prepare_park() == Park::Sleep {
                            thread::park();
                        }
                    }
                }
            }
        });
        let consumer_thread = consumer.thread().clone();
        for i in 0..3 {
            push_spin(&mut p, i);
            if p.notify().is_wake() {
                consumer_thread.unpark();
            }
        }
        consumer.join().unwrap();
    });
}

/// Same protocol with a batch: two pushes, one notification (OSv's "wake
/// best used after multiple pushes").
#[test]
fn sleep_wake_batched_notify() {
    model(|| {
        let (mut p, mut c) = NetChannel::<u32, 2>::new_shared();
        let consumer = thread::spawn(move || {
            let mut got = 0;
            while got < 2 {
                if let Some(v) = c.pop() {
                    assert_eq!(v, got);
                    got += 1;
                } else if c.prepare_park() == Park::Sleep {
                    thread::park();
                }
            }
        });
        let consumer_thread = consumer.thread().clone();
        p.push(0).unwrap();
        p.push(1).unwrap();
        p.wake(&|| consumer_thread.unpark());
        consumer.join().unwrap();
    });
}
