//! The crate's one door to atomics (the tokio/crossbeam `loom` facade).
//!
//! Under `--cfg loom` every atomic comes from [loom](https://docs.rs/loom), so the model checker
//! sees every access; otherwise from `core`. No other module imports `core::sync::atomic`
//! directly. Page tables are built from [`AtomicU64`], so a loom model can run the
//! [`HwPtep`](crate::HwPtep) protocol unchanged.

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Busy-wait hint (`pause` on x86_64); loom's version yields to the model's scheduler.
#[cfg(loom)]
pub use loom::hint::spin_loop;

/// Busy-wait hint (`pause` on x86_64); loom's version yields to the model's scheduler.
#[cfg(not(loom))]
pub use core::hint::spin_loop;
