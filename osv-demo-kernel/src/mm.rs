//! The kernel's own page tables, built by osv-mm at boot in place of
//! osv-boot's temporary identity map (which maps everything below 4 GiB
//! read-write-execute with 2 MiB pages).
//!
//! The new tables keep one address space with physical = virtual (the linear
//! map OSv calls `phys_mem`, here at offset 0, so DMA addresses and pointers
//! agree), and make the kernel W^X: text read+execute, rodata read-only,
//! data, bss, heap and all other RAM read-write and no-execute, the MMIO
//! hole (top GiB below 4 GiB) uncached, page 0 unmapped so null pointers
//! fault. osv-mm's mapper uses 2 MiB pages wherever alignment allows and
//! 4 KiB pages around the kernel image.
//!
//! Page-table frames come from the heap (identity-mapped, 4 KiB aligned).

use alloc::vec::Vec;
use core::alloc::Layout;
use core::ops::Range;
use core::ptr::NonNull;

use core::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

use crate::threads::MAX_CPUS;
use osv_boot::BootInfo;

use osv_mm::vma::{Access, AddressSpace, Backing, VmError};
use osv_mm::{Flags, FrameAllocator, Mapper, PageSize, PhysAddr, PhysMapper, TlbFlush, VirtAddr};

use crate::check;
use crate::ktest::{Outcome, Test};

pub static ALL: &[Test] = &[
    Test { name: "mm::kernel_is_w_xor_x", run: w_xor_x },
    Test { name: "mm::text_and_rodata_writes_fault", run: read_only_faults },
    Test { name: "mm::null_page_is_unmapped", run: null_page },
    Test { name: "mm::ram_uses_2mib_pages", run: huge_pages },
    Test { name: "mm::mprotect_read_only_then_write_faults", run: mprotect_round_trip },
    Test { name: "mm::guard_page_below_a_stack", run: guard_page },
    Test { name: "mm::demand_paging_fills_zero_pages_on_first_touch", run: demand_paging },
    Test { name: "mm::mmap_failure_is_an_error", run: mmap_failure },
    Test { name: "mm::smp_munmap_shoots_down_other_cpus_tlbs", run: shootdown },
];

/// 4 KiB frames for page tables, from the heap.
pub struct HeapFrames;

const FRAME: Layout = match Layout::from_size_align(4096, 4096) {
    Ok(l) => l,
    Err(_) => panic!("4 KiB frame layout"),
};

// SAFETY: frames are distinct 4 KiB-aligned heap blocks (the allocator never
// hands out a live block twice), identity-mapped below 4 GiB (the heap lies
// there: `heap::init` checks), and only returned through `free_frame`.
unsafe impl FrameAllocator for HeapFrames {
    fn allocate_frame(&self) -> Option<PhysAddr> {
        // SAFETY: `FRAME` has a non-zero size.
        let p = unsafe { alloc::alloc::alloc(FRAME) };
        (!p.is_null()).then(|| PhysAddr::new(p as u64))
    }

    unsafe fn free_frame(&self, frame: PhysAddr) {
        // SAFETY: the caller promises `frame` came from `allocate_frame`,
        // i.e. from `alloc` with `FRAME`.
        unsafe { alloc::alloc::dealloc(frame.as_u64() as *mut u8, FRAME) }
    }
}

/// Physical = virtual, for the frames the kernel uses for page tables.
pub struct Identity;

// SAFETY: every frame `HeapFrames` hands out lies in identity-mapped RAM
// below 4 GiB, in the boot tables and in the tables built here alike.
unsafe impl PhysMapper for Identity {
    fn frame_ptr(&self, frame: PhysAddr) -> NonNull<u8> {
        NonNull::new(frame.as_u64() as *mut u8).unwrap_or(NonNull::dangling())
    }
}

/// TLB invalidation on this CPU only: for changes no other CPU can have
/// cached (a fault that maps a page that was not present).
pub struct LocalTlb;

impl TlbFlush for LocalTlb {
    fn flush_range(&self, range: Range<VirtAddr>) {
        let mut a = range.start.as_u64() & !0xfff;
        while a < range.end.as_u64() {
            osv_boot::arch::invlpg(a);
            a += 4096;
        }
    }

    fn flush_all(&self) {
        // SAFETY: reloading the active root changes no mapping.
        unsafe { osv_boot::arch::write_cr3(osv_boot::arch::read_cr3()) }
    }
}

