//! The scheduler core on host threads: each host thread plays a CPU running
//! the real `CpuSched`, `WakeupMatrix` and `WaitState` protocol, with real
//! concurrency. Tasks are step functions (a host thread cannot switch stacks);
//! a task's step passes a token to the next task, which lives on another CPU,
//! through `wait_until` semantics: the waker sets the condition, claims the
//! task with `WaitState::wake`, pushes it onto the lock-free ring to its CPU
//! and sends an "IPI" (`Thread::unpark`) when the push says so. Idle CPUs go
//! through `try_idle` and halt (`park`).
//!
//! Checked: the token makes exactly `ROUNDS` hops (no lost or duplicated
//! wakeup: a lost one stalls the ring, a duplicate breaks the count), each
//! task runs its share, and no CPU ever halted with work queued and no IPI
//! coming (detected by halting with a timeout and checking).
#![cfg(all(feature = "std", not(loom)))]

use osv_sched::cpu::CpuSched;
use osv_sched::fair::{FairParams, Runtime, Weight};
use osv_sched::time::Instant;
use osv_sched::wait::WaitState;
use osv_sched::wakeup::{Ipi, ThreadId, WakeupMatrix};
use osv_sched::CpuId;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const CPUS: usize = 3;
const TASKS: usize = 7;
const ROUNDS: u64 = 20_000;

struct Task {
    state: WaitState,
    /// The runtime while blocked (the kernel keeps it in the thread).
    parked: Mutex<Option<Runtime>>,
    runs: AtomicU64,
}

struct Machine {
    wake: WakeupMatrix<CPUS, 16>,
    tasks: Vec<Task>,
    holder: AtomicUsize,
    hops: AtomicU64,
    done: AtomicBool,
    ipi_pending: [AtomicBool; CPUS],
    cpu_threads: OnceLock<Vec<std::thread::Thread>>,
    lost_wakeups: AtomicU64,
    start: std::time::Instant,
}

impl Machine {
    fn now(&self) -> Instant {
        Instant(self.start.elapsed().as_nanos() as u64)
    }

    fn home(t: usize) -> usize {
        t % CPUS
    }

    fn ipi(&self, cpu: usize) {
        self.ipi_pending[cpu].store(true, Ordering::SeqCst);
        self.cpu_threads.get().unwrap()[cpu].unpark();
    }

    /// Wakes task `t` from CPU `src` (the waker already set the condition).
    fn wake(&self, src: usize, t: usize) {
        if !self.tasks[t].state.wake() {
            return; // not waiting: it will see the condition itself
        }
        let dst = Self::home(t);
        loop {
            // Woken runtime 0: conservative, an IPI whenever the CPU is busy
            // with a thread that has a preemption deadline.
            match self.wake.wake(CpuId::new(src as u32), CpuId::new(dst as u32), ThreadId(t), 0u64) {
                Ok(Ipi::Needed) => return self.ipi(dst),
                Ok(Ipi::NotNeeded) => return,
                Err(_) => {
                    self.ipi(dst);
                    std::thread::yield_now();
                }
            }
        }
    }

    /// One task step: if it holds the token, pass it on; then wait for the
    /// token again. Returns whether the task blocked.
    fn step(&self, cpu: usize, t: usize) -> bool {
        let task = &self.tasks[t];
        if self.holder.load(Ordering::Acquire) == t {
            task.runs.fetch_add(1, Ordering::Relaxed);
            let next = (t + 1) % TASKS;
            if self.hops.fetch_add(1, Ordering::AcqRel) + 1 >= ROUNDS {
                self.done.store(true, Ordering::Release);
                for c in 0..CPUS {
                    self.ipi(c);
                }
                return true;
            }
            self.holder.store(next, Ordering::Release);
            self.wake(cpu, next);
        }
        // wait_until(holder == t), split at the scheduling point.
        task.state.prepare_wait();
        if self.holder.load(Ordering::Acquire) == t {
            // Runnable again, unless a waker claimed it (then it arrives
            // through the ring like any woken thread).
            return !task.state.stop_wait();
        }
        true
    }

