//! loom model of the per-CPU page caches (`PerCpuPages`): two CPUs allocate and free through
//! their own caches while the global allocator's lock, the drain requests of the
//! memory-pressure path and the statistics readers interleave.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release -p osv-mm --test loom_percpu`.
#![cfg(loom)]

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64 as StdU64, Ordering as StdOrdering};

use loom::sync::Arc;
use loom::thread;
use osv_mm::phys::{PageRangeAllocator, PerCpuPages, PhysError};
use osv_mm::{CpuLocal, PhysAddr, PhysMapper};

const BASE: u64 = 0x10_0000;

loom::thread_local! {
    static CPU: Cell<usize> = Cell::new(usize::MAX);
}

/// The model's CPU identity: each loom thread says which CPU it is before it starts.
struct ModelCpus;

// SAFETY: each model thread sets a distinct index (the main thread takes one only after the
// thread that had it was joined), and loom threads have no interrupts.
unsafe impl CpuLocal for ModelCpus {
    fn max_cpus(&self) -> usize {
        2
    }
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        f(CPU.with(Cell::get))
    }
}

fn be_cpu(i: usize) {
    CPU.with(|c| c.set(i));
}

/// The model checker, bounded like the crate's other models (the spin lock's retry loops make
/// the unbounded search explode).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// Page memory (plain std atomics: the allocator's headers live here, under its lock).
#[repr(C, align(4096))]
struct Page([StdU64; 512]);

struct Ram(Box<[Page]>);

impl Ram {
    fn new(pages: usize) -> Self {
        Self((0..pages).map(|_| Page(std::array::from_fn(|_| StdU64::new(!0)))).collect())
    }
}

// SAFETY: frame `BASE + i * 4096` is the 4096-aligned `Page` `i`, owned by the `Ram` for its
// whole life; pages are atomics, so writes through the pointer are interior mutation.
unsafe impl PhysMapper for Ram {
    fn frame_ptr(&self, frame: PhysAddr) -> NonNull<u8> {
        NonNull::from(&self.0[((frame.as_u64() - BASE) / 4096) as usize]).cast()
    }
}

type Pages = PerCpuPages<Ram, ModelCpus, 2>;

/// Pages handed out and not yet freed, as a bitmask (checked outside loom's view).
struct Owned(StdU64);

impl Owned {
    fn take(&self, p: PhysAddr) {
        let bit = 1 << ((p.as_u64() - BASE) / 4096);
        let old = self.0.fetch_or(bit, StdOrdering::SeqCst);
        assert_eq!(old & bit, 0, "{p:?} handed out twice");
    }
    fn give(&self, p: PhysAddr) {
        self.0.fetch_and(!(1 << ((p.as_u64() - BASE) / 4096)), StdOrdering::SeqCst);
    }
}

fn setup(ram_pages: usize) -> (Arc<(Pages, Owned)>, u64) {
    let ram = Ram::new(ram_pages);
    let global = PageRangeAllocator::new(ram);
    let end = BASE + ram_pages as u64 * 4096;
    // SAFETY: the model's RAM is used by nothing else.
    let total = unsafe { global.add_region(PhysAddr::new(BASE)..PhysAddr::new(end)) }.unwrap();
    (Arc::new((PerCpuPages::new(global, ModelCpus), Owned(StdU64::new(0)))), total)
}

fn alloc_free(shared: &(Pages, Owned), n: usize) -> Vec<Result<(), PhysError>> {
    let (pages, owned) = shared;
    let mut got = Vec::new();
    let mut results = Vec::new();
    for _ in 0..n {
        match pages.alloc_page() {
            Ok(p) => {
                owned.take(p);
                got.push(p);
                results.push(Ok(()));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    for p in got {
        owned.give(p);
        // SAFETY: allocated above, unused.
        unsafe { pages.free_page(p) }.unwrap();
    }
    results
}

/// After both CPUs are done and have served their drain requests, every page is back in
/// the global allocator as one range.
fn check_all_back(shared: &(Pages, Owned), total: u64) {
    let (pages, _) = shared;
    for cpu in 0..2 {
        be_cpu(cpu);
        pages.poll();
    }
    be_cpu(0);
    pages.request_drain();
    be_cpu(1);
    pages.poll();
    assert_eq!(pages.cached_pages(), 0);
    assert_eq!(pages.global().free_pages(), total);
    let mut ranges = 0;
    pages.global().for_each_free_range(|_| ranges += 1);
    assert_eq!(ranges, 1, "fully coalesced");
}

/// Plenty of memory: both CPUs refill their caches from the global allocator under its lock
/// concurrently, while CPU 1 also asks every cache to drain (the memory-pressure path) and
/// reads the statistics. No page is handed out twice, nothing is lost.
#[test]
fn two_cpus_refill_while_pressure_drains() {
    model(|| {
        // One bitmap page + 40: CPU 0's refill takes 32, CPU 1's the other 8 (or vice versa).
        let (shared, total) = setup(41);
        let s0 = shared.clone();
        let t0 = thread::spawn(move || {
            be_cpu(0);
            alloc_free(&s0, 2)
        });
        let s1 = shared.clone();
        let t1 = thread::spawn(move || {
            be_cpu(1);
            let r = alloc_free(&s1, 1);
            s1.0.request_drain();
            assert!(s1.0.free_pages() <= 2 * total, "a racy but bounded snapshot");
            r
        });
        assert!(t0.join().unwrap().iter().all(Result::is_ok));
        assert!(t1.join().unwrap().iter().all(Result::is_ok));
        check_all_back(&shared, total);
    });
}

/// Tight memory: the first CPU to refill takes every page into its cache, so the other CPU
/// finds the global allocator empty, reports `OutOfMemory` and asks the owner to drain; the
/// owner serves the request at its next operation, after which the memory is there again.
#[test]
fn out_of_memory_asks_the_owner_to_drain() {
    model(|| {
        // One bitmap page + 4 pages: less than one refill batch.
        let (shared, total) = setup(5);
        let s0 = shared.clone();
        let t0 = thread::spawn(move || {
            be_cpu(0);
            let first = alloc_free(&s0, 1);
            // A second operation: serves a drain request if CPU 1 made one meanwhile.
            let second = alloc_free(&s0, 1);
            (first, second)
        });
        let s1 = shared.clone();
        let t1 = thread::spawn(move || {
            be_cpu(1);
            alloc_free(&s1, 1)
        });
        let (first, second) = t0.join().unwrap();
        let r1 = t1.join().unwrap();
        // Whoever refilled first got pages; the other may have found none.
        let failures = [&first[0], &second[0], &r1[0]].iter().filter(|r| r.is_err()).count();
        assert!(failures <= 2);
        if r1[0].is_err() {
            assert_eq!(r1[0], Err(PhysError::OutOfMemory));
        }
        check_all_back(&shared, total);
        // With the caches drained, a single CPU can have all the memory.
        be_cpu(1);
        let (pages, owned) = &*shared;
        let got: Vec<_> = (0..total).map(|_| pages.alloc_page().unwrap()).collect();
        for p in &got {
            owned.take(*p);
        }
        assert_eq!(pages.alloc_page(), Err(PhysError::OutOfMemory));
        for p in got {
            owned.give(p);
            // SAFETY: allocated above, unused.
            unsafe { pages.free_page(p) }.unwrap();
        }
        check_all_back(&shared, total);
    });
}
