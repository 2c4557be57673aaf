//! The walker: map, unmap, protect and translate any virtual range in a 4-level table.
//!
//! Every operation is *all or nothing* with respect to the translations it reports:
//! - `map`/`populate` first check that the range is entirely unmapped, then build it; if a
//!   frame allocation fails midway, everything built so far (pages and the tables created
//!   for them) is torn down again, and `OutOfFrames` is returned.
//! - `unmap`/`protect` first split the (at most two) large pages that straddle the range's
//!   ends; those splits are the only allocations, and a split changes no translation, so a
//!   failure there returns `OutOfFrames` with every translation as it was. The rest cannot
//!   fail.
//! - Tables that become empty are freed on the way back up.
#![allow(unsafe_code)]

use core::ops::Range;

use crate::flush::MapperFlush;
use crate::hw::{table_at, zero_frame, FrameAllocator, HwPtep, PageTable, PhysMapper};
use crate::level::{HasLower, HugeCapable, Level, PageSize, L0, L1, L2, L3};
use crate::provider::PageAllocator;
use crate::pte::{bits, split_entry, Flags, PtElement};
use crate::{Error, PhysAddr, Result, VirtAddr};

const SIZE_2M: u64 = 2 << 20;
const LOWER_HALF_END: u64 = 1 << 47;
const UPPER_HALF_START: u64 = 0xffff_8000_0000_0000;

/// What a walk does at each entry.
enum Op<'p> {
    /// Count mapped 4 KiB pages.
    Count(u64),
    /// Map `[va0, ..)` to `[pa0, ..)`.
    Map { va0: u64, pa0: u64, flags: Flags },
    /// Ask `provider` to fill every entry.
    Populate { va0: u64, offset0: u64, flags: Flags, huge: bool, provider: &'p dyn PageAllocator },
    /// Clear leaves, through `provider` if any.
    Unmap { va0: u64, offset0: u64, provider: Option<&'p dyn PageAllocator> },
    /// Rewrite the permissions of leaves.
    Protect(Flags),
}

/// Maps, unmaps, protects and translates in the 4-level table rooted at [`root`](Self::root).
///
/// Generic over the kernel's [`FrameAllocator`] (frames for page tables) and [`PhysMapper`]
/// (where those frames are visible). Changes need `&mut self`: one writer per address space;
/// the entries themselves are atomic because the CPU and fault handlers read them meanwhile.
pub struct Mapper<A: FrameAllocator, M: PhysMapper> {
    root: PhysAddr,
    alloc: A,
    phys: M,
}

impl<A: FrameAllocator, M: PhysMapper> core::fmt::Debug for Mapper<A, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mapper").field("root", &self.root).finish_non_exhaustive()
    }
}

/// One level's behaviour in a walk. Implemented for the four level types.
trait Walk: Level {
    fn walk<A: FrameAllocator, M: PhysMapper>(
        m: &Mapper<A, M>,
        table: &PageTable<Self>,
        a: u64,
        b: u64,
        op: &mut Op<'_>,
        flush: &mut MapperFlush,
    ) -> Result;

    /// Offers a whole empty entry to a provider as one large page (level 1 only).
    fn provide_huge(_p: &dyn PageAllocator, _offset: u64, _e: HwPtep<'_, Self>, _flags: Flags) -> bool {
        false
    }

    /// Clears a large leaf through a provider (level 1), or directly.
    fn release_huge(_p: &dyn PageAllocator, _va: u64, _offset: u64, e: HwPtep<'_, Self>) -> bool {
        e.exchange(PtElement::empty()).present()
    }
}

