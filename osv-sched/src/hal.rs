//! What the kernel implements for the scheduler: the hardware and memory
//! services the host-verified core needs but cannot do itself. `osv-boot`
//! provides the x86_64 implementations (context switch, LAPIC/TSC-deadline
//! timer, IPIs); the demo kernel adapts `osv-mm` for stacks. The simulator
//! (`sim`) implements the timer and IPI sides in software.
#![allow(unsafe_code)]

use crate::time::Instant;
use crate::CpuId;

/// The monotonic clock (the TSC, calibrated).
pub trait Clock {
    /// Now.
    fn now(&self) -> Instant;
}

/// A CPU's one-shot timer (TSC-deadline, or the one-shot LAPIC timer). The
/// scheduler is tickless: it arms this only for the earliest of the next
/// timer-list deadline and the running thread's preemption deadline, and
/// disarms it when there is neither, so an idle CPU with no timers takes no
/// timer interrupts.
pub trait OneShotTimer {
    /// Fire once at `deadline` (replacing any earlier arming); `None`
    /// disarms.
    fn arm(&mut self, deadline: Option<Instant>);
}

/// Sending the wakeup IPI (when [`crate::wakeup::Ipi::Needed`]).
pub trait SendIpi {
    /// Interrupts `cpu` so it reschedules (or leaves `hlt`).
    fn send_wakeup_ipi(&self, cpu: CpuId);
}

/// The architecture's thread switch: callee-saved registers, stack pointer,
/// FPU/SSE state and the TLS base.
///
/// # Safety
/// Implementers promise that [`ContextSwitch::switch`] saves exactly the
/// state the ABI requires into `from` and resumes `to` as it was saved (or
/// as [`ContextSwitch::init`] prepared it), and that it returns on `from`'s
/// stack only when some CPU later switches back to `from`.
pub unsafe trait ContextSwitch {
    /// Saved register state of a thread that is not running.
    type Context;

    /// A context that starts `entry(arg)` on the stack whose top is
    /// `stack_top`.
    fn init(stack_top: usize, entry: extern "C" fn(usize) -> !, arg: usize) -> Self::Context;

    /// Saves the current thread into `from` and resumes `to`.
    ///
    /// # Safety
    /// 1. Interrupts (or at least preemption) are disabled on this CPU.
    /// 2. `to` was saved by a previous `switch` or made by `init`, its stack
    ///    is alive, and no other CPU is running or switching to it.
    /// 3. `from` stays valid until the thread is resumed.
    unsafe fn switch(from: &mut Self::Context, to: &Self::Context);
}

/// A kernel thread's stack as the allocator gives it out.
pub trait ThreadStack {
    /// The initial stack pointer (the highest address, 16-byte aligned).
    fn top(&self) -> usize;
    /// The unmapped guard range just below the stack: an overflow faults
    /// here instead of corrupting memory.
    fn guard(&self) -> core::ops::Range<usize>;
}

/// Allocates thread stacks with guard pages (the kernel implements it with
/// `osv-mm`; this crate does not depend on it). Dropping a stack frees it.
pub trait StackAllocator {
    /// The stack type.
    type Stack: ThreadStack;
    /// Why an allocation failed.
    type Error: core::fmt::Debug;
    /// A stack of at least `size` usable bytes, with a guard page below.
    fn allocate(&self, size: usize) -> Result<Self::Stack, Self::Error>;
}
