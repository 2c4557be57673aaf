//! The crate's one door to atomics (the tokio/crossbeam `loom` facade).
//!
//! Under `--cfg loom` every atomic and [`UnsafeCell`] comes from [loom](https://docs.rs/loom),
//! so the model checker sees every access; otherwise from `core`. No other module imports
//! `core::sync::atomic` or `core::cell::UnsafeCell` directly. Page tables are built from
//! [`AtomicU64`], so a loom model can run the [`HwPtep`](crate::HwPtep) protocol unchanged;
//! the page allocator's lock ([`SpinLock`]), the per-CPU caches and the heap's cross-CPU free
//! queues are built from the same types.
#![allow(unsafe_code)]

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Busy-wait hint (`pause` on x86_64); loom's version yields to the model's scheduler.
#[cfg(loom)]
pub use loom::hint::spin_loop;

/// Busy-wait hint (`pause` on x86_64); loom's version yields to the model's scheduler.
#[cfg(not(loom))]
pub use core::hint::spin_loop;

#[cfg(loom)]
pub use loom::cell::UnsafeCell;

/// `core::cell::UnsafeCell` with loom's closure API (`with`, `with_mut`), so code written
/// against it is checked by loom for unsynchronised access.
#[cfg(not(loom))]
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }
    /// Calls `f` with a shared raw pointer to the value.
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    /// Calls `f` with a mutable raw pointer to the value.
    #[inline(always)]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// A test-and-test-and-set spin lock: the global page allocator's lock.
///
/// The kernel takes it with preemption disabled (the allocator's callers go through
/// [`CpuLocal::with_cpu`](crate::percpu::CpuLocal::with_cpu)); it is never taken from an
/// interrupt handler, so it does not disable interrupts.
#[derive(Debug, Default)]
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `T` to one thread at a time, so `T: Send` suffices.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the `T`.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock holding `value`.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        Self { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// An unlocked lock holding `value`.
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Self { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// Runs `f` with the lock held.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        loop {
            if self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                break;
            }
            while self.locked.load(Ordering::Relaxed) {
                spin_loop();
            }
        }
        struct Unlock<'a>(&'a AtomicBool);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _unlock = Unlock(&self.locked);
        // SAFETY: the Acquire exchange above made this thread the only holder until `_unlock`
        // releases it, so this is the only reference to the value.
        self.value.with_mut(|p| f(unsafe { &mut *p }))
    }
}
