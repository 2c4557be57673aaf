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
//! SMP: every CPU the ACPI MADT lists (up to [`MAX_CPUS`]) is started by
//! [`start_aps`] (osv-boot's INIT-SIPI-SIPI) and runs its own `CpuSched`,
//! timer and idle thread. A thread belongs to one CPU (`Thread::cpu`); a
//! wakeup from another CPU goes through osv-sched's lock-free
//! (source, destination) rings, with a wakeup IPI only when the crate says
//! `Ipi::Needed`. Placement (documented on [`place`]): a thread that is
//! started, or woken while fully off its CPU, goes to its own CPU unless
//! that one is busy and another online CPU is less loaded. Balancing
//! (documented on [`push_one`]): at its scheduling points a CPU with queued
//! threads pushes one, through the same rings, to a CPU that osv-sched's
//! `Balancer` says is less loaded for long enough; idle CPUs do nothing to
//! balance (tickless). No CPU ever touches another's run queue, so each
//! keeps "interrupts off on its own CPU" as its only lock. A running thread
//! never moves; a queued one may, so per-CPU state used across a scheduling
//! point needs interrupts off or a raised preempt count.
//! [`Builder::pin`] fixes a thread to one CPU.
//!
//! Locking: a CPU's scheduler state is touched only on that CPU with
//! interrupts off. Preemption: the timer interrupt reschedules before it
//! returns (the interrupted thread's trap frame stays on its own interrupt
//! stack) unless the thread's preempt-disable count is non-zero, in which
//! case the reschedule happens when the count drops to zero. A thread is
//! never preempted while it is marked waiting (the count is raised around
//! every park, as OSv's `prepare_wait`), so a wakeup cannot be lost.
//!

use crate::mm::{GuardedStack, StackError};
use alloc::boxed::Box;
use alloc::string::String;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use osv_boot::rt::context::{self, Context};
use osv_boot::rt::timer::{OneShot, TimerMode};
use osv_boot::trap::TrapFrame;
use osv_boot::{arch, println, BootInfo};
use osv_sched::balance::{BalanceParams, Balancer, CpuLoad, LoadAvg};
use osv_sched::cpu::CpuSched;
use osv_sched::fair::{ExportedRuntime, FairParams, Runtime, Weight};
use osv_sched::hal::{ContextSwitch, OneShotTimer};
use osv_sched::park::{Park, Unpark};
use osv_sched::rcu::{DeferQueue, GracePeriod, Rcu, ReadGuard, Retired};
use osv_sched::time::{Instant, Nanos};
use osv_sched::wait::{Block, Parker, State, WaitState};
use osv_sched::wakeup::{Ipi, ThreadId, WakeupMatrix};
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

/// CPUs the scheduler can run on (the ones ACPI lists, up to this many).
pub const MAX_CPUS: usize = 8;
const _: () = assert!(MAX_CPUS <= osv_boot::rt::smp::MAX_CPUS);
/// Slots of each (source, destination) wakeup ring.
const RING_CAP: usize = 64;
/// The scheduler's timer vector (the in-kernel LAPIC tests use 0x40).
pub const SCHED_TIMER_VECTOR: u8 = 0x30;
/// The cross-CPU wakeup IPI.
pub const WAKEUP_VECTOR: u8 = 0x31;
/// Time constant of each CPU's decayed load (how long an imbalance must
/// last before the balancer acts on it).
const LOAD_TAU: Nanos = Nanos::from_millis(10);
/// osv-sched's balancing policy (half a thread of lasting imbalance, its
/// default).
const BALANCER: Balancer = Balancer::new(BalanceParams { min_avg_imbalance: 1 << 15 });
/// Bytes of each of a CPU's exception IST stacks (IST1-3).
const IST_SIZE: usize = 32 * 1024;
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
    /// Its thread-local storage; the context carries its thread pointer.
    tls: crate::tls::TlsBlock,
    entry: UnsafeCell<Option<Box<dyn FnOnce() + Send>>>,
    done: AtomicBool,
    /// Set by the CPU once a terminated thread's context is no longer used.
    off_cpu: AtomicBool,
    joiner: AtomicPtr<Thread>,
    /// The CPU whose run queue, timers and wakeup rings hold the thread.
    cpu: AtomicU32,
    /// Pinned to `cpu`: never placed elsewhere.
    pinned: bool,
    /// Running on a CPU or not yet fully switched away from it (its
    /// context is not saved): it must not be placed on another CPU.
    on_cpu: AtomicBool,
    /// A timer of `cpu`'s list may hold the thread (`sleep_until`): it
    /// stays on `cpu` until the timer is cancelled.
    timer_pending: AtomicBool,
    /// `runtime` in osv-sched's CPU-independent form
    /// (`Fair::export`), set when the thread leaves a CPU's run queue
    /// (blocks, or is pushed by the balancer); `scale_cpu` is the CPU whose
    /// scale `runtime` is in (`u32::MAX`: none). A thread that arrives on
    /// another CPU is imported there (`CpuSched::migrate_in`) instead of
    /// being woken with a foreign runtime. Written by the CPU the thread
    /// leaves, read by the one it arrives on (ordered by the wakeup ring).
    exported: UnsafeCell<Option<ExportedRuntime>>,
    scale_cpu: AtomicU32,
}

