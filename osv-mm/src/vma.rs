//! Address spaces: VMAs over a [`Mapper`], mmap/munmap/mprotect/msync, the page-fault
//! handler and guarded stacks (OSv's `mmu::vma` and `mmu::vm_fault`).
//!
//! An [`AddressSpace`] keeps its VMAs in a range tree (a `BTreeMap` keyed by start address;
//! VMAs never overlap). Mapping only records a VMA; pages arrive when they are touched:
//!
//! | VMA kind | read fault | write fault |
//! |---|---|---|
//! | anonymous | fresh zeroed page (2 MiB when possible) | fresh zeroed page (2 MiB when possible) |
//! | private file | the file's page, mapped read-only | private copy of the file's page (copy-on-write) |
//! | shared file | the file's page | the file's page, writable; [`msync`](AddressSpace::msync) writes it back |
//! | physical | `base + offset` | `base + offset` |
//! | guard | [`Fault::StackOverflow`] | [`Fault::StackOverflow`] |
//!
//! A write to a private file page that was first mapped for reading is copied at that
//! moment: the read-only file page is replaced by a writable copy. Pages the address space
//! allocated (anonymous pages and private copies) come from the mapper's
//! [`FrameAllocator`] and go back to it on `munmap`; file pages belong to the
//! [`FileBacking`] (the VFS's page cache) and are never freed here.
//!
//! Partial overlaps split VMAs: unmapping or protecting the middle of a VMA leaves two (or
//! three) VMAs behind, each with its own permissions and file offset.
//!
//! **Large pages for anonymous memory.** A fault in an anonymous VMA that covers the whole
//! 2 MiB-aligned range around the address, with nothing of that range mapped yet, first asks
//! the allocator for a 2 MiB-aligned run ([`FrameAllocator::allocate_huge`]) and maps it with
//! one level-1 entry through the anonymous provider's `map_huge`
//! ([`Mapper::populate_anon`]); if there is no such run it maps one 4 KiB page. A later
//! `munmap`/`mprotect` of part of such a page splits it (the walker's split) and the pages
//! keep their contents; the frames of a large page are freed one by one, which the
//! allocator's `allocate_huge` contract allows.
//!
//! Every change to live translations returns (or flushes inside) a [`MapperFlush`]; the
//! operations here take the kernel's [`TlbFlush`] and flush before they free a page or a
//! page-table frame ([`Mapper::flush`]), so neither is reused while a stale translation may
//! point at it. Each operation makes one [`TlbFlush::shootdown`] call per batch, naming the
//! ranges it changed (or "all" past the thresholds of [`crate::flush`]).
//!
//! Stacks ([`AddressSpace::alloc_stack`]) are an anonymous VMA with a guard VMA of one page
//! below it: nothing is ever mapped there, and a fault in it is reported as
//! [`Fault::StackOverflow`] with the stack's id and name, so the kernel can print which
//! thread overflowed instead of "page fault at ...".
#![allow(unsafe_code)]

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::sync::Arc;
use core::fmt;
use core::ops::Range;

use crate::flush::{MapperFlush, TlbFlush};
use crate::hw::{FrameAllocator, PhysMapper};
use crate::level::PageSize;
use crate::mapper::Mapper;
use crate::pte::Flags;
use crate::{Error, PhysAddr, VirtAddr, PAGE_SIZE};

const SIZE_2M: u64 = 2 << 20;

/// Errors of the mapping operations, errno style.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VmError {
    /// Out of memory, or no free virtual range big enough, or (mprotect/msync) part of the
    /// range is not mapped: `ENOMEM`.
    NoMemory,
    /// Misaligned address, zero or overflowing length, a range outside the address space's
    /// window, no access rights where some are needed: `EINVAL`.
    Invalid,
    /// The file could not provide or write back a page: `EIO`.
    Io,
}

impl VmError {
    /// The POSIX errno value (Linux numbering).
    pub const fn errno(self) -> i32 {
        match self {
            Self::NoMemory => 12,
            Self::Invalid => 22,
            Self::Io => 5,
        }
    }
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoMemory => "out of memory or range not mapped (ENOMEM)",
            Self::Invalid => "invalid argument (EINVAL)",
            Self::Io => "I/O error (EIO)",
        })
    }
}

impl core::error::Error for VmError {}

impl From<Error> for VmError {
    fn from(e: Error) -> Self {
        match e {
            Error::OutOfFrames => Self::NoMemory,
            _ => Self::Invalid,
        }
    }
}

