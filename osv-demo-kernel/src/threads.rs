//! Kernel threads, first step: osv-sched's `ContextSwitch` over osv-boot's
//! x86_64 switch. The scheduler proper (run queues, timers, preemption)
//! comes with the rest of issue #4; the in-kernel test drives switches by
//! hand.

use osv_boot::rt::context::{self, Context};
use osv_sched::hal::ContextSwitch;

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
