//! Unit tests and the proptest model of the page allocator and the per-CPU caches.

use std::collections::BTreeSet;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::fake::FakeRam;
use crate::percpu::ThreadCpus;

const BASE: u64 = 0x1_0000_0000;

/// Two regions with a hole between them, like RAM below and above a PCI hole.
fn two_regions(pages_a: u64, gap: u64, pages_b: u64) -> (FakeRam, [Range<PhysAddr>; 2]) {
    let ram = FakeRam::new(PhysAddr::new(BASE), (pages_a + gap + pages_b) as usize);
    let a = PhysAddr::new(BASE)..PhysAddr::new(BASE + pages_a * PAGE_SIZE);
    let b_start = BASE + (pages_a + gap) * PAGE_SIZE;
    let b = PhysAddr::new(b_start)..PhysAddr::new(b_start + pages_b * PAGE_SIZE);
    (ram, [a, b])
}

fn free_ranges<M: PhysMapper>(a: &PageRangeAllocator<M>) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    a.for_each_free_range(|r| v.push((r.start.as_u64(), r.end.as_u64())));
    v.sort();
    v
}

#[test]
fn region_setup_alloc_free_coalesce() {
    let (ram, [a, _]) = two_regions(100, 0, 0);
    let alloc = PageRangeAllocator::new(&ram);
    // SAFETY: the fake RAM is ours alone.
    let pages = unsafe { alloc.add_region(a.clone()) }.unwrap();
    assert_eq!(pages, 99, "one bitmap page");
    let managed = (a.start.as_u64() + PAGE_SIZE, a.end.as_u64());
    assert_eq!(free_ranges(&alloc), [managed]);
    let x = alloc.alloc(3).unwrap();
    let y = alloc.alloc(1).unwrap();
    let z = alloc.alloc(10).unwrap();
    assert_eq!(alloc.free_pages(), 99 - 14);
    // SAFETY: these came from `alloc` and are unused.
    unsafe {
        assert_eq!(alloc.free(y, 1), Ok(()));
        assert_eq!(alloc.free(y, 1), Err(PhysError::DoubleFree));
        assert_eq!(alloc.free(PhysAddr::new(x.as_u64() + 1), 1), Err(PhysError::BadFree));
        assert_eq!(alloc.free(PhysAddr::new(BASE + 1000 * PAGE_SIZE), 1), Err(PhysError::BadFree));
        assert_eq!(alloc.free(a.start, 1), Err(PhysError::BadFree), "the bitmap page is not managed");
        assert_eq!(alloc.free(x, 3), Ok(()));
        assert_eq!(alloc.free(z, 10), Ok(()));
    }
    assert_eq!(free_ranges(&alloc), [managed], "everything merged back into one range");
    assert_eq!(alloc.alloc(0), Err(PhysError::InvalidRequest));
    assert_eq!(alloc.alloc_aligned(1, 3 * PAGE_SIZE), Err(PhysError::InvalidRequest));
    assert_eq!(alloc.alloc(100), Err(PhysError::OutOfMemory));
    let all = alloc.alloc(99).unwrap();
    assert_eq!(alloc.alloc(1), Err(PhysError::OutOfMemory));
    // SAFETY: from `alloc`, unused.
    unsafe { alloc.free(all, 99) }.unwrap();
    let s = alloc.stats();
    assert_eq!((s.total_pages, s.free_pages), (99, 99));
    assert_eq!(s.ranges_per_order[6], 1);
    assert_eq!(s.pages_per_order[6], 99);
}