// SAFETY: the `UnsafeCell` fields are touched only under the rules written
// on each (the owning CPU with interrupts off, or the thread itself before
// it runs); everything else is atomic or immutable.
unsafe impl Sync for Thread {}
// SAFETY: as above.
unsafe impl Send for Thread {}

impl Thread {
    fn new(name: &str, weight: Weight, stacks: bool, pin: Option<usize>) -> Result<Box<Thread>, StackError> {
        let (stack, irq_stack, irq_top) = if stacks {
            let s = GuardedStack::new(STACK_SIZE, name)?;
            let i = GuardedStack::new(IRQ_STACK_SIZE, &alloc::format!("{name} (interrupts)"))?;
            let top = i.top() & !15;
            (Some(s), Some(i), top)
        } else {
            (None, None, osv_boot::rt::boot_irq_stack_top())
        };
        let tls = crate::tls::TlsBlock::new().ok_or(StackError::OutOfMemory)?;
        let mut ctx = Context::default();
        // SAFETY: the block lives in the thread record, as long as the thread.
        unsafe { ctx.set_thread_pointer(tls.thread_pointer()) };
        Ok(Box::new(Thread {
            name: name.into(),
            ctx: UnsafeCell::new(ctx),
            parker: Parker::new(),
            runtime: UnsafeCell::new(Runtime::new(weight)),
            cpu_ns: AtomicU64::new(0),
            switched_in: AtomicU64::new(0),
            woken_tsc: AtomicU64::new(0),
            preempt: AtomicU32::new(0),
            irq_top,
            _stack: stack,
            _irq_stack: irq_stack,
            tls,
            entry: UnsafeCell::new(None),
            done: AtomicBool::new(false),
            off_cpu: AtomicBool::new(false),
            joiner: AtomicPtr::new(core::ptr::null_mut()),
            cpu: AtomicU32::new(pin.unwrap_or(0) as u32),
            pinned: pin.is_some(),
            on_cpu: AtomicBool::new(false),
            timer_pending: AtomicBool::new(false),
            exported: UnsafeCell::new(None),
            scale_cpu: AtomicU32::new(u32::MAX),
        }))
    }

    /// Makes the thread start at `entry(arg)` on its stack when first
    /// switched to, with its own thread pointer.
    ///
    /// # Safety
    /// The thread is not running and not shared yet.
    unsafe fn start_at(&self, entry: extern "C" fn(usize) -> !, arg: usize) {
        let mut c = X86Switch::init(self.stack_top(), entry, arg);
        // SAFETY: the block lives as long as the thread.
        unsafe { c.set_thread_pointer(self.tls.thread_pointer()) };
        // SAFETY: the caller's contract: nobody else touches the context.
        unsafe { *self.ctx.get() = c };
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

    /// The CPU the thread belongs to (where it runs or will run next).
    pub fn cpu(&self) -> usize {
        self.cpu.load(Ordering::Relaxed) as usize
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
    /// Made on the CPU itself when it starts (its own local APIC).
    timer: UnsafeCell<Option<OneShot>>,
    apic_id: AtomicU32,
    /// Running its scheduler.
    online: AtomicBool,
    /// Threads that belong here and are queued, running or on their way
    /// (not the idle thread): +1 when [`place`] puts a woken or new thread
    /// here, -1 when one blocks or ends here (or, woken while still
    /// running, was counted twice).
    load: AtomicU32,
    ipis_sent: AtomicU64,
    ipis_received: AtomicU64,
    /// Runnable threads (queued and running) at this CPU's last scheduling
    /// point, and the decayed average the balancer reads (0 while idle).
    runnable: AtomicU32,
    avg: AtomicU64,
    /// This CPU's decayed load; touched only here, interrupts off.
    load_avg: UnsafeCell<LoadAvg>,
    /// Queued threads this CPU handed to another CPU ([`push_one`]).
    pushed: AtomicU64,
    armed: UnsafeCell<Option<Instant>>,
    current: AtomicPtr<Thread>,
    idle: AtomicPtr<Thread>,
    /// A terminated thread this CPU just switched away from.
    exited: AtomicPtr<Thread>,
    /// The thread this CPU just switched away from (its `on_cpu` is cleared
    /// by whatever runs next, once its context is saved).
    prev: AtomicPtr<Thread>,
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
    /// Thread placements that chose another CPU than the thread's own (the
    /// balancer's moves are counted per CPU, `Cpu::pushed`).
    migrations: AtomicU64,
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

/// The CPU this runs on. Call with interrupts off (or preemption
/// disabled), or the answer may be stale by the time it is used.
fn this_cpu() -> &'static Cpu {
    &sched().cpus[osv_boot::rt::smp::cpu_index()]
}

/// The index of the CPU this runs on (stable only while the caller cannot
/// migrate: with interrupts off or preemption disabled; otherwise a
/// preempted thread may be moved by the balancer, see [`push_one`]).
pub fn cpu_index() -> usize {
    osv_boot::rt::smp::cpu_index()
}

/// CPUs running the scheduler.
pub fn online_cpus() -> usize {
    SCHED.get().map_or(1, |s| s.cpus.iter().filter(|c| c.online.load(Ordering::Acquire)).count())
}

/// Whether CPU `i` runs the scheduler.
pub fn cpu_online(i: usize) -> bool {
    SCHED.get().is_some_and(|s| s.cpus.get(i).is_some_and(|c| c.online.load(Ordering::Acquire)))
}

/// Now on the scheduler's clock (ns of TSC since reset).
pub fn now() -> Instant {
    Instant(sched().clock.ticks_to_ns(arch::rdtsc()))
}

/// The scheduler's timer hardware as osv-sched's `OneShotTimer`.
struct Hw<'a>(&'a mut Option<OneShot>, osv_boot::time::TscClock);

impl OneShotTimer for Hw<'_> {
    fn arm(&mut self, deadline: Option<Instant>) {
        if let Some(t) = self.0.as_mut() {
            t.arm(deadline.map(|d| self.1.ns_to_ticks(d.as_nanos())));
        }
    }
}

