//! Interrupt and exception dispatch, and the fatal-exception report.

use super::probe;
use crate::arch;
use crate::backtrace;
use crate::trap::{vector, vector_name, PageFaultCode, TrapFrame};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

/// An interrupt handler for vectors 32..=255. It runs on an IST stack with
/// interrupts off and must send the end-of-interrupt itself.
pub type Handler = fn(&mut TrapFrame);

static HANDLERS: [AtomicPtr<()>; 256] = [const { AtomicPtr::new(core::ptr::null_mut()) }; 256];

static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);
static LAST_BREAKPOINT_RIP: AtomicU64 = AtomicU64::new(0);
static UNEXPECTED: AtomicU64 = AtomicU64::new(0);
static IN_FATAL: AtomicBool = AtomicBool::new(false);

/// Installs `handler` for interrupt `vector` (32..=255), replacing any
/// previous one. Returns `false` for exception vectors, which are fixed.
pub fn set_handler(vector: u8, handler: Handler) -> bool {
    if vector < vector::FIRST_IRQ {
        return false;
    }
    HANDLERS[vector as usize].store(handler as *mut (), Ordering::Release);
    true
}

/// Removes the handler of `vector`.
pub fn clear_handler(vector: u8) {
    HANDLERS[vector as usize].store(core::ptr::null_mut(), Ordering::Release);
}

/// A page-fault resolver: given the faulting address (CR2) and the error
/// code, makes the access possible (demand paging, copy-on-write) and
/// returns `true` to retry the instruction, or `false` to treat the fault as
/// unexpected (probe fix-up or fatal report). It runs on the exception's IST
/// stack with interrupts off.
pub type PageFaultResolver = fn(u64, PageFaultCode) -> bool;

static PF_RESOLVER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Installs the kernel's page-fault resolver (OSv's `vm_fault` hook).
pub fn set_page_fault_resolver(resolver: PageFaultResolver) {
    PF_RESOLVER.store(resolver as *mut (), Ordering::Release);
}

fn resolve_page_fault(cr2: u64, code: u64) -> bool {
    let r = PF_RESOLVER.load(Ordering::Acquire);
    if r.is_null() {
        return false;
    }
    // SAFETY: only `set_page_fault_resolver` stores non-null values here, and
    // it stores `PageFaultResolver` function pointers.
    let r: PageFaultResolver = unsafe { core::mem::transmute::<*mut (), PageFaultResolver>(r) };
    r(cr2, PageFaultCode(code))
}

/// How many `int3` breakpoints were taken, and the RIP after the last one.
pub fn breakpoints() -> (u64, u64) {
    (BREAKPOINTS.load(Ordering::Relaxed), LAST_BREAKPOINT_RIP.load(Ordering::Relaxed))
}

/// Interrupts that arrived on a vector with no handler.
pub fn unexpected_interrupts() -> u64 {
    UNEXPECTED.load(Ordering::Relaxed)
}

/// Called by `osv_trap_common` with the saved frame.
#[no_mangle]
extern "C" fn osv_trap_dispatch(frame: &mut TrapFrame) {
    let v = frame.vector;
    if v < u64::from(vector::FIRST_IRQ) {
        exception(frame);
        return;
    }
    let h = HANDLERS[(v & 0xff) as usize].load(Ordering::Acquire);
    if h.is_null() {
        UNEXPECTED.fetch_add(1, Ordering::Relaxed);
        // The APIC's spurious vector takes no EOI (SDM vol. 3A §11.9).
        if v != u64::from(crate::lapic::SPURIOUS_VECTOR) {
            if let Some(l) = super::lapic() {
                l.eoi();
            }
        }
        return;
    }
    // SAFETY: only `set_handler` stores non-null values here, and it stores
    // `Handler` function pointers.
    let h: Handler = unsafe { core::mem::transmute::<*mut (), Handler>(h) };
    h(frame);
}

fn exception(frame: &mut TrapFrame) {
    let cr2 = if frame.vector == u64::from(vector::PAGE_FAULT) { arch::cr2() } else { 0 };
    if frame.vector == u64::from(vector::PAGE_FAULT) && resolve_page_fault(cr2, frame.error_code) {
        return;
    }
    if let Some(fix) = probe::fixup(frame.rip, frame.vector, frame.error_code, cr2) {
        frame.rip = fix;
        frame.rax = 1;
        return;
    }
    if frame.vector == u64::from(vector::BREAKPOINT) {
        // A trap: RIP already points past the `int3`.
        BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
        LAST_BREAKPOINT_RIP.store(frame.rip, Ordering::Relaxed);
        crate::println!("breakpoint (#BP) at {:#x}, resuming", frame.rip - 1);
        return;
    }
    fatal(frame, cr2)
}

/// Prints what happened, the registers and a stack trace, then leaves QEMU
/// with failure.
fn fatal(frame: &TrapFrame, cr2: u64) -> ! {
    if IN_FATAL.swap(true, Ordering::SeqCst) {
        // A fault while reporting a fault: say so and stop.
        super::exit(super::ExitCode::Failure);
    }
    // SAFETY: this path never returns to whoever held the console.
    unsafe { super::force_unlock_console() };
    crate::println!();
    crate::println!(
        "EXCEPTION: {} (vector {}, error code {:#x})",
        vector_name(frame.vector),
        frame.vector,
        frame.error_code
    );
    if frame.vector == u64::from(vector::PAGE_FAULT) {
        crate::println!("  cr2={:#x} ({})", cr2, PageFaultCode(frame.error_code));
        let mut name = [0u8; super::guard::NAME_LEN];
        if let Some(owner) = super::guard::owner(cr2, &mut name) {
            crate::println!("  stack overflow: {cr2:#x} is in the guard page of stack '{owner}'");
        }
    }
    crate::println!("{}", frame);
    crate::println!("stack trace:");
    crate::println!("    #0 {:#018x}", frame.rip);
    print_trace(frame.rbp, frame.rsp, 1);
    crate::println!("end of trace");
    super::exit(super::ExitCode::Failure)
}

/// Prints the frame-pointer chain from `rbp`, numbering from `first`.
/// Frame pointers are accepted only on the stack `rsp` is on (or, for an
/// unknown stack, within 256 KiB above `rsp`, under 4 GiB), so walking a
/// corrupt chain never faults.
pub(super) fn print_trace(rbp: u64, rsp: u64, first: usize) {
    let (lo, hi) = stack_bounds(rsp);
    let frames = backtrace::walk(rbp, lo, hi, |a| {
        // SAFETY: `walk` only reads inside [lo, hi), identity-mapped RAM.
        Some(unsafe { (a as *const u64).read() })
    });
    for (i, ret) in frames.enumerate() {
        crate::println!("    #{} {:#018x}", i + first, ret);
    }
}

fn stack_bounds(rsp: u64) -> (u64, u64) {
    let boot = super::boot_stack();
    if boot.contains(rsp) {
        return (rsp, boot.end());
    }
    if let Some((_, hi)) = super::tables::ist_stack_containing(rsp) {
        return (rsp, hi);
    }
    let hi = rsp.saturating_add(256 * 1024).min(super::IDENTITY_LIMIT);
    (rsp.min(hi), hi)
}
