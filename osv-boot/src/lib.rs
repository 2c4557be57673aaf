//! x86_64 boot for unikernels: the PVH entry QEMU and Firecracker-style VMMs
//! use, the descriptor tables, exceptions with stack traces, a serial
//! console, and the TSC/LAPIC time source.
//!
//! # Layers
//!
//! - **Pure, host-tested logic** (always built): the PVH start-info and
//!   memory-map parsers ([`start_info`], [`memmap`]), descriptor encodings
//!   ([`desc`]), the trap frame ([`trap`]), the frame-pointer walker
//!   ([`backtrace`]), TSC arithmetic ([`time`]), and device logic written
//!   against the [`arch::PortIo`] trait ([`serial`], [`pit`]).
//! - **The runtime** (feature `rt`, for a `#![no_std] #![no_main]` kernel
//!   binary only): the 32-bit PVH entry and long-mode switch, GDT/TSS/IDT with
//!   an IST stack for *every* vector (the prebuilt `core` uses the red zone),
//!   the interrupt path that saves FPU/SSE state, `print!`/`println!`, the
//!   panic handler, the `mem*` functions the sysroot lacks, and
//!   [`entry_point!`] to name the kernel's main function.
//!
//! # Building a kernel on it
//!
//! The kernel is a binary built for the ordinary host target
//! (`x86_64-unknown-linux-gnu`), linked with the script this crate exports:
//! its `build.rs` reads `DEP_OSV_BOOT_LINKER_SCRIPT` and passes
//! `-nostartfiles -nostdlib -static -no-pie -Wl,-T,<script>` with
//! `cargo:rustc-link-arg-bins`. See `osv-demo-kernel` for a complete example.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! osv_boot::entry_point!(main);
//! fn main(boot: &'static osv_boot::BootInfo) -> ! {
//!     osv_boot::println!("hello, {} MiB usable", boot.memory.total() >> 20);
//!     osv_boot::rt::exit(osv_boot::rt::ExitCode::Success)
//! }
//! ```
//!
//! The parsers run anywhere:
//!
//! ```
//! use osv_boot::memmap::MemoryMap;
//!
//! // One hvm_memmap_table_entry: 16 MiB of RAM at 1 MiB.
//! let mut e = Vec::new();
//! e.extend_from_slice(&0x10_0000u64.to_le_bytes());
//! e.extend_from_slice(&0x100_0000u64.to_le_bytes());
//! e.extend_from_slice(&1u32.to_le_bytes());
//! e.extend_from_slice(&0u32.to_le_bytes());
//! let map = MemoryMap::from_pvh_table(&e)?;
//! assert_eq!(map.total(), 16 << 20);
//! # Ok::<(), osv_boot::memmap::MemMapError>(())
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod acpi;
pub mod arch;
pub mod backtrace;
pub mod desc;
pub mod ioapic;
pub mod lapic;
pub mod memmap;
pub mod pit;
#[cfg(feature = "rt")]
pub mod rt;
pub mod serial;
pub mod start_info;
pub mod time;
pub mod tls;
pub mod trap;

/// The I/O port of QEMU's `isa-debug-exit` device
/// (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The value written for success.
pub const DEBUG_EXIT_SUCCESS: u32 = 0x10;
/// The value written for failure.
pub const DEBUG_EXIT_FAILURE: u32 = 0x11;
/// QEMU's exit status after a successful run: `(0x10 << 1) | 1`.
pub const QEMU_EXIT_SUCCESS: i32 = ((DEBUG_EXIT_SUCCESS << 1) | 1) as i32;
/// QEMU's exit status after a failed run: `(0x11 << 1) | 1`.
pub const QEMU_EXIT_FAILURE: i32 = ((DEBUG_EXIT_FAILURE << 1) | 1) as i32;

/// What the boot layer hands the kernel's main function.
#[derive(Debug)]
pub struct BootInfo {
    /// The loader's start info.
    pub start_info: start_info::StartInfo,
    /// Usable RAM: the loader's map less the first MiB and the kernel image.
    pub memory: memmap::MemoryMap,
    /// RAM the loader reported, before anything was taken out.
    pub ram_total: u64,
    /// The kernel image in physical memory.
    pub kernel: memmap::PhysRange,
    /// The kernel command line.
    pub cmdline: start_info::Cmdline<'static>,
    /// TSC at the first instruction of the PVH entry.
    pub entry_tsc: u64,
    /// TSC when the kernel's main was called.
    pub main_tsc: u64,
    /// TSC ticks spent calibrating the TSC and LAPIC timer (part of
    /// `main_tsc - entry_tsc`).
    pub calibration_ticks: u64,
    /// The calibrated TSC.
    pub tsc: time::TscClock,
    /// The local APIC timer's rate in Hz, 0 without a local APIC.
    pub lapic_timer_hz: u64,
}

impl BootInfo {
    /// Microseconds from the PVH entry to the kernel's main.
    pub fn entry_to_main_us(&self) -> u64 {
        self.tsc.ticks_to_us(self.main_tsc.wrapping_sub(self.entry_tsc))
    }
}

/// Names the kernel's main function, `fn(&'static BootInfo) -> !`, which
/// the runtime calls once the machine is set up.
#[macro_export]
macro_rules! entry_point {
    ($main:path) => {
        #[no_mangle]
        fn __osv_kernel_main(boot: &'static $crate::BootInfo) -> ! {
            let main: fn(&'static $crate::BootInfo) -> ! = $main;
            main(boot)
        }
    };
}

/// Prints to the serial console (feature `rt`).
#[cfg(feature = "rt")]
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::rt::_print(format_args!($($arg)*)) };
}

/// Prints a line to the serial console (feature `rt`).
#[cfg(feature = "rt")]
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::rt::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
