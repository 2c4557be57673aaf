//! Thread-local storage for kernel threads: the kernel's ELF TLS segment
//! (`.tdata`/`.tbss`, placed by `linker.ld`), one block per thread (the
//! kernel allocates it, [`fill_block`] initialises it), the `FS` base as the
//! thread pointer ([`set_thread_pointer`], switched by
//! [`context::switch`](super::context::switch)), and [`local_u64!`] for
//! word-sized thread-locals on stable Rust (`#[thread_local]` is not
//! stable; any code compiled for the local-exec or initial-exec model, for
//! instance C, uses the same blocks).
//!
//! The layout arithmetic is in [`crate::tls`] (host-tested).

use crate::arch;
use crate::tls::{TlsError, TlsImage, TlsLayout};

/// `IA32_FS_BASE` (Intel SDM vol. 4, table 2-2): the `FS` segment base in
/// 64-bit mode.
pub const MSR_FS_BASE: u32 = 0xc000_0100;

extern "C" {
    static __tdata_start: u8;
    static __tdata_end: u8;
    static __tbss_end: u8;
}

// The probe: the first object of `.tdata` (its own input section, sorted
// first by `linker.ld`), whose `tpoff` tells where the linker put the
// thread pointer (see `crate::tls`). Its value is a marker the tests check.
core::arch::global_asm!(
    ".pushsection .tdata.osv_tls_probe,\"awT\",@progbits",
    ".balign 8",
    ".globl osv_tls_probe",
    ".hidden osv_tls_probe",
    ".type osv_tls_probe, @tls_object",
    ".size osv_tls_probe, 8",
    "osv_tls_probe:",
    ".quad {marker}",
    ".popsection",
    marker = const PROBE_MARKER,
);

/// The probe's initial value ("osv-tls!" in little-endian ASCII).
pub const PROBE_MARKER: u64 = u64::from_le_bytes(*b"osv-tls!");

fn probe_tpoff() -> i64 {
    let v: i64;
    // SAFETY: loads a link-time constant into a register.
    unsafe {
        core::arch::asm!("movq $osv_tls_probe@tpoff, {0}", out(reg) v,
                         options(att_syntax, nomem, nostack, preserves_flags));
    }
    v
}

/// The probe's offset in `.tdata`: `linker.ld` places its input section
/// first, so 0, which the template's first word confirms. (An address
/// reference to a TLS symbol cannot be used instead: ELF gives TLS symbols
/// segment offsets, not addresses.) `usize::MAX` when not found.
fn probe_offset() -> usize {
    match tdata().get(..8) {
        Some(w) if w == PROBE_MARKER.to_le_bytes() => 0,
        _ => usize::MAX,
    }
}

/// The `.tdata` image.
pub fn tdata() -> &'static [u8] {
    let s = &raw const __tdata_start;
    let e = &raw const __tdata_end;
    // SAFETY: linker symbols bounding the `.tdata` output section, which
    // is never written (threads write their own copies).
    unsafe { core::slice::from_raw_parts(s, e as usize - s as usize) }
}

/// The kernel's TLS layout (computed once; the same for every thread).
pub fn layout() -> Result<TlsLayout, TlsError> {
    static LAYOUT: spin::Once<Result<TlsLayout, TlsError>> = spin::Once::new();
    *LAYOUT.call_once(|| {
        // Linker symbols, addresses only. `.tbss` is measured from the end
        // of `.tdata`, so alignment padding between them counts as zeros.
        let (tdata_e, tbss_e, tdata_s) = (
            &raw const __tdata_end as usize,
            &raw const __tbss_end as usize,
            &raw const __tdata_start as usize,
        );
        TlsLayout::new(TlsImage {
            tdata_len: tdata().len(),
            tbss_len: tbss_e.saturating_sub(tdata_e),
            // `linker.ld` aligns `.tdata` to 64; an input section with a
            // larger alignment would show as a misaligned start.
            align: if tdata_s.is_multiple_of(64) { 64 } else { 1 << tdata_s.trailing_zeros() },
            probe_offset: probe_offset(),
            probe_tpoff: probe_tpoff(),
        })
    })
}

/// Initialises a block of [`TlsLayout::block_size`] bytes at `block`
/// (aligned to [`TlsLayout::align`]) and returns its thread pointer.
///
/// # Safety
/// `block` is writable for `layout().block_size()` bytes and owned by the
/// caller (it becomes a thread's TLS until that thread ends).
pub unsafe fn fill_block(l: &TlsLayout, block: *mut u8) -> Option<u64> {
    // SAFETY: the caller's contract.
    let b = unsafe { core::slice::from_raw_parts_mut(block, l.block_size()) };
    l.fill(b, block as u64, tdata())
}

