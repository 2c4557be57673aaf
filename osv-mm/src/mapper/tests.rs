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
    m.map(r(0x1000, 0x40_3000), PhysAddr::new(0x20_1000), Flags::RW).unwrap().ignore();
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
    m.map(r(0x4000_0000, 0x4040_0000), PhysAddr::new(0x1000), Flags::READ).unwrap().ignore();
    assert_eq!(m.translate(VirtAddr::new(0x4020_0000)).unwrap().2, PageSize::Size4K);
    assert_eq!(m.map(r(0x3000, 0x5000), PhysAddr::new(0), Flags::RW).unwrap_err(), Error::AlreadyMapped);
    m.unmap(r(0, 0x8000_0000)).unwrap().ignore();
    assert_eq!(mem.in_use(), 1);
}

#[test]
fn upper_half_and_bad_ranges() {
    let mem = FakeMemory::new(16);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    let base = 0xffff_8000_0000_0000;
    m.map(r(base, base + M2), PhysAddr::new(0), Flags::RW | Flags::GLOBAL).unwrap().ignore();
    assert_eq!(m.translate(VirtAddr::new(base + 5)).unwrap().0, PhysAddr::new(5));
    let e = |x: Result<MapperFlush>| x.unwrap_err();
    assert_eq!(e(m.map(r(0x1001, 0x2000), PhysAddr::new(0), Flags::RW)), Error::NotAligned);
    assert_eq!(e(m.map(r(0x1000, 0x2000), PhysAddr::new(0x10), Flags::RW)), Error::NotAligned);
    assert_eq!(e(m.map(r(0x2000, 0x1000), PhysAddr::new(0), Flags::RW)), Error::InvalidRange);
    assert_eq!(e(m.map(r(0x7fff_ffff_f000, base + K4), PhysAddr::new(0), Flags::RW)), Error::InvalidRange);
    assert_eq!(e(m.map(r(0, K4), PhysAddr::new(1 << 52), Flags::RW)), Error::InvalidRange);
    assert_eq!(e(m.map(r(0, K4), PhysAddr::new(0), Flags::USER)), Error::NoAccess);
    assert_eq!(e(m.protect(r(0, K4), Flags::READ)), Error::NotMapped);
    m.unmap(r(0, K4)).unwrap().ignore();
    m.unmap(r(base, base + M2)).unwrap().ignore();
    assert_eq!(mem.in_use(), 1);
}

#[test]
fn protect_splits_a_huge_page_and_flushes() {
    let mem = FakeMemory::new(16);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    m.map(r(M2, 3 * M2), PhysAddr::new(0x4000_0000), Flags::RW).unwrap().ignore();
    let before = mem.in_use();
    let f = m.protect(r(M2 + K4, M2 + 3 * K4), Flags::RX).unwrap();
    assert!(!f.is_all());
    let ranges: Vec<_> = f.ranges().collect();
    // The split 2 MiB page, then the two pages whose rights changed (inside it).
    assert_eq!(ranges[0], r(M2, 2 * M2));
    f.ignore();
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
    m.protect(r(2 * M2, 3 * M2), Flags::READ).unwrap().ignore();
    assert_eq!(
        m.translate(VirtAddr::new(2 * M2 + 8)).unwrap(),
        (PhysAddr::new(0x4020_0008), Flags::READ, PageSize::Size2M)
    );
    m.unmap(r(M2 + K4, 3 * M2)).unwrap().ignore();
    assert_eq!(m.mapped_pages(r(0, 4 * M2)).unwrap(), 1);
    m.unmap(r(M2, M2 + K4)).unwrap().ignore();
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
    f.ignore();
    assert_eq!(m.translate(VirtAddr::new(mid)), None);
    assert_eq!(m.translate(VirtAddr::new(mid + K4)).unwrap().2, PageSize::Size4K);
    assert_eq!(
        m.translate(VirtAddr::new(mid + M2)).unwrap(),
        (PhysAddr::new(0x8000_0000 + 6 * M2 + 7 * K4), Flags::RW, PageSize::Size2M)
    );
    assert_eq!(m.mapped_pages(r(0x4000_0000, 0x8000_0000)).unwrap(), (1 << 30) / K4 - 1);
    m.unmap(r(0x4000_0000, 0x8000_0000)).unwrap().ignore();
    assert_eq!(mem.in_use(), 1);
}

