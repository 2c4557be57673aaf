//! Per-CPU data and application-processor (AP) bring-up.
//!
//! Every CPU's `GS` base points at its [`PerCpu`] record, so the CPU index,
//! its APIC ID and one word the kernel keeps per CPU (its running thread)
//! are a single `gs`-relative load away, which no preemption can split.
//!
//! Bring-up (Intel SDM vol. 3A §8.4.4.1 "Typical BSP Initialization
//! Sequence", §8.4.4.2): the CPUs come from ACPI's MADT (the RSDP address
//! from `hvm_start_info`, else the BIOS-area scan of ACPI 6.5 §5.2.5.1); a
//! real-mode trampoline (entry.s) is copied to a free page below 1 MiB,
//! chosen at boot: RAM in the loader's memory map that holds none of the
//! loader's structures (start info, memory map, command line, module list,
//! RSDP); then INIT, 10 ms, start-up IPI, 200 µs, a second start-up IPI if
//! the AP has not answered (the SDM's delays, timed with the calibrated
//! TSC). An AP that has not reached Rust within [`AP_TIMEOUT_NS`] is
//! reported and abandoned: if it comes up later it halts at once.

use super::tables;
use crate::acpi::{self, PhysMem};
use crate::arch;
use crate::memmap::MemoryMap;
use crate::start_info::StartInfo;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// CPUs this runtime has tables for (CPU indices `0..MAX_CPUS`).
pub const MAX_CPUS: usize = 16;

/// `IA32_GS_BASE` (SDM vol. 4, table 2-2).
const IA32_GS_BASE: u32 = 0xc000_0101;

/// How long the BSP waits for a started AP to reach Rust.
pub const AP_TIMEOUT_NS: u64 = 2_000_000_000;

/// One CPU's record, at its `GS` base. The field offsets are used by the
/// `gs:`-relative loads below.
#[repr(C)]
pub struct PerCpu {
    index: AtomicU64,
    apic_id: AtomicU64,
    word: AtomicU64,
}

static PERCPU: [PerCpu; MAX_CPUS] =
    [const { PerCpu { index: AtomicU64::new(0), apic_id: AtomicU64::new(0), word: AtomicU64::new(0) } };
        MAX_CPUS];

/// The index of the CPU this runs on (0 = the boot CPU). Stable only while
/// the caller cannot migrate (interrupts or preemption off).
#[inline]
pub fn cpu_index() -> usize {
    let v: u64;
    // SAFETY: GS points at this CPU's `PerCpu` from the start of
    // `osv_boot_rust_entry` (BSP) or `osv_ap_rust_entry` (APs); offset 0 is
    // `index`.
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) v, options(nostack, preserves_flags, readonly)) };
    v as usize
}

/// The local APIC ID of the CPU `index` (as recorded when it started).
pub fn apic_id_of(index: usize) -> Option<u32> {
    PERCPU.get(index).map(|p| p.apic_id.load(Ordering::Relaxed) as u32)
}

/// The kernel's per-CPU word of the CPU this runs on, read in one
/// instruction (a thread reading it sees its own CPU's value even if it
/// migrates right after).
#[inline]
pub fn cpu_word() -> u64 {
    let v: u64;
    // SAFETY: as in `cpu_index`; offset 16 is `word`.
    unsafe { core::arch::asm!("mov {}, gs:[16]", out(reg) v, options(nostack, preserves_flags, readonly)) };
    v
}