/// Above this many pages a shootdown reloads CR3 instead of `invlpg`s.
const FLUSH_ALL_PAGES: u64 = 64;

/// The TLB shootdown IPI.
pub const TLB_VECTOR: u8 = 0x32;

/// TLB invalidation on every online CPU (osv-mm's flush tokens end here
/// for unmap and protect): this CPU flushes, then each other online CPU
/// gets the range through one mailbox and an IPI, and the sender waits for
/// every acknowledgement. One shootdown at a time (the mailbox flag); a CPU
/// waiting for the mailbox, for acknowledgements or for the address-space
/// lock serves requests addressed to it, so two CPUs never wait on each
/// other with interrupts off.
pub struct Shootdown;

struct Mailbox {
    busy: AtomicBool,
    start: AtomicU64,
    end: AtomicU64,
    acks: AtomicU32,
    pending: [AtomicBool; MAX_CPUS],
}

static MAILBOX: Mailbox = Mailbox {
    busy: AtomicBool::new(false),
    start: AtomicU64::new(0),
    end: AtomicU64::new(0),
    acks: AtomicU32::new(0),
    pending: [const { AtomicBool::new(false) }; MAX_CPUS],
};

/// Shootdowns that reached other CPUs, and the IPIs they sent.
pub static SHOOTDOWNS: AtomicU64 = AtomicU64::new(0);
/// Shootdown IPIs sent.
pub static SHOOTDOWN_IPIS: AtomicU64 = AtomicU64::new(0);

fn flush_local(start: u64, end: u64) {
    if end.saturating_sub(start) / 4096 > FLUSH_ALL_PAGES {
        LocalTlb.flush_all();
    } else {
        LocalTlb.flush_range(VirtAddr::new(start)..VirtAddr::new(end));
    }
}

/// Serves a shootdown request addressed to CPU `me`, if any.
fn serve_shootdown(me: usize) {
    if me < MAX_CPUS && MAILBOX.pending[me].swap(false, Acquire) {
        flush_local(MAILBOX.start.load(Relaxed), MAILBOX.end.load(Relaxed));
        MAILBOX.acks.fetch_add(1, Release);
    }
}

fn on_tlb_ipi(_: &mut osv_boot::trap::TrapFrame) {
    if let Some(l) = osv_boot::rt::lapic() {
        l.eoi();
    }
    serve_shootdown(osv_boot::rt::smp::cpu_index());
}

/// Flushes `[start, end)` (everything for `u64::MAX`) on the other CPUs.
fn shoot_remote(start: u64, end: u64) {
    if crate::threads::online_cpus() <= 1 {
        return;
    }
    osv_boot::arch::without_interrupts(|| {
        let me = osv_boot::rt::smp::cpu_index();
        while MAILBOX.busy.compare_exchange(false, true, Acquire, Relaxed).is_err() {
            serve_shootdown(me);
            core::hint::spin_loop();
        }
        MAILBOX.start.store(start, Relaxed);
        MAILBOX.end.store(end, Relaxed);
        MAILBOX.acks.store(0, Relaxed);
        let mut sent = 0;
        for i in (0..MAX_CPUS).filter(|&i| i != me && crate::threads::cpu_online(i)) {
            let Some(id) = osv_boot::rt::smp::apic_id_of(i).and_then(|a| u8::try_from(a).ok()) else {
                continue;
            };
            MAILBOX.pending[i].store(true, Release);
            if let Some(l) = osv_boot::rt::lapic() {
                l.send_ipi(id, TLB_VECTOR);
                sent += 1;
            }
        }
        while MAILBOX.acks.load(Acquire) < sent {
            serve_shootdown(me);
            core::hint::spin_loop();
        }
        SHOOTDOWNS.fetch_add(1, Relaxed);
        SHOOTDOWN_IPIS.fetch_add(u64::from(sent), Relaxed);
        MAILBOX.busy.store(false, Release);
    });
}

impl TlbFlush for Shootdown {
    fn flush_range(&self, range: Range<VirtAddr>) {
        LocalTlb.flush_range(range.clone());
        shoot_remote(range.start.as_u64(), range.end.as_u64());
    }

    fn flush_all(&self) {
        LocalTlb.flush_all();
        shoot_remote(0, u64::MAX);
    }
}