fn new_cpu(i: usize, t0: Instant) -> Cpu {
    Cpu {
        id: CpuId::new(i as u32),
        sched: UnsafeCell::new(CpuSched::new(CpuId::new(i as u32), FairParams::default(), t0)),
        timer: UnsafeCell::new(None),
        apic_id: AtomicU32::new(0),
        online: AtomicBool::new(false),
        load: AtomicU32::new(0),
        ipis_sent: AtomicU64::new(0),
        ipis_received: AtomicU64::new(0),
        runnable: AtomicU32::new(0),
        avg: AtomicU64::new(0),
        load_avg: UnsafeCell::new(LoadAvg::new(LOAD_TAU, t0)),
        pushed: AtomicU64::new(0),
        armed: UnsafeCell::new(None),
        current: AtomicPtr::new(core::ptr::null_mut()),
        idle: AtomicPtr::new(core::ptr::null_mut()),
        exited: AtomicPtr::new(core::ptr::null_mut()),
        prev: AtomicPtr::new(core::ptr::null_mut()),
        need_resched: AtomicBool::new(false),
        rcu_idle: AtomicBool::new(false),
        timer_irqs: AtomicU64::new(0),
        timer_spurious: AtomicU64::new(0),
        timer_early: AtomicU64::new(0),
        switches: AtomicU64::new(0),
    }
}

/// Starts the scheduler on the boot CPU: the running code becomes the thread
/// `main` (pinned to CPU 0). Idempotent. Returns the timer mode in use.
pub fn init() -> Result<TimerMode, &'static str> {
    if let Some(s) = SCHED.get() {
        // SAFETY: read-only look at the mode, which never changes.
        return unsafe { &*s.cpus[0].timer.get() }.as_ref().map(OneShot::mode).ok_or("no timer");
    }
    let timer = OneShot::new(SCHED_TIMER_VECTOR).ok_or("no local APIC timer")?;
    let mode = timer.mode();
    if !osv_boot::rt::trap::set_handler(SCHED_TIMER_VECTOR, on_timer)
        || !osv_boot::rt::trap::set_handler(WAKEUP_VECTOR, on_wakeup_ipi)
    {
        return Err("cannot install the scheduler's interrupt handlers");
    }
    let clock = osv_boot::rt::clock();
    let t0 = Instant(clock.ticks_to_ns(arch::rdtsc()));
    osv_boot::rt::tls::layout()
        .map_err(|_| "the kernel's TLS segment is not laid out as x86-64 variant II")?;
    let mut main =
        Thread::new("main", Weight::NORMAL, false, Some(0)).map_err(|_| "no memory for the main thread")?;
    // main is running: its thread pointer goes into FS now (later switches
    // load it from its context).
    // SAFETY: main's block lives as long as main (never freed).
    unsafe { osv_boot::rt::tls::set_thread_pointer(main.tls.thread_pointer()) };
    // main's interrupt stack, and the boot CPU's exception stacks, above
    // guard pages (osv-boot's static boot stacks have none).
    let irq =
        GuardedStack::new(IRQ_STACK_SIZE, "main (interrupts)").map_err(|_| "no memory for main's stacks")?;
    main.irq_top = irq.top() & !15;
    main._irq_stack = Some(irq);
    let ist = ist_stacks(0).map_err(|_| "no memory for the exception stacks")?;
    let main = Box::into_raw(main);
    let idle = Box::into_raw(
        Thread::new("idle-0", Weight::NORMAL, true, Some(0))
            .map_err(|_| "no memory for the idle thread's stacks")?,
    );
    // SAFETY: just allocated, not shared yet.
    unsafe { (*idle).start_at(idle_entry, 0) };
    arch::without_interrupts(|| {
        SCHED.call_once(|| Sched {
            cpus: core::array::from_fn(|i| new_cpu(i, t0)),
            wakeups: WakeupMatrix::new(),
            clock,
            migrations: AtomicU64::new(0),
        });
        let sc = sched();
        // CPUs that are not (yet) running are in RCU's extended quiescent
        // state, so no grace period waits for them.
        for c in &sc.cpus[1..] {
            c.rcu_idle.store(true, Ordering::Relaxed);
            rcu().enter_idle(c.id);
        }
        let cpu = &sc.cpus[0];
        // SAFETY: interrupts are off; CPU 0's state, on CPU 0.
        unsafe { *cpu.timer.get() = Some(timer) };
        cpu.apic_id.store(osv_boot::rt::lapic().map_or(0, |l| l.id()), Ordering::Relaxed);
        cpu.current.store(main, Ordering::Relaxed);
        cpu.idle.store(idle, Ordering::Relaxed);
        osv_boot::rt::smp::set_cpu_word(main as u64);
        // SAFETY: interrupts are off; the stacks live for the kernel's life
        // (leaked in `ist_stacks`), and `main`'s interrupt stack lives as
        // long as `main`, which is never freed.
        unsafe {
            for (n, top) in ist.iter().enumerate() {
                osv_boot::rt::set_ist(n + 1, *top);
            }
            osv_boot::rt::set_irq_stack((*main).irq_top);
        }
        // SAFETY: this CPU's scheduler, interrupts off.
        let s = unsafe { &mut *cpu.sched.get() };
        // SAFETY: `main` is live (leaked above).
        let m = unsafe { &*main };
        m.switched_in.store(arch::rdtsc(), Ordering::Relaxed);
        m.on_cpu.store(true, Ordering::Relaxed);
        let _ = s.spawn(t0, Runtime::new(Weight::NORMAL), m.id());
        let r = s.reschedule(t0, false);
        debug_assert_eq!(r.next, Some(m.id()));
        cpu.load.store(1, Ordering::Relaxed);
        cpu.online.store(true, Ordering::Release);
    });
    Ok(mode)
}