impl Walk for L0 {
    fn walk<A: FrameAllocator, M: PhysMapper>(
        _m: &Mapper<A, M>,
        table: &PageTable<L0>,
        a: u64,
        b: u64,
        op: &mut Op<'_>,
        flush: &mut MapperFlush,
    ) -> Result {
        let mut va = a;
        while va < b {
            let ptep = table.entry(L0::index(VirtAddr::new(va)));
            let e = ptep.read();
            match op {
                Op::Count(n) => *n += u64::from(e.present()),
                Op::Map { va0, pa0, flags } => {
                    if !e.is_empty() {
                        return Err(Error::AlreadyMapped);
                    }
                    let pte = PtElement::<L0>::page(PhysAddr::new(*pa0 + (va - *va0)), *flags)?;
                    ptep.write(pte);
                }
                Op::Populate { va0, offset0, flags, provider, .. } => {
                    if !e.present() {
                        let template = PtElement::<L0>::empty().with_flags(*flags);
                        if !provider.map(*offset0 + (va - *va0), ptep, template, false) {
                            return Err(Error::OutOfFrames);
                        }
                    }
                }
                Op::Unmap { va0, offset0, provider } => {
                    let removed = match provider {
                        Some(p) => p.unmap(VirtAddr::new(va), *offset0 + (va - *va0), ptep),
                        None => ptep.exchange(PtElement::empty()).present(),
                    };
                    if removed {
                        flush.add(va, L0::SPAN, 1);
                    }
                }
                Op::Protect(flags) => {
                    if e.present() {
                        set_flags(ptep, *flags);
                        flush.add(va, L0::SPAN, 1);
                    }
                }
            }
            va += L0::SPAN;
        }
        Ok(())
    }
}

/// Rewrites the permissions of a present leaf, keeping A/D bits the CPU sets meanwhile.
fn set_flags<L: Level>(ptep: HwPtep<'_, L>, flags: Flags) {
    let mut cur = ptep.read();
    while let Err(now) = ptep.compare_exchange(cur, cur.with_flags(flags)) {
        cur = now;
    }
}

/// The walk over a table that may point at lower tables.
fn walk_table<L, A, M>(
    m: &Mapper<A, M>,
    table: &PageTable<L>,
    a: u64,
    b: u64,
    op: &mut Op<'_>,
    flush: &mut MapperFlush,
) -> Result
where
    L: HasLower + Walk,
    L::Lower: Walk,
    A: FrameAllocator,
    M: PhysMapper,
{
    let mut va = a;
    while va < b {
        let es = va & !(L::SPAN - 1);
        let ee = es.checked_add(L::SPAN);
        let hi = ee.map_or(b, |e| e.min(b));
        let full = va == es && ee == Some(hi);
        let ptep = table.entry(L::index(VirtAddr::new(va)));
        let e = ptep.read();
        let mut descend = e.next_table();
        match op {
            Op::Count(n) => {
                if e.is_leaf() {
                    *n += (hi - va) / L0::SPAN;
                }
            }
            Op::Map { va0, pa0, flags } => {
                if e.is_leaf() {
                    return Err(Error::AlreadyMapped);
                }
                let pa = *pa0 + (va - *va0);
                if e.is_empty() && full && L::LEVEL == 1 && pa.is_multiple_of(SIZE_2M) {
                    let raw = PhysAddr::new(pa).as_u64() | flags.to_pte_bits() | bits::HUGE;
                    ptep.write(PtElement::from_raw(raw));
                    descend = None;
                } else if e.is_empty() {
                    descend = Some(m.new_table(ptep)?);
                }
            }
            Op::Populate { va0, offset0, flags, huge, provider } => {
                if e.is_empty() {
                    let offset = *offset0 + (va - *va0);
                    if full && *huge && L::provide_huge(*provider, offset, ptep, *flags) {
                        descend = None;
                    } else if ptep.read().is_empty() {
                        descend = Some(m.new_table(ptep)?);
                    }
                }
            }
            Op::Unmap { va0, offset0, provider } => {
                if e.is_leaf() {
                    debug_assert!(full, "unmap reached a large page it did not split");
                    let removed = match provider {
                        Some(p) => L::release_huge(*p, va, *offset0 + (va - *va0), ptep),
                        None => ptep.exchange(PtElement::empty()).present(),
                    };
                    if removed {
                        flush.add(va, hi - va, 1);
                    }
                }
            }
            Op::Protect(flags) => {
                if e.is_leaf() {
                    debug_assert!(full, "protect reached a large page it did not split");
                    set_flags(ptep, *flags);
                    flush.add(va, hi - va, 1);
                }
            }
        }
        if let Some(child) = descend {
            // SAFETY: `child` is the table this entry points at: a frame of our allocator
            // (or made by whoever built the tables given to `from_root`) holding a level-L-1
            // table; we hold `&mut Mapper`, so nobody frees it during the walk.
            let lower = unsafe { table_at::<L::Lower, _>(&m.phys, child) };
            let r = <L::Lower as Walk>::walk(m, lower, va, hi, op, flush);
            if matches!(op, Op::Unmap { .. }) && lower.is_empty() {
                ptep.write(PtElement::empty());
                // SAFETY: the table is empty and no entry points at it any more; it came from
                // our allocator. Paging-structure caches are invalidated by the flush of the
                // range (INVLPG drops them, SDM vol. 3A §4.10.4.1).
                unsafe { m.alloc.free_frame(child) };
                flush.add(va, hi - va, 1);
            }
            r?;
        }
        va = hi;
    }
    Ok(())
}

