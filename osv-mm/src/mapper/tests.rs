//! Walker tests against [`FakeMemory`]: fixtures, splits, rollback, providers, and proptest
//! models of random map/unmap/protect sequences.

use std::collections::{BTreeMap, BTreeSet};
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::fake::FakeMemory;
use crate::provider::{AnonZero, PhysRange};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;

fn r(a: u64, b: u64) -> Range<VirtAddr> {
    VirtAddr::new(a)..VirtAddr::new(b)
}

/// Frees what a token carries (the tables in these tests are never live).
fn done(res: Result<MapperFlush>, m: &Mapper<&FakeMemory, &FakeMemory>) {
    m.discard(res.unwrap());
}

fn table_frames(m: &Mapper<&FakeMemory, &FakeMemory>) -> Vec<(PhysAddr, u8)> {
    let mut v = Vec::new();
    m.for_each_table(|f, l| v.push((f, l)));
    v
}

#[test]
fn map_small_and_huge() {
    let mem = FakeMemory::new(32);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    // 0x1000..0x40_3000 -> 0x20_1000..: VA and PA both 2 MiB-congruent, so the 2 MiB at
    // 0x20_0000 is one large page, the ends are 4 KiB pages.
    done(m.map(r(0x1000, 0x40_3000), PhysAddr::new(0x20_1000), Flags::RW), &m);
    assert_eq!(
        m.translate(VirtAddr::new(0x1000)),
        Some((PhysAddr::new(0x20_1000), Flags::RW, PageSize::Size4K))
    );
    assert_eq!(
        m.translate(VirtAddr::new(0x23_4567)),
        Some((PhysAddr::new(0x43_4567), Flags::RW, PageSize::Size2M))
    );
    assert_eq!(m.translate(VirtAddr::new(0x40_2fff)).unwrap().2, PageSize::Size4K);
    assert_eq!(m.translate(VirtAddr::new(0x40_3000)), None);
    assert_eq!(m.translate(VirtAddr::new(0)), None);
    // root, PDPT, PD, two PTs.
    assert_eq!(mem.in_use(), 5);
    assert_eq!(m.mapped_pages(r(0, 0x80_0000)).unwrap(), 0x40_2000 / K4);
    // Incongruent VA/PA: no large page possible.
    done(m.map(r(0x4000_0000, 0x4040_0000), PhysAddr::new(0x1000), Flags::READ), &m);
    assert_eq!(m.translate(VirtAddr::new(0x4020_0000)).unwrap().2, PageSize::Size4K);
    assert_eq!(m.map(r(0x3000, 0x5000), PhysAddr::new(0), Flags::RW).unwrap_err(), Error::AlreadyMapped);
    done(m.unmap(r(0, 0x8000_0000)), &m);
    assert_eq!(mem.in_use(), 1);
}

#[test]
fn upper_half_and_bad_ranges() {
    let mem = FakeMemory::new(16);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    let base = 0xffff_8000_0000_0000;
    done(m.map(r(base, base + M2), PhysAddr::new(0), Flags::RW | Flags::GLOBAL), &m);
    assert_eq!(m.translate(VirtAddr::new(base + 5)).unwrap().0, PhysAddr::new(5));
    let e = |x: Result<MapperFlush>| x.unwrap_err();
    assert_eq!(e(m.map(r(0x1001, 0x2000), PhysAddr::new(0), Flags::RW)), Error::NotAligned);
    assert_eq!(e(m.map(r(0x1000, 0x2000), PhysAddr::new(0x10), Flags::RW)), Error::NotAligned);
    assert_eq!(e(m.map(r(0x2000, 0x1000), PhysAddr::new(0), Flags::RW)), Error::InvalidRange);
    assert_eq!(e(m.map(r(0x7fff_ffff_f000, base + K4), PhysAddr::new(0), Flags::RW)), Error::InvalidRange);
    assert_eq!(e(m.map(r(0, K4), PhysAddr::new(1 << 52), Flags::RW)), Error::InvalidRange);
    assert_eq!(e(m.map(r(0, K4), PhysAddr::new(0), Flags::USER)), Error::NoAccess);
    assert_eq!(e(m.protect(r(0, K4), Flags::READ)), Error::NotMapped);
    done(m.unmap(r(0, K4)), &m);
    done(m.unmap(r(base, base + M2)), &m);
    assert_eq!(mem.in_use(), 1);
}

