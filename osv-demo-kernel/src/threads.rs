//! Kernel threads on osv-sched: a per-CPU scheduler loop, preemption on
//! interrupt return, a tickless one-shot timer, sleep, join, mutexes.
//!
//! What runs where:
//! - osv-sched's `CpuSched` decides (fair run queue, timer list, the
//!   preemption deadline); its `WakeupMatrix` carries wakeups to a CPU; its
//!   `Parker` is each thread's wait/wake state machine.
//! - This module does what the decisions say: switch context
//!   (`osv_boot::rt::context`, as [`X86Switch`]), point the CPU's interrupt
//!   stack at the next thread's own (`set_irq_stack`, OSv's
//!   `set_interrupt_stack`), and arm the one-shot timer
//!   (`osv_boot::rt::timer`, TSC-deadline when the CPU has it) for exactly
//!   `Resched::timer`: the earlier of the next sleeper's deadline and the
//!   running thread's fair-share end. Nothing else ever arms it, so a CPU
//!   with one thread and no sleepers, or an idle one, takes no timer
//!   interrupts; the idle thread halts.
//!
//! Locking: a CPU's scheduler state is touched only on that CPU with
//! interrupts off. Preemption: the timer interrupt reschedules before it
//! returns (the interrupted thread's trap frame stays on its own interrupt
//! stack) unless the thread's preempt-disable count is non-zero, in which
//! case the reschedule happens when the count drops to zero. A thread is
//! never preempted while it is marked waiting (the count is raised around
//! every park, as OSv's `prepare_wait`), so a wakeup cannot be lost.
//!
//! One CPU for now (`MAX_CPUS`); the per-CPU state and the wakeup rings are
//! already indexed by CPU for SMP.

use crate::mm::{GuardedStack, StackError};
use alloc::boxed::Box;
use alloc::string::String;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use osv_boot::arch;
use osv_boot::rt::context::{self, Context};
use osv_boot::rt::timer::{OneShot, TimerMode};
use osv_boot::trap::TrapFrame;
use osv_sched::cpu::CpuSched;
use osv_sched::fair::{FairParams, Runtime, Weight};
use osv_sched::hal::{ContextSwitch, OneShotTimer};
use osv_sched::park::{Park, Unpark};
use osv_sched::rcu::{DeferQueue, GracePeriod, Rcu, ReadGuard, Retired};
use osv_sched::time::{Instant, Nanos};
use osv_sched::wait::{Block, Parker, State, WaitState};
use osv_sched::wakeup::{ThreadId, WakeupMatrix};
use osv_sched::CpuId;

/// The x86_64 switch, as osv-sched's architecture trait.
pub struct X86Switch;

// SAFETY: `context::switch` saves exactly the callee-saved state of the ABI
// (rbx, rbp, r12-r15, MXCSR and x87 control) on the current stack and resumes
// `to` as saved or as `Context::new` prepared it; it returns on `from`'s
// stack only when a later switch resumes `from`.
unsafe impl ContextSwitch for X86Switch {
    type Context = Context;

    fn init(stack_top: usize, entry: extern "C" fn(usize) -> !, arg: usize) -> Context {
        // The trait hands over only the top; the frame needs 80 bytes below
        // it, which any stack the kernel allocates has.
        // SAFETY: the caller (the scheduler) owns the stack whose top it
        // passes, for the thread's whole life.
        match unsafe { Context::new(stack_top - 4096, stack_top, entry, arg) } {
            Ok(c) => c,
            Err(e) => panic!("cannot start a thread on the stack at {stack_top:#x}: {e:?}"),
        }
    }

    unsafe fn switch(from: &mut Context, to: &Context) {
        // SAFETY: the trait's contract is `context::switch`'s.
        unsafe { context::switch(from, to) }
    }
}

/// CPUs the scheduler runs on.
pub const MAX_CPUS: usize = 1;
/// Slots of each (source, destination) wakeup ring.
const RING_CAP: usize = 256;
/// The scheduler's timer vector (the in-kernel LAPIC tests use 0x40).
pub const SCHED_TIMER_VECTOR: u8 = 0x30;
/// Bytes of a thread's stack, and of its interrupt stack.
const STACK_SIZE: usize = 64 * 1024;
const IRQ_STACK_SIZE: usize = 16 * 1024;

