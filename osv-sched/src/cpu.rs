//! One CPU's scheduler core (OSv's `cpu::reschedule_from_interrupt`,
//! `cpu::handle_incoming_wakeups` and the preemption timer), as pure state:
//! the kernel calls it with the time and does what the answer says (switch
//! context, arm the one-shot timer, send IPIs).

use crate::balance::CpuLoad;
use crate::fair::{ExportedRuntime, Fair, FairParams, RunQueue, Runtime};
use crate::time::Instant;
use crate::timer::{TimerId, TimerList};
use crate::CpuId;

/// Whether a thread that just became runnable should preempt the running one
/// now (reschedule on interrupt return, or send the IPI).
#[must_use = "a preemption that is due and not done delays the woken thread"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preempt {
    /// Keep running; the thread waits for the current slice to end.
    No,
    /// Reschedule now.
    Yes,
}

/// What a [`CpuSched::reschedule`] decided.
#[must_use = "the kernel must switch to `next` and arm the timer"]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Resched<T> {
    /// The thread to run now; `None` for the idle loop.
    pub next: Option<T>,
    /// Whether `next` differs from the thread that was running.
    pub switched: bool,
    /// The thread that was running and blocked, with its runtime (keep it
    /// with the thread until it is woken).
    pub blocked: Option<(Runtime, T)>,
    /// What to arm the one-shot timer for (`None`: disarm).
    pub timer: Option<Instant>,
}

/// The per-CPU scheduler: fair run queue, timer list and running thread.
#[derive(Debug)]
pub struct CpuSched<T> {
    id: CpuId,
    fair: Fair,
    queue: RunQueue<T>,
    timers: TimerList<T>,
    current: Option<(Runtime, T)>,
    switched_in: Instant,
    charged_to: Instant,
    preempt_at: Option<Instant>,
}

impl<T: Copy + PartialEq> CpuSched<T> {
    /// An idle CPU at time `now`.
    pub fn new(id: CpuId, params: FairParams, now: Instant) -> Self {
        Self::with_queue(id, params, now, RunQueue::new())
    }

    /// An idle CPU whose run queue holds `threads` threads without
    /// allocating (enqueue, pick and wake never allocate below that).
    pub fn with_capacity(id: CpuId, params: FairParams, now: Instant, threads: usize) -> Self {
        Self::with_queue(id, params, now, RunQueue::with_capacity(threads))
    }

    fn with_queue(id: CpuId, params: FairParams, now: Instant, queue: RunQueue<T>) -> Self {
        CpuSched {
            id,
            fair: Fair::new(params),
            queue,
            timers: TimerList::new(),
            current: None,
            switched_in: now,
            charged_to: now,
            preempt_at: None,
        }
    }

    /// This CPU.
    pub fn id(&self) -> CpuId {
        self.id
    }

    /// The policy state (normaliser, parameters).
    pub fn fair(&self) -> &Fair {
        &self.fair
    }

    /// The running thread and its runtime (charged up to the last event).
    pub fn current(&self) -> Option<&(Runtime, T)> {
        self.current.as_ref()
    }

    /// Threads waiting in the run queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The run queue.
    pub fn queue(&self) -> &RunQueue<T> {
        &self.queue
    }

    /// Charges the running thread up to `now`.
    fn charge(&mut self, now: Instant) {
        let ran = now - self.charged_to;
        self.charged_to = self.charged_to.max(now);
        if let Some((rt, _)) = &mut self.current {
            if self.fair.charge(rt, ran).0 {
                self.queue.resync(&self.fair);
            }
        }
    }

    /// What to publish through [`crate::wakeup::WakeupMatrix::set_running`]:
    /// the running thread's runtime if a preemption deadline is armed,
    /// `None` if the CPU is idle or the running thread is alone (no timer
    /// would make this CPU look at its wakeup rings).
    pub fn published_runtime(&self) -> Option<u64> {
        self.preempt_at?;
        self.current.as_ref().map(|c| c.0.scaled())
    }