#[test]
fn protect_splits_a_huge_page_and_flushes() {
    let mem = FakeMemory::new(16);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    done(m.map(r(M2, 3 * M2), PhysAddr::new(0x4000_0000), Flags::RW), &m);
    let before = mem.in_use();
    let f = m.protect(r(M2 + K4, M2 + 3 * K4), Flags::RX).unwrap();
    assert!(!f.is_all());
    let ranges: Vec<_> = f.ranges().collect();
    // The split 2 MiB page, then the two pages whose rights changed (inside it).
    assert_eq!(ranges[0], r(M2, 2 * M2));
    m.discard(f);
    assert_eq!(mem.in_use(), before + 1);
    assert_eq!(
        m.translate(VirtAddr::new(M2 + K4)),
        Some((PhysAddr::new(0x4000_1000), Flags::RX, PageSize::Size4K))
    );
    assert_eq!(
        m.translate(VirtAddr::new(M2)),
        Some((PhysAddr::new(0x4000_0000), Flags::RW, PageSize::Size4K))
    );
    assert_eq!(m.translate(VirtAddr::new(2 * M2)).unwrap().2, PageSize::Size2M);
    // Protecting a whole large page keeps it large.
    done(m.protect(r(2 * M2, 3 * M2), Flags::READ), &m);
    assert_eq!(
        m.translate(VirtAddr::new(2 * M2 + 8)).unwrap(),
        (PhysAddr::new(0x4020_0008), Flags::READ, PageSize::Size2M)
    );
    done(m.unmap(r(M2 + K4, 3 * M2)), &m);
    assert_eq!(m.mapped_pages(r(0, 4 * M2)).unwrap(), 1);
    done(m.unmap(r(M2, M2 + K4)), &m);
    assert_eq!(mem.in_use(), 1);
}

#[test]
fn splits_a_1g_page_from_the_boot_tables() {
    let mem = FakeMemory::new(16);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    // Boot code left a 1 GiB page at 1 GiB: hand-build it with typed entries.
    let pdpt = mem.allocate_frame().unwrap();
    // SAFETY: fresh frame from the mapper's own allocator, now a level-2 table.
    let t2 = unsafe { table_at::<L2, _>(&mem, pdpt) };
    t2.clear();
    t2.entry(1).write(PtElement::<L2>::huge_page(PhysAddr::new(0x8000_0000), Flags::RW).unwrap());
    m.root_table().entry(0).write(PtElement::<L3>::table(pdpt).unwrap());
    assert_eq!(
        m.translate(VirtAddr::new(0x4000_0123)).unwrap(),
        (PhysAddr::new(0x8000_0123), Flags::RW, PageSize::Size1G)
    );
    // Unmapping one 4 KiB page in the middle splits 1G -> 2M -> 4K.
    let mid = 0x4000_0000 + 5 * M2 + 7 * K4;
    let f = m.unmap(r(mid, mid + K4)).unwrap();
    assert!(!f.is_empty());
    m.discard(f);
    assert_eq!(m.translate(VirtAddr::new(mid)), None);
    assert_eq!(m.translate(VirtAddr::new(mid + K4)).unwrap().2, PageSize::Size4K);
    assert_eq!(
        m.translate(VirtAddr::new(mid + M2)).unwrap(),
        (PhysAddr::new(0x8000_0000 + 6 * M2 + 7 * K4), Flags::RW, PageSize::Size2M)
    );
    assert_eq!(m.mapped_pages(r(0x4000_0000, 0x8000_0000)).unwrap(), (1 << 30) / K4 - 1);
    done(m.unmap(r(0x4000_0000, 0x8000_0000)), &m);
    assert_eq!(mem.in_use(), 1);
}

#[test]
fn out_of_frames_midway_rolls_back() {
    let mem = FakeMemory::new(32);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    done(m.map(r(0x4000_0000, 0x4000_1000), PhysAddr::new(0), Flags::RW), &m);
    let base = mem.in_use();
    // Needs PD for the 1 GiB region at 0 plus two PTs (the 2 MiB in the middle is large);
    // the PDPT is shared. Allow only the PD and one PT.
    mem.set_limit(Some(base + 2));
    let err = m.map(r(0x1000, 0x40_3000), PhysAddr::new(0x20_1000), Flags::RW).unwrap_err();
    assert_eq!(err, Error::OutOfFrames);
    assert_eq!(mem.in_use(), base);
    assert_eq!(m.mapped_pages(r(0, 0x8000_0000)).unwrap(), 1);
    // Split for unmap fails: nothing changes.
    mem.set_limit(None);
    done(m.map(r(M2 * 8, M2 * 9), PhysAddr::new(0), Flags::RW), &m);
    let base = mem.in_use();
    mem.set_limit(Some(base));
    assert_eq!(m.unmap(r(M2 * 8 + K4, M2 * 9)).unwrap_err(), Error::OutOfFrames);
    assert_eq!(m.mapped_pages(r(M2 * 8, M2 * 9)).unwrap(), 512);
    assert_eq!(m.translate(VirtAddr::new(M2 * 8)).unwrap().2, PageSize::Size2M);
    assert_eq!(mem.in_use(), base);
    mem.set_limit(None);
    done(m.unmap(r(0, 0x8000_0000)), &m);
    assert_eq!(mem.in_use(), 1);
    assert_eq!(table_frames(&m), vec![(m.root(), 3)]);
}

