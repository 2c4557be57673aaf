//! malloc: OSv's `memory::pool` design as a [`GlobalAlloc`] (see [`Heap`]).
//!
//! - **Small objects** (up to [`MAX_SMALL`] bytes, alignment included) come from per-CPU
//!   pools, one per power-of-two size class (16 B .. 1 KiB). A pool carves one-page slabs:
//!   the first 64 bytes of the page are the slab's header (owner CPU, class, the slab's own
//!   free list, list links), the objects follow at multiples of their size, so every object
//!   is aligned to its class size. Like OSv's `pool::page_header`, an object finds its slab by
//!   rounding its address down to the page.
//! - **Allocation and same-CPU free** touch only the CPU's own pool: plain loads and stores,
//!   no lock, no atomic read-modify-write (the CPU index comes through [`CpuLocal`]).
//! - **Cross-CPU free**: an object freed on another CPU than its slab's owner is pushed onto
//!   the owner pool's lock-free MPSC stack (a Treiber stack whose only consumer takes the
//!   whole stack with one `swap`, so there is no ABA problem). The owner collects it at its
//!   next allocation in that class. OSv does the same through per-CPU-pair rings and a
//!   worker thread.
//! - **Large allocations** (bigger than [`MAX_SMALL`], or aligned beyond it) are whole pages
//!   from the page source, aligned as asked. Large allocations are page aligned and small
//!   objects never are (the header occupies offset 0), which is how `dealloc` tells them
//!   apart.
//! - A slab whose objects are all free goes back to the page source unless it is the pool's
//!   only partly-free slab (so one object allocated and freed in a loop does not thrash).
//! - **Failure** returns null; nothing panics. A CPU index beyond the heap's `CPUS` gets
//!   page-granular allocations.
//! - **Statistics** ([`Heap::stats`]): bytes and objects in use per size class, large bytes,
//!   slab pages, the page source's free pages. Each CPU counts its own operations in its own
//!   counters (plain stores), so a reader sums them without stopping anyone; the sum is a
//!   snapshot that may be off by the operations in flight.
//!
//! The page source is the [`HeapPages`] trait; the kernel implements it with
//! [`PerCpuPages`] over a [`LinearMap`] (done here), so single
//! slab pages come from the per-CPU page cache.
#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::ptr::{self, NonNull};

use crate::hw::LinearMap;
use crate::percpu::CpuLocal;
use crate::phys::PerCpuPages;
use crate::sync::{AtomicPtr, AtomicU64, Ordering, UnsafeCell};
use crate::PAGE_SIZE;

const PAGE: usize = PAGE_SIZE as usize;
/// Number of small size classes: 16, 32, 64, 128, 256, 512, 1024 bytes.
pub const CLASSES: usize = 7;
/// The smallest class (a free object holds one link).
pub const MIN_SMALL: usize = 16;
/// The largest small object; bigger allocations take whole pages.
pub const MAX_SMALL: usize = MIN_SMALL << (CLASSES - 1);
const HEADER: usize = 64;
/// The largest alignment a [`LinearMap`] keeps (promise 3).
const LINEAR_ALIGN: usize = 2 << 20;

/// Where the heap gets its pages.
///
/// # Safety
/// Implementers promise that `alloc_pages` returns `pages * 4096` bytes of memory, aligned
/// to `align`, valid for reads and writes, used by nobody else until it is passed back to
/// `free_pages`.
pub unsafe trait HeapPages {
    /// `pages` contiguous pages aligned to `align` bytes (a power of two, at least 4096), or
    /// `None` when memory is exhausted.
    fn alloc_pages(&self, pages: usize, align: usize) -> Option<NonNull<u8>>;

    /// Gives back pages from `alloc_pages`.
    ///
    /// # Safety
    /// 1. `ptr` and `pages` are exactly those of one `alloc_pages` call, not freed since.
    /// 2. Nothing uses the memory any more.
    unsafe fn free_pages(&self, ptr: NonNull<u8>, pages: usize);

