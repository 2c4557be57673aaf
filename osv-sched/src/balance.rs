//! The load-balancing policy: which CPU gives a runnable thread to which.
//! Pure and integer-only, so it runs on the host, in the simulator
//! (`sim::Sim::enable_balancing`) and in the kernel alike.
//!
//! # The rule
//!
//! Each CPU is described by a [`CpuLoad`]: its runnable threads (queued plus
//! running) and a decayed average of that count ([`LoadAvg`]). One thread
//! moves from CPU `a` to CPU `b` only if
//!
//! 1. `runnable(a) ≥ runnable(b) + 2` (moving one thread leaves `a` no less
//!    loaded than `b`), and
//! 2. `avg(a) ≥ avg(b) + min_avg_imbalance` (the imbalance has lasted: a
//!    short burst of wakeups does not move threads).
//!
//! Rule 1 is the hysteresis that prevents ping-pong: after a move,
//! `runnable(a) - runnable(b)` has dropped by 2 and is still `≥ 0`, so the
//! reverse move is never allowed until the loads themselves change. It also
//! makes balancing terminate on a fixed load: each move lowers `Σ runnable²`
//! by at least 2. With a balanced system (every pair within 1) nothing moves.
//! Both are property-tested (`src/proptests.rs`) and checked in the
//! simulator (threads spread across CPUs; a balanced system migrates nothing).
//!
//! OSv's `cpu::load_balance` has a per-CPU thread wake up periodically and
//! pull from the busiest CPU; here no CPU wakes just to balance (idle CPUs
//! stay tickless), instead:
//!
//! - a CPU about to go idle calls [`Balancer::pull`] and takes a thread from
//!   the CPU it names;
//! - a CPU with queued threads, at its scheduling points (it has a preemption
//!   timer armed anyway), calls [`Balancer::push`] and hands a thread to the
//!   CPU it names (waking it with the wakeup IPI if it is idle);
//! - or a kernel may call [`Balancer::plan`] from any periodic context.
//!
//! The move itself is `cpu::CpuSched::migrate_out` on the source
//! and `cpu::CpuSched::migrate_in` on the destination; the kernel
//! carries the `(ExportedRuntime, thread)` pair between them (with the
//! source's run queue locked, or through a per-CPU migration ring).

use crate::time::{Instant, Nanos};
use crate::CpuId;

/// One CPU's load as the balancer sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuLoad {
    /// Runnable threads: queued plus the running one.
    pub runnable: u32,
    /// The decayed average of `runnable`, Q16 ([`LoadAvg::at`]).
    pub avg: u64,
}

/// Tunables of the balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalanceParams {
    /// How much larger (Q16 threads) the source's average load must be than
    /// the destination's.
    pub min_avg_imbalance: u64,
}

impl Default for BalanceParams {
    /// Half a thread of lasting imbalance.
    fn default() -> Self {
        BalanceParams { min_avg_imbalance: 1 << 15 }
    }
}

/// A decided move of one thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The CPU that gives a queued thread.
    pub from: CpuId,
    /// The CPU that receives it.
    pub to: CpuId,
}

/// The policy (stateless apart from its tunables).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balancer {
    params: BalanceParams,
}

impl Balancer {
    /// A balancer with these tunables.
    pub const fn new(params: BalanceParams) -> Self {
        Balancer { params }
    }

    /// Whether one thread may move from `a` to `b` (the rule above).
    pub fn worth_moving(&self, a: &CpuLoad, b: &CpuLoad) -> bool {
        a.runnable >= b.runnable.saturating_add(2)
            && a.avg >= b.avg.saturating_add(self.params.min_avg_imbalance)
    }

    /// For CPU `me` (about to idle, or any time): the CPU to pull one thread
    /// from, the busiest by `(runnable, avg)`, lowest index on ties; `None`
    /// if no move is worth it. `loads[i]` is CPU `i`'s load.
    ///
    /// # Panics
    /// If `me` is out of range of `loads`.
    pub fn pull(&self, me: CpuId, loads: &[CpuLoad]) -> Option<CpuId> {
        let mine = &loads[me.index()];
        let (src, load) = loads
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != me.index())
            .max_by_key(|&(i, l)| (l.runnable, l.avg, core::cmp::Reverse(i)))?;
        self.worth_moving(load, mine).then_some(CpuId::new(src as u32))
    }

    /// For CPU `me` with queued threads: the CPU to push one thread to, the
    /// least loaded by `(runnable, avg)`, lowest index on ties; `None` if no
    /// move is worth it.
    ///
    /// # Panics
    /// If `me` is out of range of `loads`.
    pub fn push(&self, me: CpuId, loads: &[CpuLoad]) -> Option<CpuId> {
        let mine = &loads[me.index()];
        let (dst, load) = loads
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != me.index())
            .min_by_key(|&(i, l)| (l.runnable, l.avg, i))?;
        self.worth_moving(mine, load).then_some(CpuId::new(dst as u32))
    }

    /// A global decision: from the busiest CPU to the least loaded, if worth
    /// it.
    pub fn plan(&self, loads: &[CpuLoad]) -> Option<Migration> {
        let busiest =
            loads.iter().enumerate().max_by_key(|&(i, l)| (l.runnable, l.avg, core::cmp::Reverse(i)))?.0;
        let to = self.push(CpuId::new(busiest as u32), loads)?;
        Some(Migration { from: CpuId::new(busiest as u32), to })
    }
}