#[test]
fn anon_zero_provider_fills_and_frees() {
    let mem = FakeMemory::new(64);
    let pages = FakeMemory::new(8);
    let anon = AnonZero::new(&pages, &pages);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    done(m.populate(r(0x10_0000, 0x10_4000), 0, Flags::RW, true, &anon), &m);
    assert_eq!(pages.in_use(), 4);
    let (pa, flags, size) = m.translate(VirtAddr::new(0x10_2000)).unwrap();
    assert_eq!((flags, size), (Flags::RW, PageSize::Size4K));
    assert!(pages.is_allocated(pa));
    assert_eq!(pages.read_u64(pa, 100), 0, "anonymous pages are zero-filled");
    // Not enough pages: rolled back through the provider, nothing leaks.
    pages.set_limit(Some(6));
    assert_eq!(
        m.populate(r(0x20_0000, 0x20_4000), 0, Flags::RW, false, &anon).unwrap_err(),
        Error::OutOfFrames
    );
    assert_eq!(pages.in_use(), 4);
    assert_eq!(m.mapped_pages(r(0x20_0000, 0x20_4000)).unwrap(), 0);
    done(m.unmap_with(r(0x10_0000, 0x10_4000), 0, &anon), &m);
    assert_eq!(pages.in_use(), 0);
    assert_eq!(mem.in_use(), 1);
}

#[test]
fn anon_zero_race_loser_frees_its_frame() {
    let pages = FakeMemory::new(4);
    let anon = AnonZero::new(&pages, &pages);
    let table = PageTable::<L0>::new();
    let template = PtElement::<L0>::empty().with_flags(Flags::RW);
    // CPU 1 won while CPU 2 was allocating: the entry is already set.
    let winner = PtElement::<L0>::page(PhysAddr::new(0x7000), Flags::RW).unwrap();
    table.entry(3).write(winner);
    assert!(anon.map(0, table.entry(3), template, true));
    assert_eq!(table.entry(3).read(), winner);
    assert_eq!(pages.in_use(), 0);
    pages.set_limit(Some(0));
    assert!(!anon.map(0, table.entry(4), template, true));
    assert!(table.entry(4).read().is_empty());
}

#[test]
fn mmio_provider_uses_huge_pages_when_aligned() {
    let mem = FakeMemory::new(16);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    let bar = PhysRange::new(PhysAddr::new(0xfe00_0000), 4 * M2);
    let flags = Flags::RW | Flags::NO_CACHE;
    done(m.populate(r(0x4000_0000, 0x4000_0000 + 4 * M2), 0, flags, true, &bar), &m);
    let (pa, f, size) = m.translate(VirtAddr::new(0x4020_0010)).unwrap();
    assert_eq!((pa, f, size), (PhysAddr::new(0xfe20_0010), flags, PageSize::Size2M));
    // Starting 4 KiB into the BAR: no 2 MiB-aligned physical page, all 4 KiB.
    done(m.populate(r(0x8000_0000, 0x8000_0000 + M2), K4, flags, true, &bar), &m);
    assert_eq!(
        m.translate(VirtAddr::new(0x8000_0000)).unwrap(),
        (PhysAddr::new(0xfe00_1000), flags, PageSize::Size4K)
    );
    // Beyond the BAR: the provider declines, rolled back.
    let err = m.populate(r(0xc000_0000, 0xc000_0000 + 5 * M2), 0, flags, true, &bar).unwrap_err();
    assert_eq!(err, Error::OutOfFrames);
    assert_eq!(m.mapped_pages(r(0xc000_0000, 0xc000_0000 + 5 * M2)).unwrap(), 0);
    done(m.unmap_with(r(0x4000_0000, 0x4000_0000 + 4 * M2), 0, &bar), &m);
    done(m.unmap(r(0x8000_0000, 0x8000_0000 + M2)), &m);
    assert_eq!(mem.in_use(), 1);
}

