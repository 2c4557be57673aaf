//! The fair policy: exponentially decaying runtimes, weights, the run queue
//! and the time-slice rule. Pure logic, no atomics.
//!
//! # The model (after OSv's `core/sched.cc`, `thread_runtime` and `cpu::c`)
//!
//! Let `x_i(s)` be 1 while thread `i` runs on a CPU and 0 otherwise. Its
//! *decayed usage* at time `t` is
//!
//! ```text
//! U_i(t) = ∫_{-∞}^{t} e^{-(t-s)/τ} x_i(s) ds        (0 ≤ U_i ≤ τ)
//! ```
//!
//! and its *runtime* is `R_i = U_i / w_i` with `w_i` its [`Weight`] relative
//! to [`Weight::NORMAL`] (`w = weight/1024`). The run
//! queue is ordered by `R`: the thread that ran least (per unit of weight)
//! recently runs next. Old history fades with time constant `τ`
//! ([`FairParams::tau`], 200 ms as in OSv).
//!
//! Decaying every thread's `R` at every tick would be `O(n)` and needs a tick.
//! OSv's trick, followed here: all runtimes on one CPU decay by the same
//! factor, so the CPU keeps a growing normaliser `c(t) = c₀·e^{t/τ}` and each
//! thread stores `rtt_i = R_i·c` (the scaled runtime), which only changes
//! while the thread runs (`rtt += (c_new - c_old)/w`). Comparisons of `rtt`
//! are comparisons of `R`. When `c` grows past `2^500` the CPU renormalises
//! (multiplies `c` and every queued `rtt` by `2^-1000`) and bumps an epoch;
//! a sleeping thread catches up lazily when it is next charged or queued
//! ([`Fair::sync`]), exactly as OSv's `renormalize_count`.
//!
//! # The fairness guarantee
//!
//! On one CPU, while a set `S` of threads is continuously runnable, the
//! scheduler keeps their runtimes within one *slice* of each other: the
//! running thread is switched out when its runtime reaches the smallest
//! queued runtime, but not before it has run [`FairParams::granularity`]
//! `g` since it was switched in. Hence for any two `i, j ∈ S`, at all times
//! after they have both run once, `|U_i/w_i - U_j/w_j| ≤ g·(1/w_i + 1/w_j)`
//! (plus rounding of the timer). Since `Σ U_i → τ` on a busy CPU, each
//! thread's decayed share `U_i/τ` converges to `w_i/Σw` within
//! `g·Σw/(w_min·τ)`, and so does its plain share of CPU time over any window
//! much longer than `τ`. The property tests check: 2 to 6 CPU-bound threads
//! with weights 1..8, `τ = 200 ms`, `g = 1 ms`: over the window `[1 s, 5 s]`
//! every share is within 0.01 (absolute) of `w_i/Σw` (measured worst over
//! 100 random sets: 0.0035 for `[1 s, 5 s]`, 0.0046 already for `[0, 1 s]`).
//!
//! Latency: an interactive thread whose demand is below its fair share
//! (`burst/(burst+sleep) < w_i/Σw`) runs within `g` of every wakeup beside
//! any CPU-bound threads; one that asks for more still gets at least its fair
//! share (both property-tested in the simulator, on one and two CPUs).
//!
//! A thread that wakes keeps its decayed runtime (which shrank while it
//! slept), so interactive threads run first; a new thread starts at runtime 0.
//! Neither can monopolise the CPU: a runnable thread's runtime never exceeds
//! `τ/w`, so a fully rested thread `p` overtakes the queue head `h` after at
//! most `τ·ln(1 + w_p/w_h) + g` of running (`0.69·τ` for equal weights). The
//! simulator meets this bound to within 10% (property `newcomer_cannot_monopolise`).

use crate::time::{Instant, Nanos};
use core::num::NonZeroU32;

#[cfg(any(test, feature = "alloc"))]
use alloc::collections::BTreeMap;

