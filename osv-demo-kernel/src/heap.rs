//! The kernel heap: osv-mm's `Heap` (OSv's `memory::pool`: per-CPU pools of
//! small objects in page-sized slabs, page-granular large allocations) over
//! osv-mm's physical page allocator with per-CPU page caches, fed with one
//! range of the boot memory map.

use core::ptr::NonNull;

use osv_boot::BootInfo;
use osv_mm::{CpuLocal, Heap, LinearMap, PageRangeAllocator, PerCpuPages, PhysAddr, PhysMapper};

/// CPUs the per-CPU pools and caches are built for: the scheduler's.
pub const MAX_CPUS: usize = crate::threads::MAX_CPUS;

/// CPU identity for osv-mm: the index of the CPU this runs on (osv-boot's
/// per-CPU record at the GS base, set before any allocation), with
/// interrupts off while the answer is used. The scheduler allocates from
/// its timer interrupt (run-queue and timer-list nodes); with interrupts
/// off no handler can enter a pool or page cache that the interrupted code
/// is using, and the thread cannot move to another CPU. Frees from another
/// CPU go through osv-mm's cross-CPU free queue.
pub struct KernelCpus;

// SAFETY: `f` runs with interrupts disabled on the CPU whose index it gets,
// so no other context (thread or interrupt handler, on this or another CPU)
// runs `f` with the same index at the same time; nested calls from inside
// `f` get the same index, which osv-mm allows. The index is below
// `MAX_CPUS`: the scheduler starts no more CPUs than that.
unsafe impl CpuLocal for KernelCpus {
    fn max_cpus(&self) -> usize {
        MAX_CPUS
    }
    #[inline]
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        osv_boot::arch::without_interrupts(|| f(osv_boot::rt::smp::cpu_index()))
    }
}

/// Physical memory at its own address: osv-boot's boot tables and the
/// kernel's osv-mm tables (`mm`) both map RAM identically.
pub struct Linear;

// SAFETY: the heap range is identity-mapped RAM below 4 GiB, so a frame's
// pointer is its address, valid for 4096 bytes, distinct per frame.
unsafe impl PhysMapper for Linear {
    fn frame_ptr(&self, frame: PhysAddr) -> NonNull<u8> {
        NonNull::new(frame.as_u64() as *mut u8).unwrap_or(NonNull::dangling())
    }
}

// SAFETY: identity: contiguous, exact inverse, congruent modulo any size.
unsafe impl LinearMap for Linear {
    fn phys_of(&self, ptr: NonNull<u8>) -> PhysAddr {
        PhysAddr::new(ptr.as_ptr() as u64)
    }
}

/// The page allocator under the heap.
pub static PAGES: PerCpuPages<Linear, KernelCpus, MAX_CPUS> =
    PerCpuPages::new(PageRangeAllocator::new(Linear), KernelCpus);

#[global_allocator]
static HEAP: Heap<&PerCpuPages<Linear, KernelCpus, MAX_CPUS>, KernelCpus, MAX_CPUS> =
    Heap::new(&PAGES, KernelCpus);

/// Heap size: a quarter of usable RAM, at most 64 MiB. The rest of RAM stays
/// untouched (the memory-map test writes to it).
const MAX_HEAP: u64 = 64 << 20;

/// Where the heap lives, for the tests.
pub static HEAP_RANGE: spin::Once<(u64, u64)> = spin::Once::new();

pub fn init(boot: &BootInfo) {
    let Some(r) = boot.memory.largest() else {
        panic!("no usable memory for the heap");
    };
    let size = (r.len() / 4).min(MAX_HEAP) & !0xfff;
    // Everything under 4 GiB is identity-mapped by osv-boot.
    assert!(r.start() + size <= 1 << 32, "heap range above the identity map");
    let range = PhysAddr::new(r.start())..PhysAddr::new(r.start() + size);
    // SAFETY: the range is usable RAM from the boot memory map (the kernel
    // image and the first MiB are already taken out), identity-mapped, and
    // handed to the allocator once, here.
    let added = unsafe { PAGES.global().add_region(range) };
    if let Err(e) = added {
        panic!("heap range {:#x}+{size:#x}: {e:?}", r.start());
    }
    HEAP_RANGE.call_once(|| (r.start(), r.start() + size));
}

/// Bytes currently allocated (small objects at their class size, large
/// ones in whole pages).
pub fn used() -> usize {
    HEAP.stats().bytes_in_use as usize
}

/// (heap size, bytes in use).
pub fn usage() -> (usize, usize) {
    let (lo, hi) = HEAP_RANGE.get().copied().unwrap_or((0, 0));
    ((hi - lo) as usize, used())
}