/// A kernel thread. Lives on the heap from `spawn` until `join`.
pub struct Thread {
    name: String,
    ctx: UnsafeCell<Context>,
    parker: Parker,
    /// The fair-share state while the thread is off the CPU; touched only by
    /// its CPU with interrupts off.
    runtime: UnsafeCell<Runtime>,
    /// CPU time, charged at every switch away.
    cpu_ns: AtomicU64,
    switched_in: AtomicU64,
    woken_tsc: AtomicU64,
    /// Preempt-disable count: non-zero, interrupts do not switch away.
    preempt: AtomicU32,
    irq_top: u64,
    /// The thread's stack, above an unmapped guard page (osv-mm's tables):
    /// an overflow is reported as a stack overflow of this thread.
    _stack: Option<GuardedStack>,
    _irq_stack: Option<GuardedStack>,
    entry: UnsafeCell<Option<Box<dyn FnOnce() + Send>>>,
    done: AtomicBool,
    /// Set by the CPU once a terminated thread's context is no longer used.
    off_cpu: AtomicBool,
    joiner: AtomicPtr<Thread>,
    cpu: AtomicU32,
}

// SAFETY: the `UnsafeCell` fields are touched only under the rules written
// on each (the owning CPU with interrupts off, or the thread itself before
// it runs); everything else is atomic or immutable.
unsafe impl Sync for Thread {}
// SAFETY: as above.
unsafe impl Send for Thread {}

impl Thread {
    fn new(name: &str, weight: Weight, stacks: bool) -> Result<Box<Thread>, StackError> {
        let (stack, irq_stack, irq_top) = if stacks {
            let s = GuardedStack::new(STACK_SIZE, name)?;
            let i = GuardedStack::new(IRQ_STACK_SIZE, &alloc::format!("{name} (interrupts)"))?;
            let top = i.top() & !15;
            (Some(s), Some(i), top)
        } else {
            (None, None, osv_boot::rt::boot_irq_stack_top())
        };
        Ok(Box::new(Thread {
            name: name.into(),
            ctx: UnsafeCell::new(Context::default()),
            parker: Parker::new(),
            runtime: UnsafeCell::new(Runtime::new(weight)),
            cpu_ns: AtomicU64::new(0),
            switched_in: AtomicU64::new(0),
            woken_tsc: AtomicU64::new(0),
            preempt: AtomicU32::new(0),
            irq_top,
            _stack: stack,
            _irq_stack: irq_stack,
            entry: UnsafeCell::new(None),
            done: AtomicBool::new(false),
            off_cpu: AtomicBool::new(false),
            joiner: AtomicPtr::new(core::ptr::null_mut()),
            cpu: AtomicU32::new(0),
        }))
    }

    fn stack_top(&self) -> usize {
        self._stack.as_ref().map_or(0, |s| s.top() as usize & !15)
    }

    fn id(&self) -> ThreadId {
        ThreadId(self as *const Thread as usize)
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its scheduling state (a snapshot).
    pub fn state(&self) -> State {
        self.parker.state().state()
    }

    /// The handle that wakes this thread from [`KernelPark::park`].
    pub fn unparker(&self) -> KernelUnparker {
        KernelUnparker(self)
    }

    /// CPU time used so far (up to its last switch away).
    pub fn cpu_time(&self) -> Nanos {
        Nanos(self.cpu_ns.load(Ordering::Relaxed))
    }

    /// The running thread's CPU time, including the current stretch.
    pub fn cpu_time_now() -> Nanos {
        arch::without_interrupts(|| {
            let t = current();
            let run = arch::rdtsc().wrapping_sub(t.switched_in.load(Ordering::Relaxed));
            Nanos(t.cpu_ns.load(Ordering::Relaxed) + sched().clock.ticks_to_ns(run))
        })
    }

    /// The TSC when the thread was last woken (claimed by a waker or its
    /// timer), to measure how long the scheduler took to run it.
    pub fn woken_tsc(&self) -> u64 {
        self.woken_tsc.load(Ordering::Relaxed)
    }
}

fn thread(id: ThreadId) -> &'static Thread {
    // SAFETY: ids are addresses of live `Thread`s: a thread is freed only by
    // `join`, after it terminated and left its CPU, when no queue, ring or
    // timer holds it any more.
    unsafe { &*(id.0 as *const Thread) }
}