#[test]
fn huge_aligned_allocation_and_overlapping_regions() {
    // 3 MiB + a bit, not 2 MiB aligned at the start: exactly one aligned 2 MiB block fits.
    let ram = FakeRam::new(PhysAddr::new(BASE), 2048);
    let alloc = PageRangeAllocator::new(&ram);
    let start = PhysAddr::new(BASE + 300 * PAGE_SIZE);
    let end = PhysAddr::new(BASE + 1100 * PAGE_SIZE);
    // SAFETY: the fake RAM is ours alone.
    unsafe { alloc.add_region(start..end) }.unwrap();
    let h = alloc.alloc_huge().unwrap();
    assert!(h.is_aligned(2 << 20));
    assert_eq!(h.as_u64(), BASE + 512 * PAGE_SIZE);
    assert_eq!(alloc.alloc_huge(), Err(PhysError::OutOfMemory));
    // SAFETY: from `alloc`, unused.
    unsafe { alloc.free(h, HUGE_PAGES) }.unwrap();
    assert_eq!(free_ranges(&alloc).len(), 1);
    // SAFETY: overlapping region: refused before anything is touched.
    let r = unsafe {
        alloc.add_region(PhysAddr::new(BASE + 1000 * PAGE_SIZE)..PhysAddr::new(BASE + 2048 * PAGE_SIZE))
    };
    assert_eq!(r, Err(PhysError::BadRegion));
    // A tiny or reversed range adds nothing.
    // SAFETY: no memory is touched for an empty range.
    assert_eq!(unsafe { alloc.add_region(end..start) }, Ok(0));
}

#[test]
fn batch_and_large_region_use_huge_list() {
    let (ram, [a, _]) = two_regions(70_000, 0, 0);
    let alloc = PageRangeAllocator::new(&ram);
    // SAFETY: the fake RAM is ours alone.
    let n = unsafe { alloc.add_region(a) }.unwrap();
    assert_eq!(alloc.stats().ranges_per_order[ORDERS], 1, "{n} pages is a huge range");
    let mut out = [PhysAddr::new(0); 40];
    assert_eq!(alloc.alloc_batch(&mut out), 40);
    let set: BTreeSet<_> = out.iter().collect();
    assert_eq!(set.len(), 40);
    // SAFETY: from `alloc`, unused.
    unsafe { alloc.free_batch(&out) }.unwrap();
    assert_eq!(alloc.free_pages(), n);
    assert_eq!(free_ranges(&alloc).len(), 1);
}

#[test]
fn per_cpu_cache_refills_drains_and_serves_requests() {
    let (ram, [a, b]) = two_regions(200, 10, 200);
    let pages = PerCpuPages::<_, _, 4>::new(PageRangeAllocator::new(&ram), ThreadCpus);
    // SAFETY: the fake RAM is ours alone; the regions are disjoint.
    let total = unsafe { pages.global().add_region(a).unwrap() + pages.global().add_region(b).unwrap() };
    // This test thread may have any host CPU index; only indices < 4 have caches.
    let mine = ThreadCpus.with_cpu(|c| c);
    let p = pages.alloc_page().unwrap();
    if mine < 4 {
        assert_eq!(pages.cached_pages(), CACHE_BATCH as u64 - 1);
    }
    assert_eq!(pages.free_pages(), total - 1);
    // SAFETY: from `pages`, unused.
    unsafe { pages.free_page(p) }.unwrap();
    let held: Vec<_> = (0..150).map(|_| pages.alloc_page().unwrap()).collect();
    assert_eq!(held.iter().collect::<BTreeSet<_>>().len(), 150);
    for &f in &held {
        // SAFETY: from `pages`, unused.
        unsafe { pages.free_page(f) }.unwrap();
    }
    assert!(pages.cached_pages() <= CACHE_PAGES as u64);
    assert_eq!(pages.free_pages(), total);
    pages.request_drain();
    assert_eq!(pages.cached_pages(), 0);
    assert_eq!(free_ranges(pages.global()).len(), 2, "both regions coalesced");
}

/// What a model step does.
#[derive(Clone, Debug)]
enum Op {
    Alloc(u64),
    AllocAligned(u64, u32),
    Free(usize),
    /// Free part of an allocation: the tail from `at` pages in.
    FreeTail(usize, u64),
    DoubleFree(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..40).prop_map(Op::Alloc),
        1 => (1u64..600).prop_map(Op::Alloc),
        1 => (1u64..20, 0u32..10).prop_map(|(n, a)| Op::AllocAligned(n, a)),
        4 => any::<usize>().prop_map(Op::Free),
        1 => (any::<usize>(), 1u64..20).prop_map(|(i, at)| Op::FreeTail(i, at)),
        1 => any::<usize>().prop_map(Op::DoubleFree),
    ]
}

/// The model: the set of allocated pages, as ranges; the managed regions.
struct Model {
    regions: Vec<(u64, u64)>,
    allocated: Vec<(u64, u64)>,
    freed: Vec<(u64, u64)>,
}