/// Which stack a guard page protects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackId(pub u64);

/// Why a page fault could not be resolved. The kernel turns these into a signal, an
/// `EFAULT` for a kernel copy routine, or a fatal report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// No VMA covers the address (`SIGSEGV`/`EFAULT`).
    Unmapped {
        /// The faulting address.
        addr: VirtAddr,
    },
    /// The VMA does not allow the access (write to read-only, execute of data).
    Protection {
        /// The faulting address.
        addr: VirtAddr,
    },
    /// The address is in the guard page below a stack.
    StackOverflow {
        /// The faulting address.
        addr: VirtAddr,
        /// The stack's id.
        stack: StackId,
        /// The stack's name (e.g. the thread's).
        name: &'static str,
    },
    /// No page could be allocated (or no table for it).
    NoMemory,
    /// The file could not provide the page (I/O error, or beyond its end: `SIGBUS`).
    Io,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unmapped { addr } => write!(f, "page fault at unmapped {addr:?}"),
            Self::Protection { addr } => write!(f, "protection fault at {addr:?}"),
            Self::StackOverflow { addr, stack, name } => {
                write!(f, "stack overflow of {name} (stack {}) at {addr:?}", stack.0)
            }
            Self::NoMemory => f.write_str("out of memory in page fault"),
            Self::Io => f.write_str("I/O error in page fault"),
        }
    }
}

impl core::error::Error for Fault {}

/// The access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// A load.
    Read,
    /// A store.
    Write,
    /// An instruction fetch.
    Exec,
}

/// The pages behind a file mapping: the VFS side implements it over its page cache. `Send +
/// Sync` because one address space serves every CPU.
pub trait FileBacking: Send + Sync {
    /// The frame holding the file's page at `offset` (a multiple of 4096), kept by the file
    /// for as long as any mapping uses it. `Err(VmError::Io)` for an I/O error or an offset
    /// beyond the end of the file.
    fn page(&self, offset: u64) -> Result<PhysAddr, VmError>;

    /// Writes the page at `offset` back to the file (shared mappings, `msync`).
    fn write_back(&self, offset: u64) -> Result<(), VmError>;
}

/// What a VMA maps.
#[derive(Clone)]
pub enum Backing {
    /// Anonymous memory, zero-filled on first touch.
    Anon,
    /// A file from `offset` (a multiple of 4096); `shared` writes go to the file, private
    /// writes to copies.
    File {
        /// The file.
        file: Arc<dyn FileBacking>,
        /// File offset of the VMA's first page.
        offset: u64,
        /// `MAP_SHARED` (true) or `MAP_PRIVATE`.
        shared: bool,
    },
    /// Fixed physical memory from `base` (MMIO, framebuffers).
    Phys {
        /// Physical address of the VMA's first page.
        base: PhysAddr,
    },
    /// A guard page below a stack: never mapped.
    Guard {
        /// Whose stack.
        stack: StackId,
        /// The stack's name.
        name: &'static str,
    },
}

impl fmt::Debug for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anon => f.write_str("Anon"),
            Self::File { offset, shared, .. } => {
                write!(f, "File {{ offset: {offset:#x}, shared: {shared} }}")
            }
            Self::Phys { base } => write!(f, "Phys {{ base: {base:?} }}"),
            Self::Guard { stack, name } => write!(f, "Guard {{ stack: {stack:?}, name: {name:?} }}"),
        }
    }
}

impl Backing {
    /// The same backing for a piece starting `delta` bytes into the VMA.
    fn advanced(&self, delta: u64) -> Self {
        match self {
            Self::File { file, offset, shared } => {
                Self::File { file: file.clone(), offset: offset + delta, shared: *shared }
            }
            Self::Phys { base } => Self::Phys { base: PhysAddr::new(base.as_u64() + delta) },
            other => other.clone(),
        }
    }
}

/// One virtual memory area: `[start, end)` with permissions and a backing.
#[derive(Clone, Debug)]
pub struct Vma {
    start: u64,
    end: u64,
    perm: Flags,
    backing: Backing,
}

impl Vma {
    /// The VMA's range.
    pub fn range(&self) -> Range<VirtAddr> {
        VirtAddr::new(self.start)..VirtAddr::new(self.end)
    }
    /// Its permissions (`READ`/`WRITE`/`EXEC`).
    pub fn perm(&self) -> Flags {
        self.perm
    }
    /// What it maps.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }
}

