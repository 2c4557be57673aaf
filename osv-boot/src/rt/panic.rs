//! The panic handler: location, message, stack trace, failure exit.

use core::sync::atomic::{AtomicBool, Ordering};

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::arch::cli();
    if PANICKING.swap(true, Ordering::SeqCst) {
        super::exit(super::ExitCode::Failure);
    }
    // SAFETY: this path never returns to whoever held the console.
    unsafe { super::force_unlock_console() };
    match info.location() {
        Some(l) => crate::println!("\npanicked at {}:{}:{}:", l.file(), l.line(), l.column()),
        None => crate::println!("\npanicked:"),
    }
    crate::println!("{}", info.message());
    crate::println!("stack trace:");
    let rsp: u64;
    // SAFETY: copying the stack pointer has no side effects.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack)) };
    super::trap::print_trace(crate::arch::rbp(), rsp, 0);
    crate::println!("end of trace");
    super::exit(super::ExitCode::Failure)
}