impl Model {
    fn free_runs(&self) -> Vec<(u64, u64)> {
        let mut used = self.allocated.clone();
        used.sort();
        let mut runs = Vec::new();
        for &(rs, re) in &self.regions {
            let mut cur = rs;
            for &(s, e) in used.iter().filter(|&&(s, _)| s >= rs && s < re) {
                if s > cur {
                    runs.push((cur, s));
                }
                cur = e;
            }
            if cur < re {
                runs.push((cur, re));
            }
        }
        runs
    }

    fn fits(&self, pages: u64, align: u64) -> bool {
        self.free_runs().iter().any(|&(s, e)| {
            let at = s.div_ceil(align) * align;
            at + pages * PAGE_SIZE <= e
        })
    }
}

fn check<M: PhysMapper>(alloc: &PageRangeAllocator<M>, model: &Model) -> Result<(), TestCaseError> {
    let free = free_ranges(alloc);
    prop_assert_eq!(&free, &model.free_runs(), "free ranges are exactly the maximal free runs");
    let mut pages = BTreeSet::new();
    for &(s, e) in &model.allocated {
        prop_assert!(model.regions.iter().any(|&(rs, re)| s >= rs && e <= re), "inside a usable range");
        for p in (s..e).step_by(PAGE_SIZE as usize) {
            prop_assert!(pages.insert(p), "page {p:#x} handed out twice");
        }
    }
    let total: u64 = model.regions.iter().map(|&(s, e)| (e - s) / PAGE_SIZE).sum();
    let s = alloc.stats();
    prop_assert_eq!(s.free_pages, total - pages.len() as u64);
    prop_assert_eq!(s.pages_per_order.iter().sum::<u64>(), s.free_pages);
    prop_assert_eq!(s.ranges_per_order.iter().sum::<u64>(), free.len() as u64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random alloc/free sequences against a model of allocated ranges: no page handed out
    /// twice, everything inside the usable ranges, the free lists always equal to the maximal
    /// free runs (so coalescing is complete at every step), an allocation fails only when no
    /// free run fits it, and freeing everything restores the initial ranges.
    #[test]
    fn matches_model(pages_a in 20u64..1500, gap in 0u64..3, pages_b in 0u64..700,
                     ops in proptest::collection::vec(op(), 1..120)) {
        let (ram, [a, b]) = two_regions(pages_a, gap, pages_b);
        let alloc = PageRangeAllocator::new(&ram);
        let mut model = Model { regions: Vec::new(), allocated: Vec::new(), freed: Vec::new() };
        for r in [a, b] {
            // SAFETY: the fake RAM is ours alone; the regions are disjoint.
            let n = unsafe { alloc.add_region(r.clone()) }.unwrap();
            if n > 0 {
                let end = r.end.as_u64();
                model.regions.push((end - n * PAGE_SIZE, end));
            }
        }
        let initial = model.free_runs();
        check(&alloc, &model)?;
        for op in ops {
            match op {
                Op::Alloc(n) | Op::AllocAligned(n, _) => {
                    let align = match op { Op::AllocAligned(_, a) => PAGE_SIZE << a, _ => PAGE_SIZE };
                    match alloc.alloc_aligned(n, align) {
                        Ok(p) => {
                            prop_assert!(p.is_aligned(align));
                            model.allocated.push((p.as_u64(), p.as_u64() + n * PAGE_SIZE));
                        }
                        Err(e) => {
                            prop_assert_eq!(e, PhysError::OutOfMemory);
                            prop_assert!(!model.fits(n, align), "failed although a free run fits");
                        }
                    }
                }
                Op::Free(i) if !model.allocated.is_empty() => {
                    let (s, e) = model.allocated.swap_remove(i % model.allocated.len());
                    // SAFETY: allocated by `alloc` (per the model), unused.
                    prop_assert_eq!(unsafe { alloc.free(PhysAddr::new(s), (e - s) / PAGE_SIZE) }, Ok(()));
                    model.freed.push((s, e));
                }
                Op::FreeTail(i, at) if !model.allocated.is_empty() => {
                    let i = i % model.allocated.len();
                    let (s, e) = model.allocated[i];
                    let cut = s + at * PAGE_SIZE;
                    if cut < e {
                        // SAFETY: the tail is part of an allocation, unused.
                        prop_assert_eq!(unsafe { alloc.free(PhysAddr::new(cut), (e - cut) / PAGE_SIZE) }, Ok(()));
                        model.allocated[i] = (s, cut);
                    }
                }
                Op::DoubleFree(i) if !model.freed.is_empty() => {
                    let (s, e) = model.freed[i % model.freed.len()];
                    let runs = model.free_runs();
                    let last = e - PAGE_SIZE;
                    let at_edge = |p: u64| runs.iter().any(|&(rs, re)| p == rs || p == re - PAGE_SIZE);
                    let all_free = runs.iter().any(|&(rs, re)| s >= rs && e <= re);
                    // Only frees the allocator promises to catch: the whole range is free and
                    // its first or last page is the first or last page of a free range.
                    if all_free && (at_edge(s) || at_edge(last)) {
                        // SAFETY: a deliberate double free that the allocator detects.
                        let r = unsafe { alloc.free(PhysAddr::new(s), (e - s) / PAGE_SIZE) };
                        prop_assert_eq!(r, Err(PhysError::DoubleFree));
                    }
                }
                _ => {}
            }
            check(&alloc, &model)?;
        }
        for (s, e) in std::mem::take(&mut model.allocated) {
            // SAFETY: allocated, unused.
            prop_assert_eq!(unsafe { alloc.free(PhysAddr::new(s), (e - s) / PAGE_SIZE) }, Ok(()));
        }
        check(&alloc, &model)?;
        prop_assert_eq!(free_ranges(&alloc), initial);
    }

    /// The per-CPU cache under random single-page traffic from two threads (two CPUs), mixed
    /// with multi-page allocations and drain requests: no page is handed out twice, counts
    /// add up, and after draining every cache the free ranges are the initial ones again.
    #[test]
    fn per_cpu_cache_matches_model(ops in proptest::collection::vec((0u8..8, any::<u16>()), 1..300)) {
        let (ram, [a, _]) = two_regions(400, 0, 0);
        let pages = PerCpuPages::<_, _, { crate::percpu::HOST_CPUS }>::new(PageRangeAllocator::new(&ram), ThreadCpus);
        // SAFETY: the fake RAM is ours alone.
        let total = unsafe { pages.global().add_region(a) }.unwrap();
        let initial = free_ranges(pages.global());
        let mut held: Vec<(u64, u64)> = Vec::new();
        std::thread::scope(|s| -> Result<(), TestCaseError> {
            let other = s.spawn(|| {
                // The other CPU: allocates pages one by one, frees them, and finally serves
                // the drain requests that reached it by draining its own cache.
                let got: Vec<_> = (0..64).filter_map(|_| pages.alloc_page().ok()).collect();
                for &p in &got {
                    // SAFETY: from `pages`, unused.
                    unsafe { pages.free_page(p) }.unwrap();
                }
                pages.request_drain();
            });
            for (kind, x) in ops {
                match kind {
                    0..=3 => if let Ok(p) = pages.alloc_page() { held.push((p.as_u64(), 1)) },
                    4 => if let Ok(p) = pages.global().alloc(1 + u64::from(x % 9)) { held.push((p.as_u64(), 1 + u64::from(x % 9))) },
                    5 | 6 if !held.is_empty() => {
                        let (p, n) = held.swap_remove(usize::from(x) % held.len());
                        // SAFETY: from `pages`, unused.
                        let r = unsafe { if n == 1 { pages.free_page(PhysAddr::new(p)) } else { pages.global().free(PhysAddr::new(p), n) } };
                        prop_assert_eq!(r, Ok(()));
                    }
                    7 => pages.request_drain(),
                    _ => {}
                }
                let mut set = BTreeSet::new();
                for &(p, n) in &held {
                    for i in 0..n { prop_assert!(set.insert(p + i * PAGE_SIZE), "page handed out twice"); }
                }
            }
            other.join().unwrap();
            Ok(())
        })?;
        for (p, n) in held.drain(..) {
            // SAFETY: from `pages`, unused.
            unsafe { pages.global().free(PhysAddr::new(p), n) }.unwrap();
        }
        prop_assert_eq!(pages.free_pages(), total);
        pages.request_drain();
        prop_assert_eq!(pages.cached_pages(), 0, "both caches drained");
        prop_assert_eq!(pages.global().free_pages(), total);
        prop_assert_eq!(free_ranges(pages.global()), initial);
    }
}
