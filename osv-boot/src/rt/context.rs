//! The x86_64 thread switch: what a scheduler calls to move the CPU from one
//! kernel thread to another.
//!
//! A voluntary switch is a function call, so it saves only what the System V
//! ABI says a callee must preserve: `rbx`, `rbp`, `r12`-`r15`, the MXCSR
//! control bits and the x87 control word (8 bytes for both). The XMM
//! registers are caller-saved, and a thread preempted by an interrupt has its
//! full FPU/SSE state saved by the interrupt path (`fxsave64` in
//! `osv_trap_common`), so there is no 512-byte save here. The thread
//! pointer (`FS` base, thread-local storage) is switched eagerly.

extern "C" {
    fn osv_context_switch(save_rsp: *mut u64, next_rsp: u64);
    fn osv_thread_trampoline();
}

/// The saved state of a thread that is not running: its stack pointer (the
/// registers are on its stack) and its thread pointer (the `FS` base, see
/// [`tls`](super::tls); 0: none).
#[derive(Debug, Default)]
pub struct Context {
    rsp: u64,
    fs_base: u64,
}

/// MXCSR at reset: all exceptions masked, round to nearest
/// (Intel SDM vol. 1 §10.2.3.1).
const MXCSR_DEFAULT: u64 = 0x1f80;
/// x87 control word after `fninit` (SDM vol. 1 §8.1.5).
const FCW_DEFAULT: u64 = 0x037f;
/// Bytes of the initial frame (see `init`).
const INIT_FRAME: usize = 64;

/// Why a thread context could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextError {
    /// The stack is too small for the initial frame, or its top is not
    /// 16-byte aligned.
    BadStack,
}

impl Context {
    /// A context that runs `entry(arg)` on the stack `[stack_bottom,
    /// stack_top)` when first switched to. `entry` must not return (the
    /// trampoline traps with `ud2` if it does).
    ///
    /// # Safety
    /// 1. The stack range is writable memory owned by the new thread for
    ///    its whole life.
    /// 2. Switching to the context later follows [`switch`]'s contract.
    pub unsafe fn new(
        stack_bottom: usize,
        stack_top: usize,
        entry: extern "C" fn(usize) -> !,
        arg: usize,
    ) -> Result<Self, ContextError> {
        if !stack_top.is_multiple_of(16)
            || stack_top.checked_sub(stack_bottom).is_none_or(|n| n < INIT_FRAME + 16)
        {
            return Err(ContextError::BadStack);
        }
        // From the new rsp up: MXCSR | FCW << 32, r15, r14, r13 (= arg),
        // r12 (= entry), rbx, rbp (= 0: the trace ends here), the return
        // address (the trampoline). After `ret` the stack pointer is
        // stack_top - 16, so the trampoline's `call` is 16-byte aligned.
        let rsp = stack_top - 16 - INIT_FRAME;
        let frame: [u64; 8] = [
            MXCSR_DEFAULT | FCW_DEFAULT << 32,
            0,
            0,
            arg as u64,
            entry as usize as u64,
            0,
            0,
            osv_thread_trampoline as *const () as u64,
        ];
        // SAFETY: the caller owns the stack; the 64 bytes at `rsp` lie
        // inside it (checked above) and are 16-byte aligned.
        unsafe { (rsp as *mut [u64; 8]).write(frame) };
        Ok(Self { rsp: rsp as u64, fs_base: 0 })
    }

    /// The thread pointer the thread runs with (0: none).
    pub fn thread_pointer(&self) -> u64 {
        self.fs_base
    }

    /// Sets the thread pointer [`switch`] loads when it resumes this
    /// context.
    ///
    /// # Safety
    /// `tp` is 0 or a thread pointer from
    /// [`tls::fill_block`](super::tls::fill_block) whose block lives as long
    /// as the thread.
    pub unsafe fn set_thread_pointer(&mut self, tp: u64) {
        self.fs_base = tp;
    }
}

/// Saves the running thread into `from` and resumes `to`. Returns when some
/// later switch resumes `from`.
///
/// # Safety
/// 1. Interrupts are disabled on this CPU (or nothing can switch this CPU
///    meanwhile).
/// 2. `to` was filled by a previous `switch` or made by [`Context::new`],
///    its stack is alive, and no CPU is running it.
/// 3. `from` stays valid (not moved or freed) until the thread is resumed.
pub unsafe fn switch(from: &mut Context, to: &Context) {
    // The thread pointer is eager: one `wrmsr` when the two threads differ
    // (every thread with a TLS block does); nothing else of `FS` changes.
    if from.fs_base != to.fs_base {
        // SAFETY: `to.fs_base` came through `set_thread_pointer`'s contract.
        unsafe { super::tls::set_thread_pointer(to.fs_base) };
    }
    // SAFETY: the caller's contract; the assembly saves the callee-saved
    // registers on the current stack, stores rsp into `from`, and resumes
    // the stack `to` describes.
    unsafe { osv_context_switch(&mut from.rsp, to.rsp) }
}
