//! The crate's only door to atomics (the tokio/crossbeam facade).
//!
//! Under `--cfg loom` everything here is loom's instrumented version, so the
//! wakeup rings, the wait/wake state machine and the mutex are model-checked
//! unchanged; otherwise it is `core`'s. No other module imports
//! `core::sync::atomic` directly.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

/// A busy-wait hint. Under loom a spinning thread must yield, or the model
/// would explore the same spin forever.
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}