// ---- proptest model ----

/// The window: 0..64 MiB, 16384 pages.
const WINDOW: u64 = 64 << 20;

#[derive(Clone, Debug)]
enum Step {
    Map { start: u64, pages: u64, phys: u64, flags: Flags },
    Unmap { start: u64, pages: u64 },
    Protect { start: u64, pages: u64, flags: Flags },
}

fn flags() -> impl Strategy<Value = Flags> {
    prop_oneof![Just(Flags::READ), Just(Flags::RW), Just(Flags::RX), Just(Flags::RW | Flags::USER)]
}

/// A range in the window: either page-granular anywhere, or 2 MiB-aligned so large pages appear.
fn range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        (0..WINDOW / K4, 1..64u64).prop_map(|(p, n)| (p * K4, n)),
        (0..WINDOW / M2, 1..4u64).prop_map(|(p, n)| (p * M2, n * 512)),
        (0..WINDOW / M2, 1..4u64, 0..512u64).prop_map(|(p, n, d)| (p * M2 + d * K4, n * 512 - d)),
    ]
    .prop_map(|(s, n)| (s, n.min((WINDOW - s) / K4)))
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (range(), 0..64u64, 0..512u64, flags()).prop_map(|((start, pages), p2, p4, flags)| {
            // Sometimes 2 MiB-congruent with the VA (large pages possible), sometimes not.
            let phys = if p4 % 2 == 0 { p2 * M2 + (start % M2) } else { p2 * M2 + p4 * K4 };
            Step::Map { start, pages, phys, flags }
        }),
        2 => range().prop_map(|(start, pages)| Step::Unmap { start, pages }),
        2 => (range(), flags()).prop_map(|((start, pages), flags)| Step::Protect { start, pages, flags }),
    ]
}

type Model = BTreeMap<u64, (u64, Flags)>;

/// Releases a token the way a kernel does (`Mapper::flush`), after checking that the frames
/// it carries are exactly the allocated frames no table uses: unlinked tables are neither
/// freed early nor lost.
fn settle(m: &Mapper<&FakeMemory, &FakeMemory>, f: MapperFlush) {
    let mem = *m.allocator();
    assert_eq!(mem.in_use() as u64, table_frames(m).len() as u64 + f.table_frames(), "carried frames");
    assert_eq!(f.abandoned_chains(), 0);
    struct Count(std::cell::Cell<u32>);
    impl TlbFlush for Count {
        fn flush_range(&self, _: Range<VirtAddr>) {
            self.0.set(self.0.get() + 1);
        }
        fn flush_all(&self) {
            self.0.set(self.0.get() + 1);
        }
    }
    let tlb = Count(std::cell::Cell::new(0));
    let carried = f.table_frames();
    m.flush(f, &tlb);
    assert!(carried == 0 || tlb.0.get() > 0, "frames freed without a flush");
}

