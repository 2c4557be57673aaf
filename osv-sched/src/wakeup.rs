//! Lock-free cross-CPU wakeups (OSv's `cpu::incoming_wakeups`, one
//! `lockless_queue` per (source, destination) pair, and
//! `cpu::send_wakeup_ipi`).
//!
//! A CPU that wakes a thread belonging to another CPU pushes the thread's
//! handle onto the single-producer single-consumer ring from itself to that
//! CPU: no lock, no shared write with other wakers. The destination drains
//! its incoming rings whenever it schedules. The push says whether an IPI is
//! needed: the destination is idle (about to halt, or halted), or the woken
//! thread should preempt what it runs now.
//!
//! No lost wakeup across idle: the destination announces `idle` and then
//! checks its rings, the source pushes and then reads `idle`, each with a
//! `SeqCst` fence between its write and its read (Dekker's pattern). So either
//! the destination sees the thread and does not halt, or the source sees
//! `idle` and sends the IPI (`tests/loom_wakeup.rs`).
//!
//! Single producer: only code running on the source CPU, with preemption
//! disabled, pushes onto a ring; only the destination pops. Breaking this
//! contract can lose or duplicate handles but cannot cause undefined
//! behaviour (the ring holds plain integers in atomics).

use crate::sync::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::CpuId;

/// A thread handle as the kernel names it: an index into its thread table or
/// an exposed address. Copyable; the scheduler never dereferences it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ThreadId(pub usize);

/// Whether the waker must send the destination CPU an IPI.
#[must_use = "an IPI that is needed and not sent leaves the thread asleep on an idle CPU"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipi {
    /// The destination will find the thread at its next scheduling point.
    NotNeeded,
    /// Send the wakeup IPI (the destination is idle or must preempt).
    Needed,
}

/// A bounded SPSC ring of thread handles with `CAP` slots.
pub struct WakeRing<const CAP: usize> {
    /// Next slot to pop; written by the consumer only.
    head: AtomicUsize,
    /// Next slot to fill; written by the producer only.
    tail: AtomicUsize,
    slots: [AtomicUsize; CAP],
}

impl<const CAP: usize> Default for WakeRing<CAP> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const CAP: usize> core::fmt::Debug for WakeRing<CAP> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WakeRing").field("len", &self.len()).finish()
    }
}

impl<const CAP: usize> WakeRing<CAP> {
    /// An empty ring.
    ///
    /// # Panics
    /// If `CAP` is zero.
    pub fn new() -> Self {
        assert!(CAP > 0, "a ring needs a slot");
        WakeRing {
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            slots: core::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }

    /// Producer side: appends `thread`, or gives it back if the ring is full.
    pub fn push(&self, thread: ThreadId) -> Result<(), ThreadId> {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        if tail.wrapping_sub(head) >= CAP {
            return Err(thread);
        }
        self.slots[tail % CAP].store(thread.0, Ordering::Relaxed);
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Consumer side: takes the oldest handle.
    pub fn pop(&self) -> Option<ThreadId> {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        if head == tail {
            return None;
        }
        let t = self.slots[head % CAP].load(Ordering::Relaxed);
        self.head.store(head.wrapping_add(1), Ordering::Release);
        Some(ThreadId(t))
    }

    /// Handles queued (a snapshot).
    pub fn len(&self) -> usize {
        self.tail.load(Ordering::Acquire).wrapping_sub(self.head.load(Ordering::Acquire))
    }

    /// Whether the ring looks empty (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A woken thread's scaled runtime as [`WakeupMatrix::wake`] takes it:
/// `u64` from [`crate::fair::Runtime::scaled`] (integer, the scheduler
/// path), or `f64` for callers written against the earlier floating-point
/// runtimes (saturating conversion: `0.0` means "ran least", so it preempts
/// any running thread; kept for source compatibility only).
pub trait WokenRuntime: Copy {
    /// The runtime in the fixed-point scale of [`crate::fair::Runtime`].
    fn to_scaled(self) -> u64;
}

impl WokenRuntime for u64 {
    #[inline]
    fn to_scaled(self) -> u64 {
        self
    }
}

impl WokenRuntime for f64 {
    #[inline]
    fn to_scaled(self) -> u64 {
        // Saturating; NaN becomes 0.
        self as u64
    }
}

/// What a CPU publishes for wakers: whether it is idle and the scaled runtime
/// of the thread it runs (see [`crate::fair::Runtime::scaled`]).
#[derive(Debug)]
struct CpuStatus {
    idle: AtomicBool,
    running_rtt: AtomicU64,
}

/// All wakeup rings of a machine of `CPUS` CPUs, `CAP` slots each.
///
/// Size it so rings rarely fill (`CAP` ≥ the threads a CPU wakes on another
/// between two of the latter's scheduling points); on [`Err`] the waker sends
/// an IPI and retries.
pub struct WakeupMatrix<const CPUS: usize, const CAP: usize> {
    /// `rings[dst][src]`.
    rings: [[WakeRing<CAP>; CPUS]; CPUS],
    status: [CpuStatus; CPUS],
}

impl<const CPUS: usize, const CAP: usize> Default for WakeupMatrix<CPUS, CAP> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const CPUS: usize, const CAP: usize> core::fmt::Debug for WakeupMatrix<CPUS, CAP> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WakeupMatrix").field("cpus", &CPUS).field("cap", &CAP).finish()
    }
}

impl<const CPUS: usize, const CAP: usize> WakeupMatrix<CPUS, CAP> {
    /// Empty rings; every CPU busy running a thread of infinite runtime (so
    /// any wakeup looks worth a preemption until the CPU publishes).
    pub fn new() -> Self {
        WakeupMatrix {
            rings: core::array::from_fn(|_| core::array::from_fn(|_| WakeRing::new())),
            status: core::array::from_fn(|_| CpuStatus {
                idle: AtomicBool::new(false),
                running_rtt: AtomicU64::new(u64::MAX),
            }),
        }
    }