/// An address space: the VMAs and the page tables that realise them.
///
/// `window` is where [`mmap`](Self::mmap) without a fixed address places mappings (first
/// fit); fixed mappings must lie inside it too.
pub struct AddressSpace<A: FrameAllocator, M: PhysMapper> {
    mapper: Mapper<A, M>,
    vmas: BTreeMap<u64, Vma>,
    /// Pages of private file mappings that hold a private copy (ours to free).
    copies: BTreeSet<u64>,
    window: Range<u64>,
}

impl<A: FrameAllocator, M: PhysMapper> fmt::Debug for AddressSpace<A, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressSpace").field("vmas", &self.vmas.len()).finish_non_exhaustive()
    }
}

fn page_range(start: VirtAddr, len: u64) -> Result<(u64, u64), VmError> {
    let s = start.as_u64();
    if len == 0 || !start.is_aligned(PAGE_SIZE) {
        return Err(VmError::Invalid);
    }
    let len = len.checked_next_multiple_of(PAGE_SIZE).ok_or(VmError::Invalid)?;
    let e = s.checked_add(len).ok_or(VmError::Invalid)?;
    Ok((s, e))
}

impl<A: FrameAllocator, M: PhysMapper> AddressSpace<A, M> {
    /// An address space over `mapper`'s tables, placing mappings inside `window`
    /// (page aligned).
    pub fn new(mapper: Mapper<A, M>, window: Range<VirtAddr>) -> Result<Self, VmError> {
        if !window.start.is_aligned(PAGE_SIZE)
            || !window.end.is_aligned(PAGE_SIZE)
            || window.end <= window.start
        {
            return Err(VmError::Invalid);
        }
        Ok(Self {
            mapper,
            vmas: BTreeMap::new(),
            copies: BTreeSet::new(),
            window: window.start.as_u64()..window.end.as_u64(),
        })
    }

    /// The page tables.
    pub fn mapper(&self) -> &Mapper<A, M> {
        &self.mapper
    }

    /// The page tables, for changes outside the window (a kernel's own mappings: its image,
    /// its linear map, the guard pages of stacks it allocates itself). Changing a page inside
    /// the window behind the VMAs' back breaks their bookkeeping; use the VMA operations there.
    pub fn mapper_mut(&mut self) -> &mut Mapper<A, M> {
        &mut self.mapper
    }

    /// The VMAs in address order.
    pub fn vmas(&self) -> impl Iterator<Item = &Vma> {
        self.vmas.values()
    }

    /// The VMA containing `addr`.
    pub fn find(&self, addr: VirtAddr) -> Option<&Vma> {
        let a = addr.as_u64();
        self.vmas.range(..=a).next_back().map(|(_, v)| v).filter(|v| a < v.end)
    }

    /// Maps `len` bytes (rounded up to pages) with `perm` and `backing`: at `fixed` if given
    /// (replacing whatever was mapped there, like `MAP_FIXED`), else at the lowest free
    /// range of the window. Pages arrive on first touch ([`fault`](Self::fault)).
    pub fn mmap(
        &mut self,
        fixed: Option<VirtAddr>,
        len: u64,
        perm: Flags,
        backing: Backing,
        tlb: &dyn TlbFlush,
    ) -> Result<VirtAddr, VmError> {
        let perm = perm & (Flags::READ | Flags::WRITE | Flags::EXEC);
        let needs_access = !matches!(backing, Backing::Guard { .. });
        if needs_access && perm.is_empty() {
            return Err(VmError::Invalid);
        }
        match &backing {
            Backing::File { offset, .. } if !offset.is_multiple_of(PAGE_SIZE) => {
                return Err(VmError::Invalid)
            }
            Backing::Phys { base } if !base.is_aligned(PAGE_SIZE) => return Err(VmError::Invalid),
            _ => {}
        }
        let (s, e) = match fixed {
            Some(at) => {
                let (s, e) = page_range(at, len)?;
                if s < self.window.start || e > self.window.end {
                    return Err(VmError::Invalid);
                }
                self.munmap(at, e - s, tlb)?;
                (s, e)
            }
            None => {
                let (_, e0) = page_range(VirtAddr::new(0), len)?;
                let s = self.find_gap(e0).ok_or(VmError::NoMemory)?;
                (s, s + e0)
            }
        };
        self.vmas.insert(s, Vma { start: s, end: e, perm: perm.normalized(), backing });
        Ok(VirtAddr::new(s))
    }

