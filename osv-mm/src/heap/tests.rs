//! Unit tests and the proptest model of the heap.

use std::collections::BTreeMap;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::fake::{FakeRam, FAKE_RAM_BASE};
use crate::percpu::{ThreadCpus, HOST_CPUS};
use crate::phys::{PageRangeAllocator, PerCpuPages};
use crate::PhysAddr;

type Pages<'a> = PerCpuPages<&'a FakeRam, ThreadCpus, HOST_CPUS>;

fn pages(ram: &FakeRam) -> (Pages<'_>, u64) {
    let p = PerCpuPages::new(PageRangeAllocator::new(ram), ThreadCpus);
    // SAFETY: the fake RAM is ours alone.
    let n = unsafe { p.global().add_region(ram.range()) }.unwrap();
    (p, n)
}

fn ram(pages: usize) -> FakeRam {
    FakeRam::new(PhysAddr::new(FAKE_RAM_BASE), pages)
}

#[test]
fn classes_and_capacities() {
    assert_eq!(class_of(Layout::from_size_align(1, 1).unwrap()), Some(0));
    assert_eq!(class_of(Layout::from_size_align(17, 1).unwrap()), Some(1));
    assert_eq!(class_of(Layout::from_size_align(8, 64).unwrap()), Some(2));
    assert_eq!(class_of(Layout::from_size_align(1024, 8).unwrap()), Some(6));
    assert_eq!(class_of(Layout::from_size_align(1025, 8).unwrap()), None);
    assert_eq!(class_of(Layout::from_size_align(8, 2048).unwrap()), None);
    assert_eq!(capacity(0), (4096 - 64) / 16);
    assert_eq!(capacity(6), 3);
}

#[test]
fn small_large_stats_and_trim() {
    let ram = ram(256);
    let (pages, total) = pages(&ram);
    let heap = Heap::<_, _, HOST_CPUS>::new(&pages, ThreadCpus);
    let l24 = Layout::from_size_align(24, 8).unwrap();
    let a = heap.allocate(l24);
    let b = heap.allocate(l24);
    assert!(!a.is_null() && !b.is_null() && a != b);
    assert_eq!(a.addr() % 32, 0);
    let big = Layout::from_size_align(10_000, 8192).unwrap();
    let c = heap.allocate(big);
    assert_eq!(c.addr() % 8192, 0);
    let s = heap.stats();
    assert_eq!(s.classes[1].objects, 2);
    assert_eq!(s.classes[1].bytes, 64);
    assert_eq!(s.large_bytes, 3 * 4096);
    assert_eq!(s.bytes_in_use, 64 + 3 * 4096);
    assert_eq!(s.slab_pages, 1);
    assert_eq!(s.free_pages, total - 4);
    // SAFETY: from this heap with these layouts, unused.
    unsafe {
        heap.deallocate(a, l24);
        heap.deallocate(b, l24);
        heap.deallocate(c, big);
    }
    let s = heap.stats();
    assert_eq!((s.bytes_in_use, s.large_bytes, s.slab_pages), (0, 0, 1), "one empty slab is kept");
    heap.trim();
    assert_eq!(heap.stats().slab_pages, 0);
    assert_eq!(heap.stats().free_pages, total);
}

#[test]
fn out_of_memory_is_null_not_a_panic() {
    let ram = ram(8);
    let (pages, _) = pages(&ram);
    let heap = Heap::<_, _, HOST_CPUS>::new(&pages, ThreadCpus);
    assert!(heap.allocate(Layout::from_size_align(1 << 20, 8).unwrap()).is_null());
    assert!(heap.allocate(Layout::from_size_align(isize::MAX as usize - 8192, 8).unwrap()).is_null());
    let l = Layout::from_size_align(1024, 1024).unwrap();
    let mut got = Vec::new();
    loop {
        let p = heap.allocate(l);
        if p.is_null() {
            break;
        }
        got.push(p);
    }
    assert_eq!(got.len(), 7 * 3, "7 free pages, 3 objects each");
    for p in got {
        // SAFETY: from this heap, unused.
        unsafe { heap.deallocate(p, l) };
    }
}

