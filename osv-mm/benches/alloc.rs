//! Page allocator and heap against `buddy_system_allocator` and `talc`, in one run.
//!
//! `cargo bench -p osv-mm --features std --bench alloc -- --quick`
//!
//! Every allocator gets the same memory size and the same operation sequence; the
//! competitors are wrapped in their lock types as a user would (`LockedFrameAllocator`,
//! `LockedHeap`, `TalcLock` with a spin lock).
use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use buddy_system_allocator::{LockedFrameAllocator, LockedHeap};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use osv_mm::fake::{FakeRam, FAKE_RAM_BASE};
use osv_mm::heap::Heap;
use osv_mm::percpu::{ThreadCpus, HOST_CPUS};
use osv_mm::phys::{PageRangeAllocator, PerCpuPages};
use osv_mm::PhysAddr;
use talc::source::Claim;
use talc::sync::TalcLock;

/// 64 MiB of "physical memory" / heap for everyone.
const PAGES: usize = 16 * 1024;
const HEAP_BYTES: usize = PAGES * 4096;

type OurPages = PerCpuPages<&'static FakeRam, ThreadCpus, HOST_CPUS>;
type OurHeap = Heap<&'static OurPages, ThreadCpus, HOST_CPUS>;
type Talc = TalcLock<spin::mutex::SpinMutex<()>, Claim, talc::DefaultBinning>;

fn our_pages() -> &'static OurPages {
    let ram: &'static FakeRam = Box::leak(Box::new(FakeRam::new(PhysAddr::new(FAKE_RAM_BASE), PAGES)));
    let pages: &'static OurPages =
        Box::leak(Box::new(PerCpuPages::new(PageRangeAllocator::new(ram), ThreadCpus)));
    // SAFETY: the fake RAM is used by nothing else.
    unsafe { pages.global().add_region(ram.range()) }.unwrap();
    pages
}

fn buddy_frames() -> LockedFrameAllocator<33> {
    let a = LockedFrameAllocator::<33>::new();
    a.lock().add_frame(0x10_0000 / 4096, 0x10_0000 / 4096 + PAGES);
    a
}

/// A 2 MiB-aligned leaked buffer of `HEAP_BYTES`.
fn heap_memory() -> *mut u8 {
    let layout = Layout::from_size_align(HEAP_BYTES, 2 << 20).unwrap();
    // SAFETY: non-zero size; leaked on purpose (the allocators keep pointers into it).
    unsafe { std::alloc::alloc_zeroed(layout) }
}

fn buddy_heap() -> &'static LockedHeap<32> {
    let h: &'static LockedHeap<32> = Box::leak(Box::new(LockedHeap::<32>::new()));
    // SAFETY: fresh, leaked memory used by nothing else.
    unsafe { h.lock().init(heap_memory() as usize, HEAP_BYTES) };
    h
}

fn talc_heap() -> &'static Talc {
    // SAFETY: fresh, leaked memory used by nothing else.
    Box::leak(Box::new(TalcLock::new(unsafe { Claim::new(heap_memory(), HEAP_BYTES) })))
}

fn our_heap() -> &'static OurHeap {
    Box::leak(Box::new(Heap::new(our_pages(), ThreadCpus)))
}