/// Loads `tp` as this CPU's thread pointer (`FS` base).
///
/// # Safety
/// `tp` is 0 or a thread pointer from [`fill_block`] whose block outlives
/// its use on this CPU.
pub unsafe fn set_thread_pointer(tp: u64) {
    // SAFETY: ring 0; IA32_FS_BASE exists on every x86-64 CPU.
    unsafe { arch::wrmsr(MSR_FS_BASE, tp) }
}

/// This CPU's thread pointer (`FS` base).
pub fn thread_pointer() -> u64 {
    // SAFETY: ring 0; reading the MSR has no side effect.
    unsafe { arch::rdmsr(MSR_FS_BASE) }
}

/// The running thread's copy of the probe (reads `%fs:osv_tls_probe@tpoff`:
/// [`PROBE_MARKER`] unless written). Needs a thread pointer.
pub fn probe() -> u64 {
    let v: u64;
    // SAFETY: a local-exec TLS load; the caller's thread has a block.
    unsafe {
        core::arch::asm!("movq %fs:osv_tls_probe@tpoff, {0}", out(reg) v,
                         options(att_syntax, nostack, readonly, preserves_flags));
    }
    v
}

/// A word-sized thread-local (`u64`), each thread starting from `init`.
pub struct LocalU64 {
    #[doc(hidden)]
    pub get: fn() -> u64,
    #[doc(hidden)]
    pub set: fn(u64),
    #[doc(hidden)]
    pub addr: fn() -> *mut u64,
}

impl LocalU64 {
    /// The running thread's value.
    #[inline]
    pub fn get(&self) -> u64 {
        (self.get)()
    }
    /// Sets the running thread's value.
    #[inline]
    pub fn set(&self, v: u64) {
        (self.set)(v)
    }
    /// The running thread's copy (valid while the thread lives).
    #[inline]
    pub fn as_ptr(&self) -> *mut u64 {
        (self.addr)()
    }
}

/// Declares a [`LocalU64`] thread-local in the kernel's TLS segment:
///
/// ```ignore
/// osv_boot::local_u64!(pub static REQUESTS = 0;);
/// REQUESTS.set(REQUESTS.get() + 1);
/// ```
///
/// The name becomes a hidden global symbol `osv_tls_<NAME>`: names are
/// unique per binary (a clash is a link error, not a silent share).
/// Threads read and write it through `%fs`, so every thread that uses it
/// needs a TLS block (the demo kernel gives every thread one).
#[macro_export]
macro_rules! local_u64 {
    ($(#[$m:meta])* $vis:vis static $name:ident = $init:expr;) => {
        ::core::arch::global_asm!(
                concat!(".pushsection .tdata.osv_tls_", stringify!($name), ",\"awT\",@progbits"),
                ".balign 8",
                concat!(".globl osv_tls_", stringify!($name)),
                concat!(".hidden osv_tls_", stringify!($name)),
                concat!(".type osv_tls_", stringify!($name), ", @tls_object"),
                concat!(".size osv_tls_", stringify!($name), ", 8"),
                concat!("osv_tls_", stringify!($name), ":"),
                ".quad {init}",
                ".popsection",
                init = const { let v: u64 = $init; v },
        );
        $(#[$m])*
        $vis static $name: $crate::rt::tls::LocalU64 = {
            fn get() -> u64 {
                let v: u64;
                // SAFETY: a local-exec TLS load of this thread's copy.
                unsafe {
                    ::core::arch::asm!(
                        concat!("movq %fs:osv_tls_", stringify!($name), "@tpoff, {0}"),
                        out(reg) v, options(att_syntax, nostack, readonly, preserves_flags)
                    );
                }
                v
            }
            fn set(v: u64) {
                // SAFETY: a local-exec TLS store to this thread's copy.
                unsafe {
                    ::core::arch::asm!(
                        concat!("movq {0}, %fs:osv_tls_", stringify!($name), "@tpoff"),
                        in(reg) v, options(att_syntax, nostack, preserves_flags)
                    );
                }
            }
            fn addr() -> *mut u64 {
                let p: u64;
                // SAFETY: reads the self pointer at %fs:0 and adds the
                // link-time offset.
                unsafe {
                    ::core::arch::asm!(
                        "movq %fs:0, {0}",
                        concat!("leaq osv_tls_", stringify!($name), "@tpoff({0}), {0}"),
                        out(reg) p, options(att_syntax, nostack, readonly, preserves_flags)
                    );
                }
                p as *mut u64
            }
            $crate::rt::tls::LocalU64 { get, set, addr }
        };
    };
}
