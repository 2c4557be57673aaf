//! OSv's scheduler as a `no_std` crate: lock-free, preemptive, tickless, fair
//! and scalable.
//!
//! The policy and the cross-CPU protocols live here so they run in host
//! tests, in a deterministic multi-CPU simulator and under loom; the context
//! switch, the timer hardware and the IPIs live in `osv-boot` behind the
//! traits of [`hal`]. "Simple and clear algorithms over fast and clever
//! ones", except where OSv's cleverness is the point (the decay normaliser,
//! the lock-free wake path).
//!
//! # Layers
//!
//! | layer | module | needs |
//! |---|---|---|
//! | fair policy: decaying runtimes in fixed point, weights, the time-slice rule, an allocation-free run queue | [`fair`] | — (run queue: `alloc`) |
//! | load balancing policy: who gives a thread to whom, with hysteresis | [`balance`] | — |
//! | per-CPU timer lists with absolute deadlines | `timer` | `alloc` |
//! | lock-free cross-CPU wakeup rings, IPI decision | [`wakeup`] | — |
//! | wait/wake state machine, no lost wakeups | [`wait`] | — |
//! | mutex, condition variable, semaphore over [`park::Park`] | [`mutex`], [`condvar`], [`semaphore`] | — |
//! | read-copy-update: lock-free reads, grace periods, deferred reclamation | [`rcu`] | reclamation: `alloc` |
//! | one CPU's scheduler core: reschedule, wake, timers | `cpu` | `alloc` |
//! | deterministic simulator of N CPUs | `sim` | `alloc` |
//! | what the kernel implements | [`hal`] | — |
//!
//! Every atomic comes from one facade (`sync`), which is loom's under
//! `--cfg loom`; the loom models in `tests/loom_*.rs` check the library code
//! itself.
//!
//! # Fairness
//!
//! A thread's *decayed usage* is `U(t) = ∫ e^{-(t-s)/τ}·running(s) ds`, its
//! runtime `R = U/w` for its weight `w`; each CPU runs the thread of least
//! `R`, switching when the running thread's `R` reaches the queue head's but
//! not within `g` (the granularity) of switching it in. The guarantee: for
//! threads continuously runnable on one CPU, `|U_i/w_i − U_j/w_j| ≤
//! g·(1/w_i + 1/w_j)` (plus fixed-point terms below 1 µs with the defaults),
//! so each share of the CPU converges to `w_i/Σw`; a woken
//! or new thread cannot run ahead for more than `τ·ln(1 + w_new/w_head) + g`.
//! The full statement and the measured convergence are in [`fair`].
//!
//! The whole scheduling path (charging, queueing, picking, the preemption
//! deadline, the wakeup IPI decision) is integer arithmetic: no floating
//! point, so no FPU state is touched by the scheduler. The run queue
//! allocates nothing per enqueue, pick or wake (`fair::RunQueue`,
//! `cpu::CpuSched::with_capacity`).
//!
//! # Tickless
//!
//! The kernel arms its one-shot timer for `cpu::Resched::timer`: the
//! earlier of the next timer-list deadline and the running thread's fair-share
//! end ([`fair::Fair::preemption_deadline`]). A CPU running one thread with
//! no timers arms nothing; an idle CPU with no timers takes no interrupts.
//!
//! # What the kernel implements ([`hal`])
//!
//! - [`hal::ContextSwitch`]: the register/stack/FPU/TLS switch (`osv-boot`).
//! - [`hal::OneShotTimer`] and [`hal::Clock`]: TSC-deadline or LAPIC one-shot.
//! - [`hal::SendIpi`]: the wakeup IPI, sent when [`wakeup::Ipi::Needed`].
//! - [`hal::StackAllocator`]: stacks with guard pages (from `osv-mm`, adapted
//!   by the demo kernel; this crate does not depend on it).
//! - [`park::Park`]: blocking for the mutex, condvar and semaphore, built on
//!   [`wait::Parker`] and the scheduler.
//!
//! # Example
//!
//! One CPU, two threads of weights 1 and 3, driven the way the kernel's
//! timer interrupt drives it:
//!
//! ```
//! # #[cfg(feature = "alloc")] {
//! use osv_sched::cpu::CpuSched;
//! use osv_sched::fair::{FairParams, Runtime, Weight};
//! use osv_sched::time::{Instant, Nanos};
//! use osv_sched::CpuId;
//!
//! let mut cpu = CpuSched::new(CpuId::new(0), FairParams::default(), Instant::ZERO);
//! let _ = cpu.spawn(Instant::ZERO, Runtime::new(Weight::new(1024).unwrap()), "light");
//! let _ = cpu.spawn(Instant::ZERO, Runtime::new(Weight::new(3 * 1024).unwrap()), "heavy");
//!
//! let mut ran = [Nanos::ZERO; 2];
//! let mut r = cpu.reschedule(Instant::ZERO, false);
//! let mut at = Instant::ZERO;
//! while at < Instant(2_000_000_000) {
//!     // The kernel switches to `r.next` and arms its one-shot timer.
//!     let fire = r.timer.expect("two runnable threads: a preemption deadline");
//!     let who = usize::from(r.next == Some("heavy"));
//!     ran[who] = ran[who] + (fire - at);
//!     at = fire;
//!     r = cpu.reschedule(at, false); // the timer interrupt
//! }
//! let share = ran[1].as_nanos() as f64 / at.as_nanos() as f64;
//! assert!((share - 0.75).abs() < 0.02, "heavy got {share}");
//! # }
//! ```
//!
//! And a mutex on host threads (the kernel passes its own [`park::Park`]):
//!
//! ```
//! # #[cfg(feature = "std")] {
//! use osv_sched::mutex::Mutex;
//! use osv_sched::park::StdPark;
//!
//! let m: Mutex<u32, StdPark> = Mutex::new(0);
//! std::thread::scope(|s| {
//!     for _ in 0..4 {
//!         s.spawn(|| *m.lock() += 1);
//!     }
//! });
//! assert_eq!(m.into_inner(), 4);
//! # }
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

#[cfg(any(test, loom, feature = "alloc"))]
extern crate alloc;
#[cfg(all(feature = "std", not(test)))]
extern crate std;

mod sync;
mod waitq;

pub mod balance;
pub mod condvar;
#[cfg(any(test, feature = "alloc"))]
pub mod cpu;
pub mod fair;
pub mod hal;
pub mod mutex;
pub mod park;
pub mod rcu;
pub mod semaphore;
#[cfg(any(test, feature = "alloc"))]
pub mod sim;
pub mod time;
#[cfg(any(test, feature = "alloc"))]
pub mod timer;
pub mod wait;
pub mod wakeup;

/// The index of a CPU, dense from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuId(u32);

impl CpuId {
    /// Wraps a CPU index.
    pub const fn new(index: u32) -> Self {
        Self(index)
    }
    /// The CPU index as a `usize`, for indexing per-CPU arrays.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    #[test]
    fn index_round_trips() {
        assert_eq!(super::CpuId::new(7).index(), 7);
        assert_eq!(super::CpuId::new(3).index(), 3);
    }
}
