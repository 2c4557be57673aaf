//! The serial console behind `print!`/`println!`.

use crate::arch::{self, Pio};
use crate::serial::{Uart16550, COM1};
use core::fmt::{self, Write};

static CONSOLE: spin::Mutex<Uart16550<Pio>> = spin::Mutex::new(Uart16550::new(
    // SAFETY: the kernel runs in ring 0 and owns COM1.
    unsafe { Pio::new() },
    COM1,
));

pub(super) fn init() {
    CONSOLE.lock().init();
}

/// Prints to the serial console; the body of `print!`.
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    // Interrupts off while the lock is held: a handler that prints must not
    // spin on a lock its own CPU holds.
    arch::without_interrupts(|| {
        let _ = CONSOLE.lock().write_fmt(args);
    });
}

/// Breaks the console lock so a fatal path can print even if it interrupted
/// a holder.
///
/// # Safety
/// Only on a path that never returns to the interrupted holder.
pub unsafe fn force_unlock_console() {
    // SAFETY: the caller never returns to the holder, so no two writers
    // remain once the lock is broken.
    unsafe { CONSOLE.force_unlock() };
}