    fn find_gap(&self, len: u64) -> Option<u64> {
        let mut cur = self.window.start;
        for v in self.vmas.values() {
            if v.end <= cur {
                continue;
            }
            if v.start >= cur + len {
                break;
            }
            cur = v.end;
        }
        (cur.checked_add(len)? <= self.window.end).then_some(cur)
    }

    /// Splits the VMA containing `at` (if any, and if `at` is inside it) into two.
    fn split_at(&mut self, at: u64) {
        let Some((&start, v)) = self.vmas.range(..at).next_back() else { return };
        if at >= v.end {
            return;
        }
        let mut right = v.clone();
        right.backing = v.backing.advanced(at - start);
        right.start = at;
        self.vmas.get_mut(&start).expect("just found").end = at;
        self.vmas.insert(at, right);
    }

    /// The VMAs' starts lying wholly in `[s, e)` after splitting at both ends.
    fn carve(&mut self, s: u64, e: u64) -> alloc::vec::Vec<u64> {
        self.split_at(s);
        self.split_at(e);
        self.vmas.range(s..e).map(|(&k, _)| k).collect()
    }

    /// Unmaps `[addr, addr + len)`: removes the VMAs (splitting those that stick out), clears
    /// the translations, flushes `tlb`, then frees the pages this address space allocated.
    /// Holes are fine (like `munmap`).
    pub fn munmap(&mut self, addr: VirtAddr, len: u64, tlb: &dyn TlbFlush) -> Result<(), VmError> {
        let (s, e) = page_range(addr, len)?;
        // Collect our own frames first, then unmap, flush, and free.
        let mut owned = alloc::vec::Vec::new();
        for v in self.vmas.values().filter(|v| v.start < e && v.end > s) {
            for p in (v.start.max(s)..v.end.min(e)).step_by(PAGE_SIZE as usize) {
                let ours = matches!(v.backing, Backing::Anon) || self.copies.contains(&p);
                if let (true, Some((pa, _, _))) = (ours, self.mapper.translate(VirtAddr::new(p))) {
                    owned.push((p, pa));
                }
            }
        }
        let flush = self.mapper.unmap(VirtAddr::new(s)..VirtAddr::new(e))?;
        self.mapper.flush(flush, tlb);
        for k in self.carve(s, e) {
            self.vmas.remove(&k);
        }
        for (p, pa) in owned {
            self.copies.remove(&p);
            // SAFETY: the frame came from the mapper's allocator for this page (anonymous
            // fill or private copy), its translation is gone and the TLB was flushed.
            unsafe { self.mapper.allocator().free_frame(pa) };
        }
        Ok(())
    }

    /// The permissions a present page gets: the VMA's, minus write for a private file page
    /// that is still the file's (so the first write copies it).
    fn page_flags(&self, v: &Vma, page: u64) -> Flags {
        match v.backing {
            Backing::File { shared: false, .. } if !self.copies.contains(&page) => {
                (v.perm - Flags::WRITE).normalized()
            }
            _ => v.perm,
        }
    }

    /// Changes the permissions of `[addr, addr + len)`, which VMAs must cover entirely
    /// (`NoMemory` otherwise, as Linux), splitting VMAs at the ends.
    pub fn mprotect(
        &mut self,
        addr: VirtAddr,
        len: u64,
        perm: Flags,
        tlb: &dyn TlbFlush,
    ) -> Result<(), VmError> {
        let (s, e) = page_range(addr, len)?;
        let perm = (perm & (Flags::READ | Flags::WRITE | Flags::EXEC)).normalized();
        if perm.is_empty() {
            // x86_64 cannot map a present page with no rights; PROT_NONE is not supported.
            return Err(VmError::Invalid);
        }
        let mut cur = s;
        for v in self.vmas.range(..e).map(|(_, v)| v).filter(|v| v.end > s) {
            if v.start > cur || matches!(v.backing, Backing::Guard { .. }) {
                return Err(VmError::NoMemory);
            }
            cur = v.end;
        }
        if cur < e {
            return Err(VmError::NoMemory);
        }
        let mut flush = MapperFlush::none();
        for k in self.carve(s, e) {
            let v = self.vmas.get_mut(&k).expect("carved");
            v.perm = perm;
            let v = v.clone();
            // Runs of present pages wanting the same flags, one `protect` each (so a large
            // page protected whole stays whole).
            let mut run: Option<(u64, u64, Flags)> = None;
            let mut p = v.start;
            while p <= v.end {
                let want = (p < v.end && self.mapper.translate(VirtAddr::new(p)).is_some())
                    .then(|| self.page_flags(&v, p));
                match (run, want) {
                    (Some((rs, re, f)), Some(w)) if re == p && f == w => run = Some((rs, p + PAGE_SIZE, f)),
                    (cur, next) => {
                        if let Some((rs, re, f)) = cur {
                            let done = self.mapper.protect(VirtAddr::new(rs)..VirtAddr::new(re), f);
                            match done {
                                Ok(t) => self.mapper.merge_flush(&mut flush, t),
                                Err(e) => {
                                    self.mapper.flush(flush, tlb);
                                    return Err(e.into());
                                }
                            }
                        }
                        run = next.map(|w| (p, p + PAGE_SIZE, w));
                    }
                }
                p += PAGE_SIZE;
            }
        }
        self.mapper.flush(flush, tlb);
        Ok(())
    }

