//! Read-copy-update (OSv's `osv::rcu_ptr`, `rcu_read_lock`, `rcu_defer`):
//! readers follow a pointer with one plain load and no atomic write;
//! writers publish a new copy and free the old one only after a *grace
//! period*, when every CPU has passed a quiescent state.
//!
//! # The protocol
//!
//! - A read-side critical section is a stretch of code on one CPU with
//!   preemption disabled ([`ReadGuard`]): the CPU passes no quiescent state
//!   inside it. Reading is [`RcuPtr::read`], an `Acquire` load.
//! - Each CPU reports its quiescent states to [`Rcu`]: every context switch
//!   ([`Rcu::quiescent`]) and the stretches it spends idle
//!   ([`Rcu::enter_idle`]/[`Rcu::exit_idle`], an *extended* quiescent state:
//!   an idle CPU holds up no grace period and need not be woken). Each is an
//!   increment of the CPU's own counter (odd while idle) followed by a
//!   `SeqCst` fence: scheduler work, not reader work.
//! - A writer unlinks the old object ([`RcuPtr::replace`]), then starts a
//!   grace period ([`Rcu::retire`]): a `SeqCst` fence and a snapshot of the
//!   counters. The grace period is over when each CPU's counter was odd
//!   (idle) in the snapshot or has moved since.
//!
//! Why that suffices: a section that could hold the old object started before
//! the CPU's next quiescent state *after the snapshot* (the counter move the
//! writer waits for); a section that starts after such a move sees the new
//! pointer, because the writer's unlink, fence, snapshot load and the CPU's
//! counter store, fence, pointer load form the store-buffering pattern,
//! which the two `SeqCst` fences forbid from both reading old values
//! (`tests/loom_rcu.rs` checks this, with the reclamation as a write that
//! must not race with any read).
//!
//! Reclamation is deferred: [`Deferred::try_reclaim`] gives the old object
//! back once its grace period is over, and [`DeferQueue`] (`alloc`) runs
//! reclamation callbacks in batches, as OSv's per-CPU `rcu_defer` queues.
#![allow(unsafe_code)]

use crate::sync::{fence, AtomicPtr, AtomicU64, Ordering};
use core::marker::PhantomData;
use core::ptr;
#[cfg(any(test, loom, feature = "alloc"))]
use core::ptr::NonNull;

#[cfg(any(test, loom, feature = "alloc"))]
use alloc::boxed::Box;

/// Proof that the current CPU is inside a read-side critical section
/// (preemption disabled, so it passes no quiescent state). Not `Send`: it
/// belongs to the CPU and thread that made it.
#[derive(Debug)]
pub struct ReadGuard {
    _not_send: PhantomData<*const ()>,
}

impl ReadGuard {
    /// Enters a read-side critical section.
    ///
    /// # Safety
    /// 1. Until the guard is dropped, the CPU this runs on reports no
    ///    quiescent state to any [`Rcu`] whose grace periods protect the
    ///    objects read through it (the kernel disables preemption, so there
    ///    is no context switch and no idle).
    /// 2. The thread does not migrate to another CPU meanwhile.
    pub unsafe fn new() -> Self {
        ReadGuard { _not_send: PhantomData }
    }
}

/// A pointer that readers follow without locks or atomic writes; `None`
/// when null.
#[derive(Debug)]
pub struct RcuPtr<T> {
    ptr: AtomicPtr<T>,
}

// SAFETY: readers on other threads get `&T` (needs `T: Sync`); the object
// moves between threads when replaced and freed (needs `T: Send`).
unsafe impl<T: Send + Sync> Send for RcuPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for RcuPtr<T> {}

impl<T> Default for RcuPtr<T> {
    fn default() -> Self {
        Self::null()
    }
}

impl<T> RcuPtr<T> {
    /// A null pointer.
    pub fn null() -> Self {
        RcuPtr { ptr: AtomicPtr::new(ptr::null_mut()) }
    }