/// One CPU's scheduler state.
struct Cpu {
    id: CpuId,
    /// Touched only on this CPU with interrupts off.
    sched: UnsafeCell<CpuSched<ThreadId>>,
    timer: UnsafeCell<OneShot>,
    armed: UnsafeCell<Option<Instant>>,
    current: AtomicPtr<Thread>,
    idle: AtomicPtr<Thread>,
    /// A terminated thread this CPU just switched away from.
    exited: AtomicPtr<Thread>,
    need_resched: AtomicBool,
    /// This CPU is in RCU's extended quiescent state (idle).
    rcu_idle: AtomicBool,
    timer_irqs: AtomicU64,
    /// Timer interrupts that came while nothing was armed (must stay 0).
    timer_spurious: AtomicU64,
    /// Timer interrupts before the armed deadline (one-shot rate error;
    /// the deadline is re-armed).
    timer_early: AtomicU64,
    switches: AtomicU64,
}

struct Sched {
    cpus: [Cpu; MAX_CPUS],
    wakeups: WakeupMatrix<MAX_CPUS, RING_CAP>,
    clock: osv_boot::time::TscClock,
}

// SAFETY: each CPU's `UnsafeCell`s are touched only by that CPU with
// interrupts off (see `Cpu`); the rest is atomic.
unsafe impl Sync for Sched {}
// SAFETY: as above.
unsafe impl Send for Sched {}

static SCHED: spin::Once<Sched> = spin::Once::new();

/// The kernel's RCU domain: each CPU reports a quiescent state at every
/// context switch and an extended one while idle.
static RCU: spin::Once<Rcu<MAX_CPUS>> = spin::Once::new();

fn rcu() -> &'static Rcu<MAX_CPUS> {
    RCU.call_once(Rcu::new)
}

fn sched() -> &'static Sched {
    SCHED.get().expect("threads::init not called")
}

fn this_cpu() -> &'static Cpu {
    &sched().cpus[0]
}

/// Now on the scheduler's clock (ns of TSC since reset).
pub fn now() -> Instant {
    Instant(sched().clock.ticks_to_ns(arch::rdtsc()))
}

/// The scheduler's timer hardware as osv-sched's `OneShotTimer`.
struct Hw<'a>(&'a mut OneShot, osv_boot::time::TscClock);

impl OneShotTimer for Hw<'_> {
    fn arm(&mut self, deadline: Option<Instant>) {
        self.0.arm(deadline.map(|d| self.1.ns_to_ticks(d.as_nanos())));
    }
}

/// Starts the scheduler on the boot CPU: the running code becomes the thread
/// `main`. Idempotent. Returns the timer mode in use.
pub fn init() -> Result<TimerMode, &'static str> {
    if let Some(s) = SCHED.get() {
        // SAFETY: read-only look at the mode, which never changes.
        return Ok(unsafe { &*s.cpus[0].timer.get() }.mode());
    }
    let timer = OneShot::new(SCHED_TIMER_VECTOR).ok_or("no local APIC timer")?;
    let mode = timer.mode();
    if !osv_boot::rt::trap::set_handler(SCHED_TIMER_VECTOR, on_timer) {
        return Err("cannot install the timer handler");
    }
    let clock = osv_boot::rt::clock();
    let t0 = Instant(clock.ticks_to_ns(arch::rdtsc()));
    let main = Box::into_raw(
        Thread::new("main", Weight::NORMAL, false).map_err(|_| "no memory for the main thread")?,
    );
    let idle = Box::into_raw(
        Thread::new("idle", Weight::NORMAL, true).map_err(|_| "no memory for the idle thread's stacks")?,
    );
    // SAFETY: just allocated, not shared yet.
    unsafe {
        let top = (*idle).stack_top();
        *(*idle).ctx.get() = X86Switch::init(top, idle_entry, 0);
    }
    arch::without_interrupts(|| {
        SCHED.call_once(|| Sched {
            cpus: [Cpu {
                id: CpuId::new(0),
                sched: UnsafeCell::new(CpuSched::new(CpuId::new(0), FairParams::default(), t0)),
                timer: UnsafeCell::new(timer),
                armed: UnsafeCell::new(None),
                current: AtomicPtr::new(main),
                idle: AtomicPtr::new(idle),
                exited: AtomicPtr::new(core::ptr::null_mut()),
                need_resched: AtomicBool::new(false),
                rcu_idle: AtomicBool::new(false),
                timer_irqs: AtomicU64::new(0),
                timer_spurious: AtomicU64::new(0),
                timer_early: AtomicU64::new(0),
                switches: AtomicU64::new(0),
            }],
            wakeups: WakeupMatrix::new(),
            clock,
        });
        let cpu = this_cpu();
        // SAFETY: interrupts are off; this CPU's state.
        let s = unsafe { &mut *cpu.sched.get() };
        // SAFETY: `main` is live (leaked above).
        let m = unsafe { &*main };
        m.switched_in.store(arch::rdtsc(), Ordering::Relaxed);
        let _ = s.spawn(t0, Runtime::new(Weight::NORMAL), m.id());
        let r = s.reschedule(t0, false);
        debug_assert_eq!(r.next, Some(m.id()));
    });
    Ok(mode)
}