/// Guard-paged exception stacks (IST1-3) for CPU `cpu`, kept for the
/// kernel's life.
fn ist_stacks(cpu: usize) -> Result<[u64; 3], StackError> {
    let mut tops = [0u64; 3];
    for (n, top) in tops.iter_mut().enumerate() {
        let s = GuardedStack::new(IST_SIZE, &alloc::format!("cpu{cpu} IST{}", n + 1))?;
        *top = s.top() & !15;
        core::mem::forget(s);
    }
    Ok(tops)
}

/// Starts every other CPU the ACPI MADT lists (after [`init`]); returns how
/// many CPUs run the scheduler. A CPU that does not answer is reported and
/// skipped.
pub fn start_aps(boot: &BootInfo) -> usize {
    if init().is_err() {
        return 1;
    }
    let mut ids = [0u32; osv_boot::rt::smp::MAX_CPUS];
    let n = match osv_boot::rt::smp::cpu_apic_ids(&boot.start_info, &mut ids) {
        Ok(n) => n,
        Err(e) => {
            println!("smp: no CPU list ({e}): running on the boot CPU only");
            return 1;
        }
    };
    let sc = sched();
    let t0 = arch::rdtsc();
    let bsp = sc.cpus[0].apic_id.load(Ordering::Relaxed);
    let mut index = 1;
    for &id in ids[..n].iter().filter(|&&id| id != bsp) {
        if index >= MAX_CPUS {
            println!("smp: CPU with APIC id {id} is beyond MAX_CPUS = {MAX_CPUS}: not started");
            continue;
        }
        match start_one(index, id) {
            Ok(()) => {}
            Err(e) => println!("smp: CPU {index} (APIC id {id}) did not start: {e}; skipped"),
        }
        // A failed index is not reused: a late AP must not take the next
        // one's place.
        index += 1;
    }
    let online = online_cpus();
    println!(
        "smp: {online} CPU(s) online of {n} listed by ACPI, bring-up {} us",
        sc.clock.ticks_to_us(arch::rdtsc().wrapping_sub(t0))
    );
    online
}