/// A thread's share of the CPU relative to others: runtime advances at
/// `NORMAL/weight` per unit of CPU time, so a thread of weight `2·NORMAL`
/// gets twice the CPU of a `NORMAL` one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(NonZeroU32);

impl Weight {
    /// The default weight.
    pub const NORMAL: Weight = Weight(NonZeroU32::new(1024).unwrap());

    /// A weight; `None` for zero.
    pub const fn new(w: u32) -> Option<Weight> {
        match NonZeroU32::new(w) {
            Some(w) => Some(Weight(w)),
            None => None,
        }
    }

    /// The raw weight.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// Runtime per unit of normaliser growth: `NORMAL / w`.
    fn scale(self) -> f64 {
        f64::from(Self::NORMAL.get()) / f64::from(self.get())
    }
}

impl Default for Weight {
    fn default() -> Self {
        Self::NORMAL
    }
}

/// Tunables of the fair policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FairParams {
    /// The decay time constant `τ`: usage older than a few `τ` is forgotten.
    pub tau: Nanos,
    /// The minimum slice `g` a switched-in thread keeps before the time-slice
    /// rule may preempt it (bounds the switch rate at `1/g`).
    pub granularity: Nanos,
}

impl Default for FairParams {
    /// `τ = 200 ms` (OSv's `tau`), `g = 1 ms`.
    fn default() -> Self {
        FairParams { tau: Nanos::from_millis(200), granularity: Nanos::from_millis(1) }
    }
}

/// A remaining share shorter than this is treated as used up: arming a timer
/// for it would cost more than the unfairness it avoids.
pub const MIN_TIMER: Nanos = Nanos(1_000);

const fn pow2(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}
const C_INITIAL: f64 = pow2(-500);
const C_MAX: f64 = pow2(500);
const RENORM: f64 = pow2(-1000);
const LN2: f64 = core::f64::consts::LN_2;

/// `e^x` for `0 ≤ x ≤ 700` without `libm`: `2^k · e^r` with `r ∈ [0, ln 2)`
/// and a Taylor series for `e^r` (error below 1e-15 relative).
fn exp_nonneg(x: f64) -> f64 {
    debug_assert!((0.0..=700.0).contains(&x));
    let k = (x / LN2) as i32;
    let r = x - f64::from(k) * LN2;
    let (mut sum, mut term) = (1.0, 1.0);
    for n in 1..18 {
        term *= r / f64::from(n);
        sum += term;
    }
    sum * pow2(k)
}

/// `ln(1 + x)` for `x ≥ 0` without `libm`: the exponent of `1 + x` times
/// `ln 2` plus `2·atanh(z)` of the mantissa `m`, `z = (m-1)/(m+1) ≤ 1/3`.
fn ln_1p(x: f64) -> f64 {
    debug_assert!(x >= 0.0);
    if x < 1e-8 {
        return x; // ln(1+x) = x - x²/2 + …, and the tail is below f64 rounding.
    }
    let y = 1.0 + x;
    let bits = y.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    let z = (m - 1.0) / (m + 1.0);
    let z2 = z * z;
    let (mut sum, mut term) = (0.0, z);
    for n in 0..16 {
        sum += term / f64::from(2 * n + 1);
        term *= z2;
    }
    f64::from(e) * LN2 + 2.0 * sum
}

/// A thread's fair-share state: its scaled runtime `rtt = R·c` on its CPU,
/// the CPU's renormalisation epoch it was last synced to, and its weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Runtime {
    rtt: f64,
    epoch: u32,
    weight: Weight,
}

impl Runtime {
    /// A new thread: runtime 0 (see the module docs for why this is safe).
    pub const fn new(weight: Weight) -> Self {
        Runtime { rtt: 0.0, epoch: 0, weight }
    }

    /// The thread's weight.
    pub const fn weight(&self) -> Weight {
        self.weight
    }