    /// The earliest of the preemption deadline and the next timer.
    pub fn timer_deadline(&self) -> Option<Instant> {
        match (self.preempt_at, self.timers.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The running thread's preemption deadline (its fair share's end).
    pub fn preempt_at(&self) -> Option<Instant> {
        self.preempt_at
    }

    /// Starts a new thread here (runtime 0). See [`CpuSched::wake`].
    pub fn spawn(&mut self, now: Instant, rt: Runtime, thread: T) -> Preempt {
        self.wake(now, rt, thread)
    }

    /// Makes `thread` (with the runtime it kept while blocked) runnable on
    /// this CPU: from this CPU's own wakers, or drained from the incoming
    /// wakeup rings.
    pub fn wake(&mut self, now: Instant, mut rt: Runtime, thread: T) -> Preempt {
        self.charge(now);
        self.fair.sync(&mut rt);
        let preempt = match &self.current {
            None => true,
            Some((cur, _)) => self.fair.should_preempt(cur, &rt),
        };
        self.queue.insert(rt, thread);
        if preempt {
            Preempt::Yes
        } else {
            // The new queue head may end the running slice earlier.
            self.rearm(now);
            Preempt::No
        }
    }

    fn rearm(&mut self, now: Instant) {
        self.preempt_at = match &self.current {
            None => None,
            Some((cur, _)) => {
                self.fair.preemption_deadline(now, self.switched_in, cur, self.queue.peek().map(|p| p.0))
            }
        };
    }

    /// The scheduling decision at `now` (timer interrupt, IPI, yield or
    /// block). `blocked`: the running thread is waiting and must not be
    /// requeued.
    pub fn reschedule(&mut self, now: Instant, blocked: bool) -> Resched<T> {
        self.charge(now);
        if !blocked {
            if let Some((cur, t)) = &self.current {
                let slice_end = self.switched_in + self.fair.params().granularity;
                // One `time_until` serves both the decision and the new
                // deadline (`Fair::preemption_deadline`, computed inline).
                let (keep, deadline) = match self.queue.peek() {
                    None => (true, None),
                    Some((head, _)) => {
                        let left = self.fair.time_until(cur, head);
                        (now < slice_end || left >= crate::fair::MIN_TIMER, Some((now + left).max(slice_end)))
                    }
                };
                if keep {
                    let t = *t;
                    self.preempt_at = deadline;
                    return Resched {
                        next: Some(t),
                        switched: false,
                        blocked: None,
                        timer: self.timer_deadline(),
                    };
                }
            }
        }
        let prev = self.current.take();
        let mut blocked_out = None;
        if let Some(p) = prev {
            if blocked {
                blocked_out = Some(p);
            } else {
                self.queue.insert(p.0, p.1);
            }
        }
        self.current = self.queue.pop();
        self.switched_in = now;
        self.rearm(now);
        let next = self.current.map(|c| c.1);
        Resched {
            next,
            switched: next != prev.map(|p| p.1),
            blocked: blocked_out,
            timer: self.timer_deadline(),
        }
    }

    /// A voluntary yield at `now`: the running thread goes back to the run
    /// queue and the queue's head runs instead, even within the running
    /// thread's granularity (OSv's `thread::yield`). With nothing queued the
    /// running thread keeps the CPU.
    pub fn yield_now(&mut self, now: Instant) -> Resched<T> {
        self.charge(now);
        if self.current.is_none() || self.queue.is_empty() {
            return self.reschedule(now, false);
        }
        let next = self.queue.pop();
        if let Some((rt, t)) = self.current.take() {
            self.queue.insert(rt, t);
        }
        self.current = next;
        self.switched_in = now;
        self.rearm(now);
        Resched {
            next: self.current.map(|c| c.1),
            switched: true,
            blocked: None,
            timer: self.timer_deadline(),
        }
    }

    /// What the load balancer needs to know about this CPU
    /// ([`crate::balance`]): runnable threads (queued and running) and the
    /// caller-maintained decayed load `avg` ([`crate::balance::LoadAvg`]).
    pub fn load(&self, avg: u64) -> CpuLoad {
        CpuLoad { runnable: (self.queue.len() + usize::from(self.current.is_some())) as u32, avg }
    }

    /// Takes a queued thread off this CPU for migration (the one that would
    /// run last here), charging the running thread up to `now` first. Its
    /// runtime comes out independent of this CPU's scale; hand both to the
    /// destination's [`CpuSched::migrate_in`]. `None` if nothing is queued
    /// (the running thread is never migrated).
    pub fn migrate_out(&mut self, now: Instant) -> Option<(ExportedRuntime, T)> {
        self.charge(now);
        let (rt, t) = self.queue.pop_last()?;
        self.rearm(now);
        Some((self.fair.export(rt), t))
    }

    /// Receives a migrated thread (from another CPU's
    /// [`CpuSched::migrate_out`]) as runnable here; see [`CpuSched::wake`].
    pub fn migrate_in(&mut self, now: Instant, rt: ExportedRuntime, thread: T) -> Preempt {
        let rt = self.fair.import(rt);
        self.wake(now, rt, thread)
    }

    /// Arms a timer on this CPU's list.
    pub fn add_timer(&mut self, deadline: Instant, payload: T) -> TimerId {
        self.timers.insert(deadline, payload)
    }

    /// Cancels a timer of this CPU's list.
    pub fn cancel_timer(&mut self, id: TimerId) -> Option<T> {
        self.timers.cancel(id)
    }

    /// Takes the next expired timer's payload.
    pub fn pop_expired(&mut self, now: Instant) -> Option<T> {
        self.timers.pop_expired(now).map(|(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fair::Weight;
    use crate::time::Nanos;

    #[test]
    fn tickless_when_alone_and_idle() {
        let mut cpu: CpuSched<u32> = CpuSched::new(CpuId::new(0), FairParams::default(), Instant(0));
        assert_eq!(cpu.spawn(Instant(0), Runtime::new(Weight::NORMAL), 1), Preempt::Yes);
        let r = cpu.reschedule(Instant(0), false);
        assert_eq!((r.next, r.switched, r.timer), (Some(1), true, None), "one thread: no timer at all");
        let r = cpu.reschedule(Instant(10), true);
        assert_eq!((r.next, r.timer), (None, None), "idle, no timers: disarmed");
        assert_eq!(r.blocked.map(|b| b.1), Some(1));
    }

    #[test]
    fn yield_switches_even_within_granularity() {
        let mut cpu: CpuSched<u32> = CpuSched::new(CpuId::new(0), FairParams::default(), Instant(0));
        let r = cpu.yield_now(Instant(0));
        assert_eq!((r.next, r.timer), (None, None), "idle: nothing to yield to");
        let _ = cpu.spawn(Instant(0), Runtime::new(Weight::NORMAL), 1);
        let r = cpu.reschedule(Instant(0), false);
        assert_eq!(r.next, Some(1));
        let r = cpu.yield_now(Instant(10));
        assert_eq!((r.next, r.switched), (Some(1), false), "alone: keeps the CPU");
        let _ = cpu.spawn(Instant(10), Runtime::new(Weight::NORMAL), 2);
        // Thread 2 is queued; a reschedule within g keeps 1, a yield does not.
        let r = cpu.reschedule(Instant(20), false);
        assert_eq!(r.next, Some(1));
        let r = cpu.yield_now(Instant(30));
        assert_eq!((r.next, r.switched), (Some(2), true));
        assert_eq!(cpu.queued(), 1, "the yielder is queued");
        let r = cpu.yield_now(Instant(40));
        assert_eq!(r.next, Some(1));
        assert_eq!(cpu.queued(), 1);
    }

    #[test]
    fn two_threads_alternate_at_deadlines() {
        let g = Nanos::from_millis(1);
        let mut cpu: CpuSched<u32> = CpuSched::new(CpuId::new(0), FairParams::default(), Instant(0));
        let _ = cpu.spawn(Instant(0), Runtime::new(Weight::NORMAL), 1);
        let _ = cpu.spawn(Instant(0), Runtime::new(Weight::NORMAL), 2);
        let mut r = cpu.reschedule(Instant(0), false);
        assert_eq!(r.next, Some(1));
        assert_eq!(r.timer, Some(Instant(0) + g));
        let mut runs = [0u32; 3];
        for _ in 0..100 {
            let at = r.timer.unwrap();
            r = cpu.reschedule(at, false);
            runs[r.next.unwrap() as usize] += 1;
            assert!(r.switched);
        }
        assert_eq!(runs[1], 50);
    }
}