fn apply(model: &mut Model, m: &mut Mapper<&FakeMemory, &FakeMemory>, s: &Step) -> Result<()> {
    match *s {
        Step::Map { start, pages, phys, flags } => {
            let res = m.map(r(start, start + pages * K4), PhysAddr::new(phys), flags);
            let any = (0..pages).any(|i| model.contains_key(&(start + i * K4)));
            match res {
                Ok(f) => {
                    assert!(!any, "map succeeded over a mapped page");
                    settle(m, f);
                    for i in 0..pages {
                        model.insert(start + i * K4, (phys + i * K4, flags));
                    }
                }
                Err(Error::AlreadyMapped) => assert!(any),
                Err(e) => return Err(e),
            }
        }
        Step::Unmap { start, pages } => {
            let f = m.unmap(r(start, start + pages * K4))?;
            settle(m, f);
            for i in 0..pages {
                model.remove(&(start + i * K4));
            }
        }
        Step::Protect { start, pages, flags } => {
            let all = (0..pages).all(|i| model.contains_key(&(start + i * K4)));
            match m.protect(r(start, start + pages * K4), flags) {
                Ok(f) => {
                    assert!(all, "protect succeeded over a hole");
                    settle(m, f);
                    for i in 0..pages {
                        model.get_mut(&(start + i * K4)).unwrap().1 = flags;
                    }
                }
                Err(Error::NotMapped) => assert!(!all),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Everything the model promises, checked exhaustively over the window.
fn check(model: &Model, m: &Mapper<&FakeMemory, &FakeMemory>, mem: &FakeMemory, merges: bool) {
    // Pages of the window, compared one 2 MiB chunk at a time to keep it fast.
    let mut va = 0;
    while va < WINDOW {
        match m.translate(VirtAddr::new(va)) {
            Some((pa, flags, PageSize::Size2M)) if va % M2 == 0 => {
                for i in 0..512 {
                    let want = model.get(&(va + i * K4)).copied();
                    assert_eq!(want, Some((pa.as_u64() + i * K4, flags)), "2M page at {va:#x}+{i}");
                }
                va += M2;
                continue;
            }
            got => {
                let want = model.get(&va).map(|&(p, f)| (PhysAddr::new(p), f));
                assert_eq!(got.map(|(p, f, _)| (p, f)), want, "page {va:#x}");
            }
        }
        va += K4;
    }
    // Merged: a 2 MiB range the model maps with 512 contiguous pages of a 2 MiB-aligned
    // frame and equal flags is one 2 MiB page (unless a merge could not get a list page).
    if merges {
        for c in (0..WINDOW).step_by(M2 as usize) {
            let Some(&(p0, f0)) = model.get(&c) else { continue };
            let uniform =
                p0 % M2 == 0 && (0..512).all(|i| model.get(&(c + i * K4)) == Some(&(p0 + i * K4, f0)));
            if uniform {
                assert_eq!(m.translate(VirtAddr::new(c)).unwrap().2, PageSize::Size2M, "unmerged {c:#x}");
            }
        }
    }
    // Nothing outside the window.
    assert_eq!(m.mapped_pages(r(WINDOW, 1 << 47)).unwrap(), 0);
    assert_eq!(m.mapped_pages(r(0, WINDOW)).unwrap(), model.len() as u64);
    // Table frames: distinct, all handed out by the allocator, and nothing else is.
    let tables = table_frames(m);
    let set: BTreeSet<_> = tables.iter().map(|t| t.0).collect();
    assert_eq!(set.len(), tables.len(), "a table frame is used twice");
    assert_eq!(set, mem.allocated().into_iter().collect(), "leaked or foreign table frames");
}

fn run_model(steps: &[Step], limit: Option<usize>) {
    let mem = FakeMemory::new(256);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    let mut model = Model::new();
    for s in steps {
        mem.set_limit(limit);
        let before = model.clone();
        match apply(&mut model, &mut m, s) {
            Ok(()) => {}
            Err(Error::OutOfFrames) => {
                assert!(limit.is_some());
                assert_eq!(model, before);
            }
            Err(e) => panic!("{s:?}: unexpected {e:?}"),
        }
        check(&model, &m, &mem, limit.is_none());
    }
    mem.set_limit(None);
    done(m.unmap(r(0, WINDOW)), &m);
    model.clear();
    check(&model, &m, &mem, true);
    assert_eq!(mem.in_use(), 1, "all tables but the root are back");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn walker_matches_model(steps in proptest::collection::vec(step(), 1..24)) {
        run_model(&steps, None);
    }

    #[test]
    fn out_of_frames_keeps_model(steps in proptest::collection::vec(step(), 1..24), limit in 2..12usize) {
        run_model(&steps, Some(limit));
    }
}

// ---- deferred freeing, merging, shootdown ----

/// A TLB that records what it was asked to invalidate, and checks at each shootdown that
/// the frames the token carries are still allocated (not yet reusable).
struct Recorder<'a> {
    mem: &'a FakeMemory,
    must_be_live: Vec<PhysAddr>,
    batches: std::cell::RefCell<Vec<(bool, Vec<Range<VirtAddr>>)>>,
}

impl TlbFlush for Recorder<'_> {
    fn flush_range(&self, _: Range<VirtAddr>) {
        unreachable!("shootdown is overridden")
    }
    fn flush_all(&self) {
        unreachable!("shootdown is overridden")
    }
    fn shootdown(&self, batch: &MapperFlush) {
        for &f in &self.must_be_live {
            assert!(self.mem.is_allocated(f), "{f:?} was freed before the shootdown");
        }
        self.batches.borrow_mut().push((batch.is_all(), batch.ranges().collect()));
    }
}

fn recorder(mem: &FakeMemory, must_be_live: Vec<PhysAddr>) -> Recorder<'_> {
    Recorder { mem, must_be_live, batches: Default::default() }
}

#[test]
fn emptied_tables_are_freed_only_after_the_flush() {
    let mem = FakeMemory::new(16);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    let va = 0x40_0000_0000 + 7 * K4;
    done(m.map(r(va, va + K4), PhysAddr::new(0x5000), Flags::RW), &m);
    let tables: Vec<PhysAddr> = table_frames(&m).into_iter().filter(|t| t.1 < 3).map(|t| t.0).collect();
    assert_eq!(tables.len(), 3);
    let token = m.unmap(r(va, va + K4)).unwrap();
    assert_eq!(token.table_frames(), 3, "PT, PD and PDPT became empty");
    assert_eq!(table_frames(&m).len(), 1, "unlinked at once");
    // Not reusable before the flush: the allocator hands out every other frame first.
    let mut grabbed = Vec::new();
    while let Some(f) = mem.allocate_frame() {
        assert!(!tables.contains(&f), "{f:?} reused before the flush");
        grabbed.push(f);
    }
    for f in grabbed {
        // SAFETY: just allocated above, unused.
        unsafe { mem.free_frame(f) };
    }
    let tlb = recorder(&mem, tables.clone());
    m.flush(token, &tlb);
    // The page's range: one INVLPG in it also drops the paging-structure cache entries of
    // the freed tables (SDM vol. 3A §4.10.4.1).
    assert_eq!(*tlb.batches.borrow(), vec![(false, vec![r(va, va + K4)])]);
    assert!(tables.iter().all(|&f| !mem.is_allocated(f)), "freed after the flush");
    assert_eq!(mem.in_use(), 1);
}

#[test]
fn contiguous_4k_pages_merge_into_a_2m_page() {
    let mem = FakeMemory::new(16);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    let (va, pa) = (0x4000_0000, 0x8020_0000);
    // 511 pages: still a table of 4 KiB pages.
    done(m.map(r(va, va + M2 - K4), PhysAddr::new(pa), Flags::RW), &m);
    assert_eq!(m.translate(VirtAddr::new(va)).unwrap().2, PageSize::Size4K);
    let pt = table_frames(&m).into_iter().find(|t| t.1 == 0).unwrap().0;
    // The last page completes a contiguous, aligned run with equal flags: one 2 MiB page.
    let token = m.map(r(va + M2 - K4, va + M2), PhysAddr::new(pa + M2 - K4), Flags::RW).unwrap();
    assert_eq!(
        m.translate(VirtAddr::new(va + 0x1234)),
        Some((PhysAddr::new(pa + 0x1234), Flags::RW, PageSize::Size2M))
    );
    assert_eq!(token.table_frames(), 2, "the PT and the list page carrying it");
    assert!(mem.is_allocated(pt));
    let tlb = recorder(&mem, vec![pt]);
    m.flush(token, &tlb);
    assert_eq!(*tlb.batches.borrow(), vec![(false, vec![r(va, va + M2)])]);
    assert!(!mem.is_allocated(pt));
    // A page with other flags or a non-contiguous frame does not merge.
    let mut other = Mapper::new(&mem, &mem).unwrap();
    done(other.map(r(va, va + M2 - K4), PhysAddr::new(pa), Flags::RW), &other);
    done(other.map(r(va + M2 - K4, va + M2), PhysAddr::new(pa + M2 - K4), Flags::READ), &other);
    assert_eq!(other.translate(VirtAddr::new(va)).unwrap().2, PageSize::Size4K);
    done(other.protect(r(va + M2 - K4, va + M2), Flags::RW), &other);
    assert_eq!(other.translate(VirtAddr::new(va)).unwrap().2, PageSize::Size2M, "merged by protect");
    done(other.unmap(r(va + K4, va + 2 * K4)), &other);
    done(other.map(r(va + K4, va + 2 * K4), PhysAddr::new(0x9000_0000), Flags::RW), &other);
    assert_eq!(other.translate(VirtAddr::new(va)).unwrap().2, PageSize::Size4K, "not contiguous");
    done(other.unmap(r(0, 1 << 47)), &other);
    done(m.unmap(r(0, 1 << 47)), &m);
    assert_eq!(mem.in_use(), 2, "the two roots");
}

#[test]
fn protect_round_trip_splits_then_merges_back() {
    let mem = FakeMemory::new(16);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    done(m.map(r(M2, 2 * M2), PhysAddr::new(0x4000_0000), Flags::RW | Flags::GLOBAL), &m);
    let tables = mem.in_use();
    done(m.protect(r(M2 + 5 * K4, M2 + 6 * K4), Flags::READ), &m);
    assert_eq!(m.translate(VirtAddr::new(M2)).unwrap().2, PageSize::Size4K);
    assert_eq!(mem.in_use(), tables + 1);
    let token = m.protect(r(M2 + 5 * K4, M2 + 6 * K4), Flags::RW | Flags::GLOBAL).unwrap();
    assert_eq!(
        m.translate(VirtAddr::new(M2 + 5 * K4)),
        Some((PhysAddr::new(0x4000_5000), Flags::RW | Flags::GLOBAL, PageSize::Size2M))
    );
    let tlb = recorder(&mem, vec![]);
    m.flush(token, &tlb);
    assert_eq!(mem.in_use(), tables, "the split table is back after the flush");
    done(m.unmap(r(M2, 2 * M2)), &m);
    assert_eq!(mem.in_use(), 1);
}

#[test]
fn tokens_with_frames_batch_into_one_shootdown() {
    let mem = FakeMemory::new(64);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    // Six 1 GiB regions with one page each, under one PDPT: each unmap empties a PT and a
    // PD, and the last one the PDPT too.
    let vas: Vec<u64> = (0..6).map(|i| (i + 1) << 30).collect();
    for &va in &vas {
        done(m.map(r(va, va + K4), PhysAddr::new(0x7000), Flags::RW), &m);
    }
    let mut batch = MapperFlush::none();
    let mut via_merge = MapperFlush::none();
    for (i, &va) in vas.iter().enumerate() {
        let t = m.unmap(r(va, va + K4)).unwrap();
        if i < 3 {
            m.merge_flush(&mut batch, t);
        } else {
            via_merge.merge(t);
        }
    }
    assert_eq!(via_merge.abandoned_chains(), 0);
    m.merge_flush(&mut batch, via_merge);
    assert_eq!(batch.table_frames(), 2 * 6 + 1, "PT and PD of each, and the last PDPT");
    let tlb = recorder(&mem, vec![]);
    m.flush(batch, &tlb);
    assert_eq!(tlb.batches.borrow().len(), 1, "one shootdown for the batch");
    assert_eq!(mem.in_use(), 1);
}

/// A multi-CPU shootdown, as a kernel would plug in: each CPU has a software TLB (cached
/// page translations); `shootdown` sends one "IPI" per batch that drops the batch's ranges
/// on every CPU.
#[test]
fn multi_cpu_shootdown_invalidates_every_cpu_before_frames_are_freed() {
    use std::cell::{Cell, RefCell};
    struct Smp<'a> {
        tlbs: Vec<RefCell<BTreeSet<u64>>>,
        ipis: Cell<u32>,
        mem: &'a FakeMemory,
        watched: Vec<PhysAddr>,
    }
    impl TlbFlush for Smp<'_> {
        fn flush_range(&self, _: Range<VirtAddr>) {
            unreachable!()
        }
        fn flush_all(&self) {
            unreachable!()
        }
        fn shootdown(&self, batch: &MapperFlush) {
            assert!(self.watched.iter().all(|&f| self.mem.is_allocated(f)));
            self.ipis.set(self.ipis.get() + 1);
            for tlb in &self.tlbs {
                let mut t = tlb.borrow_mut();
                if batch.is_all() {
                    t.clear();
                }
                for r in batch.ranges() {
                    t.retain(|&p| !(r.start.as_u64()..r.end.as_u64()).contains(&p));
                }
            }
        }
    }
    let mem = FakeMemory::new(64);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    let base = 0x40_0000_0000;
    done(m.map(r(base, base + 16 * K4), PhysAddr::new(0x10_0000), Flags::RW), &m);
    let tables: Vec<PhysAddr> = table_frames(&m).into_iter().filter(|t| t.1 < 3).map(|t| t.0).collect();
    let smp = Smp {
        tlbs: (0..4).map(|_| RefCell::new(BTreeSet::new())).collect(),
        ipis: Cell::new(0),
        mem: &mem,
        watched: tables.clone(),
    };
    // Every CPU touched every page.
    for t in &smp.tlbs {
        t.borrow_mut().extend((0..16).map(|i| base + i * K4));
    }
    let token = m.unmap(r(base, base + 16 * K4)).unwrap();
    m.flush(token, &smp);
    assert_eq!(smp.ipis.get(), 1);
    assert!(smp.tlbs.iter().all(|t| t.borrow().is_empty()), "a CPU kept a stale translation");
    assert!(tables.iter().all(|&f| !mem.is_allocated(f)));
    assert_eq!(mem.in_use(), 1);
}