    fn run_cpu(&self, cpu: usize) {
        let id = CpuId::new(cpu as u32);
        let mut sched: CpuSched<usize> = CpuSched::new(id, FairParams::default(), self.now());
        for t in (0..TASKS).filter(|&t| Self::home(t) == cpu) {
            self.tasks[t].state.prepare_wait();
            assert!(self.tasks[t].state.wake());
            self.tasks[t].state.set_queued();
            let _ = sched.spawn(self.now(), Runtime::new(Weight::NORMAL), t);
        }
        let mut blocked = false;
        while !self.done.load(Ordering::Acquire) {
            self.wake.drain(id, |t| {
                let rt = self.tasks[t.0].parked.lock().unwrap().take().expect("woken task was parked");
                self.tasks[t.0].state.set_queued();
                let _ = sched.wake(self.now(), rt, t.0);
            });
            let r = sched.reschedule(self.now(), blocked);
            if let Some((rt, t)) = r.blocked {
                *self.tasks[t].parked.lock().unwrap() = Some(rt);
            }
            let Some(t) = r.next else {
                self.wake.set_running(id, None);
                if self.wake.try_idle(id) {
                    // hlt until the IPI, with a watchdog: halted for 500 ms
                    // with no IPI while work sits in our rings is a lost
                    // wakeup.
                    let halted = std::time::Instant::now();
                    let limit = Duration::from_millis(500);
                    loop {
                        if self.ipi_pending[cpu].swap(false, Ordering::SeqCst)
                            || self.done.load(Ordering::Acquire)
                        {
                            break;
                        }
                        let waited = halted.elapsed();
                        if waited >= limit {
                            if !self.wake.try_idle(id) {
                                self.lost_wakeups.fetch_add(1, Ordering::Relaxed);
                            }
                            break;
                        }
                        std::thread::park_timeout(limit - waited);
                    }
                    self.wake.leave_idle(id);
                }
                blocked = false;
                continue;
            };
            self.ipi_pending[cpu].store(false, Ordering::Relaxed);
            self.tasks[t].state.set_running();
            self.wake.set_running(id, sched.published_runtime());
            blocked = self.step(cpu, t);
        }
    }
}

#[test]
fn token_ring_across_host_cpus() {
    let m = Arc::new(Machine {
        wake: WakeupMatrix::new(),
        tasks: (0..TASKS)
            .map(|_| Task { state: WaitState::new(), parked: Mutex::new(None), runs: AtomicU64::new(0) })
            .collect(),
        holder: AtomicUsize::new(0),
        hops: AtomicU64::new(0),
        done: AtomicBool::new(false),
        ipi_pending: std::array::from_fn(|_| AtomicBool::new(false)),
        cpu_threads: OnceLock::new(),
        lost_wakeups: AtomicU64::new(0),
        start: std::time::Instant::now(),
    });
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let handles: Vec<_> = (0..CPUS)
        .map(|c| {
            let m = m.clone();
            let rx_ok = tx.clone();
            std::thread::spawn(move || {
                while m.cpu_threads.get().is_none() {
                    std::thread::yield_now();
                }
                m.run_cpu(c);
                drop(rx_ok);
            })
        })
        .collect();
    drop(tx);
    m.cpu_threads.set(handles.iter().map(|h| h.thread().clone()).collect()).unwrap();
    // Watchdog: a lost wakeup would stall the ring forever.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rx.recv_timeout(Duration::from_millis(100)).is_ok() || std::time::Instant::now() < deadline {
        if handles.iter().all(|h| h.is_finished()) {
            break;
        }
    }
    assert!(handles.iter().all(|h| h.is_finished()), "stalled at {} hops", m.hops.load(Ordering::Relaxed));
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(m.hops.load(Ordering::Relaxed), ROUNDS);
    let runs: u64 = m.tasks.iter().map(|t| t.runs.load(Ordering::Relaxed)).sum();
    assert_eq!(runs, ROUNDS);
    for t in &m.tasks {
        let r = t.runs.load(Ordering::Relaxed);
        assert!(r.abs_diff(ROUNDS / TASKS as u64) <= 1, "uneven: {r}");
    }
    assert_eq!(m.lost_wakeups.load(Ordering::Relaxed), 0);
}
