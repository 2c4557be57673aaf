//! The demo unikernel: boots through osv-boot, sets up the heap, prints a
//! banner with the boot time, and runs its in-kernel tests.
//!
//! Command line (`-append`), space-separated:
//! - empty: run the in-kernel test list and exit with its verdict;
//! - `app=hello`: print the demo app's line and exit successfully (the
//!   boot-to-first-app-line measurement);
//! - `test.fail`: add a test that fails on purpose (proves the runner sees
//!   failures);
//! - `crash=pagefault|panic|gp|stackoverflow|hang`: crash or hang on purpose after the
//!   banner (proves the fatal reports, their stack traces and the watchdog);
//! - `tests=NAME[,NAME...]`: run only tests whose names contain one of these.
#![no_std]
#![no_main]

extern crate alloc;

mod blk_bench;
mod fs;
mod heap;
mod ktest;
mod mm;
mod net;
mod sched_tests;
mod tests;
mod threads;
mod tls;
mod virtio;
mod virtiofs;
mod zfs;

use osv_boot::rt::{exit, ExitCode};
use osv_boot::{println, BootInfo};

osv_boot::entry_point!(main);

fn main(boot: &'static BootInfo) -> ! {
    heap::init(boot);
    mm::init(boot);
    // The scheduler on the boot CPU, then every other CPU ACPI lists.
    let cpus = threads::start_aps(boot);
    let devices = virtio::init(boot.cmdline.as_str());
    let mounted = fs::init(boot, devices);
    println!(
        "OSv demo kernel {} booted: entry to main {} us (TSC calibration {} us), TSC {} MHz, {} MiB usable, {cpus} CPU(s)",
        env!("CARGO_PKG_VERSION"),
        boot.entry_to_main_us(),
        boot.tsc.ticks_to_us(boot.calibration_ticks),
        boot.tsc.hz() / 1_000_000,
        boot.memory.total() >> 20,
    );
    if !boot.cmdline.is_empty() {
        println!("cmdline: {}", boot.cmdline.as_str());
    }
    for (name, at) in &mounted.block_devices {
        println!("/dev/{name}: virtio-blk at {at}");
    }
    if let Some(at) = &mounted.entropy {
        println!("/dev/random: virtio-rng at {at}");
    }
    for at in virtio::unclaimed() {
        println!("virtio: {at} (not driven yet)");
    }
    if let Some(kind) = boot.cmdline.value("crash") {
        crash(kind);
    }
    if boot.cmdline.value("app") == Some("hello") {
        println!("hello from the OSv demo app");
        exit(ExitCode::Success);
    }
    let ok = ktest::run(boot);
    exit(if ok { ExitCode::Success } else { ExitCode::Failure })
}

/// Crashes on purpose, through a few named frames so the trace has
/// something to show.
#[inline(never)]
fn crash(kind: &str) -> ! {
    match kind {
        "pagefault" => crash_page_fault(),
        "gp" => crash_general_protection(),
        "stackoverflow" => crash_stack_overflow(),
        "hang" => osv_boot::arch::halt_forever(),
        _ => panic!("crash requested on the command line ({kind})"),
    }
}

#[inline(never)]
fn crash_page_fault() -> ! {
    // 64 GiB: far outside the boot identity map.
    let p = 0x10_0000_0000u64 as *const u64;
    // SAFETY: not safe at all: this read faults on purpose, and the fault
    // handler ends the run.
    let v = unsafe { p.read_volatile() };
    panic!("read of an unmapped address returned {v}")
}

/// A kernel thread runs off the bottom of its stack: the fault report must
/// name the thread's stack (its guard page, osv-boot's guard registry) and
/// the recursing function.
#[inline(never)]
fn crash_stack_overflow() -> ! {
    if let Err(e) = threads::init() {
        panic!("no scheduler: {e}");
    }
    let t = threads::spawn("overflow-thread", || {
        let n = recurse_forever(0);
        osv_boot::println!("the recursion returned {n}");
    });
    let _ = t.join();
    panic!("the overflowing thread finished")
}

#[inline(never)]
fn recurse_forever(depth: u64) -> u64 {
    let mut frame = [0u8; 256];
    frame[0] = depth as u8;
    core::hint::black_box(&mut frame);
    if depth == u64::MAX {
        return 0;
    }
    recurse_forever(depth + 1).wrapping_add(u64::from(frame[0]))
}

#[inline(never)]
fn crash_general_protection() -> ! {
    // A non-canonical address raises #GP, not #PF.
    let p = 0x8000_0000_0000_0000u64 as *const u64;
    // SAFETY: as above: the fault is the point.
    let v = unsafe { p.read_volatile() };
    panic!("read of a non-canonical address returned {v}")
}