macro_rules! table_level {
    ($l:ident) => {
        impl Walk for $l {
            fn walk<A: FrameAllocator, M: PhysMapper>(
                m: &Mapper<A, M>,
                table: &PageTable<$l>,
                a: u64,
                b: u64,
                op: &mut Op<'_>,
                flush: &mut MapperFlush,
            ) -> Result {
                walk_table(m, table, a, b, op, flush)
            }
            table_level!(@hooks $l);
        }
    };
    (@hooks L1) => {
        fn provide_huge(p: &dyn PageAllocator, offset: u64, e: HwPtep<'_, L1>, flags: Flags) -> bool {
            let template = PtElement::<L1>::from_raw(bits::HUGE).with_flags(flags);
            p.map_huge(offset, e, template, false)
        }
        fn release_huge(p: &dyn PageAllocator, va: u64, offset: u64, e: HwPtep<'_, L1>) -> bool {
            p.unmap_huge(VirtAddr::new(va), offset, e)
        }
    };
    (@hooks $other:ty) => {};
}
table_level!(L1);
table_level!(L2);
table_level!(L3);

/// Checks a range: 4 KiB-aligned ends, `start <= end`, within one canonical half.
fn check_range(range: &Range<VirtAddr>) -> Result<(u64, u64)> {
    let (a, b) = (range.start.as_u64(), range.end.as_u64());
    if !a.is_multiple_of(L0::SPAN) || !b.is_multiple_of(L0::SPAN) {
        return Err(Error::NotAligned);
    }
    let lower = b <= LOWER_HALF_END;
    let upper = a >= UPPER_HALF_START;
    if a > b || !(lower || upper) {
        return Err(Error::InvalidRange);
    }
    Ok((a, b))
}

impl<A: FrameAllocator, M: PhysMapper> Mapper<A, M> {
    /// A new, empty address space: allocates and zeroes a root (PML4) table.
    pub fn new(alloc: A, phys: M) -> Result<Self> {
        let root = alloc.allocate_frame().ok_or(Error::OutOfFrames)?;
        // SAFETY: the frame was just allocated for us.
        unsafe { zero_frame(&phys, root) };
        Ok(Self { root, alloc, phys })
    }

    /// Takes over existing tables rooted at `root` (e.g. the boot tables).
    ///
    /// # Safety
    /// 1. `root` holds a valid PML4, reachable through `phys`, and so does every table it
    ///    points at, recursively; the large-page and table entries in them are well formed.
    /// 2. Every table below the root that is not static is a frame of `alloc` (the mapper
    ///    frees tables that become empty to `alloc`).
    /// 3. Nobody else changes these tables while the `Mapper` exists.
    pub unsafe fn from_root(root: PhysAddr, alloc: A, phys: M) -> Self {
        Self { root, alloc, phys }
    }