fn pages(c: &mut Criterion) {
    let mut g = c.benchmark_group("page_4k_alloc_free");
    g.throughput(Throughput::Elements(1));
    let ours = our_pages();
    g.bench_function("osv_mm_percpu", |b| {
        b.iter(|| {
            let p = ours.alloc_page().unwrap();
            // SAFETY: just allocated, unused.
            unsafe { ours.free_page(black_box(p)) }.unwrap();
        })
    });
    let global = our_pages();
    g.bench_function("osv_mm_global", |b| {
        b.iter(|| {
            let p = global.global().alloc(1).unwrap();
            // SAFETY: just allocated, unused.
            unsafe { global.global().free(black_box(p), 1) }.unwrap();
        })
    });
    let buddy = buddy_frames();
    g.bench_function("buddy_frame_allocator", |b| {
        b.iter(|| {
            let p = buddy.lock().alloc(1).unwrap();
            buddy.lock().dealloc(black_box(p), 1);
        })
    });
    g.finish();

    // Mixed sizes: a window of 32 live allocations of 1..=16 pages, freed oldest first.
    const SIZES: [usize; 16] = [1, 2, 1, 4, 3, 1, 8, 1, 16, 2, 5, 1, 1, 2, 7, 1];
    let mut g = c.benchmark_group("page_mixed_orders");
    g.throughput(Throughput::Elements(1));
    let ours = our_pages();
    g.bench_function("osv_mm", |b| {
        let mut ring = [(PhysAddr::new(0), 0u64); 32];
        let mut i = 0usize;
        b.iter(|| {
            let slot = &mut ring[i % 32];
            if slot.1 != 0 {
                // SAFETY: allocated 32 steps ago, unused.
                unsafe { ours.global().free(slot.0, slot.1) }.unwrap();
            }
            let n = SIZES[i % 16] as u64;
            *slot = (ours.global().alloc(n).unwrap(), n);
            i += 1;
        })
    });
    let buddy = buddy_frames();
    g.bench_function("buddy_frame_allocator", |b| {
        let mut ring = [(0usize, 0usize); 32];
        let mut i = 0usize;
        b.iter(|| {
            let slot = &mut ring[i % 32];
            if slot.1 != 0 {
                buddy.lock().dealloc(slot.0, slot.1);
            }
            let n = SIZES[i % 16];
            *slot = (buddy.lock().alloc(n).unwrap(), n);
            i += 1;
        })
    });
    g.finish();
}

/// The same small-object pattern for every heap: one 64-byte alloc+free pair per iteration,
/// and (in `_batch`) 64 live objects of 8..=512 bytes allocated then freed.
fn small_pair<A: GlobalAlloc>(a: &A) {
    let l = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: a valid non-zero layout; the block is freed with the same layout.
    unsafe {
        let p = a.alloc(l);
        assert!(!p.is_null());
        a.dealloc(black_box(p), l);
    }
}

fn small_batch<A: GlobalAlloc>(a: &A) {
    let mut live = [(std::ptr::null_mut::<u8>(), 0usize); 64];
    for (i, slot) in live.iter_mut().enumerate() {
        let size = 8 << (i % 7);
        // SAFETY: a valid non-zero layout.
        let p = unsafe { a.alloc(Layout::from_size_align(size, 8).unwrap()) };
        assert!(!p.is_null());
        *slot = (p, size);
    }
    for (p, size) in live {
        // SAFETY: allocated above with this layout.
        unsafe { a.dealloc(black_box(p), Layout::from_size_align(size, 8).unwrap()) };
    }
}

/// `iters` iterations of `f` on each of two threads at once; the wall time of the slower.
fn two_threads<A: GlobalAlloc + Sync>(a: &A, iters: u64, f: fn(&A)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..iters {
                    f(a);
                }
            });
        }
    });
    start.elapsed()
}

fn heaps(c: &mut Criterion) {
    let ours = our_heap();
    let buddy = buddy_heap();
    let talc = talc_heap();
    for (name, f, per_iter) in [
        ("malloc_small_pair", small_pair as fn(&_), 1u64),
        ("malloc_small_batch64", small_batch as fn(&_), 64),
    ] {
        let mut g = c.benchmark_group(format!("{name}_1thread"));
        g.throughput(Throughput::Elements(per_iter));
        g.bench_function("osv_mm", |b| b.iter(|| f(ours)));
        let fb: fn(&LockedHeap<32>) = if per_iter == 1 { small_pair } else { small_batch };
        g.bench_function("buddy_locked_heap", |b| b.iter(|| fb(buddy)));
        let ft: fn(&Talc) = if per_iter == 1 { small_pair } else { small_batch };
        g.bench_function("talc_lock", |b| b.iter(|| ft(talc)));
        g.finish();

        // Two threads, each running the pattern `iters` times: elements count both threads.
        let mut g = c.benchmark_group(format!("{name}_2threads"));
        g.throughput(Throughput::Elements(2 * per_iter));
        g.bench_function("osv_mm", |b| b.iter_custom(|iters| two_threads(ours, iters, f)));
        g.bench_function("buddy_locked_heap", |b| b.iter_custom(|iters| two_threads(buddy, iters, fb)));
        g.bench_function("talc_lock", |b| b.iter_custom(|iters| two_threads(talc, iters, ft)));
        g.finish();
    }
    let _ = NonNull::<u8>::dangling();
}

criterion_group!(benches, pages, heaps);
criterion_main!(benches);