/// The running thread.
pub fn current() -> &'static Thread {
    // SAFETY: `current` always points at a live thread (the running one).
    unsafe { &*this_cpu().current.load(Ordering::Relaxed) }
}

/// Disables preemption of the running thread (nests).
pub fn preempt_disable() {
    current().preempt.fetch_add(1, Ordering::Relaxed);
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// Re-enables preemption; reschedules if an interrupt asked for it meanwhile.
pub fn preempt_enable() {
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    let t = current();
    if t.preempt.fetch_sub(1, Ordering::Relaxed) == 1 && this_cpu().need_resched.load(Ordering::Relaxed) {
        arch::without_interrupts(|| {
            // SAFETY: interrupts are off.
            unsafe { reschedule(this_cpu(), Kind::Preempt) }
        });
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The thread gives up the CPU if its state says it waits; otherwise a
    /// plain scheduling point.
    Preempt,
    /// `yield_now`.
    Yield,
}

/// Drains this CPU's incoming wakeups, decides, arms the timer and switches.
///
/// # Safety
/// Interrupts are off; `cpu` is this CPU.
unsafe fn reschedule(cpu: &'static Cpu, kind: Kind) {
    let sc = sched();
    // SAFETY: this CPU's scheduler, interrupts off (the caller's contract).
    let s = unsafe { &mut *cpu.sched.get() };
    let now = now();
    let cur_ptr = cpu.current.load(Ordering::Relaxed);
    let idle_ptr = cpu.idle.load(Ordering::Relaxed);
    // SAFETY: the running thread is live.
    let cur = unsafe { &*cur_ptr };
    cpu.need_resched.store(false, Ordering::Relaxed);
    sc.wakeups.drain(cpu.id, |id| {
        let t = thread(id);
        if core::ptr::eq(t, cur) {
            // Woken before it got off the CPU: it simply keeps running.
            t.parker.state().set_running();
        } else {
            t.parker.state().set_queued();
            // SAFETY: the thread is off the CPU; its runtime is ours to use.
            let rt = unsafe { *t.runtime.get() };
            let _ = s.wake(now, rt, id);
        }
    });
    let blocked = !core::ptr::eq(cur_ptr, idle_ptr) && cur.parker.state().state() != State::Running;
    let r = if kind == Kind::Yield && !blocked { s.yield_now(now) } else { s.reschedule(now, blocked) };
    if let Some((rt, id)) = r.blocked {
        // SAFETY: the thread is leaving the CPU; only this CPU touches it.
        unsafe { *thread(id).runtime.get() = rt };
    }
    sc.wakeups.set_running(cpu.id, s.published_runtime());
    // SAFETY: this CPU's timer state, interrupts off.
    let armed = unsafe { &mut *cpu.armed.get() };
    if *armed != r.timer {
        *armed = r.timer;
        // SAFETY: as above.
        Hw(unsafe { &mut *cpu.timer.get() }, sc.clock).arm(r.timer);
    }
    let next_ptr = r.next.map_or(idle_ptr, |id| id.0 as *mut Thread);
    if next_ptr != cur_ptr {
        // SAFETY: interrupts off; `next` is live and not running anywhere.
        unsafe { switch_to(cpu, cur, &*next_ptr) };
    }
}

/// # Safety
/// Interrupts are off; `next` is not running and its context is valid.
unsafe fn switch_to(cpu: &'static Cpu, prev: &Thread, next: &Thread) {
    let tsc = arch::rdtsc();
    let ran = sched().clock.ticks_to_ns(tsc.wrapping_sub(prev.switched_in.load(Ordering::Relaxed)));
    prev.cpu_ns.fetch_add(ran, Ordering::Relaxed);
    next.switched_in.store(tsc, Ordering::Relaxed);
    next.parker.state().set_running();
    if prev.parker.state().state() == State::Terminated {
        cpu.exited.store(prev as *const Thread as *mut Thread, Ordering::Relaxed);
    }
    cpu.current.store(next as *const Thread as *mut Thread, Ordering::Relaxed);
    cpu.switches.fetch_add(1, Ordering::Relaxed);
    // A context switch is a quiescent state: `prev` is not in a read-side
    // section (those disable preemption and never block).
    rcu_leave_idle(cpu);
    rcu().quiescent(cpu.id);
    // SAFETY: interrupts are off until the switch completes; the stack
    // belongs to `next`, alive while it runs.
    unsafe { osv_boot::rt::set_irq_stack(next.irq_top) };
    // SAFETY: interrupts off; `next`'s context was saved by a switch or
    // made by `init`; `prev` stays alive until resumed (or until its joiner
    // sees `off_cpu`, set only after this switch completed).
    unsafe { X86Switch::switch(&mut *prev.ctx.get(), &*next.ctx.get()) };
    after_switch(cpu);
}

/// Leaves RCU's idle state if this CPU is in it (interrupts off).
fn rcu_leave_idle(cpu: &Cpu) {
    if cpu.rcu_idle.swap(false, Ordering::Relaxed) {
        rcu().exit_idle(cpu.id);
    }
}

/// A read-side critical section: preemption is disabled while it lives, so
/// this CPU passes no quiescent state. Never block inside one.
pub struct RcuReadGuard {
    guard: ReadGuard,
}

impl RcuReadGuard {
    /// The proof osv-sched's [`osv_sched::rcu::RcuPtr::read`] takes.
    pub fn guard(&self) -> &ReadGuard {
        &self.guard
    }
}

impl Drop for RcuReadGuard {
    fn drop(&mut self) {
        preempt_enable();
    }
}

/// Enters a read-side critical section.
pub fn rcu_read_lock() -> RcuReadGuard {
    preempt_disable();
    // SAFETY: preemption is disabled until the guard drops, and the guard's
    // holder must not block (documented on `RcuReadGuard`): no context
    // switch, hence no quiescent state and no migration, on this CPU.
    RcuReadGuard { guard: unsafe { ReadGuard::new() } }
}

/// Waits until `gp` is over. The caller must not be in a read-side section:
/// its own CPU's pass through here counts as a quiescent state.
pub fn rcu_wait(gp: &GracePeriod<MAX_CPUS>) {
    while !rcu().is_complete(gp) {
        arch::without_interrupts(|| {
            let cpu = this_cpu();
            rcu_leave_idle(cpu);
            rcu().quiescent(cpu.id);
        });
        if !rcu().is_complete(gp) {
            sleep(Nanos::from_micros(100));
        }
    }
}

/// Waits for a grace period that starts now, then gives back `r` to be
/// freed (OSv's `synchronize_rcu` followed by the free).
pub fn rcu_reclaim<T>(r: Retired<T>) -> Box<T> {
    let mut d = rcu().retire(r);
    loop {
        rcu_wait(d.grace_period());
        match d.try_reclaim(rcu()) {
            Ok(b) => return b,
            Err(back) => d = back,
        }
    }
}

/// Runs the callbacks of `q` whose grace periods are over.
pub fn rcu_run_completed(q: &mut DeferQueue<MAX_CPUS>) -> usize {
    q.run_completed(rcu())
}

/// Queues `r` to be freed after a grace period that starts now.
pub fn rcu_defer_free<T: Send + Sync + 'static>(q: &mut DeferQueue<MAX_CPUS>, r: Retired<T>) {
    q.defer_free(rcu(), r);
}

/// Run by whichever thread a switch resumes.
fn after_switch(cpu: &Cpu) {
    let e = cpu.exited.swap(core::ptr::null_mut(), Ordering::Relaxed);
    if !e.is_null() {
        // SAFETY: a terminated thread stays allocated until its joiner sees
        // this flag.
        unsafe { (*e).off_cpu.store(true, Ordering::Release) };
    }
}

extern "C" fn idle_entry(_: usize) -> ! {
    after_switch(this_cpu());
    let cpu = this_cpu();
    loop {
        arch::cli();
        // SAFETY: interrupts are off.
        unsafe { reschedule(cpu, Kind::Preempt) };
        // Back here: nothing to run. Announce idle, then look at the rings
        // once more (the wakers' side of the handshake sends an IPI).
        if sched().wakeups.try_idle(cpu.id) {
            // Idle is an extended quiescent state: no grace period waits
            // for this CPU while it halts (left in `rcu_leave_idle` by
            // whatever runs first after the halt).
            cpu.rcu_idle.store(true, Ordering::Relaxed);
            rcu().enter_idle(cpu.id);
            // SAFETY: the IDT handles every vector; `sti; hlt` is atomic.
            unsafe { arch::enable_and_halt() };
            arch::cli();
            rcu_leave_idle(cpu);
        }
        sched().wakeups.leave_idle(cpu.id);
    }
}

extern "C" fn thread_entry(arg: usize) -> ! {
    after_switch(this_cpu());
    // SAFETY: `arg` is the thread's own address (see `spawn`), live while
    // it runs; the entry is taken once, by the thread itself.
    let f = unsafe { (*(*(arg as *const Thread)).entry.get()).take() };
    // SAFETY: the IDT handles every vector.
    unsafe { arch::sti() };
    if let Some(f) = f {
        f();
    }
    exit()
}

fn exit() -> ! {
    let me = current();
    me.done.store(true, Ordering::SeqCst);
    let j = me.joiner.load(Ordering::SeqCst);
    if !j.is_null() {
        // SAFETY: a joiner stays alive while it waits for us.
        unpark(unsafe { &*j });
    }
    arch::cli();
    me.parker.state().set_terminated();
    // SAFETY: interrupts are off.
    unsafe { reschedule(this_cpu(), Kind::Preempt) };
    unreachable!("a terminated thread was switched back in")
}

/// Options for [`spawn_with`].
pub struct Builder<'a> {
    /// The thread's name.
    pub name: &'a str,
    /// Its weight (priority: CPU share relative to others).
    pub weight: Weight,
}