fn start_one(index: usize, apic_id: u32) -> Result<(), alloc::string::String> {
    let sc = sched();
    let cpu = &sc.cpus[index];
    let idle = Thread::new(&alloc::format!("idle-{index}"), Weight::NORMAL, true, Some(index))
        .map_err(|e| alloc::format!("idle thread: {e:?}"))?;
    let ist = ist_stacks(index).map_err(|e| alloc::format!("exception stacks: {e:?}"))?;
    let stack_top = idle.stack_top() as u64;
    let irq_top = idle.irq_top;
    let idle = Box::into_raw(idle);
    cpu.apic_id.store(apic_id, Ordering::Relaxed);
    cpu.idle.store(idle, Ordering::Relaxed);
    cpu.current.store(idle, Ordering::Relaxed);
    let cfg = osv_boot::rt::smp::ApConfig {
        stack_top,
        ist: [ist[0], ist[1], ist[2], irq_top],
        entry: ap_entry,
        arg: index,
    };
    osv_boot::rt::smp::start_ap(index, apic_id, &cfg).map_err(|e| alloc::format!("{e:?}"))?;
    // The AP marks itself online once its timer is set up.
    let t0 = arch::rdtsc();
    let limit = sc.clock.ns_to_ticks(osv_boot::rt::smp::AP_TIMEOUT_NS);
    while !cpu.online.load(Ordering::Acquire) {
        if arch::rdtsc().wrapping_sub(t0) > limit {
            return Err("started, but its scheduler did not come up".into());
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// First code of an AP in the kernel: on its idle thread's stack, with
/// interrupts off.
extern "C" fn ap_entry(index: usize) -> ! {
    let cpu = &sched().cpus[index];
    let idle = cpu.idle.load(Ordering::Relaxed);
    osv_boot::rt::smp::set_cpu_word(idle as u64);
    // SAFETY: the idle thread (and its TLS block) lives for the kernel's life.
    unsafe { osv_boot::rt::tls::set_thread_pointer((*idle).tls.thread_pointer()) };
    // SAFETY: this CPU's state, interrupts off, before it is online.
    unsafe { *cpu.timer.get() = OneShot::new(SCHED_TIMER_VECTOR) };
    // SAFETY: the idle thread is live for the kernel's life.
    let t = unsafe { &*idle };
    t.switched_in.store(arch::rdtsc(), Ordering::Relaxed);
    t.on_cpu.store(true, Ordering::Relaxed);
    rcu_leave_idle(cpu);
    cpu.online.store(true, Ordering::Release);
    idle_loop(cpu)
}
/// The running thread.
pub fn current() -> &'static Thread {
    // SAFETY: the per-CPU word always points at a live thread (the one
    // running on this CPU: set at every switch, read in one instruction).
    unsafe { &*(osv_boot::rt::smp::cpu_word() as *const Thread) }
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

/// Drains this CPU's incoming wakeups, decides, balances, arms the timer
/// and switches. When it returns, the caller may run on another CPU than
/// `cpu` (a runnable thread with preemption enabled can be moved by the
/// balancer while queued): callers that go on using per-CPU state raise the
/// preempt count around the call, which keeps them here ([`push_one`]).
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
            // Woken before it got off the CPU: it simply keeps running
            // (and was counted twice in `load`).
            t.parker.state().set_running();
            cpu.load.fetch_sub(1, Ordering::Relaxed);
        } else {
            t.parker.state().set_queued();
            // SAFETY: the thread is off every CPU and was handed to this one
            // (the ring orders the writes of the CPU it left before these
            // reads); its runtime is ours to use.
            let (rt, exported) = unsafe { (*t.runtime.get(), (*t.exported.get()).take()) };
            let _ = match exported {
                Some(e) if t.scale_cpu.load(Ordering::Relaxed) != cpu.id.index() as u32 => {
                    s.migrate_in(now, e, id)
                }
                _ => s.wake(now, rt, id),
            };
            t.scale_cpu.store(cpu.id.index() as u32, Ordering::Relaxed);
        }
    });
    let blocked = !core::ptr::eq(cur_ptr, idle_ptr) && cur.parker.state().state() != State::Running;
    if blocked || cur.preempt.load(Ordering::Relaxed) == 0 {
        // A scheduling point outside any read-side section (those raise the
        // preempt count, and blocking inside one is forbidden) is a
        // quiescent state even when no switch follows: a thread alone on
        // its CPU must not hold up grace periods.
        rcu_leave_idle(cpu);
        rcu().quiescent(cpu.id);
    }
    // Before the decision, which then sets the preemption deadline for the
    // queue as the balancer left it.
    balance(cpu, s, now, blocked);
    let r = if kind == Kind::Yield && !blocked { s.yield_now(now) } else { s.reschedule(now, blocked) };
    if let Some((rt, id)) = r.blocked {
        let t = thread(id);
        // SAFETY: the thread is leaving the CPU; only this CPU touches it.
        unsafe {
            *t.runtime.get() = rt;
            *t.exported.get() = Some(s.fair().export(rt));
        }
        t.scale_cpu.store(cpu.id.index() as u32, Ordering::Relaxed);
        cpu.load.fetch_sub(1, Ordering::Relaxed);
    }
    publish_load(cpu, s);
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

/// Load balancing at a scheduling point, before the decision: folds the
/// runnable count since the last one into this CPU's decayed load and lets
/// [`push_one`] hand a queued thread to a less loaded CPU. `blocked`: the
/// running thread is leaving (not counted).
///
/// Idle CPUs never run this on their own (they stay tickless): a busy CPU,
/// which has its preemption timer armed anyway while it queues threads,
/// pushes to them.
fn balance(cpu: &Cpu, s: &mut CpuSched<ThreadId>, now: Instant, blocked: bool) {
    // SAFETY: this CPU's state, interrupts off (reschedule's contract).
    let la = unsafe { &mut *cpu.load_avg.get() };
    la.update(now, cpu.runnable.load(Ordering::Relaxed));
    if s.queued() > 0 {
        let mut mine = s.load(la.get());
        mine.runnable -= u32::from(blocked && s.current().is_some());
        push_one(cpu, s, now, mine);
    }
}

/// Publishes this CPU's load for the other CPUs' balancing (after the
/// decision). An idle CPU publishes an average of 0: it halts without
/// updating it, and a busy CPU should hand it work at once (the average's
/// hysteresis is for the source's bursts).
fn publish_load(cpu: &Cpu, s: &CpuSched<ThreadId>) {
    // SAFETY: this CPU's state, interrupts off (reschedule's contract).
    let avg = unsafe { &*cpu.load_avg.get() }.get();
    let runnable = s.load(avg).runnable;
    cpu.runnable.store(runnable, Ordering::Relaxed);
    cpu.avg.store(if runnable == 0 { 0 } else { avg }, Ordering::Relaxed);
}

