//! loom model of the reader-scalable lock (`osv_vfs::BrLock`, built on the
//! crate's `sync` facade: its stripes and writer flag are loom atomics and its
//! value a loom cell, so loom fails the model on any reader overlapping a
//! writer). Under loom the lock has 2 stripes and a thread's stripe is its
//! model thread number modulo 2: of the three threads below, two share a
//! stripe and one has the other. Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release -p osv-vfs --test loom_brlock`.
#![cfg(loom)]

use std::sync::Arc;

use loom::thread;
use osv_vfs::BrLock;

fn model(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    b.max_branches = 20_000;
    b.check(f);
}

/// A writer changing both halves of a pair against two readers (one on each
/// stripe): every reader sees both halves equal, the write lands, and nobody
/// deadlocks. Three threads: at most one preemption.
#[test]
fn writer_against_readers_on_both_stripes() {
    model(1, || {
        let l = Arc::new(BrLock::new((0u32, 0u32)));
        let (l1, l2) = (l.clone(), l.clone());
        let w = thread::spawn(move || {
            let mut g = l1.write();
            g.0 += 1;
            g.1 += 1;
        });
        let r = thread::spawn(move || {
            let g = l2.read();
            assert_eq!(g.0, g.1);
            g.0
        });
        let g = l.read();
        assert_eq!(g.0, g.1);
        let mine = g.0;
        drop(g);
        let theirs = r.join().unwrap();
        w.join().unwrap();
        assert!(mine <= 1 && theirs <= 1);
        assert_eq!(*l.read(), (1, 1));
    });
}

/// Two writers exclude each other (loom's cell check) and both land, with a
/// reader taking its stripe among them. Three threads: at most one
/// preemption.
#[test]
fn writers_exclude_each_other() {
    model(1, || {
        let l = Arc::new(BrLock::new(0u32));
        let (l1, l2) = (l.clone(), l.clone());
        let a = thread::spawn(move || *l1.write() += 1);
        let b = thread::spawn(move || *l2.write() += 10);
        let seen = *l.read();
        assert!(matches!(seen, 0 | 1 | 10 | 11), "{seen}");
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(*l.read(), 11);
    });
}

/// One reader against one writer with more preemptions (the three-thread
/// models above explore at most one: with two, the waiting loops make them
/// run for many minutes): the reader sees the pair whole, before or after.
#[test]
fn reader_against_writer_deeper() {
    model(3, || {
        let l = Arc::new(BrLock::new((0u32, 0u32)));
        let l1 = l.clone();
        let w = thread::spawn(move || {
            let mut g = l1.write();
            g.0 += 1;
            g.1 += 1;
        });
        for _ in 0..2 {
            let g = l.read();
            assert_eq!(g.0, g.1);
        }
        w.join().unwrap();
        assert_eq!(*l.read(), (1, 1));
    });
}