    /// Free pages left in the source (for statistics).
    fn free_page_count(&self) -> u64;
}

// SAFETY: forwards to `T`, which keeps the promise.
unsafe impl<T: HeapPages + ?Sized> HeapPages for &T {
    fn alloc_pages(&self, pages: usize, align: usize) -> Option<NonNull<u8>> {
        (**self).alloc_pages(pages, align)
    }
    unsafe fn free_pages(&self, ptr: NonNull<u8>, pages: usize) {
        // SAFETY: the caller's promises are `T`'s.
        unsafe { (**self).free_pages(ptr, pages) }
    }
    fn free_page_count(&self) -> u64 {
        (**self).free_page_count()
    }
}

// SAFETY: pages come from the page allocator (never handed out twice until freed) and are
// reached through a linear map, so a run of pages is one valid buffer of `pages * 4096`
// bytes; `alloc_aligned` honours the physical alignment, which the linear map keeps in
// virtual memory up to 2 MiB (larger alignments are refused), and single pages are 4096
// aligned.
unsafe impl<M: LinearMap, C: CpuLocal, const CPUS: usize> HeapPages for PerCpuPages<M, C, CPUS> {
    #[inline]
    fn alloc_pages(&self, pages: usize, align: usize) -> Option<NonNull<u8>> {
        if align > LINEAR_ALIGN {
            // `LinearMap` keeps alignment only up to 2 MiB.
            return None;
        }
        let phys = if pages == 1 && align <= PAGE {
            self.alloc_page().ok()?
        } else {
            self.alloc_run(pages as u64, align.max(PAGE) as u64).ok()?
        };
        Some(self.global().mapper().frame_ptr(phys))
    }
    #[inline]
    unsafe fn free_pages(&self, ptr: NonNull<u8>, pages: usize) {
        let phys = self.global().mapper().phys_of(ptr);
        // SAFETY: the caller returns exactly one earlier allocation, unused; single pages
        // came from the cache path, runs from the global allocator.
        let r = unsafe {
            if pages == 1 {
                self.free_page(phys)
            } else {
                self.global().free(phys, pages as u64)
            }
        };
        debug_assert_eq!(r, Ok(()));
    }
    fn free_page_count(&self) -> u64 {
        self.free_pages()
    }
}

/// A free object: its first word links to the next one.
struct FreeObj {
    next: *mut FreeObj,
}

/// The first 64 bytes of a slab page.
#[repr(C)]
struct Slab {
    /// Immutable after creation (read by any CPU freeing one of its objects).
    owner: usize,
    class: usize,
    /// The rest is the owner's alone.
    free: *mut FreeObj,
    nfree: usize,
    next: *mut Slab,
    prev: *mut Slab,
}

const _: () = assert!(core::mem::size_of::<Slab>() <= HEADER);

const fn class_size(class: usize) -> usize {
    MIN_SMALL << class
}

const fn first_offset(class: usize) -> usize {
    if class_size(class) > HEADER {
        class_size(class)
    } else {
        HEADER
    }
}

const fn capacity(class: usize) -> usize {
    (PAGE - first_offset(class)) / class_size(class)
}

/// The class serving `layout`, or `None` for a large allocation.
#[inline]
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(MIN_SMALL);
    if size > MAX_SMALL {
        return None;
    }
    Some((usize::BITS - (size - 1).leading_zeros()) as usize - 4)
}

/// One CPU's pool of one size class.
#[repr(align(64))]
struct Pool {
    /// Slabs with free objects (owner only).
    partial: UnsafeCell<*mut Slab>,
    /// Objects freed by other CPUs (MPSC Treiber stack; the owner takes all at once).
    remote: AtomicPtr<FreeObj>,
}