/// The CPU holding the address-space lock (`usize::MAX`: none).
static KERNEL_OWNER: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Runs `f` on the kernel address space with its lock held and interrupts
/// off. While the lock is busy this CPU waits with interrupts as the caller
/// had them, and serves shootdowns meanwhile (the holder may be waiting for
/// this CPU's acknowledgement).
pub fn with_kernel<R>(f: impl FnOnce(&mut Space) -> R) -> R {
    let k = kernel();
    let mut f = Some(f);
    loop {
        let r = osv_boot::arch::without_interrupts(|| {
            let mut g = k.try_lock()?;
            KERNEL_OWNER.store(osv_boot::rt::smp::cpu_index(), Relaxed);
            let f = f.take()?;
            let r = f(&mut g);
            KERNEL_OWNER.store(usize::MAX, Relaxed);
            Some(r)
        });
        if let Some(r) = r {
            return r;
        }
        // Interrupts off: a preempted thread can be moved to another CPU
        // (the load balancer), and must not serve the request of the CPU
        // it read the index on.
        osv_boot::arch::without_interrupts(|| serve_shootdown(osv_boot::rt::smp::cpu_index()));
        core::hint::spin_loop();
    }
}

/// The kernel's one address space: osv-mm's VMAs over the kernel's tables.
pub type Space = AddressSpace<HeapFrames, Identity>;

static KERNEL: spin::Once<spin::Mutex<Space>> = spin::Once::new();

/// Where `mmap` places mappings: far above RAM and the MMIO hole (the rest
/// of the address space below it is the linear map), filled on demand.
pub const VM_WINDOW: Range<u64> = 0x20_0000_0000..0x40_0000_0000;

/// Page faults resolved by the VMA layer (demand paging).
pub static DEMAND_FAULTS: AtomicU64 = AtomicU64::new(0);

