//! The runtime a kernel binary links (feature `rt`): PVH entry, descriptor
//! tables, the interrupt path, the console, time, `mem*`, panic.
//!
//! Boot sequence (see ARCHITECTURE.md): `osv_pvh_start32` (entry.s) records
//! the TSC, clears `.bss`, identity-maps the first 4 GiB with 2 MiB pages,
//! enters long mode and calls [`osv_boot_rust_entry`], which brings up the
//! serial console, GDT/TSS/IDT and the per-CPU record at GS, reads the start
//! info and memory map, picks the AP trampoline page, enables the local APIC,
//! calibrates the TSC and LAPIC timer, and calls the kernel's
//! [`entry_point!`](crate::entry_point) function. The kernel may then start
//! the other CPUs with [`smp::start_ap`].
#![allow(unsafe_code)]

mod console;
pub mod context;
pub mod guard;
mod mem;
mod panic;
pub mod probe;
pub mod smp;
mod tables;
pub mod timer;
pub mod tls;
pub mod trap;

pub use console::{_print, force_unlock_console};
pub use tables::{boot_irq_stack_top, set_irq_stack, set_ist, IST_STACKS};

use crate::arch::{self, Pio};
use crate::lapic::{self, Lapic};
use crate::memmap::{MemoryMap, PhysRange, ENTRY_SIZE};
use crate::start_info::{cmdline_from_bytes, Cmdline, StartInfo, V1_SIZE};
use crate::time::TscClock;
use crate::BootInfo;
use core::sync::atomic::{AtomicU64, Ordering};

core::arch::global_asm!(include_str!("entry.s"), options(att_syntax));
core::arch::global_asm!(include_str!(concat!(env!("OUT_DIR"), "/vectors.s")), options(att_syntax));

extern "C" {
    static osv_entry_tsc: u64;
    static __kernel_start: u8;
    static __kernel_end: u8;
    static __text_start: u8;
    static __text_end: u8;
    static osv_boot_stack_bottom: u8;
    static osv_boot_stack_top: u8;
}

extern "Rust" {
    fn __osv_kernel_main(boot: &'static BootInfo) -> !;
}

/// How the kernel leaves QEMU through `isa-debug-exit` (port `0xf4`). QEMU
/// exits with status `(value << 1) | 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything passed: QEMU exits with [`crate::QEMU_EXIT_SUCCESS`].
    Success,
    /// Something failed: QEMU exits with [`crate::QEMU_EXIT_FAILURE`].
    Failure,
}

/// Leaves QEMU with `code`; halts forever where no `isa-debug-exit` device
/// is present.
pub fn exit(code: ExitCode) -> ! {
    let v = match code {
        ExitCode::Success => crate::DEBUG_EXIT_SUCCESS,
        ExitCode::Failure => crate::DEBUG_EXIT_FAILURE,
    };
    // SAFETY: port 0xf4 is QEMU's isa-debug-exit, which this kernel owns;
    // on a machine without it the write goes nowhere.
    unsafe { arch::outl(crate::DEBUG_EXIT_PORT, v) };
    arch::halt_forever()
}

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static LAPIC_HZ: AtomicU64 = AtomicU64::new(0);

/// The calibrated TSC clock (valid once the kernel's main runs).
pub fn clock() -> TscClock {
    TscClock::new(TSC_HZ.load(Ordering::Relaxed)).unwrap_or(FALLBACK_CLOCK)
}

/// Before calibration: assume 1 GHz so early timings are at least finite.
const FALLBACK_CLOCK: TscClock = match TscClock::new(1_000_000_000) {
    Some(c) => c,
    None => panic!(),
};

/// Nanoseconds since the kernel's first instruction.
pub fn now_ns() -> u64 {
    // SAFETY: `osv_entry_tsc` is written once by the entry code before any
    // Rust runs and never again.
    let entry = unsafe { osv_entry_tsc };
    clock().ticks_to_ns(arch::rdtsc().wrapping_sub(entry))
}

/// The local APIC timer's tick rate in Hz (0 if there is no local APIC).
pub fn lapic_timer_hz() -> u64 {
    LAPIC_HZ.load(Ordering::Relaxed)
}

/// The bootstrap CPU's local APIC, once enabled.
pub fn lapic() -> Option<&'static Lapic> {
    LAPIC.get()
}

