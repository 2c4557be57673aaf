//! A deterministic simulator of `N` CPUs driving the real [`CpuSched`] run
//! queues and timer lists and the real [`WakeupMatrix`] rings, so the policy
//! and the cross-CPU protocol are exercised end to end on the host.
//!
//! Time is virtual and event-driven, as on a tickless kernel: a CPU's next
//! event is its armed one-shot timer (timer list or preemption deadline) or
//! the end of its running thread's CPU burst; nothing happens in between.
//! Sleep timers of a thread homed on CPU `h` live on CPU `(h + 1) % n`, so
//! with more than one CPU every wakeup crosses CPUs through a ring, and an
//! IPI (delivered at once) is sent exactly when the push says so.
//!
//! With [`Sim::enable_balancing`] the CPUs also run the [`crate::balance`]
//! policy the way the kernel is meant to: a CPU about to idle pulls from the
//! busiest CPU, and a CPU with queued threads pushes one to the least loaded
//! CPU at each of its scheduling points (an IPI if that CPU was idle); each
//! CPU keeps a [`LoadAvg`] updated at its scheduling points.

use crate::balance::{BalanceParams, Balancer, CpuLoad, LoadAvg};
use crate::cpu::{CpuSched, Preempt};
use crate::fair::{FairParams, Runtime, Weight};
use crate::time::{Instant, Nanos};
use crate::wakeup::{Ipi, ThreadId, WakeupMatrix};
use crate::CpuId;
use alloc::boxed::Box;
use alloc::vec::Vec;

/// Most CPUs the simulator models.
pub const MAX_CPUS: usize = 8;
const RING: usize = 64;

/// What a simulated thread does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Always runnable.
    CpuBound,
    /// Runs `burst` of CPU time, sleeps `sleep`, repeats.
    Interactive {
        /// CPU time per wakeup.
        burst: Nanos,
        /// Sleep between bursts.
        sleep: Nanos,
    },
}

/// Per-thread measurements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadStats {
    /// Total CPU time received.
    pub cpu_time: Nanos,
    /// Times the thread was woken from sleep.
    pub wakeups: u64,
    /// Longest time from a wakeup to running.
    pub max_latency: Nanos,
    /// Longest stretch on a CPU without being switched out.
    pub longest_run: Nanos,
}

#[derive(Debug)]
struct SimThread {
    home: CpuId,
    work: Workload,
    /// The runtime while the thread sleeps (the scheduler owns it otherwise).
    parked: Option<Runtime>,
    burst_left: Nanos,
    woke_at: Option<Instant>,
    /// When the thread was last switched in.
    running_since: Instant,
    stats: ThreadStats,
}

#[derive(Debug)]
struct SimCpu {
    sched: CpuSched<usize>,
    accounted_to: Instant,
    need_resched: bool,
    idle: bool,
    timer_interrupts: u64,
    ipis: u64,
    load: LoadAvg,
}

/// The simulated machine.
#[derive(Debug)]
pub struct Sim {
    now: Instant,
    cpus: Vec<SimCpu>,
    threads: Vec<SimThread>,
    wake: Box<WakeupMatrix<MAX_CPUS, RING>>,
    balancer: Option<Balancer>,
    migrations: u64,
}

/// The time constant of the simulated CPUs' [`LoadAvg`].
pub const LOAD_AVG_TAU: Nanos = Nanos::from_millis(10);

impl Sim {
    /// `cpus` idle CPUs (1 to [`MAX_CPUS`]) with the given policy.
    ///
    /// # Panics
    /// If `cpus` is out of range.
    pub fn new(cpus: usize, params: FairParams) -> Self {
        assert!((1..=MAX_CPUS).contains(&cpus));
        let now = Instant::ZERO;
        Sim {
            now,
            cpus: (0..cpus)
                .map(|i| SimCpu {
                    sched: CpuSched::new(CpuId::new(i as u32), params, now),
                    accounted_to: now,
                    need_resched: false,
                    idle: true,
                    timer_interrupts: 0,
                    ipis: 0,
                    load: LoadAvg::new(LOAD_AVG_TAU, now),
                })
                .collect(),
            threads: Vec::new(),
            wake: Box::new(WakeupMatrix::new()),
            balancer: None,
            migrations: 0,
        }
    }

    /// Turns on load balancing with the given policy (off by default, so
    /// the other tests see threads stay on their home CPUs).
    pub fn enable_balancing(&mut self, params: BalanceParams) {
        self.balancer = Some(Balancer::new(params));
    }