/// Whether the balancer may move thread `t`, queued on this CPU (see
/// [`push_one`]).
fn movable(t: &Thread) -> bool {
    !t.pinned
        && !t.timer_pending.load(Ordering::Acquire)
        && t.preempt.load(Ordering::Relaxed) == 0
        && !t.on_cpu.load(Ordering::Acquire)
}

/// The push side of osv-sched's [`Balancer`]: if the policy says this
/// CPU's imbalance against the least loaded CPU is worth a move and has
/// lasted, the queued thread that would run last here leaves through the
/// (this CPU, destination) wakeup ring with its runtime exported
/// (`CpuSched::migrate_out`, imported by the destination's drain), and the
/// destination gets the wakeup IPI if it is idle or runs something.
///
/// Why this is safe with "interrupts off on the owning CPU" as the only
/// lock: only this CPU touches its run queue, and it is the only producer of
/// its (source, destination) rings (every push to them happens on it with
/// interrupts off). A queued thread is fully off the CPU: its context was
/// saved by the switch that queued it (`on_cpu` is checked anyway). It does
/// not move if it is pinned, if this CPU's timer list may hold it
/// (`timer_pending`), or if its preempt count is raised: it was switched
/// out inside a section that uses this CPU's state across a scheduling
/// point (a wait's `prepare_wait`, the full-ring paths of [`queue_woken`]
/// and [`on_timer`]); such a thread is put back. Other CPUs' loads are
/// their exact thread counts (`Cpu::load`, which a push or placement
/// updates at once, so two pushes never see the same stale idle CPU) with
/// their published averages; the policy's rule 1 then forbids ping-pong.
fn push_one(cpu: &Cpu, s: &mut CpuSched<ThreadId>, now: Instant, mine: CpuLoad) {
    let sc = sched();
    let mut loads: [CpuLoad; MAX_CPUS] = core::array::from_fn(|i| {
        let c = &sc.cpus[i];
        if c.online.load(Ordering::Acquire) {
            CpuLoad { runnable: c.load.load(Ordering::Relaxed), avg: c.avg.load(Ordering::Relaxed) }
        } else {
            // Never a destination.
            CpuLoad { runnable: u32::MAX / 2, avg: u64::MAX / 2 }
        }
    });
    loads[cpu.id.index()] = mine;
    let Some(dst) = BALANCER.push(cpu.id, &loads) else { return };
    // No churn on queues of pinned (or otherwise held) threads: look first.
    if !s.queue().iter().any(|(_, &id)| movable(thread(id))) {
        return;
    }
    // Take queued threads from the end (those that would run last here)
    // until a movable one; put the others back (the decision that follows
    // sets the preemption deadline for the final queue).
    let mut held: [Option<(ExportedRuntime, ThreadId)>; 4] = [None; 4];
    let mut found = None;
    for slot in &mut held {
        let Some((e, id)) = s.migrate_out(now) else { break };
        if movable(thread(id)) {
            found = Some((e, id));
            break;
        }
        *slot = Some((e, id));
    }
    for (e, id) in held.into_iter().flatten() {
        let _ = s.migrate_in(now, e, id);
    }
    let Some((e, id)) = found else { return };
    let t = thread(id);
    // SAFETY: the thread is queued here (off the CPU, context saved): this
    // CPU owns it until the ring hands it over.
    unsafe { *t.exported.get() = Some(e) };
    t.scale_cpu.store(u32::MAX, Ordering::Relaxed);
    t.cpu.store(dst.index() as u32, Ordering::Relaxed);
    // Runtime 0 for the IPI decision: the destination must look at its
    // rings now, whatever it runs (a lone thread there arms no timer).
    // Counted on the destination before it can see the thread (and count
    // it down when it blocks there).
    sc.cpus[dst.index()].load.fetch_add(1, Ordering::Relaxed);
    match sc.wakeups.wake(cpu.id, dst, id, 0u64) {
        Ok(ipi) => {
            cpu.load.fetch_sub(1, Ordering::Relaxed);
            cpu.pushed.fetch_add(1, Ordering::Relaxed);
            if ipi == Ipi::Needed {
                send_wakeup_ipi(cpu, &sc.cpus[dst.index()]);
            }
        }
        Err(_) => {
            // The ring is full: keep the thread.
            sc.cpus[dst.index()].load.fetch_sub(1, Ordering::Relaxed);
            t.cpu.store(cpu.id.index() as u32, Ordering::Relaxed);
            // SAFETY: as above.
            let e = unsafe { (*t.exported.get()).take() };
            if let Some(e) = e {
                let _ = s.migrate_in(now, e, id);
            }
            t.scale_cpu.store(cpu.id.index() as u32, Ordering::Relaxed);
        }
    }
}