    /// Changes the weight; takes effect for future CPU time.
    pub fn set_weight(&mut self, weight: Weight) {
        self.weight = weight;
    }

    /// The scaled runtime; comparable only between runtimes synced to the
    /// same CPU ([`Fair::sync`]).
    pub const fn scaled(&self) -> f64 {
        self.rtt
    }
}

/// Whether charging time renormalised the CPU's scale: every runtime queued
/// on the CPU must then be re-synced (`RunQueue::resync`).
#[must_use = "a renormalisation invalidates the run queue's order keys"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renormalized(pub bool);

/// One CPU's fair-policy state: the decay normaliser `c` and its epoch.
#[derive(Clone, Debug)]
pub struct Fair {
    params: FairParams,
    c: f64,
    epoch: u32,
    inv_tau: f64,
}

impl Fair {
    /// A CPU's policy state.
    ///
    /// # Panics
    /// If `params.tau` is zero.
    pub fn new(params: FairParams) -> Self {
        assert!(params.tau.0 > 0, "tau must be positive");
        Fair { params, c: C_INITIAL, epoch: 0, inv_tau: 1.0 / params.tau.0 as f64 }
    }

    /// The tunables.
    pub fn params(&self) -> FairParams {
        self.params
    }

    /// Brings a runtime from an older epoch of this CPU to the current scale
    /// (a thread that slept through renormalisations, or a new one).
    pub fn sync(&self, rt: &mut Runtime) {
        match self.epoch.wrapping_sub(rt.epoch) {
            0 => {}
            1 => rt.rtt *= RENORM,
            _ => rt.rtt = 0.0,
        }
        rt.epoch = self.epoch;
    }

    /// Charges `ran` of CPU time to the running thread (OSv's
    /// `thread_runtime::ran_for`): the normaliser grows by `e^{ran/τ}` and
    /// the thread's runtime by the growth over its weight.
    pub fn charge(&mut self, rt: &mut Runtime, ran: Nanos) -> Renormalized {
        self.sync(rt);
        let x = ran.0 as f64 * self.inv_tau;
        if x > 600.0 {
            // Everything older than `ran` has decayed to nothing; the thread's
            // usage is a full `τ` (to f64 precision).
            self.epoch = self.epoch.wrapping_add(2);
            self.c = C_INITIAL;
            rt.rtt = self.c * rt.weight.scale();
            rt.epoch = self.epoch;
            return Renormalized(true);
        }
        let cnew = self.c * exp_nonneg(x);
        rt.rtt += (cnew - self.c) * rt.weight.scale();
        self.c = cnew;
        if self.c > C_MAX {
            self.c *= RENORM;
            self.epoch = self.epoch.wrapping_add(1);
            self.sync(rt);
            return Renormalized(true);
        }
        Renormalized(false)
    }

    /// The decayed usage `U = R·w` of a (synced) runtime, in nanoseconds:
    /// at most `τ`.
    pub fn decayed_usage(&self, rt: &Runtime) -> Nanos {
        let u = rt.rtt / self.c / rt.weight.scale() * self.params.tau.0 as f64;
        Nanos(u as u64)
    }

    /// How long `running` may run before its runtime reaches `target`'s
    /// (OSv's `thread_runtime::time_until`), both synced to this CPU. Rounded
    /// up, so at the returned time the running thread is no longer ahead.
    pub fn time_until(&self, running: &Runtime, target: &Runtime) -> Nanos {
        if running.rtt >= target.rtt {
            return Nanos::ZERO;
        }
        // rtt_p + (c·e^{Δ/τ} - c)·scale = rtt_t  ⇒  Δ = τ·ln(1 + (rtt_t-rtt_p)/(c·scale))
        let x = (target.rtt - running.rtt) / (self.c * running.weight.scale());
        let d = self.params.tau.0 as f64 * ln_1p(x) * 1.0001 + 1.0;
        if d >= u64::MAX as f64 {
            Nanos(u64::MAX)
        } else {
            Nanos(d as u64 + 1)
        }
    }

