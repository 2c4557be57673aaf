//! loom model of the sequence count with concurrent writers
//! (`osv_vfs::WriteSeq`, built on the crate's `sync` facade, so its counters
//! and fences are loom's). The data are loom atomics written and read with
//! relaxed ordering, exactly as ramfs's pages are; loom explores which store
//! each relaxed load may see, so a validation that let a torn copy through
//! fails the model. Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release -p osv-vfs --test loom_seq`.
#![cfg(loom)]

use std::sync::Arc;

use loom::sync::atomic::{AtomicU64, Ordering::Relaxed};
use loom::thread;
use osv_vfs::WriteSeq;

fn model(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    b.max_branches = 20_000;
    b.check(f);
}

/// Four words; a writer owns a pair (as a range lock would give it) and
/// always writes both words of it with one value.
struct Data {
    seq: WriteSeq,
    words: [AtomicU64; 4],
}

impl Data {
    fn new() -> Arc<Self> {
        Arc::new(Self { seq: WriteSeq::new(), words: std::array::from_fn(|_| AtomicU64::new(0)) })
    }
    fn write_pair(&self, pair: usize, v: u64) {
        let _w = self.seq.write_begin();
        self.words[2 * pair].store(v, Relaxed);
        self.words[2 * pair + 1].store(v, Relaxed);
    }
    /// A validated copy, or `None` if the reader would fall back.
    fn read(&self) -> Option<[u64; 4]> {
        let snap = self.seq.read_begin()?;
        let copy = std::array::from_fn(|i| self.words[i].load(Relaxed));
        self.seq.read_validate(snap).then_some(copy)
    }
}

fn check_pairs(c: [u64; 4]) {
    assert_eq!(c[0], c[1], "torn copy of pair 0: {c:?}");
    assert_eq!(c[2], c[3], "torn copy of pair 1: {c:?}");
}

/// A reader against two writers of disjoint pairs running at once: a
/// validated copy never holds half of a write, and once both writers have
/// finished a read validates and sees both.
#[test]
fn reader_against_two_disjoint_writers() {
    model(2, || {
        let d = Data::new();
        let (d1, d2) = (d.clone(), d.clone());
        let a = thread::spawn(move || d1.write_pair(0, 1));
        let b = thread::spawn(move || d2.write_pair(1, 2));
        if let Some(c) = d.read() {
            check_pairs(c);
        }
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(d.read(), Some([1, 1, 2, 2]));
    });
}

/// A reader that copies twice against one writer that writes twice (the
/// second write as a truncate would: zeroing): each validated copy is one of
/// the three states, never a mix, and the second is not older than the first.
#[test]
fn reader_against_write_then_zeroing() {
    model(3, || {
        let d = Data::new();
        d.write_pair(0, 7);
        let d1 = d.clone();
        let w = thread::spawn(move || {
            d1.write_pair(0, 9);
            d1.write_pair(0, 0);
        });
        let mut last = None;
        for _ in 0..2 {
            if let Some(c) = d.read() {
                check_pairs(c);
                let order = match c[0] {
                    7 => 0,
                    9 => 1,
                    0 => 2,
                    v => panic!("value {v} was never written"),
                };
                assert!(last.is_none_or(|l| l <= order), "went back in time");
                last = Some(order);
            }
        }
        w.join().unwrap();
        assert_eq!(d.read(), Some([0; 4]));
    });
}