extern "C" {
    static __kernel_start: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __data_start: u8;
    static __kernel_end: u8;
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// The kernel image's sections, page-aligned: (note, text, rodata, data+bss).
fn sections() -> [(Range<u64>, Flags); 4] {
    // SAFETY: linker-script symbols; only their addresses are taken.
    let (start, text, text_end, rodata, data, end) = unsafe {
        (
            sym(&__kernel_start),
            sym(&__text_start),
            sym(&__text_end),
            sym(&__rodata_start),
            sym(&__data_start),
            sym(&__kernel_end),
        )
    };
    let up = |a: u64| (a + 0xfff) & !0xfff;
    [
        (start..text, Flags::READ),
        (text..up(text_end), Flags::RX),
        (up(text_end).max(rodata)..data, Flags::READ),
        (data..up(end), Flags::RW),
    ]
}

/// Where the kernel image ends (page-aligned).
fn kernel_end() -> u64 {
    sections()[3].0.end
}

/// Below this, RAM; from here to 4 GiB, the MMIO hole (LAPIC, IOAPIC,
/// virtio-mmio windows, PCI BARs): uncached, as in the boot tables.
const MMIO_HOLE: u64 = 3 << 30;
const FOUR_GIB: u64 = 1 << 32;

fn map(
    m: &mut Mapper<HeapFrames, Identity>,
    r: Range<u64>,
    flags: Flags,
) -> Result<(), alloc::string::String> {
    if r.is_empty() {
        return Ok(());
    }
    let t = m
        .map(VirtAddr::new(r.start)..VirtAddr::new(r.end), PhysAddr::new(r.start), flags)
        .map_err(|e| alloc::format!("mapping {:#x}..{:#x} {flags:?}: {e:?}", r.start, r.end))?;
    // Not live yet (CR3 is loaded below): no flush, but table frames a
    // merge gave up go back to the allocator.
    m.discard(t);
    Ok(())
}

/// Builds the kernel's tables and switches to them. Needs the heap.
pub fn init(boot: &BootInfo) {
    let build = || -> Result<Mapper<HeapFrames, Identity>, alloc::string::String> {
        let mut m = Mapper::new(HeapFrames, Identity).map_err(|e| alloc::format!("root table: {e:?}"))?;
        let [note, ..] = sections();
        // Page 0 stays unmapped; the rest of low memory (real-mode area,
        // PVH start info, ACPI tables) is data.
        map(&mut m, 0x1000..note.0.start, Flags::RW)?;
        for (r, f) in sections() {
            map(&mut m, r, f)?;
        }
        map(&mut m, kernel_end()..MMIO_HOLE, Flags::RW)?;
        map(&mut m, MMIO_HOLE..FOUR_GIB, Flags::RW | Flags::NO_CACHE)?;
        // RAM above 4 GiB, if QEMU gave any: the linear map continues there.
        for r in boot.memory.ranges() {
            let (s, e) = (r.start().max(FOUR_GIB), r.end());
            if s < e {
                map(&mut m, s & !0xfff..(e + 0xfff) & !0xfff, Flags::RW)?;
            }
        }
        Ok(m)
    };
    let m = match build() {
        Ok(m) => m,
        Err(e) => panic!("building the kernel page tables: {e}"),
    };
    let root = m.root().as_u64();
    // SAFETY: turning on NXE only gives bit 63 of page-table entries its
    // meaning; the boot tables never set it. The new tables map all code,
    // data, stacks and the heap at their current addresses (identity), so
    // execution continues across the CR3 load.
    unsafe {
        osv_boot::arch::wrmsr(
            osv_boot::arch::MSR_EFER,
            osv_boot::arch::rdmsr(osv_boot::arch::MSR_EFER) | osv_boot::arch::EFER_NXE,
        );
        osv_boot::arch::write_cr3(root);
    }
    let space = match AddressSpace::new(m, VirtAddr::new(VM_WINDOW.start)..VirtAddr::new(VM_WINDOW.end)) {
        Ok(s) => s,
        Err(e) => panic!("the kernel address space: {e:?}"),
    };
    KERNEL.call_once(|| spin::Mutex::new(space));
    osv_boot::rt::trap::set_page_fault_resolver(resolve_fault);
    if !osv_boot::rt::trap::set_handler(TLB_VECTOR, on_tlb_ipi) {
        panic!("cannot install the TLB shootdown handler");
    }
}

/// The page-fault hook: faults inside the VMA window go to the VMA layer
/// (OSv's `vm_fault`); anything else, or a fault the VMA layer refuses
/// (protection, no VMA, guard page, no memory), stays unresolved for the
/// probe fix-ups and the fatal report. Runs on the exception's IST stack
/// with interrupts off; never waits for the address-space lock (a fault
/// taken while it is held is reported, not deadlocked on).
fn resolve_fault(addr: u64, code: osv_boot::trap::PageFaultCode) -> bool {
    if !VM_WINDOW.contains(&addr) {
        return false;
    }
    let Some(space) = KERNEL.get() else { return false };
    let me = osv_boot::rt::smp::cpu_index();
    let mut space = loop {
        if let Some(g) = space.try_lock() {
            break g;
        }
        if KERNEL_OWNER.load(Relaxed) == me {
            // A fault while this CPU holds the lock: report, not deadlock.
            return false;
        }
        // Another CPU holds it (and may wait for our acknowledgement).
        serve_shootdown(me);
        core::hint::spin_loop();
    };
    let access = if code.fetch() {
        Access::Exec
    } else if code.write() {
        Access::Write
    } else {
        Access::Read
    };
    let ok = space.fault(VirtAddr::new(addr), access, &LocalTlb).is_ok();
    if ok {
        DEMAND_FAULTS.fetch_add(1, Relaxed);
    }
    ok
}

/// The kernel address space's mapper (after `init`).
pub fn kernel() -> &'static spin::Mutex<Space> {
    KERNEL.get().expect("mm::init runs at boot")
}

fn flags_at(addr: u64) -> Option<(Flags, PageSize)> {
    with_kernel(|k| k.mapper().translate(VirtAddr::new(addr)).map(|(_, f, s)| (f, s)))
}

fn w_xor_x(_: &'static BootInfo) -> Outcome {
    check!(
        osv_boot::arch::read_cr3() == with_kernel(|k| k.mapper().root().as_u64()),
        "the osv-mm tables are not active"
    );
    let mut checked = 0u64;
    for (r, want) in sections() {
        let mut a = r.start;
        while a < r.end {
            let (f, _) = flags_at(a).ok_or_else(|| alloc::format!("{a:#x} is not mapped"))?;
            check!(
                !(f.contains(Flags::WRITE) && f.contains(Flags::EXEC)),
                "{a:#x} is writable and executable"
            );
            check!(f.contains(Flags::WRITE) == want.contains(Flags::WRITE), "{a:#x}: {f:?}, want {want:?}");
            check!(f.contains(Flags::EXEC) == want.contains(Flags::EXEC), "{a:#x}: {f:?}, want {want:?}");
            a += 4096;
            checked += 1;
        }
    }
    // Heap, a stack variable, and RAM in general: never executable.
    let on_heap = alloc::boxed::Box::new(0u64);
    let local = 0u64;
    for a in [&*on_heap as *const u64 as u64, &local as *const u64 as u64, MMIO_HOLE - 4096] {
        let (f, _) = flags_at(a).ok_or_else(|| alloc::format!("{a:#x} is not mapped"))?;
        check!(f.contains(Flags::WRITE) && !f.contains(Flags::EXEC), "{a:#x}: {f:?}");
    }
    osv_boot::println!("  {checked} kernel-image pages checked: text RX, rodata R, data RW+NX");
    Ok(())
}