    /// The time-slice rule for a thread that was switched in at
    /// `switched_in`: when its fair share ends relative to the queue head
    /// `head`, so the kernel arms a one-shot timer only for that (tickless).
    /// `None` when nothing else is runnable: no preemption timer at all.
    ///
    /// The deadline is `now + time_until(running, head)`, but no earlier than
    /// `switched_in + granularity`.
    pub fn preemption_deadline(
        &self,
        now: Instant,
        switched_in: Instant,
        running: &Runtime,
        head: Option<&Runtime>,
    ) -> Option<Instant> {
        let head = head?;
        let fair_end = now + self.time_until(running, head);
        Some(fair_end.max(switched_in + self.params.granularity))
    }

    /// Whether a thread that just became runnable should preempt the running
    /// one at once (and, across CPUs, be worth an IPI): it ran less, per
    /// unit of weight, recently.
    pub fn should_preempt(&self, running: &Runtime, woken: &Runtime) -> bool {
        woken.rtt < running.rtt
    }
}

/// A per-CPU run queue ordered by runtime (ties first-come first-served),
/// holding copyable thread handles `T` (an index or an address).
#[cfg(any(test, feature = "alloc"))]
#[derive(Clone, Debug)]
pub struct RunQueue<T> {
    map: BTreeMap<(u64, u64), (Runtime, T)>,
    seq: u64,
}

/// Where a thread sits in a [`RunQueue`], for [`RunQueue::remove`]
/// (migration). Stale after [`RunQueue::resync`].
#[cfg(any(test, feature = "alloc"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey(u64, u64);

#[cfg(any(test, feature = "alloc"))]
impl<T: Copy> Default for RunQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(any(test, feature = "alloc"))]
impl<T: Copy> RunQueue<T> {
    /// An empty queue.
    pub const fn new() -> Self {
        RunQueue { map: BTreeMap::new(), seq: 0 }
    }

    /// Queues `thread` with its runtime (synced to this CPU).
    pub fn insert(&mut self, rt: Runtime, thread: T) -> QueueKey {
        debug_assert!(rt.rtt >= 0.0 && rt.rtt.is_finite());
        // Non-negative finite floats order like their bit patterns.
        let key = (rt.rtt.to_bits(), self.seq);
        self.seq += 1;
        self.map.insert(key, (rt, thread));
        QueueKey(key.0, key.1)
    }

    /// The thread that runs next.
    pub fn peek(&self) -> Option<(&Runtime, &T)> {
        self.map.values().next().map(|(rt, t)| (rt, t))
    }

    /// Takes the thread that runs next.
    pub fn pop(&mut self) -> Option<(Runtime, T)> {
        self.map.pop_first().map(|(_, v)| v)
    }

    /// Takes a queued thread out (for migration).
    pub fn remove(&mut self, key: QueueKey) -> Option<(Runtime, T)> {
        self.map.remove(&(key.0, key.1))
    }

    /// Number of queued threads.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The queued threads in run order.
    pub fn iter(&self) -> impl Iterator<Item = (&Runtime, &T)> {
        self.map.values().map(|(rt, t)| (rt, t))
    }