static LAPIC: spin::Once<Lapic> = spin::Once::new();
static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();

/// Bytes of command line kept (longer ones are cut).
const CMDLINE_MAX: usize = 4096;

/// The command line, copied out of loader memory so that memory can be reused.
struct CmdlineBuf(core::cell::UnsafeCell<[u8; CMDLINE_MAX]>);
// SAFETY: written once by the boot CPU before anything else runs, read-only after.
unsafe impl Sync for CmdlineBuf {}
static CMDLINE: CmdlineBuf = CmdlineBuf(core::cell::UnsafeCell::new([0; CMDLINE_MAX]));

/// The range of the stack the boot CPU runs `main` on.
pub fn boot_stack() -> PhysRange {
    let (lo, hi) = (&raw const osv_boot_stack_bottom as u64, &raw const osv_boot_stack_top as u64);
    PhysRange::new(lo, hi).unwrap_or_default()
}

/// The kernel's text section, for stack-trace heuristics.
pub fn text_range() -> PhysRange {
    let (lo, hi) = (&raw const __text_start as u64, &raw const __text_end as u64);
    PhysRange::new(lo, hi).unwrap_or_default()
}

/// Everything under 4 GiB is identity-mapped by the boot page tables.
const IDENTITY_LIMIT: u64 = 1 << 32;

fn fail(what: &dyn core::fmt::Display) -> ! {
    crate::println!("osv-boot: fatal: {what}");
    exit(ExitCode::Failure)
}

/// Reads `len` bytes of physical memory the loader handed over.
///
/// # Safety
/// The range is RAM or ROM the loader filled; it is identity-mapped (checked).
unsafe fn phys_bytes(pa: u64, len: usize) -> &'static [u8] {
    match pa.checked_add(len as u64) {
        Some(end) if pa != 0 && end <= IDENTITY_LIMIT => {
            // SAFETY: identity-mapped (checked above) and, by the caller's
            // contract, initialised memory nobody writes while we read.
            unsafe { core::slice::from_raw_parts(pa as *const u8, len) }
        }
        _ => fail(&format_args!("loader data at {pa:#x}+{len:#x} is outside the identity map")),
    }
}