#[test]
fn out_of_frames_midway_rolls_back() {
    let mem = FakeMemory::new(32);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    m.map(r(0x4000_0000, 0x4000_1000), PhysAddr::new(0), Flags::RW).unwrap().ignore();
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
    m.map(r(M2 * 8, M2 * 9), PhysAddr::new(0), Flags::RW).unwrap().ignore();
    let base = mem.in_use();
    mem.set_limit(Some(base));
    assert_eq!(m.unmap(r(M2 * 8 + K4, M2 * 9)).unwrap_err(), Error::OutOfFrames);
    assert_eq!(m.mapped_pages(r(M2 * 8, M2 * 9)).unwrap(), 512);
    assert_eq!(m.translate(VirtAddr::new(M2 * 8)).unwrap().2, PageSize::Size2M);
    assert_eq!(mem.in_use(), base);
    mem.set_limit(None);
    m.unmap(r(0, 0x8000_0000)).unwrap().ignore();
    assert_eq!(mem.in_use(), 1);
    assert_eq!(table_frames(&m), vec![(m.root(), 3)]);
}

#[test]
fn anon_zero_provider_fills_and_frees() {
    let mem = FakeMemory::new(64);
    let pages = FakeMemory::new(8);
    let anon = AnonZero::new(&pages, &pages);
    let mut m = Mapper::new(&mem, &mem).unwrap();
    m.populate(r(0x10_0000, 0x10_4000), 0, Flags::RW, true, &anon).unwrap().ignore();
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
    m.unmap_with(r(0x10_0000, 0x10_4000), 0, &anon).unwrap().ignore();
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
    m.populate(r(0x4000_0000, 0x4000_0000 + 4 * M2), 0, flags, true, &bar).unwrap().ignore();
    let (pa, f, size) = m.translate(VirtAddr::new(0x4020_0010)).unwrap();
    assert_eq!((pa, f, size), (PhysAddr::new(0xfe20_0010), flags, PageSize::Size2M));
    // Starting 4 KiB into the BAR: no 2 MiB-aligned physical page, all 4 KiB.
    m.populate(r(0x8000_0000, 0x8000_0000 + M2), K4, flags, true, &bar).unwrap().ignore();
    assert_eq!(
        m.translate(VirtAddr::new(0x8000_0000)).unwrap(),
        (PhysAddr::new(0xfe00_1000), flags, PageSize::Size4K)
    );
    // Beyond the BAR: the provider declines, rolled back.
    let err = m.populate(r(0xc000_0000, 0xc000_0000 + 5 * M2), 0, flags, true, &bar).unwrap_err();
    assert_eq!(err, Error::OutOfFrames);
    assert_eq!(m.mapped_pages(r(0xc000_0000, 0xc000_0000 + 5 * M2)).unwrap(), 0);
    m.unmap_with(r(0x4000_0000, 0x4000_0000 + 4 * M2), 0, &bar).unwrap().ignore();
    m.unmap(r(0x8000_0000, 0x8000_0000 + M2)).unwrap().ignore();
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

fn apply(model: &mut Model, m: &mut Mapper<&FakeMemory, &FakeMemory>, s: &Step) -> Result<()> {
    match *s {
        Step::Map { start, pages, phys, flags } => {
            let res = m.map(r(start, start + pages * K4), PhysAddr::new(phys), flags);
            let any = (0..pages).any(|i| model.contains_key(&(start + i * K4)));
            match res {
                Ok(f) => {
                    assert!(!any, "map succeeded over a mapped page");
                    f.ignore();
                    for i in 0..pages {
                        model.insert(start + i * K4, (phys + i * K4, flags));
                    }
                }
                Err(Error::AlreadyMapped) => assert!(any),
                Err(e) => return Err(e),
            }
        }
        Step::Unmap { start, pages } => {
            m.unmap(r(start, start + pages * K4))?.ignore();
            for i in 0..pages {
                model.remove(&(start + i * K4));
            }
        }
        Step::Protect { start, pages, flags } => {
            let all = (0..pages).all(|i| model.contains_key(&(start + i * K4)));
            match m.protect(r(start, start + pages * K4), flags) {
                Ok(f) => {
                    assert!(all, "protect succeeded over a hole");
                    f.ignore();
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
fn check(model: &Model, m: &Mapper<&FakeMemory, &FakeMemory>, mem: &FakeMemory) {
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
        check(&model, &m, &mem);
    }
    mem.set_limit(None);
    m.unmap(r(0, WINDOW)).unwrap().ignore();
    model.clear();
    check(&model, &m, &mem);
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