#[test]
fn cross_thread_frees_return_to_the_owner() {
    let ram = ram(512);
    let (pages, total) = pages(&ram);
    let heap = Heap::<_, _, HOST_CPUS>::new(&pages, ThreadCpus);
    let l = Layout::from_size_align(64, 8).unwrap();
    let objs: Vec<usize> = (0..500).map(|_| heap.allocate(l).addr()).collect();
    let slabs = heap.stats().slab_pages;
    std::thread::scope(|s| {
        s.spawn(|| {
            for &o in &objs {
                // SAFETY: allocated above, handed over to this thread, unused.
                unsafe { heap.deallocate(std::ptr::with_exposed_provenance_mut(o), l) };
            }
            heap.trim();
        });
    });
    // Freed on another CPU: counted, but the slabs are still ours until we collect.
    assert_eq!(heap.stats().classes[2].objects, 0);
    assert_eq!(heap.stats().slab_pages, slabs);
    heap.trim();
    assert_eq!(heap.stats().slab_pages, 0);
    assert_eq!(heap.stats().free_pages, total);
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(usize, u32),
    Free(usize),
    Trim,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..200, 0u32..7).prop_map(|(s, a)| Op::Alloc(s, a)),
        2 => (1usize..1200, 0u32..11).prop_map(|(s, a)| Op::Alloc(s, a)),
        1 => (1usize..20_000, 0u32..14).prop_map(|(s, a)| Op::Alloc(s, a)),
        7 => any::<usize>().prop_map(Op::Free),
        1 => Just(Op::Trim),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random allocations of every Layout shape and frees, against a model of live blocks:
    /// blocks never overlap, alignment is honoured, contents survive until the free, the
    /// statistics match the model, and when everything is freed and trimmed every page is
    /// back in the page allocator.
    #[test]
    fn matches_model(ops in proptest::collection::vec(op(), 1..250), ram_pages in 40usize..400) {
        let ram = ram(ram_pages);
        let (pages, total) = pages(&ram);
        let heap = Heap::<_, _, HOST_CPUS>::new(&pages, ThreadCpus);
        // start -> (layout, fill byte)
        let mut live: BTreeMap<usize, (Layout, u8)> = BTreeMap::new();
        let mut fill = 0u8;
        for op in ops {
            match op {
                Op::Alloc(size, align) => {
                    let layout = Layout::from_size_align(size, 1 << align).unwrap();
                    let p = heap.allocate(layout);
                    if p.is_null() {
                        // Only when the pages really are not there.
                        match class_of(layout) {
                            Some(_) => prop_assert!(pages.alloc_page().is_err(), "null for {layout:?} with a page free"),
                            None => {
                                pages.request_drain();
                                let n = size.div_ceil(4096) as u64;
                                let r = pages.global().alloc_aligned(n, layout.align().max(4096) as u64);
                                prop_assert!(r.is_err(), "null for {layout:?} though {n} pages are free");
                            }
                        }
                        continue;
                    }
                    prop_assert_eq!(p.addr() % layout.align(), 0, "alignment of {:?}", layout);
                    let start = p.addr();
                    if let Some((&s, &(l, _))) = live.range(..=start).next_back() {
                        prop_assert!(s + l.size() <= start, "overlaps the block at {s:#x}");
                    }
                    if let Some((&s, _)) = live.range(start..).next() {
                        prop_assert!(start + size <= s, "overlaps the block at {s:#x}");
                    }
                    fill = fill.wrapping_add(1);
                    // SAFETY: `size` bytes at `p` are ours now.
                    unsafe { p.write_bytes(fill, size) };
                    live.insert(start, (layout, fill));
                }
                Op::Free(i) if !live.is_empty() => {
                    let start = *live.keys().nth(i % live.len()).unwrap();
                    let (layout, byte) = live.remove(&start).unwrap();
                    let p: *mut u8 = std::ptr::with_exposed_provenance_mut(start);
                    // SAFETY: a live block of ours.
                    let contents = unsafe { std::slice::from_raw_parts(p, layout.size()) };
                    prop_assert!(contents.iter().all(|&b| b == byte), "contents of {start:#x} changed");
                    // SAFETY: a live block of this heap with its layout.
                    unsafe { heap.deallocate(p, layout) };
                }
                Op::Trim => heap.trim(),
                Op::Free(_) => {}
            }
            let s = heap.stats();
            for (class, cs) in s.classes.iter().enumerate() {
                let n = live.values().filter(|(l, _)| class_of(*l) == Some(class)).count() as u64;
                prop_assert_eq!(cs.objects, n);
            }
            let large: u64 = live.values().filter(|(l, _)| class_of(*l).is_none())
                .map(|(l, _)| l.size().div_ceil(4096) as u64 * 4096).sum();
            prop_assert_eq!(s.large_bytes, large);
            prop_assert!(s.slab_pages + large / 4096 + s.free_pages <= total);
        }
        for (start, (layout, _)) in std::mem::take(&mut live) {
            // SAFETY: a live block of this heap with its layout.
            unsafe { heap.deallocate(std::ptr::with_exposed_provenance_mut(start), layout) };
        }
        heap.trim();
        let s = heap.stats();
        prop_assert_eq!((s.bytes_in_use, s.slab_pages), (0, 0));
        prop_assert_eq!(s.free_pages, total);
    }
}