/// Starts a thread of normal weight.
pub fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle {
    spawn_with(Builder { name, weight: Weight::NORMAL }, f)
}

/// Starts a thread; panics if its stacks cannot be allocated (like
/// `std::thread::spawn`; [`try_spawn_with`] returns the error instead).
pub fn spawn_with(b: Builder<'_>, f: impl FnOnce() + Send + 'static) -> JoinHandle {
    match try_spawn_with(b, f) {
        Ok(h) => h,
        Err(e) => panic!("cannot start a thread: {e:?}"),
    }
}

/// Starts a thread, or says why its stacks could not be allocated.
pub fn try_spawn_with(b: Builder<'_>, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle, StackError> {
    let t = Thread::new(b.name, b.weight, true)?;
    // SAFETY: not shared yet.
    unsafe { *t.entry.get() = Some(Box::new(f)) };
    let ptr = Box::into_raw(t);
    // SAFETY: just leaked; freed only by `join`.
    let t = unsafe { &*ptr };
    // SAFETY: the thread owns its stack for its whole life.
    unsafe { *t.ctx.get() = X86Switch::init(t.stack_top(), thread_entry, ptr as usize) };
    t.parker.state().prepare_wait();
    let claimed = t.parker.state().wake();
    debug_assert!(claimed);
    queue_woken(t);
    Ok(JoinHandle { thread: ptr })
}

