//! The C memory functions and unwinding symbols the prebuilt sysroot
//! expects. `compiler_builtins` on this target leaves `mem*` to libc; here
//! they are `rep movsb`/`rep stosb`/`repe cmpsb` in assembly, so LLVM cannot
//! turn them back into calls to themselves.

use core::arch::asm;

/// `memcpy`.
///
/// # Safety
/// 1. `src` is readable and `dest` writable for `n` bytes.
/// 2. The two ranges do not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract covers exactly the `n` bytes copied.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// `memmove`: copies forward, or backward when `dest` overlaps `src` from above.
///
/// # Safety
/// `src` is readable and `dest` writable for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // No harmful overlap: dest is below src or past its end.
        // SAFETY: the caller's contract covers the `n` bytes.
        unsafe {
            asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
                 options(nostack, preserves_flags));
        }
    } else {
        // SAFETY: as above; copying from the last byte down with DF set,
        // then clearing DF as the ABI requires.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _,
                 inout("rdi") dest.add(n).wrapping_sub(1) => _,
                 inout("rsi") src.add(n).wrapping_sub(1) => _,
                 options(nostack));
        }
    }
    dest
}

/// `memset`.
///
/// # Safety
/// `dest` is writable for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract covers the `n` bytes written.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// `memcmp`.
///
/// # Safety
/// `a` and `b` are readable for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    let (pa, pb): (*const u8, *const u8);
    // SAFETY: the caller's contract covers the `n` bytes compared.
    unsafe {
        asm!("repe cmpsb", inout("rcx") n => _, inout("rsi") a => pa, inout("rdi") b => pb,
             options(nostack, readonly));
    }
    // After the loop both pointers are one past the last compared byte.
    // SAFETY: that byte is inside both ranges.
    let (x, y) = unsafe { (*pa.sub(1), *pb.sub(1)) };
    i32::from(x) - i32::from(y)
}

/// `bcmp`: zero when equal.
///
/// # Safety
/// As for [`memcmp`].
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// The prebuilt `liballoc` references this; with `panic = "abort"` it is
/// never called.
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::arch::halt_forever()
}

/// As for `_Unwind_Resume`: referenced, never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
