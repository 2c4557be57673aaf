//! OSv's `page_allocator`: what fills a mapping, one entry at a time, at level 0 (4 KiB) or
//! level 1 (2 MiB).
//!
//! OSv overloads one virtual `map` for `hw_ptep<0>` and `hw_ptep<1>`. Rust cannot overload, and
//! a generic `map<L>` would stop the trait from being object-safe, while a VMA wants to keep
//! its provider as `&dyn PageAllocator` exactly like OSv's virtual class. So each operation
//! has two methods, one per level, and the level is still in the type of the entry:
//! [`map`](PageAllocator::map) takes a `HwPtep<L0>`, [`map_huge`](PageAllocator::map_huge) a
//! `HwPtep<L1>`; a provider cannot write a 2 MiB entry where a 4 KiB one belongs.
//! `map_huge` defaults to "cannot", and the caller then falls back to 4 KiB pages.

use crate::hw::{zero_frame, FrameAllocator, HwPtep, PhysMapper};
use crate::level::{L0, L1};
use crate::pte::{split_entry, PtElement};
use crate::sync::AtomicU64;
use crate::{PhysAddr, VirtAddr};

/// Fills page-table entries for a mapping (OSv's `page_allocator`).
///
/// `offset` is the byte offset of the entry's page within the mapping (the VMA, or the file
/// for a file mapping); `template` carries the permissions (its address bits are ignored);
/// `write` says whether the fault was a write (copy-on-write providers care).
///
/// The `map` methods return whether the entry is present afterwards: installed by this call,
/// or by a concurrent fault that won the [`HwPtep::compare_exchange`] race (the loser gives
/// back whatever it allocated). `false` means the provider could not back the page (out of
/// memory, beyond the end of the backing): the fault handler reports it, the walker rolls back.
pub trait PageAllocator {
    /// Fills an empty 4 KiB entry.
    fn map(&self, offset: u64, ptep: HwPtep<'_, L0>, template: PtElement<L0>, write: bool) -> bool;

    /// Fills an empty 2 MiB entry with a large page, if the provider can.
    fn map_huge(&self, offset: u64, ptep: HwPtep<'_, L1>, template: PtElement<L1>, write: bool) -> bool {
        let _ = (offset, ptep, template, write);
        false
    }

    /// Clears a 4 KiB entry mapping `addr` and releases what the provider put there. Returns
    /// whether something was mapped (so a TLB flush is due).
    ///
    /// The TLB may still hold the old translation until the caller's flush: a provider that
    /// frees the page here relies on the flush happening before the frame is reused. (Page
    /// *tables* the walker unlinks wait in the flush token instead, see [`crate::flush`];
    /// [`vma::AddressSpace`](crate::vma::AddressSpace) frees its anonymous pages itself after
    /// the flush rather than through this method.)
    fn unmap(&self, addr: VirtAddr, offset: u64, ptep: HwPtep<'_, L0>) -> bool;

    /// Clears a 2 MiB entry mapping `addr`; as [`unmap`](Self::unmap).
    ///
    /// The walker merges 512 contiguous 4 KiB pages a provider installed into one 2 MiB
    /// entry, so a provider without large pages of its own may still be asked to unmap one.
    /// The default clears the entry and then gives each of its 512 pages to
    /// [`unmap`](Self::unmap), as the 4 KiB entries they were (through a scratch entry), so
    /// whatever per-page release a provider does in `unmap` still happens.
    fn unmap_huge(&self, addr: VirtAddr, offset: u64, ptep: HwPtep<'_, L1>) -> bool {
        let old = ptep.exchange(PtElement::empty());
        if old.is_leaf() {
            for i in 0..512u64 {
                let piece = AtomicU64::new(split_entry(old.raw(), 1, i));
                let va = VirtAddr::new(addr.as_u64() + i * 4096);
                self.unmap(va, offset + i * 4096, HwPtep::new(&piece));
            }
        }
        old.present()
    }
}

/// Anonymous memory, zero-filled on first touch (OSv's `uninitialized_anonymous_page_provider`
/// plus zeroing): allocates a frame, zeroes it through the [`PhysMapper`], and installs it with
/// `compare_exchange`, so two CPUs faulting on the same page end with one page and no leak.
///
/// `map_huge` fills a 2 MiB entry the same way with a run from
/// [`FrameAllocator::allocate_huge`] (zeroed frame by frame); it declines when the allocator
/// has no 2 MiB-aligned run, and the caller falls back to 4 KiB pages. `unmap_huge` gives the
/// 512 frames back one by one, which is right both for a run from `allocate_huge` and for a
/// large page the walker merged from 512 separately allocated 4 KiB pages.
#[derive(Debug)]
pub struct AnonZero<A, M> {
    alloc: A,
    phys: M,
}

impl<A: FrameAllocator, M: PhysMapper> AnonZero<A, M> {
    /// A provider taking pages from `alloc`, zeroing them through `phys`.
    pub fn new(alloc: A, phys: M) -> Self {
        Self { alloc, phys }
    }
}

impl<A: FrameAllocator, M: PhysMapper> PageAllocator for AnonZero<A, M> {
    fn map(&self, _offset: u64, ptep: HwPtep<'_, L0>, template: PtElement<L0>, _write: bool) -> bool {
        let current = ptep.read();
        if current.present() {
            return true;
        }
        let Some(frame) = self.alloc.allocate_frame() else { return false };
        // SAFETY: `frame` was just allocated for us and is not mapped anywhere yet.
        #[allow(unsafe_code)]
        unsafe {
            zero_frame(&self.phys, frame)
        };
        let Ok(pte) = PtElement::<L0>::page(frame, template.flags()) else {
            // SAFETY: the frame is ours (just allocated) and was never published.
            #[allow(unsafe_code)]
            unsafe {
                self.alloc.free_frame(frame)
            };
            return false;
        };
        match ptep.compare_exchange(current, pte) {
            Ok(_) => true,
            Err(winner) => {
                // SAFETY: the exchange failed, so no entry points at `frame`: still only ours.
                #[allow(unsafe_code)]
                unsafe {
                    self.alloc.free_frame(frame)
                };
                winner.present()
            }
        }
    }

    fn unmap(&self, _addr: VirtAddr, _offset: u64, ptep: HwPtep<'_, L0>) -> bool {
        let old = ptep.exchange(PtElement::empty());
        if old.present() {
            // SAFETY: the frame came from `map` above (this provider's allocator), and the
            // entry that pointed at it is now clear; the caller flushes the TLB before the
            // allocator can hand it out again (see `PageAllocator::unmap`).
            #[allow(unsafe_code)]
            unsafe {
                self.alloc.free_frame(old.addr())
            };
        }
        old.present()
    }

    fn map_huge(&self, _offset: u64, ptep: HwPtep<'_, L1>, template: PtElement<L1>, _write: bool) -> bool {
        let current = ptep.read();
        if current.present() {
            return true;
        }
        let Some(base) = self.alloc.allocate_huge() else { return false };
        for i in 0..512 {
            // SAFETY: the run was just allocated for us and is not mapped anywhere yet; each
            // of its frames is reachable through the `PhysMapper` paired with the allocator.
            #[allow(unsafe_code)]
            unsafe {
                zero_frame(&self.phys, PhysAddr::new(base.as_u64() + i * 4096))
            };
        }
        let Ok(pte) = PtElement::<L1>::huge_page(base, template.flags()) else {
            // SAFETY: the run is ours (just allocated) and was never published.
            #[allow(unsafe_code)]
            unsafe {
                self.alloc.free_huge(base)
            };
            return false;
        };
        match ptep.compare_exchange(current, pte) {
            Ok(_) => true,
            Err(winner) => {
                // SAFETY: the exchange failed, so no entry points at the run: still only ours.
                #[allow(unsafe_code)]
                unsafe {
                    self.alloc.free_huge(base)
                };
                winner.present()
            }
        }
    }

    fn unmap_huge(&self, _addr: VirtAddr, _offset: u64, ptep: HwPtep<'_, L1>) -> bool {
        let old = ptep.exchange(PtElement::empty());
        if old.is_leaf() {
            for i in 0..512 {
                // SAFETY: the large page held frames this provider installed (a run from
                // `map_huge`, or 4 KiB pages from `map` merged by the walker), each
                // individually freeable; the entry is clear and the caller flushes before
                // reuse (see `PageAllocator::unmap`).
                #[allow(unsafe_code)]
                unsafe {
                    self.alloc.free_frame(PhysAddr::new(old.addr().as_u64() + i * 4096))
                };
            }
        }
        old.present()
    }
}

/// A fixed physical range, e.g. a device's MMIO window or a framebuffer: offset `o` of the
/// mapping is physical address `base + o`. Uses 2 MiB pages where the physical address is
/// aligned and the range long enough. Nothing is allocated or freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    base: PhysAddr,
    len: u64,
}

impl PhysRange {
    /// `len` bytes of physical memory from `base` (both 4 KiB aligned for anything to map).
    pub const fn new(base: PhysAddr, len: u64) -> Self {
        Self { base, len }
    }