static RODATA_WORD: u64 = 0x0123_4567_89ab_cdef;

fn read_only_faults(_: &'static BootInfo) -> Outcome {
    let text = w_xor_x as *const () as u64 & !7;
    let ro = &RODATA_WORD as *const u64 as u64;
    check!(sections()[2].0.contains(&ro), "RODATA_WORD at {ro:#x} is not in .rodata");
    for (what, addr) in [("text", text), ("rodata", ro)] {
        // SAFETY: the probe catches the fault; if the write went through, the
        // test fails before anything runs the clobbered word (we write back
        // what we read).
        let before = unsafe { osv_boot::rt::probe::read_u64(addr) }
            .map_err(|f| alloc::format!("reading {what} at {addr:#x}: {f:?}"))?;
        // SAFETY: as above.
        match unsafe { osv_boot::rt::probe::write_u64(addr, before) } {
            Err(osv_boot::rt::probe::Fault::Page { addr: a, code }) => {
                check!(a == addr && code.present() && code.write(), "{what}: fault at {a:#x}, {code}");
            }
            other => {
                return Err(
                    alloc::format!("writing {what} at {addr:#x}: {other:?}, expected a page fault").into()
                )
            }
        }
    }
    check!(RODATA_WORD == 0x0123_4567_89ab_cdef);
    Ok(())
}

fn null_page(_: &'static BootInfo) -> Outcome {
    for addr in [0u64, 8, 0xff8] {
        // SAFETY: the probe catches the fault.
        match unsafe { osv_boot::rt::probe::read_u64(addr) } {
            Err(osv_boot::rt::probe::Fault::Page { addr: a, code }) => {
                check!(a == addr && !code.present() && !code.write(), "fault at {a:#x}: {code}");
            }
            other => {
                return Err(
                    alloc::format!("reading {addr:#x}: {other:?}, expected a not-present fault").into()
                )
            }
        }
    }
    Ok(())
}

fn huge_pages(boot: &'static BootInfo) -> Outcome {
    let (lo, hi) = *crate::heap::HEAP_RANGE.get().ok_or("no heap range")?;
    let mut huge = 0u64;
    let mut total = 0u64;
    let mut a = (lo + (2 << 20) - 1) & !((2 << 20) - 1);
    while a + (2 << 20) <= hi {
        let (_, size) = flags_at(a).ok_or_else(|| alloc::format!("heap {a:#x} is not mapped"))?;
        total += 1;
        huge += u64::from(size == PageSize::Size2M);
        a += 2 << 20;
    }
    check!(total > 0 && huge == total, "{huge} of {total} heap 2 MiB ranges use 2 MiB pages");
    let mut tables = 0u64;
    with_kernel(|k| k.mapper().for_each_table(|_, _| tables += 1));
    osv_boot::println!(
        "  {} MiB of RAM mapped; the heap's {total} 2 MiB ranges all use 2 MiB pages; {tables} page-table pages in all",
        boot.memory.total() >> 20
    );
    Ok(())
}

