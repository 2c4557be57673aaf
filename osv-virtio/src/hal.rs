//! The hardware abstraction the kernel implements: DMA memory and address
//! translation.
//!
//! Devices read and write guest memory by *physical* address, the driver by
//! virtual address. [`Hal`] gives the driver both views of physically
//! contiguous, zeroed pages ([`Dma`], freed on `Drop`) and translates the
//! caller's buffers. The crate never assumes `phys == virt`.
#![allow(unsafe_code)]

use core::fmt;
use core::ptr::NonNull;

/// Size of the pages [`Hal::dma_alloc`] hands out.
pub const PAGE_SIZE: usize = 4096;

/// A guest-physical address, as a device sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct PhysAddr(u64);

impl PhysAddr {
    /// Wraps a raw physical address.
    pub const fn new(addr: u64) -> Self {
        Self(addr)
    }

    /// The raw address.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// `self + off`, or `None` on overflow.
    pub const fn checked_add(self, off: u64) -> Option<Self> {
        match self.0.checked_add(off) {
            Some(a) => Some(Self(a)),
            None => None,
        }
    }
}

impl fmt::LowerHex for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// DMA memory and address translation, implemented by the kernel.
///
/// `Hal` values are cheap handles (`Clone`): a [`Dma`] keeps a clone to free
/// itself, so a kernel usually implements it on a zero-sized type or a
/// `&'static` reference to its page allocator.
///
/// # Safety
///
/// Implementers promise:
/// 1. [`dma_alloc`](Hal::dma_alloc) returns either `None` or `pages` whole
///    pages that are physically contiguous, start on a [`PAGE_SIZE`]
///    boundary, are zeroed, are mapped read-write at the returned virtual
///    pointer for as long as they are not deallocated, and are not used by
///    anything else (no other allocation overlaps them).
/// 2. The returned physical address is the address the device must use to
///    reach the same bytes (cache-coherent DMA, as on x86).
/// 3. [`virt_to_phys`](Hal::virt_to_phys) returns the physical address of
///    the byte at `vaddr` if that byte is mapped and DMA-able, `None`
///    otherwise.
pub unsafe trait Hal: Clone {
    /// Allocates `pages` (≥ 1) physically contiguous zeroed pages; returns
    /// their physical address and a virtual pointer to them.
    fn dma_alloc(&self, pages: usize) -> Option<(PhysAddr, NonNull<u8>)>;

    /// Frees pages allocated by [`dma_alloc`](Hal::dma_alloc).
    ///
    /// # Safety
    ///
    /// 1. `paddr`, `vaddr` and `pages` are exactly what one earlier call of
    ///    `dma_alloc` on this `Hal` (or a clone) returned and asked for.
    /// 2. That allocation has not been freed yet, and neither the driver nor
    ///    the device uses it any more.
    unsafe fn dma_dealloc(&self, paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize);

    /// The physical address of the byte at `vaddr`, for buffers the caller
    /// owns (not allocated through [`dma_alloc`](Hal::dma_alloc)).
    fn virt_to_phys(&self, vaddr: *const u8) -> Option<PhysAddr>;
}

/// Why a DMA allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocError;

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DMA allocation failed")
    }
}

impl core::error::Error for AllocError {}

/// Physically contiguous, zeroed DMA pages, freed when dropped.
///
/// The memory is shared with a device, so the driver only ever touches it
/// through raw pointers ([`Dma::vaddr`]): no Rust reference to it exists
/// that the device could invalidate by writing.
pub struct Dma<H: Hal> {
    hal: H,
    paddr: PhysAddr,
    vaddr: NonNull<u8>,
    pages: usize,
}

impl<H: Hal> Dma<H> {
    /// Allocates `pages` pages (at least one).
    pub fn new(hal: &H, pages: usize) -> Result<Self, AllocError> {
        let pages = pages.max(1);
        pages.checked_mul(PAGE_SIZE).ok_or(AllocError)?;
        let (paddr, vaddr) = hal.dma_alloc(pages).ok_or(AllocError)?;
        Ok(Self { hal: hal.clone(), paddr, vaddr, pages })
    }

    /// Physical address of the first byte.
    pub fn paddr(&self) -> PhysAddr {
        self.paddr
    }

    /// Virtual pointer to the first byte; valid for [`len`](Dma::len) bytes
    /// while `self` lives.
    pub fn vaddr(&self) -> NonNull<u8> {
        self.vaddr
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }

    /// Always `false`: a `Dma` has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Copies `src` into the region at `offset`; `false` (and nothing
    /// written) if it does not fit.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> bool {
        match offset.checked_add(src.len()) {
            Some(end) if end <= self.len() => {
                // SAFETY: `offset + src.len() <= self.len()`, so the
                // destination lies inside our live allocation (Hal promise
                // 1); `src` is a Rust slice so it cannot overlap DMA memory
                // that no reference points to.
                unsafe {
                    core::ptr::copy_nonoverlapping(src.as_ptr(), self.vaddr.as_ptr().add(offset), src.len())
                };
                true
            }
            _ => false,
        }
    }

    /// Copies bytes at `offset` out of the region into `dst`; `false` (and
    /// nothing read) if the range does not fit.
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> bool {
        match offset.checked_add(dst.len()) {
            Some(end) if end <= self.len() => {
                // SAFETY: the source range lies inside our live allocation
                // (checked above); `dst` is a distinct Rust slice.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        self.vaddr.as_ptr().add(offset),
                        dst.as_mut_ptr(),
                        dst.len(),
                    )
                };
                true
            }
            _ => false,
        }
    }
}

impl<H: Hal> Drop for Dma<H> {
    fn drop(&mut self) {
        // SAFETY: these are the values `dma_alloc` returned for this
        // allocation (set only in `new`), it is freed exactly once (here),
        // and the owner of the `Dma` (a queue or driver) has reset or
        // stopped the device before dropping it.
        unsafe { self.hal.dma_dealloc(self.paddr, self.vaddr, self.pages) };
    }
}

impl<H: Hal> fmt::Debug for Dma<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dma").field("paddr", &self.paddr).field("pages", &self.pages).finish()
    }
}

// SAFETY: a `Dma` owns its pages exclusively (Hal promise 1), so moving it
// to another thread moves that ownership; the raw pointer is only a handle.
unsafe impl<H: Hal + Send> Send for Dma<H> {}