/// One CPU's counters; only that CPU writes them (load + store, no read-modify-write).
#[repr(align(64))]
struct Counters {
    allocs: [AtomicU64; CLASSES],
    frees: [AtomicU64; CLASSES],
    large_alloc_bytes: AtomicU64,
    large_free_bytes: AtomicU64,
    slab_pages_in: AtomicU64,
    slab_pages_out: AtomicU64,
}

#[inline(always)]
fn bump(c: &AtomicU64, by: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
}

struct Cpu {
    pools: [Pool; CLASSES],
    counters: Counters,
}

impl Cpu {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Self {
            pools: [const {
                Pool { partial: UnsafeCell::new(ptr::null_mut()), remote: AtomicPtr::new(ptr::null_mut()) }
            }; CLASSES],
            counters: Counters {
                allocs: [const { AtomicU64::new(0) }; CLASSES],
                frees: [const { AtomicU64::new(0) }; CLASSES],
                large_alloc_bytes: AtomicU64::new(0),
                large_free_bytes: AtomicU64::new(0),
                slab_pages_in: AtomicU64::new(0),
                slab_pages_out: AtomicU64::new(0),
            },
        }
    }
    #[cfg(loom)]
    fn new() -> Self {
        Self {
            pools: core::array::from_fn(|_| Pool {
                partial: UnsafeCell::new(ptr::null_mut()),
                remote: AtomicPtr::new(ptr::null_mut()),
            }),
            counters: Counters {
                allocs: core::array::from_fn(|_| AtomicU64::new(0)),
                frees: core::array::from_fn(|_| AtomicU64::new(0)),
                large_alloc_bytes: AtomicU64::new(0),
                large_free_bytes: AtomicU64::new(0),
                slab_pages_in: AtomicU64::new(0),
                slab_pages_out: AtomicU64::new(0),
            },
        }
    }
}

/// Per size class statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// The class's object size in bytes.
    pub size: usize,
    /// Objects allocated and not freed.
    pub objects: u64,
    /// `objects * size`.
    pub bytes: u64,
}

/// A snapshot of the heap's statistics ([`Heap::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes in use: small objects at their class size plus large allocations in whole pages.
    pub bytes_in_use: u64,
    /// Per size class.
    pub classes: [ClassStats; CLASSES],
    /// Bytes of large allocations (whole pages).
    pub large_bytes: u64,
    /// Pages held as slabs.
    pub slab_pages: u64,
    /// Free pages in the page source.
    pub free_pages: u64,
}

/// The kernel heap: per-CPU pools of small objects over a page source (see the
/// [module docs](self)). Usable as `#[global_allocator]` from a `static` (the constructor is
/// `const`).
pub struct Heap<P, C, const CPUS: usize> {
    pages: P,
    cpus: C,
    per_cpu: [Cpu; CPUS],
}

impl<P, C, const CPUS: usize> fmt::Debug for Heap<P, C, CPUS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heap").field("cpus", &CPUS).finish_non_exhaustive()
    }
}

// SAFETY: a pool's `partial` list and its slabs' headers are touched only by the owning CPU
// (`CpuLocal`), remote frees go through the atomic stack, counters are atomics.
unsafe impl<P: Sync, C: Sync, const CPUS: usize> Sync for Heap<P, C, CPUS> {}
// SAFETY: the raw pointers point into pages the heap owns; moving the heap moves ownership.
unsafe impl<P: Send, C: Send, const CPUS: usize> Send for Heap<P, C, CPUS> {}

impl<P, C, const CPUS: usize> Heap<P, C, CPUS> {
    /// A heap taking pages from `pages`, CPU identity from `cpus`.
    #[cfg(not(loom))]
    pub const fn new(pages: P, cpus: C) -> Self {
        Self { pages, cpus, per_cpu: [const { Cpu::new() }; CPUS] }
    }

    /// A heap (loom build: not `const`).
    #[cfg(loom)]
    pub fn new(pages: P, cpus: C) -> Self {
        Self { pages, cpus, per_cpu: core::array::from_fn(|_| Cpu::new()) }
    }

