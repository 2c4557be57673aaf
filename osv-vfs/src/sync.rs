//! The one place this crate takes its synchronisation primitives from.
//!
//! Normal builds use `spin` (no `std`, no OS); `cfg(loom)` builds swap in
//! loom's primitives so the model checker sees every lock and atomic. The
//! wrappers give both the same infallible `lock`/`read`/`write` shape.
//!
//! `Arc` stays `alloc::sync::Arc` in both builds: loom's `Arc` cannot hold the
//! unsized `dyn VnodeOps` this crate is built around. Lifetimes are still safe
//! (plain Rust ownership); what loom checks here is the locking protocol.

pub(crate) use alloc::sync::{Arc, Weak};

#[cfg(not(loom))]
mod imp {
    pub(crate) use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// What a waiter does between two checks: a CPU spin hint in a kernel;
    /// on a host (`std`, tests), where the thread it waits for may have been
    /// preempted by the OS, a yield to the OS scheduler.
    pub(crate) fn spin_loop() {
        #[cfg(any(test, feature = "std"))]
        {
            extern crate std;
            std::thread::yield_now();
        }
        #[cfg(not(any(test, feature = "std")))]
        core::hint::spin_loop();
    }

    /// A mutual-exclusion lock (spinning).
    pub(crate) struct Mutex<T>(spin::Mutex<T>);
    /// Guard of [`Mutex`].
    pub(crate) type MutexGuard<'a, T> = spin::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(spin::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
    }

    /// A reader-writer lock (spinning): readers share, writers exclude.
    pub(crate) struct RwLock<T>(spin::RwLock<T>);
    /// Shared guard of [`RwLock`].
    pub(crate) type RwLockReadGuard<'a, T> = spin::RwLockReadGuard<'a, T>;
    /// Exclusive guard of [`RwLock`].
    pub(crate) type RwLockWriteGuard<'a, T> = spin::RwLockWriteGuard<'a, T>;

    impl<T> RwLock<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(spin::RwLock::new(value))
        }
        pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read()
        }
        pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write()
        }
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// What a waiter does between two checks: under loom, yield, so the model
    /// checker runs the thread being waited for.
    pub(crate) fn spin_loop() {
        loom::thread::yield_now();
    }

    /// A mutual-exclusion lock (loom-visible).
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);
    /// Guard of [`Mutex`].
    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    /// A reader-writer lock (loom-visible).
    pub(crate) struct RwLock<T>(loom::sync::RwLock<T>);
    /// Shared guard of [`RwLock`].
    pub(crate) type RwLockReadGuard<'a, T> = loom::sync::RwLockReadGuard<'a, T>;
    /// Exclusive guard of [`RwLock`].
    pub(crate) type RwLockWriteGuard<'a, T> = loom::sync::RwLockWriteGuard<'a, T>;

    impl<T> RwLock<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::RwLock::new(value))
        }
        pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(|e| e.into_inner())
        }
        pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(|e| e.into_inner())
        }
    }
}

pub(crate) use imp::*;