    /// The physical address of the root table (what goes into CR3).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The frame allocator.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// The physical-memory mapper.
    pub fn phys_mapper(&self) -> &M {
        &self.phys
    }

    /// Gives the parts back (the tables stay as they are).
    pub fn into_parts(self) -> (PhysAddr, A, M) {
        (self.root, self.alloc, self.phys)
    }

    fn root_table(&self) -> &PageTable<L3> {
        // SAFETY: `root` is our PML4 (allocated in `new`, or promised by `from_root`), live
        // as long as `self`.
        unsafe { table_at::<L3, _>(&self.phys, self.root) }
    }

    /// Allocates a zeroed table and points the empty entry `ptep` at it.
    fn new_table<L: HasLower>(&self, ptep: HwPtep<'_, L>) -> Result<PhysAddr> {
        let frame = self.alloc.allocate_frame().ok_or(Error::OutOfFrames)?;
        // SAFETY: the frame was just allocated for us and is not yet visible.
        unsafe { zero_frame(&self.phys, frame) };
        ptep.write(PtElement::table(frame)?);
        Ok(frame)
    }

    fn run(&self, a: u64, b: u64, op: &mut Op<'_>) -> Result<MapperFlush> {
        let mut flush = MapperFlush::none();
        L3::walk(self, self.root_table(), a, b, op, &mut flush)?;
        Ok(flush)
    }

    /// How many 4 KiB pages of `range` are mapped (a large page counts for each 4 KiB in it).
    pub fn mapped_pages(&self, range: Range<VirtAddr>) -> Result<u64> {
        let (a, b) = check_range(&range)?;
        let mut op = Op::Count(0);
        self.run(a, b, &mut op)?.ignore();
        match op {
            Op::Count(n) => Ok(n),
            _ => unreachable!(),
        }
    }

    /// Where `va` goes: the physical address of that byte, the page's permissions and size.
    pub fn translate(&self, va: VirtAddr) -> Option<(PhysAddr, Flags, PageSize)> {
        let v = va.as_u64();
        let e3 = self.root_table().entry(L3::index(va)).read();
        // SAFETY: a present non-leaf entry of our tables points at a live table of the level
        // below, and `&self` keeps the mapper from freeing it (same for the two below).
        let t2 = unsafe { table_at::<L2, _>(&self.phys, e3.next_table()?) };
        let e2 = t2.entry(L2::index(va)).read();
        if e2.is_leaf() {
            return Some(leaf(e2, v, PageSize::Size1G));
        }
        // SAFETY: see above.
        let t1 = unsafe { table_at::<L1, _>(&self.phys, e2.next_table()?) };
        let e1 = t1.entry(L1::index(va)).read();
        if e1.is_leaf() {
            return Some(leaf(e1, v, PageSize::Size2M));
        }
        // SAFETY: see above.
        let t0 = unsafe { table_at::<L0, _>(&self.phys, e1.next_table()?) };
        let e0 = t0.entry(L0::index(va)).read();
        e0.present().then(|| leaf(e0, v, PageSize::Size4K))
    }

    /// Maps `range` to physical memory starting at `phys`, with 2 MiB pages wherever the
    /// virtual and physical addresses are both 2 MiB aligned and the range covers the page.
    ///
    /// Errors: `NotAligned`, `InvalidRange`, `NoAccess` (flags allow nothing),
    /// `AlreadyMapped` (some page of the range is mapped; nothing changed), `OutOfFrames`
    /// (nothing changed: what was built is torn down again).
    pub fn map(&mut self, range: Range<VirtAddr>, phys: PhysAddr, flags: Flags) -> Result<MapperFlush> {
        let (a, b) = check_range(&range)?;
        if !phys.is_aligned(L0::SPAN) {
            return Err(Error::NotAligned);
        }
        match phys.checked_add(b - a) {
            Some(end) if end.as_u64() <= 1 << 52 => {}
            _ => return Err(Error::InvalidRange),
        }
        let flags = checked_flags(flags)?;
        self.build(a, b, &mut Op::Map { va0: a, pa0: phys.as_u64(), flags })
    }

