//! loom models of the `HwPtep` protocol used by concurrent page faults.
//!
//! The provider code modelled here is the real fault path: `AddressSpace::fault` resolves an
//! anonymous fault through `Mapper::populate_anon`, which fills the entry with
//! `AnonZero::map` (4 KiB) or `AnonZero::map_huge` (2 MiB): the very functions the models
//! below run on two threads. (The walker above them changes tables under `&mut Mapper`, one
//! writer per address space, and is not itself concurrent.)
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release -p osv-mm --test loom_hwptep`.
#![cfg(loom)]

use std::ptr::NonNull;

use loom::sync::Arc;
use loom::thread;
use osv_mm::sync::{AtomicU64, AtomicUsize, Ordering};
use osv_mm::{
    AnonZero, Flags, FrameAllocator, HwPtep, PageAllocator, PhysAddr, PhysMapper, PtElement, L0, L1,
};

/// Two CPUs fault on the same page and race to fill the same empty PTE: exactly one
/// `compare_exchange` wins, the loser is told the winner's value, and the entry ends with it.
#[test]
fn two_cpus_install_the_same_pte() {
    loom::model(|| {
        let entry = Arc::new(AtomicU64::new(0));
        let cpu = |frame: u64| {
            let entry = entry.clone();
            thread::spawn(move || {
                let ptep = HwPtep::<L0>::new(&entry);
                let mine = PtElement::<L0>::page(PhysAddr::new(frame), Flags::RW).unwrap();
                (mine, ptep.compare_exchange(PtElement::empty(), mine))
            })
        };
        let (a, b) = (cpu(0x1000), cpu(0x2000));
        let (mine_a, res_a) = a.join().unwrap();
        let (mine_b, res_b) = b.join().unwrap();
        let winner = match (res_a, res_b) {
            (Ok(_), Err(seen)) => {
                assert_eq!(seen, mine_a, "the loser sees the winner's PTE");
                mine_a
            }
            (Err(seen), Ok(_)) => {
                assert_eq!(seen, mine_b, "the loser sees the winner's PTE");
                mine_b
            }
            other => panic!("exactly one CPU must win: {other:?}"),
        };
        assert_eq!(HwPtep::<L0>::new(&entry).read(), winner);
    });
}

/// Page memory for the provider (plain std atomics: loom need not track page contents).
#[repr(C, align(4096))]
struct Page([std::sync::atomic::AtomicU64; 512]);

/// A two-frame allocator whose bookkeeping loom does track.
struct Pool {
    pages: Box<[Page]>,
    next: AtomicUsize,
    freed: AtomicUsize,
}

const BASE: u64 = 0x10_0000;

impl Pool {
    fn new() -> Self {
        let pages =
            (0..2).map(|_| Page(std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(!0)))).collect();
        Self { pages, next: AtomicUsize::new(0), freed: AtomicUsize::new(0) }
    }
    fn index(frame: PhysAddr) -> usize {
        ((frame.as_u64() - BASE) / 4096) as usize
    }
}

// SAFETY: each index is handed out once (`fetch_add`), frames are distinct 4 KiB-aligned
// addresses below 2^52, and each maps to its own `Page`.
unsafe impl FrameAllocator for Pool {
    fn allocate_frame(&self) -> Option<PhysAddr> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.pages.len()).then(|| PhysAddr::new(BASE + i as u64 * 4096))
    }
    unsafe fn free_frame(&self, frame: PhysAddr) {
        let bit = 1 << Self::index(frame);
        let old = self.freed.fetch_or(bit, Ordering::Relaxed);
        assert_eq!(old & bit, 0, "double free of {frame:?}");
    }
}

// SAFETY: every frame of the pool is a 4096-byte, 4096-aligned `Page` of atomics owned by the
// pool for its whole life, so writes through the pointer are permitted interior mutation.
unsafe impl PhysMapper for Pool {
    fn frame_ptr(&self, frame: PhysAddr) -> NonNull<u8> {
        NonNull::from(&self.pages[Self::index(frame)]).cast()
    }
}

/// The anonymous zero-fill provider under the same race: both faults report the page as
/// present, exactly one frame stays allocated, it is the one in the PTE and it is zeroed;
/// the loser's frame (if it got one) went back to the allocator.
#[test]
fn anon_zero_fault_race_loses_no_frame() {
    loom::model(|| {
        let shared = Arc::new((AtomicU64::new(0), Pool::new()));
        let cpu = || {
            let shared = shared.clone();
            thread::spawn(move || {
                let (entry, pool) = &*shared;
                let anon = AnonZero::new(pool, pool);
                let template = PtElement::<L0>::empty().with_flags(Flags::RW);
                anon.map(0, HwPtep::new(entry), template, true)
            })
        };
        let (a, b) = (cpu(), cpu());
        assert!(a.join().unwrap() && b.join().unwrap(), "both faults see a present page");
        let (entry, pool) = &*shared;
        let pte = HwPtep::<L0>::new(entry).read();
        assert!(pte.present() && pte.writable());
        let allocated = pool.next.load(Ordering::Relaxed).min(2);
        let freed = pool.freed.load(Ordering::Relaxed);
        assert_eq!(allocated - freed.count_ones() as usize, 1, "exactly one frame is live");
        let live = Pool::index(pte.addr());
        assert_eq!(freed & (1 << live), 0, "the installed frame was not freed");
        assert!(pool.pages[live].0.iter().all(|w| w.load(std::sync::atomic::Ordering::Relaxed) == 0));
    });
}

/// Two 2 MiB runs of host memory posing as physical frames, for the large-page race.
struct HugePool {
    pages: Box<[Page]>,
    next: AtomicUsize,
    /// Bit `r` set once run `r` was freed (as a whole or page by page).
    freed: AtomicUsize,
}

const HUGE_BASE: u64 = 0x4000_0000;
const RUN: usize = 512;

impl HugePool {
    fn new() -> Self {
        let pages = (0..2 * RUN)
            .map(|_| Page(std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(!0))))
            .collect();
        Self { pages, next: AtomicUsize::new(0), freed: AtomicUsize::new(0) }
    }
    fn index(frame: PhysAddr) -> usize {
        ((frame.as_u64() - HUGE_BASE) / 4096) as usize
    }
}

// SAFETY: each run is handed out once (`fetch_add`), 2 MiB aligned, below 2^52, and each
// frame maps to its own `Page`; 4 KiB frames are not handed out at all.
unsafe impl FrameAllocator for HugePool {
    fn allocate_frame(&self) -> Option<PhysAddr> {
        None
    }
    unsafe fn free_frame(&self, frame: PhysAddr) {
        panic!("{frame:?}: the race frees a whole run, never single frames");
    }
    fn allocate_huge(&self) -> Option<PhysAddr> {
        let r = self.next.fetch_add(1, Ordering::Relaxed);
        (r < 2).then(|| PhysAddr::new(HUGE_BASE + (r * RUN) as u64 * 4096))
    }
    unsafe fn free_huge(&self, base: PhysAddr) {
        let bit = 1 << (Self::index(base) / RUN);
        let old = self.freed.fetch_or(bit, Ordering::Relaxed);
        assert_eq!(old & bit, 0, "double free of the run at {base:?}");
    }
}

// SAFETY: every frame is a 4096-byte, 4096-aligned `Page` of atomics owned by the pool.
unsafe impl PhysMapper for HugePool {
    fn frame_ptr(&self, frame: PhysAddr) -> NonNull<u8> {
        NonNull::from(&self.pages[Self::index(frame)]).cast()
    }
}

/// Two CPUs fault in the same 2 MiB range of an anonymous VMA and race `map_huge` on one
/// level-1 entry: both see a present large page, exactly one run stays allocated, it is the
/// one in the entry and it is zeroed; the loser's run went back whole.
#[test]
fn anon_zero_huge_fault_race_loses_no_run() {
    loom::model(|| {
        let shared = Arc::new((AtomicU64::new(0), HugePool::new()));
        let cpu = || {
            let shared = shared.clone();
            thread::spawn(move || {
                let (entry, pool) = &*shared;
                let anon = AnonZero::new(pool, pool);
                let template = PtElement::<L1>::empty().with_flags(Flags::RW);
                anon.map_huge(0, HwPtep::new(entry), template, true)
            })
        };
        let (a, b) = (cpu(), cpu());
        assert!(a.join().unwrap() && b.join().unwrap(), "both faults see a present page");
        let (entry, pool) = &*shared;
        let pde = HwPtep::<L1>::new(entry).read();
        assert!(pde.is_leaf() && pde.huge() && pde.writable());
        let handed = pool.next.load(Ordering::Relaxed).min(2);
        let freed = pool.freed.load(Ordering::Relaxed);
        assert_eq!(handed - freed.count_ones() as usize, 1, "exactly one run is live");
        let live = HugePool::index(pde.addr()) / RUN;
        assert_eq!(freed & (1 << live), 0, "the installed run was not freed");
        let run = &pool.pages[live * RUN..(live + 1) * RUN];
        assert!(run.iter().all(|p| p.0.iter().all(|w| w.load(std::sync::atomic::Ordering::Relaxed) == 0)));
    });
}
