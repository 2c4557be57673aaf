//! The blocking interface the synchronisation primitives are generic over.
//!
//! The kernel implements [`Park`] with its scheduler (park = [`crate::wait::Parker::park`]:
//! mark the current thread waiting and switch away; unpark = wake it through
//! the wakeup rings); host tests implement it with `std::thread::park`
//! (`StdPark`), and the loom models with `loom::thread::park`. The same
//! mutex, condition variable and semaphore code runs on all three.

/// A handle that makes one parked (or about-to-park) thread runnable.
pub trait Unpark {
    /// Makes the thread's next (or current) [`Park::park`] return. Like
    /// `std::thread::Thread::unpark`, an unpark that comes before the park is
    /// remembered (one token), so there is no lost wakeup.
    fn unpark(&self);
}

/// Blocking the *current* thread.
pub trait Park {
    /// The handle other threads use to wake this one.
    type Unparker: Unpark + Clone + Send + Sync;

    /// The current thread's handle.
    fn current() -> Self::Unparker;

    /// Blocks until this thread's token is set, then clears it. May return
    /// spuriously; callers re-check their condition.
    fn park();

    /// Disables preemption of the current thread (nesting). The mutex,
    /// condvar and semaphore call it around the short spin-locked section of
    /// their waiter queue, so the lock is never held across a preemption
    /// point: a thread of the same CPU (or an interrupt handler posting a
    /// semaphore) can then never spin on a holder that cannot run. A kernel
    /// that takes these primitives in interrupt handlers implements it by
    /// disabling interrupts. Default: nothing (host threads, whose spinning
    /// the host OS resolves by preempting the spinner).
    ///
    /// Never called around [`Park::park`]: the queue lock is dropped first.
    #[inline]
    fn preempt_disable() {}

    /// Undoes one [`Park::preempt_disable`]; a kernel reschedules here if a
    /// preemption became due meanwhile. Default: nothing.
    #[inline]
    fn preempt_enable() {}
}

/// Host threads: `std::thread::park` and `Thread::unpark`.
#[cfg(any(test, feature = "std"))]
#[derive(Clone, Copy, Debug, Default)]
pub struct StdPark;

#[cfg(any(test, feature = "std"))]
impl Unpark for std::thread::Thread {
    fn unpark(&self) {
        std::thread::Thread::unpark(self);
    }
}

#[cfg(any(test, feature = "std"))]
impl Park for StdPark {
    type Unparker = std::thread::Thread;

    fn current() -> std::thread::Thread {
        std::thread::current()
    }

    fn park() {
        std::thread::park();
    }
}