    fn frame(&self, offset: u64, size: u64) -> Option<PhysAddr> {
        if offset.checked_add(size)? > self.len {
            return None;
        }
        self.base.checked_add(offset)
    }
}

impl PageAllocator for PhysRange {
    fn map(&self, offset: u64, ptep: HwPtep<'_, L0>, template: PtElement<L0>, _write: bool) -> bool {
        let Some(frame) = self.frame(offset, 4096) else { return false };
        let Ok(pte) = PtElement::<L0>::page(frame, template.flags()) else { return false };
        match ptep.compare_exchange(PtElement::empty(), pte) {
            Ok(_) => true,
            Err(current) => current.present(),
        }
    }

    fn map_huge(&self, offset: u64, ptep: HwPtep<'_, L1>, template: PtElement<L1>, _write: bool) -> bool {
        let Some(frame) = self.frame(offset, 2 << 20) else { return false };
        let Ok(pte) = PtElement::<L1>::huge_page(frame, template.flags()) else { return false };
        match ptep.compare_exchange(PtElement::empty(), pte) {
            Ok(_) => true,
            Err(current) => current.present(),
        }
    }

    fn unmap(&self, _addr: VirtAddr, _offset: u64, ptep: HwPtep<'_, L0>) -> bool {
        ptep.exchange(PtElement::empty()).present()
    }
}