/// Queued threads the balancer moved off CPU `i` so far.
pub fn balancer_pushes(i: usize) -> u64 {
    SCHED.get().and_then(|s| s.cpus.get(i)).map_or(0, |c| c.pushed.load(Ordering::Relaxed))
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
    cpu.prev.store(prev as *const Thread as *mut Thread, Ordering::Relaxed);
    next.on_cpu.store(true, Ordering::Relaxed);
    cpu.current.store(next as *const Thread as *mut Thread, Ordering::Relaxed);
    osv_boot::rt::smp::set_cpu_word(next as *const Thread as u64);
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
    // `prev` resumes here, possibly on another CPU than `cpu` (the balancer
    // moves queued threads): the switch that resumed it is this CPU's.
    after_switch(this_cpu());
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
    let p = cpu.prev.swap(core::ptr::null_mut(), Ordering::Relaxed);
    if !p.is_null() {
        // SAFETY: `prev` was live when it switched away, and a thread is
        // freed only after `off_cpu`, set below (for terminated ones) after
        // this. Its context is saved now: another CPU may run it.
        unsafe { (*p).on_cpu.store(false, Ordering::Release) };
    }
    let e = cpu.exited.swap(core::ptr::null_mut(), Ordering::Relaxed);
    if !e.is_null() {
        // SAFETY: a terminated thread stays allocated until its joiner sees
        // this flag.
        unsafe { (*e).off_cpu.store(true, Ordering::Release) };
    }
}

extern "C" fn idle_entry(_: usize) -> ! {
    after_switch(this_cpu());
    idle_loop(this_cpu())
}

fn idle_loop(cpu: &'static Cpu) -> ! {
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
    /// Run only on this CPU (an index below [`MAX_CPUS`]; an offline CPU is
    /// an error). `None`: placed by the scheduler.
    pub pin: Option<usize>,
}

impl<'a> Builder<'a> {
    /// A thread of normal weight, placed by the scheduler.
    pub fn new(name: &'a str) -> Self {
        Builder { name, weight: Weight::NORMAL, pin: None }
    }

    /// Pins the thread to CPU `cpu`.
    pub fn pin(self, cpu: usize) -> Self {
        Builder { pin: Some(cpu), ..self }
    }

    /// Sets the thread's weight.
    pub fn weight(self, weight: Weight) -> Self {
        Builder { weight, ..self }
    }
}

