//! Fault-tolerant memory access: read or write a word, and get an error
//! instead of a crash if the access faults. The instructions that may fault
//! are at known addresses (`entry.s`); the trap handler sends a fault there to
//! the matching fixup, which returns failure (Linux's exception table, OSv's
//! `safe_load`).
//!
//! The last fault's details are kept per kernel (one CPU for now).

use crate::trap::vector;
use core::sync::atomic::{AtomicU64, Ordering};

extern "C" {
    fn osv_probe_read_u64(addr: u64, out: *mut u64) -> u32;
    fn osv_probe_write_u64(addr: u64, value: u64) -> u32;
    static osv_probe_read_insn: u8;
    static osv_probe_read_fixup: u8;
    static osv_probe_write_insn: u8;
    static osv_probe_write_fixup: u8;
}

/// A fault taken by a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A page fault at `addr` with the CPU's error code.
    Page {
        /// The faulting address (CR2).
        addr: u64,
        /// The page-fault error code.
        code: crate::trap::PageFaultCode,
    },
    /// Any other exception (for example #GP for a non-canonical address).
    Other {
        /// The vector.
        vector: u8,
        /// The error code.
        error_code: u64,
    },
}

static LAST_VECTOR: AtomicU64 = AtomicU64::new(0);
static LAST_CODE: AtomicU64 = AtomicU64::new(0);
static LAST_ADDR: AtomicU64 = AtomicU64::new(0);

fn last_fault() -> Fault {
    let vector = LAST_VECTOR.load(Ordering::Relaxed) as u8;
    let error_code = LAST_CODE.load(Ordering::Relaxed);
    if vector == vector::PAGE_FAULT {
        Fault::Page { addr: LAST_ADDR.load(Ordering::Relaxed), code: crate::trap::PageFaultCode(error_code) }
    } else {
        Fault::Other { vector, error_code }
    }
}

/// Reads the `u64` at `addr`, or reports the fault.
///
/// # Safety
/// Reading `addr` must have no side effects that break memory safety (it is
/// not a device register with destructive reads, for example).
pub unsafe fn read_u64(addr: u64) -> Result<u64, Fault> {
    let mut v = 0;
    // SAFETY: the asm routine only reads `addr` (faults are caught) and
    // writes `v`, a live local.
    match unsafe { osv_probe_read_u64(addr, &mut v) } {
        0 => Ok(v),
        _ => Err(last_fault()),
    }
}

/// Writes `value` to `addr`, or reports the fault.
///
/// # Safety
/// If the write succeeds it changes memory: `addr` must be memory the caller
/// may write (or expect to fault).
pub unsafe fn write_u64(addr: u64, value: u64) -> Result<(), Fault> {
    // SAFETY: the caller owns `addr` or expects a fault, which is caught.
    match unsafe { osv_probe_write_u64(addr, value) } {
        0 => Ok(()),
        _ => Err(last_fault()),
    }
}

/// If `rip` is a probe instruction, records the fault and returns the fixup
/// address to resume at.
pub(super) fn fixup(rip: u64, vector: u64, error_code: u64, cr2: u64) -> Option<u64> {
    let table = [
        (&raw const osv_probe_read_insn as u64, &raw const osv_probe_read_fixup as u64),
        (&raw const osv_probe_write_insn as u64, &raw const osv_probe_write_fixup as u64),
    ];
    let (_, fix) = table.iter().copied().find(|&(insn, _)| insn == rip)?;
    LAST_VECTOR.store(vector, Ordering::Relaxed);
    LAST_CODE.store(error_code, Ordering::Relaxed);
    LAST_ADDR.store(cr2, Ordering::Relaxed);
    Some(fix)
}