    /// Fills `range` from `provider` (OSv's populate): each entry gets
    /// `provider.map(offset + (va - start), ..)`, or `map_huge` for a whole 2 MiB entry when
    /// `huge` is set (falling back to 4 KiB if the provider declines).
    ///
    /// Errors as [`map`](Self::map); a provider returning `false` is `OutOfFrames`, and what
    /// was filled is given back through [`PageAllocator::unmap`].
    pub fn populate(
        &mut self,
        range: Range<VirtAddr>,
        offset: u64,
        flags: Flags,
        huge: bool,
        provider: &dyn PageAllocator,
    ) -> Result<MapperFlush> {
        let (a, b) = check_range(&range)?;
        let flags = checked_flags(flags)?;
        self.build(a, b, &mut Op::Populate { va0: a, offset0: offset, flags, huge, provider })
    }

    /// The shared body of `map` and `populate`: check emptiness, build, roll back on error.
    fn build(&mut self, a: u64, b: u64, op: &mut Op<'_>) -> Result<MapperFlush> {
        if self.mapped_pages(VirtAddr::new(a)..VirtAddr::new(b))? != 0 {
            return Err(Error::AlreadyMapped);
        }
        match self.run(a, b, op) {
            Ok(flush) => Ok(flush),
            Err(e) => {
                let provider = match op {
                    Op::Populate { provider, .. } => Some(*provider),
                    _ => None,
                };
                let offset0 = match op {
                    Op::Populate { offset0, .. } => *offset0,
                    _ => 0,
                };
                // The range was empty, and every leaf built lies wholly inside it, so this
                // needs no split and cannot fail.
                let mut undo = Op::Unmap { va0: a, offset0, provider };
                self.run(a, b, &mut undo)?.ignore();
                Err(e)
            }
        }
    }

    /// Unmaps every mapped page in `range` (holes are fine, like `munmap`), splitting a large
    /// page the range covers only in part, and frees tables that become empty.
    ///
    /// Errors: `NotAligned`, `InvalidRange`, `OutOfFrames` (a split could not get a table;
    /// every translation is unchanged).
    pub fn unmap(&mut self, range: Range<VirtAddr>) -> Result<MapperFlush> {
        self.unmap_inner(range, 0, None)
    }

    /// [`unmap`](Self::unmap), giving each leaf back through `provider` (which frees what it
    /// allocated); `offset` is the provider offset of `range.start`.
    pub fn unmap_with(
        &mut self,
        range: Range<VirtAddr>,
        offset: u64,
        provider: &dyn PageAllocator,
    ) -> Result<MapperFlush> {
        self.unmap_inner(range, offset, Some(provider))
    }

    fn unmap_inner(
        &mut self,
        range: Range<VirtAddr>,
        offset0: u64,
        provider: Option<&dyn PageAllocator>,
    ) -> Result<MapperFlush> {
        let (a, b) = check_range(&range)?;
        let mut flush = self.split_ends(&range)?;
        flush.merge(self.run(a, b, &mut Op::Unmap { va0: a, offset0, provider })?);
        Ok(flush)
    }

    /// Changes the permissions of every page in `range`, splitting a large page the range
    /// covers only in part.
    ///
    /// Errors: `NotAligned`, `InvalidRange`, `NoAccess`, `NotMapped` (some page of the range
    /// is not mapped; nothing changed), `OutOfFrames` (a split failed; translations and
    /// permissions unchanged).
    pub fn protect(&mut self, range: Range<VirtAddr>, flags: Flags) -> Result<MapperFlush> {
        let (a, b) = check_range(&range)?;
        let flags = checked_flags(flags)?;
        if self.mapped_pages(range.clone())? != (b - a) / L0::SPAN {
            return Err(Error::NotMapped);
        }
        let mut flush = self.split_ends(&range)?;
        flush.merge(self.run(a, b, &mut Op::Protect(flags))?);
        Ok(flush)
    }