    /// The page source.
    pub fn pages(&self) -> &P {
        &self.pages
    }
}

/// The slab an object lives in.
#[inline(always)]
fn slab_of(obj: *mut u8) -> *mut Slab {
    obj.map_addr(|a| a & !(PAGE - 1)).cast()
}

impl<P: HeapPages, C: CpuLocal, const CPUS: usize> Heap<P, C, CPUS> {
    /// Allocates `layout`; null when out of memory. Same as [`GlobalAlloc::alloc`].
    #[inline]
    pub fn allocate(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else { return self.alloc_large(layout) };
        self.cpus.with_cpu(|cpu| {
            let Some(me) = self.per_cpu.get(cpu) else { return self.alloc_large(layout) };
            let pool = &me.pools[class];
            // SAFETY: `pool` belongs to this CPU (`CpuLocal` promise 2).
            let obj = unsafe { self.pool_alloc(cpu, class, pool, &me.counters) };
            if !obj.is_null() {
                bump(&me.counters.allocs[class], 1);
            }
            obj
        })
    }

    /// Frees what [`allocate`](Self::allocate) returned. Same as [`GlobalAlloc::dealloc`].
    ///
    /// # Safety
    /// `ptr` came from `allocate` (or `GlobalAlloc::alloc`) of this heap with the same
    /// `layout`, and is not used any more.
    #[inline]
    pub unsafe fn deallocate(&self, ptr: *mut u8, layout: Layout) {
        if ptr.is_null() {
            return;
        }
        if ptr.addr() & (PAGE - 1) == 0 {
            // SAFETY: page aligned: a large allocation (small objects never sit at offset 0).
            unsafe { self.free_large(ptr, layout) };
            return;
        }
        self.cpus.with_cpu(|cpu| {
            let slab = slab_of(ptr);
            // SAFETY: `owner` and `class` are written once when the slab is made, before any
            // of its objects was handed out (so before this one reached us).
            let (owner, class) = unsafe { ((*slab).owner, (*slab).class) };
            if let Some(me) = self.per_cpu.get(cpu) {
                bump(&me.counters.frees[class], 1);
            }
            if owner == cpu {
                let me = &self.per_cpu[cpu];
                // SAFETY: our own pool and slab; the object is free (caller).
                unsafe { self.local_free(&me.pools[class], &me.counters, slab, ptr.cast()) };
            } else {
                // SAFETY: the slab's owner index is one of ours (it made the slab).
                let pool = unsafe { &self.per_cpu.get_unchecked(owner).pools[class] };
                // The owner's counters cannot be touched from here; a CPU without a slot
                // (index >= CPUS) does not count its remote frees: documented imprecision
                // that cannot happen in a kernel whose `CPUS` covers every CPU.
                Self::remote_free(pool, ptr.cast());
            }
        })
    }

    /// # Safety
    /// `pool` is CPU `cpu`'s pool of `class`, and we run on `cpu`.
    #[inline]
    unsafe fn pool_alloc(&self, cpu: usize, class: usize, pool: &Pool, counters: &Counters) -> *mut u8 {
        if !pool.remote.load(Ordering::Relaxed).is_null() {
            // SAFETY: our own pool.
            unsafe { self.collect_remote(pool, counters) };
        }
        pool.partial.with_mut(|partial| {
            // SAFETY: `partial` is this CPU's alone; slabs on it are ours and have free
            // objects.
            unsafe {
                let mut slab = *partial;
                if slab.is_null() {
                    let Some(page) = self.pages.alloc_pages(1, PAGE) else { return ptr::null_mut() };
                    bump(&counters.slab_pages_in, 1);
                    slab = Self::init_slab(page.as_ptr(), cpu, class);
                    *partial = slab;
                }
                let obj = (*slab).free;
                (*slab).free = (*obj).next;
                (*slab).nfree -= 1;
                if (*slab).nfree == 0 {
                    Self::unlink(partial, slab);
                }
                obj.cast()
            }
        })
    }

