//! The crate's only door to atomics and shared cells (the tokio/crossbeam facade).
//!
//! Under `--cfg loom` everything here is loom's instrumented version, so the
//! ring and the wake protocol can be model-checked unchanged; otherwise it is
//! `core`'s (and `alloc`'s `Arc`). No other module imports
//! `core::sync::atomic` directly.
//!
//! [`UnsafeCell`] is accessed only through closures (`with`, `with_mut`), the
//! shape loom needs to track every access to shared memory.

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

/// Back-off hints for spinning code; nothing in the ring spins today.
#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::{hint::spin_loop, thread::yield_now};

#[cfg(not(loom))]
pub(crate) use core::{
    hint::spin_loop,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

#[cfg(all(not(loom), feature = "alloc"))]
pub(crate) use alloc::sync::Arc;

/// Without loom there is no scheduler to yield to in `no_std`: spinning is
/// the portable fallback (the kernel's own code yields through its scheduler).
#[cfg(not(loom))]
#[allow(dead_code)]
#[inline]
pub(crate) fn yield_now() {
    spin_loop();
}

/// `core::cell::UnsafeCell` with loom's closure-based access API.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `data`.
    #[inline]
    pub(crate) const fn new(data: T) -> Self {
        Self(core::cell::UnsafeCell::new(data))
    }

    /// Runs `f` with a shared-access raw pointer to the contents.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with an exclusive-access raw pointer to the contents.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
