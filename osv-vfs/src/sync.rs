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

/// How many reader stripes a [`BrLock`](crate::brlock::BrLock) has: enough
/// for the CPUs of a small VM; under loom 2, so that a model with three
/// threads has two readers on different stripes and two on the same one,
/// without multiplying the states to explore.
#[cfg(not(loom))]
pub(crate) const STRIPES: usize = 8;
#[cfg(loom)]
pub(crate) const STRIPES: usize = 2;

#[cfg(not(loom))]
mod imp {
    pub(crate) use core::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

    /// Which reader stripe the calling thread uses (see
    /// [`BrLock`](crate::brlock::BrLock)): the 2 MiB region its stack is in.
    /// Threads have distinct stacks, so threads running at the same time
    /// mostly get distinct stripes (a thread stack is at least 2 MiB on a
    /// Linux host and in the demo kernel, and stacks are allocated next to
    /// each other, so consecutive threads get consecutive stripes). Any
    /// stripe is correct: a shared one only costs speed.
    #[inline]
    pub(crate) fn stripe_hint() -> usize {
        let probe = 0u8;
        (core::ptr::addr_of!(probe) as usize) >> 21
    }

    /// `core`'s `UnsafeCell` with loom's shape: [`get`](Self::get) and
    /// [`get_mut`](Self::get_mut) hand out pointers whose dereference is
    /// `unsafe` (under loom, tracked accesses).
    pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);
    /// A shared pointer into an [`UnsafeCell`].
    pub(crate) struct ConstPtr<T>(*const T);
    /// An exclusive pointer into an [`UnsafeCell`].
    pub(crate) struct MutPtr<T>(*mut T);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(core::cell::UnsafeCell::new(value))
        }
        pub(crate) fn get(&self) -> ConstPtr<T> {
            ConstPtr(self.0.get())
        }
        pub(crate) fn get_mut(&self) -> MutPtr<T> {
            MutPtr(self.0.get())
        }
    }

    #[allow(unsafe_code)]
    impl<T> ConstPtr<T> {
        /// # Safety
        /// 1. No exclusive reference to the value exists while the returned
        ///    one lives.
        pub(crate) unsafe fn deref(&self) -> &T {
            // SAFETY: the pointer comes from a live `UnsafeCell` (the caller
            // holds the cell borrowed through the pointer's owner) and the
            // caller promises (1).
            unsafe { &*self.0 }
        }
    }

    #[allow(unsafe_code)]
    impl<T> MutPtr<T> {
        /// # Safety
        /// 1. No other reference to the value exists while the returned one
        ///    lives.
        #[allow(clippy::mut_from_ref)]
        pub(crate) unsafe fn deref(&self) -> &mut T {
            // SAFETY: as for `ConstPtr::deref`, with (1) for exclusivity.
            unsafe { &mut *self.0 }
        }
        /// The raw pointer, to `f` (loom's shape).
        pub(crate) fn with<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0)
        }
    }

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
    pub(crate) use loom::cell::{ConstPtr, MutPtr, UnsafeCell};
    pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

    /// Which reader stripe the calling thread uses: under loom, the model
    /// thread's number (`ThreadId(N)`; deterministic across the model's
    /// executions, as loom requires, which stack addresses would not be).
    /// With 2 stripes, the main thread and the second spawned thread share
    /// one and the first spawned thread has the other.
    pub(crate) fn stripe_hint() -> usize {
        extern crate std;
        let id = std::format!("{:?}", loom::thread::current().id());
        id.bytes().filter(u8::is_ascii_digit).fold(0usize, |n, d| n * 10 + usize::from(d - b'0'))
    }

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