    /// # Safety
    /// `page` is a fresh page of ours.
    unsafe fn init_slab(page: *mut u8, cpu: usize, class: usize) -> *mut Slab {
        let size = class_size(class);
        let n = capacity(class);
        let first = first_offset(class);
        let mut head: *mut FreeObj = ptr::null_mut();
        for i in (0..n).rev() {
            // SAFETY: object `i` lies inside the page.
            unsafe {
                let obj = page.add(first + i * size).cast::<FreeObj>();
                obj.write(FreeObj { next: head });
                head = obj;
            }
        }
        let slab = page.cast::<Slab>();
        // SAFETY: the header fits in the first 64 bytes (const-asserted).
        unsafe {
            slab.write(Slab {
                owner: cpu,
                class,
                free: head,
                nfree: n,
                next: ptr::null_mut(),
                prev: ptr::null_mut(),
            })
        };
        slab
    }

    /// # Safety
    /// `slab` is on the list `partial` points at.
    unsafe fn unlink(partial: *mut *mut Slab, slab: *mut Slab) {
        // SAFETY: list members are live slabs of this CPU.
        unsafe {
            let (next, prev) = ((*slab).next, (*slab).prev);
            if prev.is_null() {
                *partial = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            (*slab).next = ptr::null_mut();
            (*slab).prev = ptr::null_mut();
        }
    }

    /// # Safety
    /// We run on the owner of `pool`, `slab` is one of its slabs, `obj` a free object in it.
    #[inline]
    unsafe fn local_free(&self, pool: &Pool, counters: &Counters, slab: *mut Slab, obj: *mut FreeObj) {
        pool.partial.with_mut(|partial| {
            // SAFETY: our own pool, slab and object.
            unsafe {
                obj.write(FreeObj { next: (*slab).free });
                (*slab).free = obj;
                (*slab).nfree += 1;
                let n = (*slab).nfree;
                if n == 1 {
                    (*slab).prev = ptr::null_mut();
                    (*slab).next = *partial;
                    if !(*partial).is_null() {
                        (**partial).prev = slab;
                    }
                    *partial = slab;
                } else if n == capacity((*slab).class) && !((*slab).next.is_null() && (*slab).prev.is_null())
                {
                    // Entirely free and not the only partial slab: give the page back.
                    Self::unlink(partial, slab);
                    self.pages.free_pages(NonNull::new_unchecked(slab.cast()), 1);
                    bump(&counters.slab_pages_out, 1);
                }
            }
        })
    }

    /// Pushes `obj` onto another CPU's stack of remotely freed objects.
    fn remote_free(pool: &Pool, obj: *mut FreeObj) {
        let mut head = pool.remote.load(Ordering::Relaxed);
        loop {
            // SAFETY: the object is free and ours until the push below publishes it.
            unsafe { obj.write(FreeObj { next: head }) };
            // Release: the link written above is visible to the owner's Acquire swap.
            match pool.remote.compare_exchange_weak(head, obj, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// Frees every object other CPUs pushed onto `pool`'s stack.
    ///
    /// # Safety
    /// We run on the owner of `pool`.
    unsafe fn collect_remote(&self, pool: &Pool, counters: &Counters) {
        // Acquire: pairs with the pushers' Release, so their links are visible.
        let mut obj = pool.remote.swap(ptr::null_mut(), Ordering::Acquire);
        while !obj.is_null() {
            // SAFETY: taken off the stack, so ours; its slab is one of this pool's.
            unsafe {
                let next = (*obj).next;
                self.local_free(pool, counters, slab_of(obj.cast()), obj);
                obj = next;
            }
        }
    }

    fn large_pages(layout: Layout) -> usize {
        layout.size().max(1).div_ceil(PAGE)
    }

    fn alloc_large(&self, layout: Layout) -> *mut u8 {
        let Some(bytes) = layout.size().max(1).checked_next_multiple_of(PAGE) else { return ptr::null_mut() };
        let Some(p) = self.pages.alloc_pages(bytes / PAGE, layout.align().max(PAGE)) else {
            return ptr::null_mut();
        };
        self.cpus.with_cpu(|cpu| {
            if let Some(me) = self.per_cpu.get(cpu) {
                bump(&me.counters.large_alloc_bytes, bytes as u64);
            }
        });
        p.as_ptr()
    }

    /// # Safety
    /// `ptr` is a large allocation of `layout`.
    unsafe fn free_large(&self, ptr: *mut u8, layout: Layout) {
        let pages = Self::large_pages(layout);
        // SAFETY: one earlier `alloc_pages` of exactly these pages (caller).
        unsafe { self.pages.free_pages(NonNull::new_unchecked(ptr), pages) };
        self.cpus.with_cpu(|cpu| {
            if let Some(me) = self.per_cpu.get(cpu) {
                bump(&me.counters.large_free_bytes, (pages * PAGE) as u64);
            }
        });
    }

    /// Gives back to the page source every slab of this CPU that has no object in use
    /// (after collecting remote frees). The memory-pressure path; also for tests.
    pub fn trim(&self) {
        self.cpus.with_cpu(|cpu| {
            let Some(me) = self.per_cpu.get(cpu) else { return };
            for pool in &me.pools {
                // SAFETY: our own pool.
                unsafe { self.collect_remote(pool, &me.counters) };
                pool.partial.with_mut(|partial| {
                    // SAFETY: our own list of our own slabs.
                    unsafe {
                        let mut slab = *partial;
                        while !slab.is_null() {
                            let next = (*slab).next;
                            if (*slab).nfree == capacity((*slab).class) {
                                Self::unlink(partial, slab);
                                self.pages.free_pages(NonNull::new_unchecked(slab.cast()), 1);
                                bump(&me.counters.slab_pages_out, 1);
                            }
                            slab = next;
                        }
                    }
                });
            }
        })
    }

    /// A snapshot of the statistics (sums every CPU's counters; see the module docs).
    pub fn stats(&self) -> HeapStats {
        let mut s = HeapStats::default();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (class, cs) in s.classes.iter_mut().enumerate() {
            let allocs: u64 =
                self.per_cpu.iter().map(|c| get(&c.counters.allocs[class])).fold(0, u64::wrapping_add);
            let frees: u64 =
                self.per_cpu.iter().map(|c| get(&c.counters.frees[class])).fold(0, u64::wrapping_add);
            cs.size = class_size(class);
            cs.objects = allocs.wrapping_sub(frees);
            cs.bytes = cs.objects.wrapping_mul(cs.size as u64);
        }
        let sum = |f: fn(&Counters) -> &AtomicU64| {
            self.per_cpu.iter().map(|c| get(f(&c.counters))).fold(0, u64::wrapping_add)
        };
        s.large_bytes = sum(|c| &c.large_alloc_bytes).wrapping_sub(sum(|c| &c.large_free_bytes));
        s.slab_pages = sum(|c| &c.slab_pages_in).wrapping_sub(sum(|c| &c.slab_pages_out));
        s.bytes_in_use = s.classes.iter().map(|c| c.bytes).fold(s.large_bytes, u64::wrapping_add);
        s.free_pages = self.pages.free_page_count();
        s
    }
}

// SAFETY: `allocate` returns null or a block of at least `layout.size()` bytes aligned to
// `layout.align()` (small: a class at least that big whose objects sit at multiples of the
// class size in a page-aligned slab; large: whole pages aligned to max(align, 4096)), owned
// by the caller until `dealloc`; it never unwinds.
unsafe impl<P: HeapPages, C: CpuLocal, const CPUS: usize> GlobalAlloc for Heap<P, C, CPUS> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocate(layout)
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `GlobalAlloc::dealloc`'s contract is `deallocate`'s.
        unsafe { self.deallocate(ptr, layout) }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