/// A decayed average of a CPU's runnable count, Q16, with time constant
/// `tau`: after `dt` at count `n` the average moves toward `n·2^16` by the
/// fraction `dt/(dt + tau)` (first-order approximation of `1 - e^{-dt/τ}`:
/// exact as `dt → 0`, 1 as `dt → ∞`). Integer only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadAvg {
    tau: Nanos,
    avg: u64,
    last: Instant,
}

impl LoadAvg {
    /// Zero load at `now`.
    pub const fn new(tau: Nanos, now: Instant) -> Self {
        LoadAvg { tau, avg: 0, last: now }
    }

    /// The average at `now` if the CPU has had `runnable` threads since the
    /// last [`LoadAvg::update`] (does not change the state).
    pub fn at(&self, now: Instant, runnable: u32) -> u64 {
        let dt = u128::from(now.saturating_since(self.last).0);
        let target = u128::from(runnable) << 16;
        let avg = u128::from(self.avg);
        let den = dt + u128::from(self.tau.0);
        if den == 0 {
            return target as u64;
        }
        let moved =
            if target >= avg { avg + (target - avg) * dt / den } else { avg - (avg - target) * dt / den };
        moved as u64
    }

    /// Folds in `runnable` threads since the last update, up to `now`. Call
    /// it whenever the count is about to change (at scheduling points).
    pub fn update(&mut self, now: Instant, runnable: u32) {
        self.avg = self.at(now, runnable);
        self.last = self.last.max(now);
    }

    /// The average as of the last update, Q16.
    pub const fn get(&self) -> u64 {
        self.avg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(runnable: u32) -> CpuLoad {
        CpuLoad { runnable, avg: u64::from(runnable) << 16 }
    }

    #[test]
    fn idle_pulls_from_busiest_only_when_worth_it() {
        let b = Balancer::default();
        let loads = [l(0), l(3), l(4), l(1)];
        assert_eq!(b.pull(CpuId::new(0), &loads), Some(CpuId::new(2)));
        assert_eq!(b.pull(CpuId::new(3), &loads), Some(CpuId::new(2)));
        assert_eq!(b.pull(CpuId::new(1), &loads), None, "4 vs 3: moving would just swap");
        assert_eq!(b.pull(CpuId::new(0), &[l(0), l(1)]), None, "the running thread is not taken");
    }

    #[test]
    fn busy_pushes_to_least_loaded() {
        let b = Balancer::default();
        let loads = [l(5), l(2), l(1), l(1)];
        assert_eq!(b.push(CpuId::new(0), &loads), Some(CpuId::new(2)));
        assert_eq!(b.push(CpuId::new(1), &loads), None);
        assert_eq!(b.plan(&loads), Some(Migration { from: CpuId::new(0), to: CpuId::new(2) }));
        assert_eq!(b.plan(&[l(2), l(1), l(2)]), None);
    }

    #[test]
    fn averages_add_hysteresis() {
        let b = Balancer::default();
        // Instantaneously 3 vs 1, but the source was idle until just now.
        let a = CpuLoad { runnable: 3, avg: 1 << 16 };
        let c = CpuLoad { runnable: 1, avg: 1 << 16 };
        assert!(!b.worth_moving(&a, &c));
        let mut avg = LoadAvg::new(Nanos::from_millis(10), Instant::ZERO);
        avg.update(Instant(10_000_000), 3);
        assert_eq!(avg.get(), 3 << 15, "one tau at 3: halfway (first-order)");
        avg.update(Instant(1_000_000_000), 3);
        assert!(avg.get() > (3 << 16) - 3000);
        assert!(avg.at(Instant(2_000_000_000), 0) < 1 << 11);
    }
}
