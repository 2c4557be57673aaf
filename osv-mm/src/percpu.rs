//! CPU identity for per-CPU data: the [`CpuLocal`] trait the kernel implements, and
//! [`ThreadCpus`], a host implementation that gives each thread its own CPU index.
//!
//! The page caches ([`PerCpuPages`](crate::phys::PerCpuPages)) and the heap's pools
//! ([`Heap`](crate::heap::Heap)) keep one slot per CPU that only the CPU itself touches, with
//! plain loads and stores: that is what makes their fast paths lock-free. The price is the
//! promise below: while a CPU works on its slot nobody else may run with the same index.
#![allow(unsafe_code)]

/// Which CPU is running, with preemption disabled for as long as the answer is used.
///
/// # Safety
/// Implementers promise that, for every call of [`with_cpu`](Self::with_cpu):
/// 1. the index passed to `f` is the same for the whole call of `f`, and
/// 2. no other execution context calls `f` with the same index while `f` runs: the thread is
///    neither migrated nor preempted by another thread that could use the index, and `f` is
///    not entered from an interrupt handler that interrupted a call with the same index
///    (OSv's rule too: no page or heap allocation in interrupt context).
///
/// Nested calls on the same CPU (a heap pool refilling from a page cache) are allowed and
/// get the same index; the structures in this crate never re-enter their own slot.
pub unsafe trait CpuLocal {
    /// Upper bound of the indices `with_cpu` hands out. Indices at or past the capacity a
    /// structure was built for make it fall back to its shared (locked) path.
    fn max_cpus(&self) -> usize;

    /// Runs `f` with the current CPU's index, preemption disabled.
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R;
}

// SAFETY: forwards to `T`, which keeps the promises.
unsafe impl<T: CpuLocal + ?Sized> CpuLocal for &T {
    fn max_cpus(&self) -> usize {
        (**self).max_cpus()
    }
    #[inline]
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        (**self).with_cpu(f)
    }
}

#[cfg(all(any(test, feature = "std"), not(loom)))]
mod host {
    use std::cell::Cell;
    use std::sync::Mutex;

    use super::CpuLocal;

    /// How many thread "CPUs" exist on the host.
    pub const HOST_CPUS: usize = 64;

    static SLOTS: Mutex<u64> = Mutex::new(0);

    struct Slot(Cell<Option<usize>>);

    impl Drop for Slot {
        fn drop(&mut self) {
            if let Some(i) = self.0.get() {
                *SLOTS.lock().unwrap_or_else(|e| e.into_inner()) &= !(1u64 << i);
            }
        }
    }

    std::thread_local! {
        static SLOT: Slot = const { Slot(Cell::new(None)) };
    }

    fn claim() -> usize {
        let mut slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        let free = (!*slots).trailing_zeros() as usize;
        assert!(free < HOST_CPUS, "more than {HOST_CPUS} live threads use ThreadCpus");
        *slots |= 1 << free;
        free
    }

    /// Host stand-in for the kernel's CPU identity: each live thread owns one of
    /// [`HOST_CPUS`] indices, claimed on first use and given back when the thread exits (a
    /// new thread may then reuse it: the old one can no longer touch the slot).
    ///
    /// Threads never share an index, so the [`CpuLocal`] promises hold without disabling
    /// anything. Panics if more than [`HOST_CPUS`] threads use it at once (a test tool).
    #[derive(Clone, Copy, Debug, Default)]
    pub struct ThreadCpus;

    // SAFETY: (1) a thread's index is fixed from its first use until it exits; (2) the index
    // is claimed in `SLOTS` and released only by the exiting thread's TLS destructor, so no two
    // live threads hold the same index, and host tests have no interrupt handlers.
    unsafe impl CpuLocal for ThreadCpus {
        fn max_cpus(&self) -> usize {
            HOST_CPUS
        }
        #[inline]
        fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
            let cpu = SLOT.with(|s| match s.0.get() {
                Some(i) => i,
                None => {
                    let i = claim();
                    s.0.set(Some(i));
                    i
                }
            });
            f(cpu)
        }
    }
}

#[cfg(all(any(test, feature = "std"), not(loom)))]
pub use host::{ThreadCpus, HOST_CPUS};

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn threads_get_distinct_stable_indices() {
        let me = ThreadCpus.with_cpu(|c| c);
        assert_eq!(ThreadCpus.with_cpu(|c| c), me);
        let other = std::thread::spawn(|| ThreadCpus.with_cpu(|c| c)).join().unwrap();
        // The spawned thread ran while this one held `me`.
        assert_ne!(other, me);
        assert!(me < ThreadCpus.max_cpus() && other < HOST_CPUS);
    }
}