    /// Re-syncs every queued runtime after the CPU renormalised. Order is
    /// preserved; earlier [`QueueKey`]s go stale.
    pub fn resync(&mut self, fair: &Fair) {
        let old = core::mem::take(&mut self.map);
        for ((_, seq), (mut rt, t)) in old {
            fair.sync(&mut rt);
            self.map.insert((rt.rtt.to_bits(), seq), (rt, t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_ln_are_accurate() {
        for &x in &[0.0, 1e-9, 1e-4, 0.3, 0.69, 1.0, 2.5, 10.0, 100.0, 599.0] {
            let e = exp_nonneg(x);
            let want = f64::exp(x);
            assert!(((e - want) / want).abs() < 1e-13, "exp({x}) = {e}, want {want}");
            let l = ln_1p(x);
            let want = f64::ln_1p(x);
            assert!((l - want).abs() <= 1e-12 * want.max(1e-300) + 1e-15, "ln1p({x}) = {l}, want {want}");
        }
    }

    #[test]
    fn decayed_usage_is_bounded_by_tau() {
        let mut fair = Fair::new(FairParams::default());
        let mut rt = Runtime::new(Weight::NORMAL);
        for _ in 0..10_000 {
            let _ = fair.charge(&mut rt, Nanos::from_millis(1));
        }
        let u = fair.decayed_usage(&rt);
        assert!(u <= Nanos::from_millis(200) && u >= Nanos::from_millis(199), "{u:?}");
    }

    #[test]
    fn renormalisation_keeps_order_and_syncs_sleepers() {
        let mut fair = Fair::new(FairParams { tau: Nanos::from_millis(1), granularity: Nanos(1) });
        let mut a = Runtime::new(Weight::NORMAL);
        let mut sleeper = Runtime::new(Weight::NORMAL);
        let _ = fair.charge(&mut sleeper, Nanos::from_micros(100));
        let mut renorms = 0;
        for _ in 0..2000 {
            if fair.charge(&mut a, Nanos::from_millis(1)).0 {
                renorms += 1;
            }
        }
        assert!(renorms >= 2, "{renorms}");
        fair.sync(&mut sleeper);
        assert_eq!(sleeper.scaled(), 0.0);
        assert!(fair.decayed_usage(&a) > Nanos::from_micros(600));
    }

    #[test]
    fn huge_step_forgets_history() {
        let mut fair = Fair::new(FairParams::default());
        let mut a = Runtime::new(Weight::NORMAL);
        assert!(fair.charge(&mut a, Nanos(u64::MAX / 2)).0);
        assert_eq!(fair.decayed_usage(&a), Nanos::from_millis(200));
    }

    #[test]
    fn time_until_reaches_target() {
        let mut fair = Fair::new(FairParams::default());
        let mut p = Runtime::new(Weight::new(3 * 1024).unwrap());
        let mut h = Runtime::new(Weight::NORMAL);
        let _ = fair.charge(&mut h, Nanos::from_millis(30));
        let d = fair.time_until(&p, &h);
        let mut short = fair.clone();
        let mut q = p;
        let _ = fair.charge(&mut p, d);
        assert!(p.scaled() >= h.scaled());
        // Running a hair less than the answer leaves the thread behind.
        let _ = short.charge(&mut q, Nanos(d.0 * 99 / 100));
        assert!(q.scaled() < h.scaled());
    }

    #[test]
    fn deadline_respects_granularity_and_tickless() {
        let fair = Fair::new(FairParams::default());
        let p = Runtime::new(Weight::NORMAL);
        let now = Instant(1_000_000_000);
        assert_eq!(fair.preemption_deadline(now, now, &p, None), None);
        assert_eq!(fair.preemption_deadline(now, now, &p, Some(&p)), Some(now + Nanos::from_millis(1)));
    }

    #[cfg(any(test, feature = "alloc"))]
    #[test]
    fn run_queue_orders_by_runtime_then_fifo() {
        let mut fair = Fair::new(FairParams::default());
        let mut q = RunQueue::new();
        let mut big = Runtime::new(Weight::NORMAL);
        let _ = fair.charge(&mut big, Nanos::from_millis(5));
        q.insert(big, 1u32);
        q.insert(Runtime::new(Weight::NORMAL), 2);
        q.insert(Runtime::new(Weight::NORMAL), 3);
        let order: std::vec::Vec<u32> = core::iter::from_fn(|| q.pop().map(|(_, t)| t)).collect();
        assert_eq!(order, [2, 3, 1]);
    }
}