    /// A pointer to `value`.
    #[cfg(any(test, loom, feature = "alloc"))]
    pub fn new(value: Box<T>) -> Self {
        RcuPtr { ptr: AtomicPtr::new(Box::into_raw(value)) }
    }

    /// The object, for as long as the read-side critical section lasts. One
    /// `Acquire` load (which on x86_64 is a plain `mov`): the read side
    /// writes nothing shared.
    pub fn read<'g>(&'g self, _guard: &'g ReadGuard) -> Option<&'g T> {
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer here was published by `new`/`replace`
        // from a live `Box`; once unlinked it is freed only after a grace
        // period, which cannot end while this CPU is in the section the
        // guard proves (`ReadGuard::new`'s contract).
        unsafe { p.as_ref() }
    }

    /// Publishes `new` (with `Release`, so readers see it initialised) and
    /// returns the object it replaced, which readers may still hold.
    #[cfg(any(test, loom, feature = "alloc"))]
    pub fn replace(&self, new: Option<Box<T>>) -> Option<Retired<T>> {
        let n = new.map_or(ptr::null_mut(), Box::into_raw);
        let old = self.ptr.swap(n, Ordering::AcqRel);
        NonNull::new(old).map(|p| Retired { ptr: p })
    }
}

#[cfg(any(test, loom, feature = "alloc"))]
impl<T> Drop for RcuPtr<T> {
    fn drop(&mut self) {
        let p = self.ptr.load(Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: `&mut self`: no reader holds a reference (`read`
            // borrows `self`), and the pointer came from `Box::into_raw`.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

#[cfg(any(test, loom, feature = "alloc"))]
/// An object unlinked from an [`RcuPtr`], which readers may still hold. Give
/// it to [`Rcu::retire`]; dropping it instead leaks it (never frees early).
#[must_use = "an unlinked object is freed only through Rcu::retire; dropping it leaks"]
#[derive(Debug)]
pub struct Retired<T> {
    ptr: NonNull<T>,
}

// SAFETY: owns the object (like `Box<T>`), shared with readers (`T: Sync`).
#[cfg(any(test, loom, feature = "alloc"))]
unsafe impl<T: Send + Sync> Send for Retired<T> {}

/// Per-CPU quiescent-state counters of `CPUS` CPUs.
#[derive(Debug)]
pub struct Rcu<const CPUS: usize> {
    /// Even: running (the count of quiescent states, doubled); odd: idle.
    qs: [AtomicU64; CPUS],
}

impl<const CPUS: usize> Default for Rcu<CPUS> {
    fn default() -> Self {
        Self::new()
    }
}

/// A grace period's snapshot of every CPU's counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GracePeriod<const CPUS: usize> {
    snap: [u64; CPUS],
}

impl<const CPUS: usize> Rcu<CPUS> {
    /// All CPUs running, none past a quiescent state yet.
    pub fn new() -> Self {
        Rcu { qs: core::array::from_fn(|_| AtomicU64::new(0)) }
    }

    fn bump(&self, cpu: crate::CpuId) {
        let c = &self.qs[cpu.index()];
        // Only `cpu` writes its counter: a load and a store, not an RMW.
        c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// `cpu` passed a quiescent state (a context switch), outside any
    /// read-side critical section. Called only on `cpu`.
    ///
    /// # Panics
    /// If `cpu` is out of range (also in `enter_idle`/`exit_idle`).
    pub fn quiescent(&self, cpu: crate::CpuId) {
        let c = &self.qs[cpu.index()];
        let v = c.load(Ordering::Relaxed);
        debug_assert!(v.is_multiple_of(2), "quiescent() while idle");
        c.store(v.wrapping_add(2), Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// `cpu` goes idle: quiescent until [`Rcu::exit_idle`].
    pub fn enter_idle(&self, cpu: crate::CpuId) {
        debug_assert!(self.qs[cpu.index()].load(Ordering::Relaxed).is_multiple_of(2));
        self.bump(cpu);
    }

    /// `cpu` leaves idle; read-side sections may start again after this.
    pub fn exit_idle(&self, cpu: crate::CpuId) {
        debug_assert!(!self.qs[cpu.index()].load(Ordering::Relaxed).is_multiple_of(2));
        self.bump(cpu);
    }

    /// Starts a grace period now: every read-side section that can still
    /// hold something unlinked before this call ends before the period does.
    pub fn start(&self) -> GracePeriod<CPUS> {
        fence(Ordering::SeqCst);
        GracePeriod { snap: core::array::from_fn(|i| self.qs[i].load(Ordering::Acquire)) }
    }

    /// Whether `gp` is over: each CPU was idle at its start or has passed a
    /// quiescent state (or idled) since.
    pub fn is_complete(&self, gp: &GracePeriod<CPUS>) -> bool {
        gp.snap.iter().zip(&self.qs).all(|(&s, c)| !s.is_multiple_of(2) || c.load(Ordering::Acquire) != s)
    }

    /// Starts the grace period after which `retired` may be freed.
    #[cfg(any(test, loom, feature = "alloc"))]
    pub fn retire<T>(&self, retired: Retired<T>) -> Deferred<T, CPUS> {
        Deferred { retired, gp: self.start() }
    }
}

/// A retired object waiting for its grace period.
#[cfg(any(test, loom, feature = "alloc"))]
#[must_use = "dropping a Deferred leaks the object; reclaim it with try_reclaim"]
#[derive(Debug)]
pub struct Deferred<T, const CPUS: usize> {
    retired: Retired<T>,
    gp: GracePeriod<CPUS>,
}

#[cfg(any(test, loom, feature = "alloc"))]
impl<T, const CPUS: usize> Deferred<T, CPUS> {
    /// The grace period it waits for.
    pub fn grace_period(&self) -> &GracePeriod<CPUS> {
        &self.gp
    }

    /// The object back, once no reader can hold it any more.
    pub fn try_reclaim(self, rcu: &Rcu<CPUS>) -> Result<Box<T>, Self> {
        if rcu.is_complete(&self.gp) {
            // SAFETY: the pointer came from `Box::into_raw` in `replace`, was
            // unlinked before the grace period started, and the period is
            // over: no read-side section still holds it. `Retired` is
            // consumed here, so this happens once.
            Ok(unsafe { Box::from_raw(self.retired.ptr.as_ptr()) })
        } else {
            Err(self)
        }
    }
}

/// Deferred reclamation callbacks in batches (OSv's `rcu_defer`): each
/// callback runs once the grace period started when it was queued is over.
#[cfg(any(test, loom, feature = "alloc"))]
pub struct DeferQueue<const CPUS: usize> {
    pending: alloc::collections::VecDeque<(GracePeriod<CPUS>, Box<dyn FnOnce() + Send>)>,
}

#[cfg(any(test, loom, feature = "alloc"))]
impl<const CPUS: usize> Default for DeferQueue<CPUS> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(any(test, loom, feature = "alloc"))]
impl<const CPUS: usize> core::fmt::Debug for DeferQueue<CPUS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeferQueue").field("pending", &self.pending.len()).finish()
    }
}

#[cfg(any(test, loom, feature = "alloc"))]
impl<const CPUS: usize> DeferQueue<CPUS> {
    /// Nothing pending.
    pub fn new() -> Self {
        DeferQueue { pending: alloc::collections::VecDeque::new() }
    }

    /// Runs `f` after a grace period that starts now.
    pub fn defer(&mut self, rcu: &Rcu<CPUS>, f: impl FnOnce() + Send + 'static) {
        self.pending.push_back((rcu.start(), Box::new(f)));
    }

    /// Frees `retired` after a grace period that starts now.
    pub fn defer_free<T: Send + Sync + 'static>(&mut self, rcu: &Rcu<CPUS>, retired: Retired<T>) {
        let d = rcu.retire(retired);
        let gp = d.gp;
        let p = SendPtr(d.retired.ptr);
        self.pending.push_back((
            gp,
            Box::new(move || {
                let p = p;
                // SAFETY: as in `Deferred::try_reclaim`: this runs only
                // after `gp` is over, once.
                drop(unsafe { Box::from_raw(p.0.as_ptr()) });
            }),
        ));
    }

    /// Runs the callbacks whose grace periods are over (in queue order,
    /// which is start order, so it stops at the first that is not);
    /// returns how many ran.
    pub fn run_completed(&mut self, rcu: &Rcu<CPUS>) -> usize {
        let mut n = 0;
        while self.pending.front().is_some_and(|(gp, _)| rcu.is_complete(gp)) {
            if let Some((_, f)) = self.pending.pop_front() {
                f();
                n += 1;
            }
        }
        n
    }

    /// Callbacks still waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(any(test, loom, feature = "alloc"))]
struct SendPtr<T>(NonNull<T>);
// SAFETY: carries a retired `T: Send + Sync` to the thread that frees it.
#[cfg(any(test, loom, feature = "alloc"))]
unsafe impl<T: Send + Sync> Send for SendPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuId;

    fn guard() -> ReadGuard {
        // SAFETY: these tests report quiescent states only outside guards.
        unsafe { ReadGuard::new() }
    }

    #[test]
    fn grace_period_waits_for_every_running_cpu() {
        let rcu: Rcu<3> = Rcu::new();
        let gp = rcu.start();
        assert!(!rcu.is_complete(&gp));
        rcu.quiescent(CpuId::new(0));
        rcu.quiescent(CpuId::new(2));
        assert!(!rcu.is_complete(&gp), "CPU 1 has not passed one");
        rcu.quiescent(CpuId::new(1));
        assert!(rcu.is_complete(&gp));
    }

    #[test]
    fn idle_cpus_do_not_hold_grace_periods() {
        let rcu: Rcu<2> = Rcu::new();
        rcu.enter_idle(CpuId::new(1));
        let gp = rcu.start();
        rcu.quiescent(CpuId::new(0));
        assert!(rcu.is_complete(&gp), "CPU 1 idle since before the start");
        // Leaving idle after the start is also a quiescent state.
        rcu.exit_idle(CpuId::new(1));
        let gp = rcu.start();
        rcu.enter_idle(CpuId::new(1));
        assert!(!rcu.is_complete(&gp), "CPU 0 still running");
        rcu.quiescent(CpuId::new(0));
        assert!(rcu.is_complete(&gp));
    }

    #[test]
    fn replace_then_reclaim_after_grace_period() {
        let rcu: Rcu<2> = Rcu::new();
        let p = RcuPtr::new(Box::new(1u32));
        assert_eq!(p.read(&guard()), Some(&1));
        let old = p.replace(Some(Box::new(2))).unwrap();
        let d = rcu.retire(old);
        let d = d.try_reclaim(&rcu).unwrap_err();
        rcu.quiescent(CpuId::new(0));
        let d = d.try_reclaim(&rcu).unwrap_err();
        rcu.quiescent(CpuId::new(1));
        assert_eq!(*d.try_reclaim(&rcu).unwrap(), 1);
        assert_eq!(p.read(&guard()), Some(&2));
        assert!(p.replace(None).is_some());
        assert_eq!(p.read(&guard()), None);
    }

    #[test]
    fn defer_queue_runs_in_order_when_complete() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        let rcu: Rcu<1> = Rcu::new();
        let mut q: DeferQueue<1> = DeferQueue::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        q.defer(&rcu, move || {
            r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let p = RcuPtr::new(Box::new(String::from("old")));
        q.defer_free(&rcu, p.replace(Some(Box::new(String::from("new")))).unwrap());
        assert_eq!(q.run_completed(&rcu), 0);
        assert_eq!(q.len(), 2);
        rcu.quiescent(CpuId::new(0));
        assert_eq!(q.run_completed(&rcu), 2);
        assert!(q.is_empty());
        assert_eq!(ran.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