    /// Writes back the present pages of shared file mappings in `[addr, addr + len)`, which
    /// VMAs must cover (`NoMemory` otherwise).
    pub fn msync(&self, addr: VirtAddr, len: u64) -> Result<(), VmError> {
        let (s, e) = page_range(addr, len)?;
        let mut cur = s;
        for v in self.vmas.range(..e).map(|(_, v)| v).filter(|v| v.end > s) {
            if v.start > cur {
                return Err(VmError::NoMemory);
            }
            cur = v.end;
            if let Backing::File { file, offset, shared: true } = &v.backing {
                for p in (v.start.max(s)..v.end.min(e)).step_by(PAGE_SIZE as usize) {
                    if self.mapper.translate(VirtAddr::new(p)).is_some() {
                        file.write_back(offset + (p - v.start))?;
                    }
                }
            }
        }
        if cur < e {
            return Err(VmError::NoMemory);
        }
        Ok(())
    }

    /// Resolves a page fault at `addr` (OSv's `vm_fault`): maps the page the VMA's backing
    /// provides, copies a private file page on a write, and reports what cannot be resolved.
    /// A fault on a page that is already mapped with enough rights (another CPU won the
    /// race, or a stale TLB entry) succeeds without change.
    pub fn fault(&mut self, addr: VirtAddr, access: Access, tlb: &dyn TlbFlush) -> Result<(), Fault> {
        let page = addr.align_down(PAGE_SIZE).as_u64();
        let Some(v) = self.find(addr).cloned() else { return Err(Fault::Unmapped { addr }) };
        let allowed = match access {
            Access::Read => v.perm.contains(Flags::READ),
            Access::Write => v.perm.contains(Flags::WRITE),
            Access::Exec => v.perm.contains(Flags::EXEC),
        };
        if let Backing::Guard { stack, name } = v.backing {
            return Err(Fault::StackOverflow { addr, stack, name });
        }
        if !allowed {
            return Err(Fault::Protection { addr });
        }
        let va = VirtAddr::new(page)..VirtAddr::new(page + PAGE_SIZE);
        let offset = page - v.start;
        let present = self.mapper.translate(VirtAddr::new(page));
        match (&v.backing, present) {
            (Backing::File { file, offset: foff, shared: false }, Some((_, flags, _)))
                if access == Access::Write && !flags.contains(Flags::WRITE) =>
            {
                // Copy-on-write: replace the file's page with a private copy.
                let src = file.page(foff + offset).map_err(|_| Fault::Io)?;
                let copy = self.copy_of(src)?;
                match self.mapper.unmap(va.clone()) {
                    Ok(flush) => self.mapper.flush(flush, tlb),
                    Err(_) => {
                        // SAFETY: our fresh copy, never mapped.
                        unsafe { self.mapper.allocator().free_frame(copy) };
                        return Err(Fault::NoMemory);
                    }
                }
                self.install(va, copy, v.perm, true, tlb)
            }
            (_, Some(_)) => Ok(()),
            (Backing::Anon, None) => {
                let chunk = page & !(SIZE_2M - 1);
                if v.start <= chunk && chunk + SIZE_2M <= v.end {
                    let whole = VirtAddr::new(chunk)..VirtAddr::new(chunk + SIZE_2M);
                    // Declined (no 2 MiB run, or part of the range already mapped): 4 KiB.
                    if let Ok(flush) = self.mapper.populate_anon(whole, v.perm, PageSize::Size2M) {
                        self.mapper.flush(flush, tlb);
                        return Ok(());
                    }
                }
                let flush =
                    self.mapper.populate_anon(va, v.perm, PageSize::Size4K).map_err(|_| Fault::NoMemory)?;
                self.mapper.flush(flush, tlb);
                Ok(())
            }
            (Backing::Phys { base }, None) => {
                let pa = PhysAddr::new(base.as_u64() + offset);
                let flush = self.mapper.map(va, pa, v.perm).map_err(|_| Fault::NoMemory)?;
                self.mapper.flush(flush, tlb);
                Ok(())
            }
            (Backing::File { file, offset: foff, shared }, None) => {
                let src = file.page(foff + offset).map_err(|_| Fault::Io)?;
                if !shared && access == Access::Write {
                    let copy = self.copy_of(src)?;
                    self.copies.insert(page);
                    self.install(va, copy, v.perm, true, tlb).inspect_err(|_| {
                        self.copies.remove(&page);
                    })
                } else {
                    let flags = self.page_flags(&v, page);
                    self.install(va, src, flags, false, tlb)
                }
            }
            (Backing::Guard { .. }, None) => unreachable!("handled above"),
        }
    }