/// Sets the kernel's per-CPU word of the CPU this runs on.
pub fn set_cpu_word(v: u64) {
    // SAFETY: as in `cpu_index`; a single store to this CPU's record.
    unsafe { core::arch::asm!("mov gs:[16], {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Points GS at `PERCPU[index]` and records the index and APIC ID.
fn set_percpu(index: usize, apic_id: u32) {
    let p = &PERCPU[index];
    p.index.store(index as u64, Ordering::Relaxed);
    p.apic_id.store(u64::from(apic_id), Ordering::Relaxed);
    // SAFETY: IA32_GS_BASE exists on every x86_64 CPU; the record is 'static.
    unsafe { arch::wrmsr(IA32_GS_BASE, p as *const PerCpu as u64) };
}

/// Called by `osv_boot_rust_entry` right after the tables are loaded.
pub(super) fn init_bsp() {
    set_percpu(0, 0);
}

/// Records the BSP's APIC ID once its local APIC is up.
pub(super) fn set_bsp_apic_id(id: u32) {
    PERCPU[0].apic_id.store(u64::from(id), Ordering::Relaxed);
}

/// The trampoline page (physical address), 0 if none was found.
static TRAMPOLINE: AtomicU64 = AtomicU64::new(0);

/// Lowest and highest pages considered for the trampoline: above the
/// real-mode IVT and BIOS data area, below the EBDA (ACPI 6.5 §5.2.5.1
/// puts the EBDA's address at 0x40e; QEMU's is at 0x9fc00).
const TRAMPOLINE_LOW: u64 = 0x8000;
const TRAMPOLINE_HIGH: u64 = 0x9f000;

/// Picks the trampoline page from the loader's map (before the first MiB is
/// taken out of it) and what the loader placed in low memory.
pub(super) fn choose_trampoline(raw: &MemoryMap, si_pa: u64, si: &StartInfo, cmdline_len: usize) {
    let memmap_len = u64::from(si.memmap_entries) * crate::memmap::ENTRY_SIZE as u64;
    let busy = [
        (si_pa, crate::start_info::V1_SIZE as u64),
        (si.memmap_paddr, memmap_len),
        (si.cmdline_paddr, cmdline_len as u64 + 1),
        (si.modlist_paddr, u64::from(si.nr_modules) * 32),
        (si.rsdp_paddr, 36),
    ];
    let mut page = TRAMPOLINE_LOW;
    while page < TRAMPOLINE_HIGH {
        let free = raw.contains(page)
            && raw.contains(page + 4095)
            && busy.iter().all(|&(a, n)| a == 0 || n == 0 || a + n <= page || a >= page + 4096);
        if free {
            TRAMPOLINE.store(page, Ordering::Relaxed);
            return;
        }
        page += 4096;
    }
}

/// Identity-mapped physical memory below 4 GiB, for the ACPI walk.
struct Identity;

impl PhysMem for Identity {
    fn read(&self, paddr: u64, len: usize) -> Option<&[u8]> {
        let end = paddr.checked_add(len as u64)?;
        if paddr < 0x1000 || end > super::IDENTITY_LIMIT {
            return None;
        }
        // SAFETY: below 4 GiB everything is mapped (RAM, firmware and MMIO
        // hole) in the boot tables and in the kernel's; firmware tables are
        // not written while the kernel reads them.
        Some(unsafe { core::slice::from_raw_parts(paddr as *const u8, len) })
    }
}

/// Where the RSDP is: the start info's field, else a scan of the BIOS
/// read-only area 0xe0000-0xfffff on 16-byte boundaries for a valid RSDP
/// (ACPI 6.5 §5.2.5.1).
fn find_rsdp(si_rsdp: u64) -> Option<u64> {
    if si_rsdp != 0 {
        return Some(si_rsdp);
    }
    (0xe0000u64..0x100000).step_by(16).find(|&a| {
        Identity.read(a, 20).is_some_and(|b| b.starts_with(b"RSD PTR ")) && {
            let long = Identity.read(a, 36).unwrap_or(&[]);
            acpi::parse_rsdp(long).is_ok()
        }
    })
}

/// APIC IDs of the CPUs ACPI lists as enabled (the boot CPU included), in
/// table order, up to `out.len()`; returns how many.
pub fn cpu_apic_ids(si: &StartInfo, out: &mut [u32]) -> Result<usize, acpi::AcpiError> {
    let rsdp = find_rsdp(si.rsdp_paddr).ok_or(acpi::AcpiError::NoMadt)?;
    let madt = acpi::find_madt(&Identity, rsdp)?;
    let mut n = 0;
    for c in madt.cpus().filter(|c| c.enabled) {
        if n == out.len() {
            break;
        }
        out[n] = c.apic_id;
        n += 1;
    }
    Ok(n)
}

/// What an AP runs once it is up.
#[derive(Clone, Copy, Debug)]
pub struct ApConfig {
    /// Its initial stack (16-byte aligned top); it runs `entry` on it.
    pub stack_top: u64,
    /// Tops of its IST1..=IST4 stacks (see [`crate::trap::ist_for`]).
    pub ist: [u64; 4],
    /// Called on the AP with `arg`, interrupts off.
    pub entry: extern "C" fn(usize) -> !,
    /// The argument.
    pub arg: usize,
}

/// Why an AP did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApError {
    /// No local APIC on the boot CPU, or no free trampoline page.
    NoTrampoline,
    /// The CPU index is 0 or not below [`MAX_CPUS`].
    BadIndex,
    /// The APIC ID does not fit xAPIC's 8-bit destination.
    ApicIdTooLarge,
    /// The AP did not reach Rust within [`AP_TIMEOUT_NS`].
    Timeout,
}

const AP_IDLE: u32 = 0;
const AP_STARTING: u32 = 1;
const AP_ALIVE: u32 = 2;
const AP_ABANDONED: u32 = 3;

struct ApSlot {
    state: AtomicU32,
    ist: [AtomicU64; 4],
    entry: AtomicU64,
    arg: AtomicU64,
    apic_id: AtomicU32,
}

static SLOTS: [ApSlot; MAX_CPUS] = [const {
    ApSlot {
        state: AtomicU32::new(AP_IDLE),
        ist: [const { AtomicU64::new(0) }; 4],
        entry: AtomicU64::new(0),
        arg: AtomicU64::new(0),
        apic_id: AtomicU32::new(0),
    }
}; MAX_CPUS];

extern "C" {
    static osv_ap_trampoline_start: u8;
    static osv_ap_trampoline_end: u8;
    static osv_ap_gdt_off: u64;
    static osv_ap_gdt_ptr_off: u64;
    static osv_ap_far32_off: u64;
    static osv_ap_pm32_off: u64;
    static mut osv_ap_boot: [u64; 3];
}

/// Copies the trampoline to its page and patches its absolute addresses.
fn install_trampoline() -> Option<u64> {
    let page = TRAMPOLINE.load(Ordering::Relaxed);
    if page == 0 {
        return None;
    }
    let (start, end) = (&raw const osv_ap_trampoline_start, &raw const osv_ap_trampoline_end);
    let len = end as usize - start as usize;
    if len > 4096 {
        return None;
    }
    // SAFETY: `page` is a free RAM page below 1 MiB (chosen at boot), mapped
    // writable in the kernel's tables; the offsets are assembler constants
    // inside the copied bytes (at most 4 KiB, checked).
    unsafe {
        core::ptr::copy_nonoverlapping(start, page as *mut u8, len);
        let p = page as *mut u8;
        let gdt = page + osv_ap_gdt_off;
        p.add(osv_ap_gdt_ptr_off as usize + 2).cast::<u32>().write_unaligned(gdt as u32);
        p.add(osv_ap_far32_off as usize).cast::<u32>().write_unaligned((page + osv_ap_pm32_off) as u32);
    }
    Some(page)
}

/// Busy-waits `ns` nanoseconds of the calibrated TSC.
fn delay_ns(ns: u64) {
    let t0 = arch::rdtsc();
    let ticks = super::clock().ns_to_ticks(ns);
    while arch::rdtsc().wrapping_sub(t0) < ticks {
        core::hint::spin_loop();
    }
}

/// Starts the AP with APIC ID `apic_id` as CPU `index` and waits until it
/// runs Rust code; it then calls `cfg.entry(cfg.arg)` on `cfg.stack_top`
/// with the kernel's current page tables (this CPU's CR3). One AP at a time
/// (the trampoline page and `osv_ap_boot` are shared): call from one thread.
pub fn start_ap(index: usize, apic_id: u32, cfg: &ApConfig) -> Result<(), ApError> {
    if index == 0 || index >= MAX_CPUS {
        return Err(ApError::BadIndex);
    }
    let dest = u8::try_from(apic_id).map_err(|_| ApError::ApicIdTooLarge)?;
    let lapic = super::lapic().ok_or(ApError::NoTrampoline)?;
    let page = install_trampoline().ok_or(ApError::NoTrampoline)?;
    let slot = &SLOTS[index];
    for (s, &v) in slot.ist.iter().zip(&cfg.ist) {
        s.store(v, Ordering::Relaxed);
    }
    slot.entry.store(cfg.entry as *const () as u64, Ordering::Relaxed);
    slot.arg.store(cfg.arg as u64, Ordering::Relaxed);
    slot.apic_id.store(apic_id, Ordering::Relaxed);
    slot.state.store(AP_STARTING, Ordering::Release);
    // SAFETY: only this function writes `osv_ap_boot`, for one AP at a time;
    // the AP reads it after the start-up IPI (the IPI orders the writes).
    unsafe {
        let b = &raw mut osv_ap_boot;
        (*b)[0] = arch::read_cr3();
        (*b)[1] = cfg.stack_top;
        (*b)[2] = index as u64;
    }
    core::sync::atomic::fence(Ordering::SeqCst);
    let alive = || slot.state.load(Ordering::Acquire) == AP_ALIVE;
    lapic.send_init(dest);
    delay_ns(10_000_000);
    let vector = (page >> 12) as u8;
    lapic.send_startup(dest, vector);
    delay_ns(200_000);
    if !alive() {
        lapic.send_startup(dest, vector);
        delay_ns(200_000);
    }
    let t0 = arch::rdtsc();
    let limit = super::clock().ns_to_ticks(AP_TIMEOUT_NS);
    while !alive() {
        if arch::rdtsc().wrapping_sub(t0) > limit {
            // Too late: if it ever arrives, it halts (see the AP side).
            if slot
                .state
                .compare_exchange(AP_STARTING, AP_ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Err(ApError::Timeout);
            }
            break;
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// First Rust code of an AP (called by `osv_ap_start64` on the stack the
/// BSP gave it, kernel page tables loaded, interrupts off).
#[no_mangle]
extern "C" fn osv_ap_rust_entry(index: u64) -> ! {
    let index = index as usize;
    let Some(slot) = SLOTS.get(index) else { arch::halt_forever() };
    let mut ist = [0u64; 7];
    for (t, s) in ist.iter_mut().zip(&slot.ist) {
        *t = s.load(Ordering::Relaxed);
    }
    // SAFETY: this CPU is `index` (the BSP starts one AP per index), its
    // interrupts are off, and the IST tops are the kernel's stacks for it.
    unsafe { tables::load_cpu(index, ist) };
    set_percpu(index, slot.apic_id.load(Ordering::Relaxed));
    if let Some(l) = super::lapic() {
        l.enable();
    }
    let entry = slot.entry.load(Ordering::Relaxed);
    let arg = slot.arg.load(Ordering::Relaxed) as usize;
    if slot.state.compare_exchange(AP_STARTING, AP_ALIVE, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // The BSP gave up on this AP: stay out of the way.
        arch::halt_forever()
    }
    // SAFETY: `start_ap` stored an `extern "C" fn(usize) -> !` here.
    let entry = unsafe { core::mem::transmute::<u64, extern "C" fn(usize) -> !>(entry) };
    entry(arg)
}