    /// Threads migrated by the balancer so far.
    pub fn migrations(&self) -> u64 {
        self.migrations
    }

    /// Runnable threads (queued and running) on `cpu` now.
    pub fn runnable(&self, cpu: usize) -> u32 {
        self.cpus[cpu].sched.load(0).runnable
    }

    /// The CPU a thread belongs to now (its home, changed by migrations).
    pub fn home(&self, thread: usize) -> usize {
        self.threads[thread].home.index()
    }

    fn loads(&self) -> Vec<CpuLoad> {
        self.cpus
            .iter()
            .map(|c| {
                let runnable = c.sched.load(0).runnable;
                CpuLoad { runnable, avg: c.load.at(self.now, runnable) }
            })
            .collect()
    }

    /// Moves one queued thread from `from` to `to` (the kernel would carry
    /// it through a migration ring).
    fn migrate(&mut self, from: usize, to: usize) {
        let now = self.now;
        self.account(from);
        self.account(to);
        let Some((rt, t)) = self.cpus[from].sched.migrate_out(now) else { return };
        self.migrations += 1;
        self.threads[t].home = CpuId::new(to as u32);
        let dst = &mut self.cpus[to];
        if dst.sched.migrate_in(now, rt, t) == Preempt::Yes || dst.idle {
            if dst.idle {
                dst.ipis += 1;
            }
            dst.need_resched = true;
        }
        let published = self.cpus[from].sched.published_runtime();
        self.wake.set_running(CpuId::new(from as u32), published);
    }