/// Starts a thread of normal weight.
pub fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle {
    spawn_with(Builder::new(name), f)
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
    if b.pin.is_some_and(|c| !cpu_online(c)) {
        return Err(StackError::NoSuchCpu);
    }
    let own = if b.pin.is_some() { b.pin } else { Some(arch::without_interrupts(cpu_index)) };
    let mut t = Thread::new(b.name, b.weight, true, own)?;
    t.pinned = b.pin.is_some();
    // SAFETY: not shared yet.
    unsafe { *t.entry.get() = Some(Box::new(f)) };
    let ptr = Box::into_raw(t);
    // SAFETY: just leaked; freed only by `join`.
    let t = unsafe { &*ptr };
    // SAFETY: the thread owns its stack for its whole life; not running yet.
    unsafe { t.start_at(thread_entry, ptr as usize) };
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

/// The CPU a woken (or new) thread should run on. Placement policy: its own
/// CPU, unless that CPU is busy (runs or queues a thread) and an online CPU
/// with fewer threads exists, in which case the least-loaded one (lowest
/// index on ties). Only a thread that is fully off its CPU (`!on_cpu`: its
/// context is saved and no run queue holds it), is not pinned, and has no
/// pending timer on its CPU may change CPUs; so no CPU ever touches another
/// CPU's run queue or timer list.
fn place(t: &Thread) -> CpuId {
    let own = t.cpu.load(Ordering::Relaxed) as usize;
    let sc = sched();
    let stay = |own: usize| {
        sc.cpus[own].load.fetch_add(1, Ordering::Relaxed);
        CpuId::new(own as u32)
    };
    if t.pinned || t.on_cpu.load(Ordering::Acquire) || t.timer_pending.load(Ordering::Acquire) {
        return stay(own);
    }
    let load = |c: &Cpu| c.load.load(Ordering::Relaxed);
    let own_load = load(&sc.cpus[own]);
    if own_load == 0 && sc.cpus[own].online.load(Ordering::Acquire) {
        return stay(own);
    }
    let best = sc
        .cpus
        .iter()
        .enumerate()
        .filter(|(_, c)| c.online.load(Ordering::Acquire))
        .min_by_key(|(_, c)| load(c))
        .map_or(0, |(i, _)| i);
    let dst = if sc.cpus[own].online.load(Ordering::Acquire) && load(&sc.cpus[best]) >= own_load {
        own
    } else {
        best
    };
    if dst != own {
        sc.migrations.fetch_add(1, Ordering::Relaxed);
        t.cpu.store(dst as u32, Ordering::Relaxed);
    }
    stay(dst)
}

/// Sends the wakeup IPI to `dst`.
fn send_wakeup_ipi(from: &Cpu, dst: &Cpu) {
    if let (Some(l), Ok(id)) = (osv_boot::rt::lapic(), u8::try_from(dst.apic_id.load(Ordering::Relaxed))) {
        from.ipis_sent.fetch_add(1, Ordering::Relaxed);
        l.send_ipi(id, WAKEUP_VECTOR);
    }
}

/// Puts a thread claimed by `WaitState::wake` on its CPU's wakeup ring (the
/// CPU chosen by [`place`]), sends the wakeup IPI when osv-sched says it is
/// needed, and reschedules here if it is this CPU and preemption is allowed.
fn queue_woken(t: &Thread) {
    arch::without_interrupts(|| {
        let cpu = this_cpu();
        let dst = place(t);
        // SAFETY: off the CPU or being woken: the runtime is not changing.
        let rtt = unsafe { (*t.runtime.get()).scaled() };
        let mut id = t.id();
        let ipi = loop {
            match sched().wakeups.wake(cpu.id, dst, id, rtt) {
                Ok(ipi) => break ipi,
                Err(back) => {
                    // A full ring: make its CPU drain it, then retry.
                    id = back;
                    if dst == cpu.id {
                        // The raised count keeps this thread on `cpu` if the
                        // drain queues it (see `push_one`).
                        let me = current();
                        me.preempt.fetch_add(1, Ordering::Relaxed);
                        // SAFETY: interrupts off.
                        unsafe { reschedule(cpu, Kind::Preempt) };
                        me.preempt.fetch_sub(1, Ordering::Relaxed);
                    } else {
                        send_wakeup_ipi(cpu, &sched().cpus[dst.index()]);
                        core::hint::spin_loop();
                    }
                }
            }
        };
        if dst == cpu.id {
            if current().preempt.load(Ordering::Relaxed) == 0 {
                // SAFETY: interrupts off.
                unsafe { reschedule(cpu, Kind::Preempt) };
            } else {
                cpu.need_resched.store(true, Ordering::Relaxed);
            }
        } else if ipi == Ipi::Needed {
            send_wakeup_ipi(cpu, &sched().cpus[dst.index()]);
        }
    });
}

/// The wakeup IPI: the rings have something for this CPU.
fn on_wakeup_ipi(_frame: &mut TrapFrame) {
    if let Some(l) = osv_boot::rt::lapic() {
        l.eoi();
    }
    let cpu = this_cpu();
    cpu.ipis_received.fetch_add(1, Ordering::Relaxed);
    if current().preempt.load(Ordering::Relaxed) == 0 {
        // SAFETY: interrupt handlers run with interrupts off, on this CPU.
        unsafe { reschedule(cpu, Kind::Preempt) };
    } else {
        cpu.need_resched.store(true, Ordering::Relaxed);
    }
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
    // Stay on this CPU while its timer list holds us (see `place`).
    me.timer_pending.store(true, Ordering::Release);
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
    me.timer_pending.store(false, Ordering::Release);
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
            // A sleeper stays on the CPU of its timer (`timer_pending`).
            let rtt = 0u64; // the IPI decision is moot on the same CPU
            let dst = cpu.id;
            cpu.load.fetch_add(1, Ordering::Relaxed);
            if sched().wakeups.wake(cpu.id, dst, id, rtt).is_err() {
                // A full ring: drain it first, then the push succeeds. The
                // raised count keeps the interrupted thread on this CPU if
                // it is queued meanwhile (the loop goes on with `cpu`).
                let me = current();
                me.preempt.fetch_add(1, Ordering::Relaxed);
                // SAFETY: interrupts off.
                unsafe { reschedule(cpu, Kind::Preempt) };
                me.preempt.fetch_sub(1, Ordering::Relaxed);
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

/// Context switches on all CPUs.
pub fn switches_all() -> u64 {
    SCHED.get().map_or(0, |s| s.cpus.iter().map(|c| c.switches.load(Ordering::Relaxed)).sum())
}

/// Placements of a started or woken thread on another CPU than its own.
pub fn migrations() -> u64 {
    SCHED.get().map_or(0, |s| s.migrations.load(Ordering::Relaxed))
}

/// One CPU's counters (a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Timer interrupts taken.
    pub timer_irqs: u64,
    /// Of which with nothing armed.
    pub timer_spurious: u64,
    /// Context switches.
    pub switches: u64,
    /// Wakeup IPIs this CPU sent.
    pub ipis_sent: u64,
    /// Wakeup IPIs this CPU took.
    pub ipis_received: u64,
}

/// The counters of CPU `i` (zero for one that is not online).
pub fn cpu_stats(i: usize) -> CpuStats {
    let Some(c) = SCHED.get().and_then(|s| s.cpus.get(i)) else { return CpuStats::default() };
    CpuStats {
        timer_irqs: c.timer_irqs.load(Ordering::Relaxed),
        timer_spurious: c.timer_spurious.load(Ordering::Relaxed),
        switches: c.switches.load(Ordering::Relaxed),
        ipis_sent: c.ipis_sent.load(Ordering::Relaxed),
        ipis_received: c.ipis_received.load(Ordering::Relaxed),
    }
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
    fn preempt_disable() {
        preempt_disable();
    }
    fn preempt_enable() {
        preempt_enable();
    }
}

/// A mutex that blocks kernel threads.
pub type Mutex<T> = osv_sched::mutex::Mutex<T, KernelPark>;
/// A condition variable for [`Mutex`].
pub type Condvar = osv_sched::condvar::Condvar<KernelPark>;