    /// A fresh frame holding a copy of `src`.
    fn copy_of(&self, src: PhysAddr) -> Result<PhysAddr, Fault> {
        let frame = self.mapper.allocator().allocate_frame().ok_or(Fault::NoMemory)?;
        let phys = self.mapper.phys_mapper();
        // SAFETY: `frame` is fresh and ours; `src` is a live page of the file (the
        // `FileBacking` keeps it while mapped); the two do not overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(
                phys.frame_ptr(src).as_ptr(),
                phys.frame_ptr(frame).as_ptr(),
                PAGE_SIZE as usize,
            )
        };
        Ok(frame)
    }

    /// Maps one page; on failure gives back `frame` if it is ours.
    fn install(
        &mut self,
        va: Range<VirtAddr>,
        frame: PhysAddr,
        flags: Flags,
        ours: bool,
        tlb: &dyn TlbFlush,
    ) -> Result<(), Fault> {
        let page = va.start.as_u64();
        match self.mapper.map(va, frame, flags) {
            Ok(flush) => {
                // A not-present entry cannot be cached in the TLB, so only a merge of the
                // range into a 2 MiB page (which unlinks a table) leaves work here.
                self.mapper.flush(flush, tlb);
                if ours && !matches!(self.find(VirtAddr::new(page)).map(|v| &v.backing), Some(Backing::Anon))
                {
                    self.copies.insert(page);
                }
                Ok(())
            }
            Err(_) => {
                if ours {
                    // SAFETY: our fresh frame, never mapped.
                    unsafe { self.mapper.allocator().free_frame(frame) };
                }
                Err(Fault::NoMemory)
            }
        }
    }

    /// Reserves a stack of `size` bytes (rounded up to pages) with a one-page guard VMA
    /// below it; returns the usable range (the stack grows down from its end). A fault in
    /// the guard page is [`Fault::StackOverflow`] with `id` and `name`.
    pub fn alloc_stack(
        &mut self,
        size: u64,
        id: StackId,
        name: &'static str,
        tlb: &dyn TlbFlush,
    ) -> Result<Range<VirtAddr>, VmError> {
        let (_, len) = page_range(VirtAddr::new(0), size)?;
        let total = len.checked_add(PAGE_SIZE).ok_or(VmError::Invalid)?;
        let base = self.find_gap(total).ok_or(VmError::NoMemory)?;
        self.mmap(
            Some(VirtAddr::new(base)),
            PAGE_SIZE,
            Flags::empty(),
            Backing::Guard { stack: id, name },
            tlb,
        )?;
        let stack = self.mmap(Some(VirtAddr::new(base + PAGE_SIZE)), len, Flags::RW, Backing::Anon, tlb)?;
        Ok(stack..VirtAddr::new(stack.as_u64() + len))
    }

    /// Frees a stack from [`alloc_stack`](Self::alloc_stack), guard page included.
    pub fn free_stack(&mut self, stack: Range<VirtAddr>, tlb: &dyn TlbFlush) -> Result<(), VmError> {
        let base = stack.start.as_u64().checked_sub(PAGE_SIZE).ok_or(VmError::Invalid)?;
        let len = stack.end.as_u64().checked_sub(base).ok_or(VmError::Invalid)?;
        self.munmap(VirtAddr::new(base), len, tlb)
    }
}

#[cfg(test)]
mod tests;
