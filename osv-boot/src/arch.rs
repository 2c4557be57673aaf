//! Thin wrappers over x86_64 instructions. Each is `unsafe` where executing
//! it can break memory safety or the machine's state; the callers say why
//! their use is sound.
#![allow(unsafe_code)]

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
/// 1. Ring 0 (or an I/O bitmap that allows the port).
/// 2. Writing `value` to `port` has no effect that breaks memory safety.
#[inline]
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller upholds the contract above.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
/// As for [`outb`].
#[inline]
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller upholds the contract of `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) }
}

/// Reads a 32-bit value from an I/O port.
///
/// # Safety
/// As for [`outb`]: reading some ports has side effects.
#[inline]
pub unsafe fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: the caller upholds the contract of `outb`.
    unsafe { asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// As for [`outb`]: reading some ports has side effects.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: the caller upholds the contract of `outb`.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` only reads the counter (CR4.TSD is never set here).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Reads a model-specific register.
///
/// # Safety
/// 1. Ring 0.
/// 2. `msr` exists on this CPU (or the resulting #GP is handled).
#[inline]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller upholds the contract above.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// 1. Ring 0, and `msr` exists.
/// 2. The new value keeps the machine in a state the kernel relies on.
#[inline]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller upholds the contract above.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags));
    }
}

/// The result of `cpuid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Executes `cpuid` for `leaf`/`subleaf`.
#[inline]
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    Cpuid { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx }
}

/// Reads CR2, the faulting address of the last page fault.
#[inline]
pub fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects; in ring 3 it would #GP, but
    // this crate's code runs in ring 0 (host tests never call it).
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR3: the physical address of the active top-level page table
/// (plus PCD/PWT flag bits, zero here).
#[inline]
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects (ring 0, as everywhere here).
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Loads CR3, switching address space and flushing non-global TLB entries.
///
/// # Safety
/// `root` is a valid PML4 that maps, at their current addresses, all code,
/// data and stacks in use (including this function and the caller's stack).
#[inline]
pub unsafe fn write_cr3(root: u64) {
    // SAFETY: the caller upholds the contract above.
    unsafe { asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags)) }
}

/// Invalidates the TLB entry of the page holding `addr` (SDM vol. 2, INVLPG).
#[inline]
pub fn invlpg(addr: u64) {
    // SAFETY: dropping a cached translation is always safe; the next access
    // walks the page tables again.
    unsafe { asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) }
}

/// `IA32_EFER` (SDM vol. 4, table 2-2) and its no-execute enable bit.
pub const MSR_EFER: u32 = 0xc000_0080;
/// `IA32_EFER.NXE`: bit 63 of page-table entries means no-execute.
pub const EFER_NXE: u64 = 1 << 11;

/// Reads the current frame pointer.
#[inline(always)]
pub fn rbp() -> u64 {
    let v: u64;
    // SAFETY: copying a register has no side effects.
    unsafe { asm!("mov {}, rbp", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Enables interrupts.
///
/// # Safety
/// Every vector that can fire has a working handler (the IDT is loaded).
#[inline]
pub unsafe fn sti() {
    // SAFETY: the caller upholds the contract above.
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Disables interrupts.
#[inline]
pub fn cli() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Atomically enables interrupts and halts until the next one arrives
/// (`sti; hlt`: the interrupt shadow of `sti` makes the pair race-free).
///
/// # Safety
/// As for [`sti`].
#[inline]
pub unsafe fn enable_and_halt() {
    // SAFETY: the caller upholds the contract of `sti`.
    unsafe { asm!("sti; hlt", options(nomem, nostack)) }
}

/// Whether interrupts are enabled (RFLAGS.IF).
#[inline]
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reading RFLAGS through the stack has no side effects.
    unsafe { asm!("pushfq; pop {}", out(reg) flags, options(nomem, preserves_flags)) }
    flags & (1 << 9) != 0
}

/// Runs `f` with interrupts disabled, restoring the previous state.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was = interrupts_enabled();
    cli();
    let r = f();
    if was {
        // SAFETY: interrupts were enabled before, so enabling them again
        // restores a state the caller already had.
        unsafe { sti() };
    }
    r
}

/// Halts the CPU forever with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        cli();
        // SAFETY: `hlt` with interrupts off only stops this CPU.
        unsafe { asm!("hlt", options(nomem, nostack)) }
    }
}

/// I/O-port access as a trait, so device code runs against fakes in tests.
pub trait PortIo {
    /// Reads a byte from `port`.
    fn read8(&mut self, port: u16) -> u8;
    /// Writes a byte to `port`.
    fn write8(&mut self, port: u16, value: u8);
}

/// The real I/O ports. Constructing one is `unsafe`: it hands out raw access
/// to every port.
#[derive(Debug)]
pub struct Pio(());

impl Pio {
    /// Direct port access.
    ///
    /// # Safety
    /// 1. The code runs in ring 0.
    /// 2. The caller only touches ports whose devices it owns.
    pub const unsafe fn new() -> Self {
        Self(())
    }
}

impl PortIo for Pio {
    fn read8(&mut self, port: u16) -> u8 {
        // SAFETY: `Pio::new`'s contract: ring 0, and the owner's ports.
        unsafe { inb(port) }
    }
    fn write8(&mut self, port: u16, value: u8) {
        // SAFETY: `Pio::new`'s contract: ring 0, and the owner's ports.
        unsafe { outb(port, value) }
    }
}