#[test]
fn populate_anon_huge_or_declines() {
    let mem = FakeMemory::new(2048);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    let va = 0x4000_0000;
    let t = m.populate_anon(r(va, va + M2), Flags::RW, PageSize::Size2M).unwrap();
    m.discard(t);
    let (pa, flags, size) = m.translate(VirtAddr::new(va + 8)).unwrap();
    assert_eq!((flags, size), (Flags::RW, PageSize::Size2M));
    assert!(pa.align_down(M2).is_aligned(M2));
    assert!((0..512).all(|i| mem.read_u64(PhysAddr::new(pa.as_u64() - 8 + i * K4), 3) == 0), "zeroed");
    assert_eq!(
        m.populate_anon(r(va + K4, va + M2), Flags::RW, PageSize::Size2M).unwrap_err(),
        Error::NotAligned
    );
    // No 2 MiB run: declined, nothing changed, no frame leaked.
    mem.set_huge(false);
    let before = mem.in_use();
    assert_eq!(
        m.populate_anon(r(va + M2, va + 2 * M2), Flags::RW, PageSize::Size2M).unwrap_err(),
        Error::OutOfFrames
    );
    assert_eq!(mem.in_use(), before);
    assert_eq!(m.mapped_pages(r(va + M2, va + 2 * M2)).unwrap(), 0);
    let t = m.populate_anon(r(va + M2, va + M2 + K4), Flags::RW, PageSize::Size4K).unwrap();
    m.discard(t);
    assert_eq!(m.translate(VirtAddr::new(va + M2)).unwrap().2, PageSize::Size4K);
    // Unmapping through the provider frees the large page's 512 frames.
    let anon = AnonZero::new(&mem, &mem);
    let t = m.unmap_with(r(va, va + 2 * M2), 0, &anon).unwrap();
    m.discard(t);
    assert_eq!(mem.in_use(), 1);
}

