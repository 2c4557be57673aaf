//! The kernel heap: a first-fit allocator over one physical range, until
//! osv-mm's per-CPU pools take over (issue #3).

use linked_list_allocator::LockedHeap;
use osv_boot::BootInfo;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Heap size: a quarter of usable RAM, at most 64 MiB.
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
    // SAFETY: the range is usable RAM from the boot memory map (the kernel
    // image and the first MiB are already taken out), identity-mapped, and
    // handed to the allocator once, here.
    unsafe { HEAP.lock().init(r.start() as *mut u8, size as usize) };
    HEAP_RANGE.call_once(|| (r.start(), r.start() + size));
}

/// Bytes currently allocated.
pub fn used() -> usize {
    HEAP.lock().used()
}

/// (heap size, bytes in use).
pub fn usage() -> (usize, usize) {
    let h = HEAP.lock();
    (h.size(), h.used())
}
