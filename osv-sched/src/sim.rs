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
}

/// The simulated machine.
#[derive(Debug)]
pub struct Sim {
    now: Instant,
    cpus: Vec<SimCpu>,
    threads: Vec<SimThread>,
    wake: Box<WakeupMatrix<MAX_CPUS, RING>>,
}

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
                })
                .collect(),
            threads: Vec::new(),
            wake: Box::new(WakeupMatrix::new()),
        }
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