    /// Splits the large pages that straddle either end of `range`.
    fn split_ends(&mut self, range: &Range<VirtAddr>) -> Result<MapperFlush> {
        let (a, b) = check_range(range)?;
        let mut flush = MapperFlush::none();
        if a < b {
            self.split_at(a, &mut flush)?;
            self.split_at(b, &mut flush)?;
        }
        Ok(flush)
    }

    /// Makes sure no large page straddles `x` (that is, contains `x` but does not start there).
    fn split_at(&self, x: u64, flush: &mut MapperFlush) -> Result {
        if x.is_multiple_of(L2::SPAN) {
            return Ok(());
        }
        let va = VirtAddr::new(x);
        let Some(t2) = self.root_table().entry(L3::index(va)).read().next_table() else { return Ok(()) };
        // SAFETY: a present non-leaf entry of our tables points at a live lower table.
        let p2 = unsafe { table_at::<L2, _>(&self.phys, t2) }.entry(L2::index(va));
        if p2.read().is_leaf() && !x.is_multiple_of(L2::SPAN) {
            self.split_huge(p2, x & !(L2::SPAN - 1), flush)?;
        }
        if x.is_multiple_of(SIZE_2M) {
            return Ok(());
        }
        let Some(t1) = p2.read().next_table() else { return Ok(()) };
        // SAFETY: as above.
        let p1 = unsafe { table_at::<L1, _>(&self.phys, t1) }.entry(L1::index(va));
        if p1.read().is_leaf() {
            self.split_huge(p1, x & !(SIZE_2M - 1), flush)?;
        }
        Ok(())
    }

    /// Replaces the large leaf at `ptep` (mapping `[start, start + L::SPAN)`) by a table of
    /// 512 entries of the level below with the same translations.
    fn split_huge<L: HugeCapable>(&self, ptep: HwPtep<'_, L>, start: u64, flush: &mut MapperFlush) -> Result {
        let frame = self.alloc.allocate_frame().ok_or(Error::OutOfFrames)?;
        // SAFETY: the frame was just allocated for us and is not yet visible.
        let table = unsafe { table_at::<L::Lower, _>(&self.phys, frame) };
        let pointer = PtElement::<L>::table(frame)?;
        let mut cur = ptep.read();
        loop {
            for (i, e) in table.entries().enumerate() {
                e.write(PtElement::from_raw(split_entry(cur.raw(), L::LEVEL, i as u64)));
            }
            // The CPU may set A/D meanwhile: retry with its value so none is lost.
            match ptep.compare_exchange(cur, pointer) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        // Same translations, but the SDM (vol. 3A §4.10.2.3) advises invalidating when a page
        // changes size. One `invlpg` anywhere in the old large page drops its TLB entry.
        flush.add(start, L::SPAN, 1);
        Ok(())
    }

    /// Calls `f(frame, level)` for every page table, root included (for checks and stats).
    pub fn for_each_table(&self, mut f: impl FnMut(PhysAddr, u8)) {
        f(self.root, 3);
        for e3 in self.root_table().entries() {
            let Some(t2) = e3.read().next_table() else { continue };
            f(t2, 2);
            // SAFETY: a present non-leaf entry of our tables points at a live lower table.
            for e2 in unsafe { table_at::<L2, _>(&self.phys, t2) }.entries() {
                let Some(t1) = e2.read().next_table() else { continue };
                f(t1, 1);
                // SAFETY: as above.
                for e1 in unsafe { table_at::<L1, _>(&self.phys, t1) }.entries() {
                    if let Some(t0) = e1.read().next_table() {
                        f(t0, 0);
                    }
                }
            }
        }
    }
}

fn checked_flags(flags: Flags) -> Result<Flags> {
    if flags.allows_access() {
        Ok(flags.normalized())
    } else {
        Err(Error::NoAccess)
    }
}

fn leaf<L: Level>(e: PtElement<L>, va: u64, size: PageSize) -> (PhysAddr, Flags, PageSize) {
    (PhysAddr::new(e.addr().as_u64() + (va & (size.bytes() - 1))), e.flags(), size)
}

#[cfg(test)]
mod tests;