/// A started thread; `join` waits for it and frees it. Dropping the handle
/// without joining leaks the thread's memory once it ends.
pub struct JoinHandle {
    thread: *mut Thread,
}

// SAFETY: the handle is an owning pointer to a `Sync` thread record.
unsafe impl Send for JoinHandle {}

/// What a finished thread leaves.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Its name.
    pub name: String,
    /// The CPU time it used.
    pub cpu_time: Nanos,
}

impl JoinHandle {
    /// The thread.
    pub fn thread(&self) -> &Thread {
        // SAFETY: live until `join` consumes the handle.
        unsafe { &*self.thread }
    }

    /// Waits for the thread to end, frees it, and returns what it used.
    pub fn join(self) -> Finished {
        let t = self.thread();
        let me = current();
        t.joiner.store(me as *const Thread as *mut Thread, Ordering::SeqCst);
        while !t.done.load(Ordering::SeqCst) {
            park_current();
        }
        while !t.off_cpu.load(Ordering::Acquire) {
            yield_now();
        }
        let f = Finished { name: t.name.clone(), cpu_time: t.cpu_time() };
        // SAFETY: terminated and off its CPU: nothing refers to it any more.
        drop(unsafe { Box::from_raw(self.thread) });
        f
    }
}

/// Puts a thread claimed by `WaitState::wake` on its CPU's wakeup ring and
/// reschedules here if it is this CPU and preemption is allowed.
fn queue_woken(t: &Thread) {
    arch::without_interrupts(|| {
        let cpu = this_cpu();
        let dst = CpuId::new(t.cpu.load(Ordering::Relaxed));
        // SAFETY: off the CPU or being woken: the runtime is not changing.
        let rtt = unsafe { (*t.runtime.get()).scaled() };
        let mut id = t.id();
        loop {
            match sched().wakeups.wake(cpu.id, dst, id, rtt) {
                Ok(_ipi) => break,
                Err(back) => {
                    // Full ring (only with SMP): drain it ourselves.
                    id = back;
                    // SAFETY: interrupts off.
                    unsafe { reschedule(cpu, Kind::Preempt) };
                }
            }
        }
        if dst == cpu.id {
            if current().preempt.load(Ordering::Relaxed) == 0 {
                // SAFETY: interrupts off.
                unsafe { reschedule(cpu, Kind::Preempt) };
            } else {
                cpu.need_resched.store(true, Ordering::Relaxed);
            }
        }
    });
}