fn mprotect_round_trip(_: &'static BootInfo) -> Outcome {
    // One page of its own, inside a 2 MiB page: protecting it splits that page.
    let page = alloc::boxed::Box::new(Page([0x5a; 4096]));
    let a = page.0.as_ptr() as u64;
    let r = VirtAddr::new(a)..VirtAddr::new(a + 4096);
    let protect = |f: Flags| -> Outcome {
        // `Mapper::flush` frees the table frames a split or merge retired,
        // after the shootdown.
        with_kernel(|k| k.mapper_mut().protect(r.clone(), f).map(|t| k.mapper().flush(t, &Shootdown)))
            .map_err(|e| alloc::format!("protect {a:#x} {f:?}: {e:?}"))?;
        Ok(())
    };
    protect(Flags::READ)?;
    let (f, size) = flags_at(a).ok_or("page vanished")?;
    check!(!f.contains(Flags::WRITE) && size == PageSize::Size4K, "{f:?} {size:?}");
    // SAFETY: the probe catches the fault; the page is ours.
    let write = unsafe { osv_boot::rt::probe::write_u64(a, 1) };
    check!(
        matches!(write, Err(osv_boot::rt::probe::Fault::Page { addr, code }) if addr == a && code.write() && code.present()),
        "write to a read-only page: {write:?}"
    );
    // SAFETY: as above.
    let read = unsafe { osv_boot::rt::probe::read_u64(a) };
    check!(read == Ok(0x5a5a_5a5a_5a5a_5a5a), "read-only page unreadable: {read:?}");
    // The neighbours in the same (now split) 2 MiB range stay writable.
    for n in [a - 4096, a + 4096] {
        let (f, _) = flags_at(n).ok_or("neighbour unmapped")?;
        check!(f.contains(Flags::WRITE), "neighbour {n:#x}: {f:?}");
    }
    protect(Flags::RW)?;
    // SAFETY: writable again; the page is ours.
    check!(unsafe { osv_boot::rt::probe::write_u64(a, 7) }.is_ok(), "write after restoring RW faulted");
    check!(page.0[..8] == 7u64.to_le_bytes());
    Ok(())
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// A stack with an unmapped guard page below it: running off its bottom is a
/// page fault that the fault report names as a stack overflow of `name`
/// (osv-boot's guard registry).
pub struct GuardedStack {
    base: *mut u8,
    layout: Layout,
    guard: Option<osv_boot::rt::guard::GuardId>,
}

/// Why a guarded stack could not be made.
#[derive(Debug)]
pub enum StackError {
    /// No memory for the stack (or for a page table to split its range).
    OutOfMemory,
    /// The guard registry is full.
    TooManyGuards,
    /// A thread was pinned to a CPU that is not online.
    NoSuchCpu,
}

impl GuardedStack {
    /// A stack of `size` bytes (rounded up to pages) above one guard page.
    pub fn new(size: usize, name: &str) -> Result<GuardedStack, StackError> {
        let size = size.div_ceil(4096) * 4096;
        let layout = Layout::from_size_align(size + 4096, 4096).map_err(|_| StackError::OutOfMemory)?;
        // SAFETY: `layout` has a non-zero size.
        let base = unsafe { alloc::alloc::alloc(layout) };
        if base.is_null() {
            return Err(StackError::OutOfMemory);
        }
        let mut s = GuardedStack { base, layout, guard: None };
        let g = s.guard_range();
        with_kernel(|k| {
            k.mapper_mut()
                .unmap(VirtAddr::new(g.start)..VirtAddr::new(g.end))
                .map(|t| k.mapper().flush(t, &Shootdown))
        })
        .map_err(|_| StackError::OutOfMemory)?;
        s.guard = Some(osv_boot::rt::guard::register(g, name).ok_or(StackError::TooManyGuards)?);
        Ok(s)
    }

    /// The guard page's addresses.
    pub fn guard_range(&self) -> Range<u64> {
        self.base as u64..self.base as u64 + 4096
    }

    /// The lowest usable address (just above the guard).
    pub fn bottom(&self) -> u64 {
        self.base as u64 + 4096
    }

    /// The initial stack pointer (16-byte aligned, one past the top).
    pub fn top(&self) -> u64 {
        self.base as u64 + self.layout.size() as u64
    }
}

impl Drop for GuardedStack {
    fn drop(&mut self) {
        if let Some(id) = self.guard.take() {
            osv_boot::rt::guard::unregister(id);
        }
        let g = self.guard_range();
        // Map the guard page back before the memory returns to the heap.
        let remapped = with_kernel(|k| {
            // The guard's 2 MiB range may merge back into one page here; the
            // retired table frame is freed after the shootdown.
            k.mapper_mut()
                .map(VirtAddr::new(g.start)..VirtAddr::new(g.end), PhysAddr::new(g.start), Flags::RW)
                .map(|t| k.mapper().flush(t, &Shootdown))
        });
        match remapped {
            Ok(()) => {
                // SAFETY: `base` came from `alloc` with `layout`, and the
                // whole block is mapped again.
                unsafe { alloc::alloc::dealloc(self.base, self.layout) }
            }
            // Leak rather than hand an unmapped page to the heap.
            Err(e) => osv_boot::println!(
                "mm: cannot remap a guard page at {:#x} ({e:?}); leaking the stack",
                g.start
            ),
        }
    }
}

fn guard_page(_: &'static BootInfo) -> Outcome {
    let s = GuardedStack::new(16 << 10, "guard-test").map_err(|e| alloc::format!("{e:?}"))?;
    let g = s.guard_range();
    // The stack's lowest word is usable; the word below it is not.
    // SAFETY: the probe catches faults; the stack is ours.
    check!(unsafe { osv_boot::rt::probe::write_u64(s.bottom(), 1) }.is_ok(), "stack bottom not writable");
    // SAFETY: as above.
    match unsafe { osv_boot::rt::probe::read_u64(s.bottom() - 8) } {
        Err(osv_boot::rt::probe::Fault::Page { addr, code }) => {
            check!(addr == s.bottom() - 8 && !code.present(), "fault at {addr:#x}: {code}");
        }
        other => return Err(alloc::format!("reading the guard page: {other:?}").into()),
    }
    let mut name = [0u8; osv_boot::rt::guard::NAME_LEN];
    check!(osv_boot::rt::guard::owner(g.start + 100, &mut name) == Some("guard-test"));
    check!(
        osv_boot::rt::guard::owner(s.bottom(), &mut name).is_none(),
        "the stack itself is reported as a guard"
    );
    let start = g.start;
    drop(s);
    check!(osv_boot::rt::guard::owner(start, &mut name).is_none(), "guard still registered after drop");
    check!(
        flags_at(start).is_some_and(|(f, _)| f.contains(Flags::WRITE)),
        "guard page not remapped after drop"
    );
    Ok(())
}

fn demand_paging(_: &'static BootInfo) -> Outcome {
    use osv_boot::rt::probe::{self, Fault};
    const PAGES: u64 = 16;
    let len = PAGES * 4096;
    let a = with_kernel(|k| k.mmap(None, len, Flags::RW, Backing::Anon, &Shootdown))
        .map_err(|e| alloc::format!("mmap: {e:?}"))?
        .as_u64();
    check!(VM_WINDOW.contains(&a), "mapped at {a:#x}, outside the window");
    check!((0..PAGES).all(|i| flags_at(a + i * 4096).is_none()), "pages mapped before first touch");
    let before = DEMAND_FAULTS.load(Relaxed);
    // A read of an untouched page: a zero page appears.
    // SAFETY: the probe catches an unresolved fault; the page is ours.
    check!(unsafe { probe::read_u64(a + 8) } == Ok(0), "first read is not zero");
    // Writes through plain pointers to every third page.
    let touched: Vec<u64> = (0..PAGES).step_by(3).collect();
    for &i in &touched {
        let p = (a + i * 4096 + 16) as *mut u64;
        // SAFETY: inside our mapping; the fault handler maps the page.
        unsafe { p.write_volatile(0xfeed_0000 + i) };
    }
    for &i in &touched {
        // SAFETY: as above, mapped now.
        let v = unsafe { ((a + i * 4096 + 16) as *const u64).read_volatile() };
        check!(v == 0xfeed_0000 + i, "page {i}: {v:#x}");
    }
    let faults = DEMAND_FAULTS.load(Relaxed) - before;
    check!(faults == touched.len() as u64, "{faults} demand faults for {} touched pages", touched.len());
    check!(flags_at(a + 4096).is_none(), "an untouched page got mapped");
    // Read-only now: a write is a protection fault the VMA layer refuses.
    with_kernel(|k| k.mprotect(VirtAddr::new(a), len, Flags::READ, &Shootdown))
        .map_err(|e| alloc::format!("mprotect: {e:?}"))?;
    // SAFETY: the probe catches the fault.
    let w = unsafe { probe::write_u64(a + 3 * 4096, 1) };
    check!(
        matches!(w, Err(Fault::Page { code, .. }) if code.write() && code.present()),
        "write after mprotect: {w:?}"
    );
    // SAFETY: reads still work.
    check!(unsafe { probe::read_u64(a + 3 * 4096 + 16) } == Ok(0xfeed_0003));
    // Unmapped: every access faults, and the frames go back.
    with_kernel(|k| k.munmap(VirtAddr::new(a), len, &Shootdown))
        .map_err(|e| alloc::format!("munmap: {e:?}"))?;
    // SAFETY: the probe catches the fault.
    let r = unsafe { probe::read_u64(a) };
    check!(matches!(r, Err(Fault::Page { code, .. }) if !code.present()), "read after munmap: {r:?}");
    osv_boot::println!("  {faults} demand-zero faults for {} touched of {PAGES} mapped pages", touched.len());
    Ok(())
}

fn mmap_failure(_: &'static BootInfo) -> Outcome {
    // More than the whole window: an error, not a panic.
    let too_big = VM_WINDOW.end - VM_WINDOW.start + 4096;
    let r = with_kernel(|k| k.mmap(None, too_big, Flags::RW, Backing::Anon, &Shootdown));
    check!(matches!(r, Err(VmError::NoMemory)), "{r:?}");
    let r = with_kernel(|k| k.mmap(None, 0, Flags::RW, Backing::Anon, &Shootdown));
    check!(matches!(r, Err(VmError::Invalid)), "zero length: {r:?}");
    // And the address space still works.
    let a = with_kernel(|k| k.mmap(None, 4096, Flags::RW, Backing::Anon, &Shootdown))
        .map_err(|e| alloc::format!("mmap after failures: {e:?}"))?;
    with_kernel(|k| k.munmap(a, 4096, &Shootdown)).map_err(|e| alloc::format!("munmap: {e:?}"))?;
    Ok(())
}

/// A page mapped and read on another CPU (its TLB caches the translation),
/// then unmapped here: the other CPU's next read must fault. Under QEMU TCG
/// each virtual CPU keeps its own software TLB, flushed only by its own
/// `invlpg`/CR3 write, so without the shootdown the stale read succeeds
/// (the control run below shows it).
fn shootdown(boot: &'static BootInfo) -> Outcome {
    use crate::threads::{self, Builder};
    use alloc::sync::Arc;
    use core::sync::atomic::AtomicU32;
    use osv_boot::rt::probe::{self, Fault};
    crate::sched_tests::smp_cpus(boot)?;
    let other =
        (0..MAX_CPUS).find(|&c| c != threads::cpu_index() && threads::cpu_online(c)).ok_or("no other CPU")?;
    // step: 0 start, 1 the other CPU read the page, 2 unmapped, 3 done.
    let run =
        |flush: &'static (dyn TlbFlush + Sync)| -> Result<(u64, Result<u64, Fault>), alloc::string::String> {
            let a = with_kernel(|k| k.mmap(None, 4096, Flags::RW, Backing::Anon, &Shootdown))
                .map_err(|e| alloc::format!("mmap: {e:?}"))?
                .as_u64();
            // SAFETY: our fresh mapping; the fault handler fills it.
            unsafe { (a as *mut u64).write_volatile(0x5eed_0001) };
            let step = Arc::new(AtomicU32::new(0));
            let out = Arc::new(spin::Mutex::new((0u64, Ok(0u64))));
            let (s2, o2) = (step.clone(), out.clone());
            let h = threads::spawn_with(Builder::new("tlb-reader").pin(other), move || {
                // SAFETY: the probe catches faults.
                let first = unsafe { probe::read_u64(a) }.unwrap_or(0);
                s2.store(1, Release);
                // Stay on this CPU, running, with the translation cached.
                while s2.load(Acquire) != 2 {
                    core::hint::spin_loop();
                }
                // SAFETY: as above.
                let second = unsafe { probe::read_u64(a) };
                *o2.lock() = (first, second);
                s2.store(3, Release);
            });
            while step.load(Acquire) != 1 {
                core::hint::spin_loop();
            }
            with_kernel(|k| k.munmap(VirtAddr::new(a), 4096, flush))
                .map_err(|e| alloc::format!("munmap: {e:?}"))?;
            step.store(2, Release);
            h.join();
            let r = *out.lock();
            Ok(r)
        };
    static LOCAL: LocalTlb = LocalTlb;
    static SHOOT: Shootdown = Shootdown;
    let ipis0 = SHOOTDOWN_IPIS.load(Relaxed);
    let (first, second) = run(&SHOOT)?;
    let ipis = SHOOTDOWN_IPIS.load(Relaxed) - ipis0;
    check!(first == 0x5eed_0001, "the other CPU read {first:#x} before the unmap");
    check!(
        matches!(second, Err(Fault::Page { code, .. }) if !code.present()),
        "CPU {other} read the unmapped page: {second:?}"
    );
    check!(ipis >= 1, "no shootdown IPI was sent");
    // Control: the same with this CPU's flush only.
    let (_, stale) = run(&LOCAL)?;
    // Leave no stale translation behind for later mappings of that range.
    Shootdown.flush_all();
    osv_boot::println!(
        "  CPU {other}'s read after munmap with shootdown: {second:?} ({ipis} shootdown IPIs); with a local flush only: {}",
        match stale {
            Ok(v) => alloc::format!("read {v:#x} through its stale TLB entry"),
            Err(f) => alloc::format!("{f:?}"),
        }
    );
    Ok(())
}