    /// Wakes `thread` (whose scaled runtime on `dst` is `woken_rtt`, see
    /// [`crate::fair::Runtime::scaled`]) from CPU `src` onto CPU `dst`.
    /// Lock-free, integer only; `Err` gives the thread back if the ring is
    /// full.
    ///
    /// # Panics
    /// If a CPU index is out of range.
    pub fn wake<R: WokenRuntime>(
        &self,
        src: CpuId,
        dst: CpuId,
        thread: ThreadId,
        woken_rtt: R,
    ) -> Result<Ipi, ThreadId> {
        let woken_rtt = woken_rtt.to_scaled();
        self.rings[dst.index()][src.index()].push(thread)?;
        fence(Ordering::SeqCst);
        let status = &self.status[dst.index()];
        if status.idle.load(Ordering::Relaxed) {
            return Ok(Ipi::Needed);
        }
        let running = status.running_rtt.load(Ordering::Relaxed);
        Ok(if woken_rtt < running { Ipi::Needed } else { Ipi::NotNeeded })
    }

    /// Destination side: hands every queued incoming thread to `f`; returns
    /// how many.
    pub fn drain(&self, dst: CpuId, mut f: impl FnMut(ThreadId)) -> usize {
        let mut n = 0;
        for ring in &self.rings[dst.index()] {
            while let Some(t) = ring.pop() {
                f(t);
                n += 1;
            }
        }
        n
    }

    /// Publishes the scaled runtime of the thread `cpu` now runs, for the IPI
    /// decision (`cpu::CpuSched::published_runtime`). `None` when
    /// the CPU is idle *or* its running thread has no preemption deadline
    /// (it was alone): a CPU with no timer armed must be interrupted by any
    /// wakeup, or it would never look at its rings (OSv sends the IPI when
    /// the destination's run queue is nearly empty for the same reason).
    ///
    /// The published runtime is a lower bound (the thread keeps running): a
    /// woken thread between it and the true value waits at most until the
    /// running thread's preemption deadline.
    pub fn set_running(&self, cpu: CpuId, rtt: Option<u64>) {
        // `u64::MAX` stands for "none": no runtime compares above it.
        self.status[cpu.index()].running_rtt.store(rtt.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Destination side, before halting: announces idle, then checks the
    /// rings. `true`: nothing is queued and any later waker will send an IPI,
    /// so the CPU may halt. `false`: work arrived; the CPU is busy again.
    pub fn try_idle(&self, cpu: CpuId) -> bool {
        let status = &self.status[cpu.index()];
        status.idle.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.rings[cpu.index()].iter().any(|r| !r.is_empty()) {
            status.idle.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Destination side, after waking from a halt: no longer idle.
    pub fn leave_idle(&self, cpu: CpuId) {
        self.status[cpu.index()].idle.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_fifo_and_bounded() {
        let r: WakeRing<2> = WakeRing::new();
        assert_eq!(r.push(ThreadId(1)), Ok(()));
        assert_eq!(r.push(ThreadId(2)), Ok(()));
        assert_eq!(r.push(ThreadId(3)), Err(ThreadId(3)));
        assert_eq!(r.pop(), Some(ThreadId(1)));
        assert_eq!(r.push(ThreadId(3)), Ok(()));
        assert_eq!(r.pop(), Some(ThreadId(2)));
        assert_eq!(r.pop(), Some(ThreadId(3)));
        assert_eq!(r.pop(), None);
    }

    #[test]
    fn ipi_only_for_idle_or_preempting() {
        let m: WakeupMatrix<2, 4> = WakeupMatrix::new();
        let (a, b) = (CpuId::new(0), CpuId::new(1));
        m.set_running(b, Some(5));
        assert_eq!(m.wake(a, b, ThreadId(7), 9u64), Ok(Ipi::NotNeeded));
        assert_eq!(m.wake(a, b, ThreadId(8), 1u64), Ok(Ipi::Needed));
        assert!(!m.try_idle(b), "work is queued");
        let mut got = std::vec::Vec::new();
        assert_eq!(m.drain(b, |t| got.push(t)), 2);
        assert_eq!(got, [ThreadId(7), ThreadId(8)]);
        assert!(m.try_idle(b));
        assert_eq!(m.wake(a, b, ThreadId(9), 9u64), Ok(Ipi::Needed));
    }

    #[test]
    fn float_runtimes_still_accepted() {
        let m: WakeupMatrix<2, 4> = WakeupMatrix::new();
        let (a, b) = (CpuId::new(0), CpuId::new(1));
        m.set_running(b, Some(5));
        assert_eq!(m.wake(a, b, ThreadId(1), 0.0), Ok(Ipi::Needed));
        assert_eq!(m.wake(a, b, ThreadId(2), 9.5), Ok(Ipi::NotNeeded));
        assert_eq!(m.wake(a, b, ThreadId(3), f64::NAN), Ok(Ipi::Needed));
    }
}