fn unpark(t: &Thread) {
    if t.parker.unpark() {
        t.woken_tsc.store(arch::rdtsc(), Ordering::Relaxed);
        queue_woken(t);
    }
}

struct Blocker;

impl Block for Blocker {
    fn block(&self, _state: &WaitState) {
        arch::without_interrupts(|| {
            // SAFETY: interrupts off; the state says waiting (or waking),
            // so reschedule takes the thread off the CPU until woken.
            unsafe { reschedule(this_cpu(), Kind::Preempt) }
        });
    }
}

/// Parks the running thread until its token is set (may return spuriously).
fn park_current() {
    preempt_disable();
    current().parker.park(&Blocker);
    preempt_enable();
}

/// Gives the CPU to the next queued thread, if any.
pub fn yield_now() {
    arch::without_interrupts(|| {
        // SAFETY: interrupts off.
        unsafe { reschedule(this_cpu(), Kind::Yield) }
    });
}

/// Sleeps until `deadline` on the scheduler's clock.
pub fn sleep_until(deadline: Instant) {
    let me = current();
    let id = arch::without_interrupts(|| {
        let cpu = this_cpu();
        // SAFETY: this CPU's scheduler, interrupts off.
        let s = unsafe { &mut *cpu.sched.get() };
        let id = s.add_timer(deadline, me.id());
        // Arm the hardware if this deadline is the new earliest.
        // SAFETY: as above.
        let armed = unsafe { &mut *cpu.armed.get() };
        let want = s.timer_deadline();
        if *armed != want {
            *armed = want;
            // SAFETY: as above.
            Hw(unsafe { &mut *cpu.timer.get() }, sched().clock).arm(want);
        }
        id
    });
    while now() < deadline {
        park_current();
    }
    arch::without_interrupts(|| {
        // SAFETY: this CPU's scheduler, interrupts off.
        let _ = unsafe { &mut *this_cpu().sched.get() }.cancel_timer(id);
    });
}