    /// Starts a thread on CPU `home` now; returns its index.
    pub fn spawn(&mut self, home: usize, weight: Weight, work: Workload) -> usize {
        let idx = self.threads.len();
        let burst_left = match work {
            Workload::CpuBound => Nanos(u64::MAX),
            Workload::Interactive { burst, .. } => burst,
        };
        self.threads.push(SimThread {
            home: CpuId::new(home as u32),
            work,
            parked: None,
            burst_left,
            woke_at: None,
            running_since: Instant::ZERO,
            stats: ThreadStats::default(),
        });
        self.account(home);
        let now = self.now;
        if self.cpus[home].sched.spawn(now, Runtime::new(weight), idx) == Preempt::Yes {
            self.cpus[home].need_resched = true;
        }
        idx
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// A thread's measurements so far.
    pub fn stats(&self, thread: usize) -> ThreadStats {
        self.threads[thread].stats
    }

    /// Timer interrupts CPU `cpu` took so far.
    pub fn timer_interrupts(&self, cpu: usize) -> u64 {
        self.cpus[cpu].timer_interrupts
    }

    /// Wakeup IPIs CPU `cpu` received so far.
    pub fn ipis(&self, cpu: usize) -> u64 {
        self.cpus[cpu].ipis
    }

    /// Charges the running thread of `cpu` for the time since last accounted.
    fn account(&mut self, cpu: usize) {
        let c = &mut self.cpus[cpu];
        let dt = self.now - c.accounted_to;
        c.accounted_to = self.now;
        if let Some(&(_, t)) = c.sched.current() {
            let th = &mut self.threads[t];
            th.stats.cpu_time = th.stats.cpu_time + dt;
            if let Workload::Interactive { .. } = th.work {
                th.burst_left = Nanos(th.burst_left.0.saturating_sub(dt.0));
            }
        }
    }

    fn resched(&mut self, cpu: usize, blocked: bool) {
        self.account(cpu);
        let now = self.now;
        // OSv's handle_incoming_wakeups: drain the rings first.
        let mut incoming = Vec::new();
        self.wake.drain(CpuId::new(cpu as u32), |t| incoming.push(t.0));
        for t in incoming {
            let rt = self.threads[t].parked.take().expect("woken thread was parked");
            let _ = self.cpus[cpu].sched.wake(now, rt, t);
        }
        let runnable = self.cpus[cpu].sched.load(0).runnable;
        self.cpus[cpu].load.update(now, runnable);
        if let Some(b) = self.balancer {
            let c = &self.cpus[cpu].sched;
            if c.queued() == 0 && (blocked || c.current().is_none()) {
                // About to idle: pull. The load counts the blocking thread
                // as gone.
                let mut loads = self.loads();
                loads[cpu].runnable = 0;
                if let Some(src) = b.pull(CpuId::new(cpu as u32), &loads) {
                    self.migrate(src.index(), cpu);
                }
            }
        }
        let c = &mut self.cpus[cpu];
        c.need_resched = false;
        let prev = c.sched.current().map(|p| p.1);
        let r = c.sched.reschedule(now, blocked);
        if let Some(p) = prev.filter(|_| r.switched) {
            let th = &mut self.threads[p];
            th.stats.longest_run = th.stats.longest_run.max(now - th.running_since);
        }
        if let Some((rt, t)) = r.blocked {
            self.threads[t].parked = Some(rt);
            if let Workload::Interactive { sleep, burst } = self.threads[t].work {
                self.threads[t].burst_left = burst;
                let tcpu = (cpu + 1) % self.cpus.len();
                let _ = self.cpus[tcpu].sched.add_timer(now + sleep, t);
            }
        }
        if let Some(b) = self.balancer {
            if self.cpus[cpu].sched.queued() > 0 {
                if let Some(dst) = b.push(CpuId::new(cpu as u32), &self.loads()) {
                    self.migrate(cpu, dst.index());
                }
            }
        }
        let c = &mut self.cpus[cpu];
        let id = CpuId::new(cpu as u32);
        match r.next {
            Some(t) => {
                c.idle = false;
                self.wake.leave_idle(id);
                self.wake.set_running(id, c.sched.published_runtime());
                let th = &mut self.threads[t];
                if r.switched {
                    th.running_since = now;
                }
                if let Some(w) = th.woke_at.take() {
                    th.stats.max_latency = th.stats.max_latency.max(now - w);
                }
            }
            None => {
                self.wake.set_running(id, None);
                c.idle = self.wake.try_idle(id);
                if !c.idle {
                    c.need_resched = true;
                }
            }
        }
    }

    /// Wakes sleeping thread `t` from CPU `src`.
    fn wake_thread(&mut self, src: usize, t: usize) {
        let now = self.now;
        let home = self.threads[t].home.index();
        self.threads[t].woke_at = Some(now);
        self.threads[t].stats.wakeups += 1;
        if home == src {
            let rt = self.threads[t].parked.take().expect("sleeping thread is parked");
            self.account(home);
            if self.cpus[home].sched.wake(now, rt, t) == Preempt::Yes {
                self.cpus[home].need_resched = true;
            }
            let published = self.cpus[home].sched.published_runtime();
            self.wake.set_running(self.threads[t].home, published);
            return;
        }
        let rt = self.threads[t].parked.expect("sleeping thread is parked");
        let ipi = self
            .wake
            .wake(CpuId::new(src as u32), CpuId::new(home as u32), ThreadId(t), rt.scaled())
            .expect("ring sized for the simulated threads");
        if ipi == Ipi::Needed {
            self.cpus[home].ipis += 1;
            self.cpus[home].need_resched = true;
        }
    }

    /// The next event of `cpu`, if any.
    fn next_event(&self, cpu: usize) -> Option<Instant> {
        let c = &self.cpus[cpu];
        if c.need_resched {
            return Some(self.now);
        }
        let burst_end = c.sched.current().and_then(|&(_, t)| match self.threads[t].work {
            Workload::CpuBound => None,
            Workload::Interactive { .. } => Some(c.accounted_to + self.threads[t].burst_left),
        });
        match (c.sched.timer_deadline(), burst_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the machine until virtual time `end`.
    pub fn run_until(&mut self, end: Instant) {
        loop {
            let next = (0..self.cpus.len()).filter_map(|c| self.next_event(c).map(|t| (t, c))).min();
            let Some((t, cpu)) = next.filter(|&(t, _)| t <= end) else {
                self.now = self.now.max(end);
                for c in 0..self.cpus.len() {
                    self.account(c);
                }
                return;
            };
            self.now = self.now.max(t);
            if self.cpus[cpu].need_resched {
                self.resched(cpu, false);
                continue;
            }
            self.account(cpu);
            // The running interactive thread finished its burst: it sleeps.
            if let Some(&(_, th)) = self.cpus[cpu].sched.current() {
                if matches!(self.threads[th].work, Workload::Interactive { .. })
                    && self.threads[th].burst_left == Nanos::ZERO
                {
                    self.resched(cpu, true);
                    continue;
                }
            }
            // Otherwise the one-shot timer fired.
            if self.cpus[cpu].sched.timer_deadline().is_some_and(|d| d <= self.now) {
                self.cpus[cpu].timer_interrupts += 1;
                while let Some(th) = self.cpus[cpu].sched.pop_expired(self.now) {
                    self.wake_thread(cpu, th);
                }
                if self.cpus[cpu].sched.preempt_at().is_some_and(|d| d <= self.now) {
                    self.cpus[cpu].need_resched = true;
                }
                if self.cpus[cpu].idle {
                    // The interrupt took the CPU out of `hlt`.
                    self.cpus[cpu].need_resched = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_cpu_takes_no_timer_interrupts() {
        let mut sim = Sim::new(2, FairParams::default());
        sim.spawn(0, Weight::NORMAL, Workload::CpuBound);
        sim.run_until(Instant(1_000_000_000));
        assert_eq!(sim.timer_interrupts(1), 0);
        assert_eq!(sim.timer_interrupts(0), 0, "alone: no preemption timer either");
        assert_eq!(sim.stats(0).cpu_time, Nanos::from_millis(1000));
    }

    #[test]
    fn balancing_spreads_threads_and_then_stops() {
        let mut sim = Sim::new(4, FairParams::default());
        sim.enable_balancing(BalanceParams::default());
        for _ in 0..8 {
            sim.spawn(0, Weight::NORMAL, Workload::CpuBound);
        }
        sim.run_until(Instant(1_000_000_000));
        for cpu in 0..4 {
            assert_eq!(sim.runnable(cpu), 2, "cpu {cpu}");
        }
        let moved = sim.migrations();
        // From [8,0,0,0] to [2,2,2,2]: at least 6 moves; each move lowers
        // Σ runnable² by at least 2, so at most (64 - 16)/2.
        assert!((6..=24).contains(&moved), "{moved} migrations");
        let before: Vec<u64> = (0..8).map(|t| sim.stats(t).cpu_time.0).collect();
        sim.run_until(Instant(2_000_000_000));
        assert_eq!(sim.migrations(), moved, "balanced: no more migrations (no ping-pong)");
        for (t, b) in before.iter().enumerate() {
            let share = (sim.stats(t).cpu_time.0 - b) as f64 / 1e9;
            assert!((share - 0.5).abs() < 0.01, "thread {t} got {share} of a CPU");
        }
    }

    #[test]
    fn balanced_system_migrates_nothing() {
        let mut sim = Sim::new(4, FairParams::default());
        sim.enable_balancing(BalanceParams::default());
        for cpu in 0..4 {
            sim.spawn(cpu, Weight::NORMAL, Workload::CpuBound);
            sim.spawn(cpu, Weight::new(2048).unwrap(), Workload::CpuBound);
        }
        for cpu in 0..2 {
            let work = Workload::Interactive { burst: Nanos::from_millis(1), sleep: Nanos::from_millis(5) };
            sim.spawn(cpu, Weight::NORMAL, work);
        }
        sim.run_until(Instant(2_000_000_000));
        assert_eq!(sim.migrations(), 0);
        assert!(sim.stats(8).wakeups > 100 && sim.stats(9).wakeups > 100);
    }

    #[test]
    fn balancing_keeps_both_cpus_busy_beside_a_sleeper() {
        // CPU 1's only thread sleeps for long stretches; CPU 0 has three
        // hogs. One hog moves to CPU 1 (pushed by CPU 0 or pulled when CPU 1
        // idles) and stays: no CPU time is lost after the first scheduling
        // points, and nothing ping-pongs.
        let mut sim = Sim::new(2, FairParams::default());
        sim.enable_balancing(BalanceParams { min_avg_imbalance: 0 });
        for _ in 0..3 {
            sim.spawn(0, Weight::NORMAL, Workload::CpuBound);
        }
        let work = Workload::Interactive { burst: Nanos::from_millis(1), sleep: Nanos::from_millis(50) };
        sim.spawn(1, Weight::NORMAL, work);
        sim.run_until(Instant(1_000_000_000));
        let total: u64 = (0..4).map(|t| sim.stats(t).cpu_time.0).sum();
        assert_eq!(sim.migrations(), 1);
        assert!(total >= 2_000_000_000 - 2_000_000, "both CPUs kept busy: {total}");
    }

    #[test]
    fn cross_cpu_wakeups_reach_an_idle_cpu() {
        let mut sim = Sim::new(2, FairParams::default());
        let t = sim.spawn(
            0,
            Weight::NORMAL,
            Workload::Interactive { burst: Nanos::from_millis(1), sleep: Nanos::from_millis(9) },
        );
        sim.run_until(Instant(1_000_000_000));
        let s = sim.stats(t);
        assert_eq!(s.wakeups, 100);
        assert_eq!(s.max_latency, Nanos::ZERO);
        assert_eq!(sim.ipis(0), 100, "CPU 0 idles between bursts: every wakeup needs an IPI");
        assert_eq!(sim.timer_interrupts(1), 100);
    }
}