/// Called by `entry.s` in 64-bit mode on the boot stack.
#[no_mangle]
extern "C" fn osv_boot_rust_entry(start_info_pa: u64) -> ! {
    console::init();
    tables::load();
    smp::init_bsp();
    // SAFETY: ring 0; ports 0x20/0x21/0xa0/0xa1 are the legacy PICs this
    // kernel owns.
    unsafe { mask_legacy_pics(&mut Pio::new()) };

    // SAFETY: %ebx from the PVH loader points at hvm_start_info.
    let si_bytes = unsafe { phys_bytes(start_info_pa, V1_SIZE) };
    let si = StartInfo::parse(si_bytes).unwrap_or_else(|e| fail(&e));
    if si.version < 1 || si.memmap_entries == 0 {
        fail(&"hvm_start_info has no memory map (version 0): use a newer QEMU");
    }
    let n = (si.memmap_entries as usize).min(1024);
    // SAFETY: the start info's memory-map pointer, filled by the loader.
    let table = unsafe { phys_bytes(si.memmap_paddr, n * ENTRY_SIZE) };
    let mut memory = MemoryMap::from_pvh_table(table).unwrap_or_else(|e| fail(&e));
    let raw_ram = memory.total();
    let raw_memory = memory.clone();
    let kernel =
        PhysRange::new(&raw const __kernel_start as u64, &raw const __kernel_end as u64).unwrap_or_default();
    let low = PhysRange::new(0, 0x10_0000).unwrap_or_default();
    for r in [low, kernel] {
        memory.remove(r).unwrap_or_else(|e| fail(&e));
    }

    let cmdline = if si.cmdline_paddr != 0 {
        let avail = IDENTITY_LIMIT.saturating_sub(si.cmdline_paddr).min(CMDLINE_MAX as u64) as usize;
        // Find the NUL first, a byte at a time, so nothing past the string
        // (possibly device memory) is read or referenced.
        let p = si.cmdline_paddr as *const u8;
        // SAFETY: the loader's command line is NUL-terminated RAM; reads stop
        // at the NUL, at 4 KiB, or at the end of the identity map.
        let len = (0..avail).find(|&i| unsafe { p.add(i).read_volatile() } == 0).unwrap_or(avail);
        // SAFETY: the `len` bytes just read, in the identity map.
        let src = unsafe { phys_bytes(si.cmdline_paddr, len) };
        let s = cmdline_from_bytes(src);
        // SAFETY: boot CPU, before anything else runs; nothing else holds
        // a reference to the buffer yet.
        let buf = unsafe { &mut *CMDLINE.0.get() };
        buf[..s.len()].copy_from_slice(s.as_bytes());
        cmdline_from_bytes(&buf[..s.len()])
    } else {
        ""
    };

    smp::choose_trampoline(&raw_memory, start_info_pa, &si, cmdline.len());
    let lapic = init_lapic();
    if let Some(l) = lapic {
        smp::set_bsp_apic_id(l.id());
    }
    let calib_start = arch::rdtsc();
    // SAFETY: ring 0; the PIT's channel 2 and port 0x61 belong to this kernel.
    let tsc_hz = crate::pit::calibrate(&mut unsafe { Pio::new() }, arch::rdtsc, 5966, 10_000_000)
        .unwrap_or_else(|e| fail(&e));
    TSC_HZ.store(tsc_hz, Ordering::Relaxed);
    let tsc = clock();
    if let Some(l) = lapic {
        // Count LAPIC timer ticks over 2 ms of TSC.
        l.start_masked(u32::MAX);
        let t0 = arch::rdtsc();
        let wait = tsc.ns_to_ticks(2_000_000);
        while arch::rdtsc().wrapping_sub(t0) < wait {
            core::hint::spin_loop();
        }
        let elapsed = u32::MAX - l.current();
        l.stop();
        let hz = crate::time::frequency(u64::from(elapsed), 2_000_000, 1_000_000_000).unwrap_or(0);
        LAPIC_HZ.store(hz, Ordering::Relaxed);
    }
    let calibration_ticks = arch::rdtsc().wrapping_sub(calib_start);

    let info = BOOT_INFO.call_once(|| BootInfo {
        start_info: si,
        memory,
        ram_total: raw_ram,
        kernel,
        cmdline: Cmdline::new(cmdline),
        // SAFETY: written once by entry.s before any Rust code ran.
        entry_tsc: unsafe { osv_entry_tsc },
        main_tsc: arch::rdtsc(),
        calibration_ticks,
        tsc,
        lapic_timer_hz: lapic_timer_hz(),
    });
    // SAFETY: the kernel binary defines this with `entry_point!`.
    unsafe { __osv_kernel_main(info) }
}

fn init_lapic() -> Option<&'static Lapic> {
    // CPUID.01H:EDX bit 9: on-chip APIC (SDM vol. 2A, CPUID).
    if arch::cpuid(1, 0).edx & (1 << 9) == 0 {
        return None;
    }
    // SAFETY: IA32_APIC_BASE exists when CPUID reports an APIC.
    let msr = unsafe { arch::rdmsr(lapic::IA32_APIC_BASE) };
    let base = msr & 0x000f_ffff_ffff_f000;
    if base >= IDENTITY_LIMIT {
        return None;
    }
    if msr & (1 << 11) == 0 {
        // SAFETY: setting the global-enable bit of an existing APIC.
        unsafe { arch::wrmsr(lapic::IA32_APIC_BASE, msr | (1 << 11)) };
    }
    // SAFETY: the register page is identity-mapped, uncached (the top GiB
    // of the boot map is PCD|PWT), and mapped for the kernel's lifetime.
    let l = LAPIC.call_once(|| unsafe { Lapic::new(base as *mut u32) });
    l.enable();
    Some(l)
}

/// Remaps the 8259 PICs to vectors 0x20-0x2f (so a stray IRQ cannot look
/// like an exception) and masks every line: the kernel uses the local APIC.
/// Sequence from the Intel 8259A data sheet (ICW1-ICW4).
///
/// # Safety
/// Ring 0, and the PICs belong to this kernel.
unsafe fn mask_legacy_pics(io: &mut Pio) {
    use crate::arch::PortIo;
    for (cmd, data, offset, icw3) in [(0x20u16, 0x21u16, 0x20u8, 4u8), (0xa0, 0xa1, 0x28, 2)] {
        io.write8(cmd, 0x11);
        io.write8(data, offset);
        io.write8(data, icw3);
        io.write8(data, 0x01);
        io.write8(data, 0xff);
    }
}