/// Sleeps for `d`.
pub fn sleep(d: Nanos) {
    sleep_until(now() + d);
}

fn on_timer(_frame: &mut TrapFrame) {
    if let Some(l) = osv_boot::rt::lapic() {
        l.eoi();
    }
    let cpu = this_cpu();
    cpu.timer_irqs.fetch_add(1, Ordering::Relaxed);
    // SAFETY: interrupt handlers run with interrupts off, on this CPU.
    let armed = unsafe { core::mem::take(&mut *cpu.armed.get()) };
    match armed {
        None => cpu.timer_spurious.fetch_add(1, Ordering::Relaxed),
        Some(d) if now() < d => cpu.timer_early.fetch_add(1, Ordering::Relaxed),
        Some(_) => 0,
    };
    let now = now();
    loop {
        // SAFETY: as above.
        let due = unsafe { &mut *cpu.sched.get() }.pop_expired(now);
        let Some(id) = due else { break };
        let t = thread(id);
        if t.parker.unpark() {
            t.woken_tsc.store(arch::rdtsc(), Ordering::Relaxed);
            let rtt = 0.0; // the IPI decision is moot on the same CPU
            let dst = CpuId::new(t.cpu.load(Ordering::Relaxed));
            if sched().wakeups.wake(cpu.id, dst, id, rtt).is_err() {
                // A full ring: drain it first, then the push succeeds.
                // SAFETY: interrupts off.
                unsafe { reschedule(cpu, Kind::Preempt) };
                let _ = sched().wakeups.wake(cpu.id, dst, id, rtt);
            }
        }
    }
    if current().preempt.load(Ordering::Relaxed) == 0 {
        // Preemption on interrupt return: the frame stays on this thread's
        // interrupt stack until it is switched back in.
        // SAFETY: interrupts off, this CPU.
        unsafe { reschedule(cpu, Kind::Preempt) };
    } else {
        cpu.need_resched.store(true, Ordering::Relaxed);
    }
}

/// Timer interrupts this CPU has taken.
pub fn timer_interrupts() -> u64 {
    this_cpu().timer_irqs.load(Ordering::Relaxed)
}

/// Timer interrupts on this CPU: (all, with nothing armed, before the armed
/// deadline).
pub fn timer_stats() -> (u64, u64, u64) {
    let c = this_cpu();
    (
        c.timer_irqs.load(Ordering::Relaxed),
        c.timer_spurious.load(Ordering::Relaxed),
        c.timer_early.load(Ordering::Relaxed),
    )
}

/// Context switches on this CPU.
pub fn switches() -> u64 {
    this_cpu().switches.load(Ordering::Relaxed)
}

/// The kernel's [`Park`] for osv-sched's mutex, condvar and semaphore.
#[derive(Clone, Copy, Debug)]
pub struct KernelPark;

/// Wakes one kernel thread.
#[derive(Clone, Copy, Debug)]
pub struct KernelUnparker(*const Thread);

// SAFETY: a handle to a `Sync` thread record that stays alive while the
// thread waits (the wait queues hold it only then).
unsafe impl Send for KernelUnparker {}
// SAFETY: as above.
unsafe impl Sync for KernelUnparker {}

impl Unpark for KernelUnparker {
    fn unpark(&self) {
        // SAFETY: see the `Send` impl.
        unpark(unsafe { &*self.0 });
    }
}

impl Park for KernelPark {
    type Unparker = KernelUnparker;
    fn current() -> KernelUnparker {
        KernelUnparker(current())
    }
    fn park() {
        park_current();
    }
}

/// A mutex that blocks kernel threads.
pub type Mutex<T> = osv_sched::mutex::Mutex<T, KernelPark>;
/// A condition variable for [`Mutex`].
pub type Condvar = osv_sched::condvar::Condvar<KernelPark>;