/// A provider without large pages of its own: the walker merges its 4 KiB pages, and
/// unmapping the merged page still gives each 4 KiB page back through its `unmap`.
#[test]
fn merged_pages_of_a_4k_provider_are_unmapped_page_by_page() {
    struct Counting {
        inner: PhysRange,
        unmapped: std::cell::RefCell<Vec<(u64, u64, u64)>>,
    }
    impl PageAllocator for Counting {
        fn map(&self, offset: u64, ptep: HwPtep<'_, L0>, template: PtElement<L0>, write: bool) -> bool {
            self.inner.map(offset, ptep, template, write)
        }
        fn unmap(&self, addr: VirtAddr, offset: u64, ptep: HwPtep<'_, L0>) -> bool {
            let old = ptep.exchange(PtElement::empty());
            self.unmapped.borrow_mut().push((addr.as_u64(), offset, old.addr().as_u64()));
            old.present()
        }
    }
    let mem = FakeMemory::new(16);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    let p =
        Counting { inner: PhysRange::new(PhysAddr::new(0x8000_0000), 4 * M2), unmapped: Default::default() };
    let va = 0x4000_0000;
    done(m.populate(r(va, va + M2), M2, Flags::RW, false, &p), &m);
    assert_eq!(m.translate(VirtAddr::new(va + 0x3000)).unwrap().2, PageSize::Size2M, "merged");
    done(m.unmap_with(r(va, va + M2), M2, &p), &m);
    let got = p.unmapped.borrow();
    assert_eq!(got.len(), 512);
    for (i, &(addr, offset, pa)) in got.iter().enumerate() {
        let i = i as u64;
        assert_eq!((addr, offset, pa), (va + i * K4, M2 + i * K4, 0x8000_0000 + M2 + i * K4));
    }
    assert_eq!(mem.in_use(), 1);
}

/// `MapperFlush::merge` has no memory access: past `MAX_FRAME_CHAINS` chains it gives the
/// extra frames up (never freed, so never reused while stale) and says so.
#[test]
fn merge_past_its_chain_slots_abandons_frames_safely() {
    let mem = FakeMemory::new(64);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    let n = crate::flush::MAX_FRAME_CHAINS as u64 + 2;
    let vas: Vec<u64> = (0..n).map(|i| (i + 1) << 30).collect();
    for &va in &vas {
        done(m.map(r(va, va + K4), PhysAddr::new(0x7000), Flags::RW), &m);
    }
    let mut batch = MapperFlush::none();
    for &va in &vas {
        batch.merge(m.unmap(r(va, va + K4)).unwrap());
    }
    assert_eq!(batch.abandoned_chains(), 2);
    m.flush(batch, &recorder(&mem, vec![]));
    // Root, plus PT and PD of each of the two abandoned unmaps (and the last one's PDPT).
    assert_eq!(mem.in_use(), 1 + 2 * 2 + 1);
    assert!(table_frames(&m).len() == 1, "no table is linked any more");
}
