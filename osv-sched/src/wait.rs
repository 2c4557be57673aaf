//! Wait and wake with no lost wakeups: the thread state machine of OSv's
//! `thread::wait_until`, `thread::wake` and `thread::stop_wait`.
//!
//! ```text
//!   running ──prepare_wait──▶ waiting ──wake (CAS)──▶ waking ──drained──▶ queued
//!      ▲  ◀──stop_wait (CAS)──┘                          │                  │
//!      └─────────────────────── switched in ◀────────────┴──────────────────┘
//! ```
//!
//! The waiter publishes `waiting` and *then* checks its condition; the waker
//! makes the condition true and *then* tries `waiting → waking`. A `SeqCst`
//! fence on each side (Dekker) means at least one of them sees the other:
//! either the waiter sees the condition and does not sleep, or the waker sees
//! `waiting` and queues the thread. Only the one waker whose compare-exchange
//! succeeds queues the thread, so it is never queued twice. A waiter that
//! finds its condition true but loses the race to a waker (`stop_wait` fails)
//! must let the scheduler finish the wakeup before it runs on.

use crate::sync::{fence, AtomicBool, AtomicU8, Ordering};

/// Where a thread is in its life, from the scheduler's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// On a CPU (or about to leave it without waiting).
    Running = 0,
    /// Announced it will sleep; a waker may claim it.
    Waiting = 1,
    /// Claimed by a waker; on its way to a run queue.
    Waking = 2,
    /// In a run queue.
    Queued = 3,
    /// Exited.
    Terminated = 4,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Running,
            1 => State::Waiting,
            2 => State::Waking,
            3 => State::Queued,
            _ => State::Terminated,
        }
    }
}

/// A thread's atomic scheduling state.
#[derive(Debug)]
pub struct WaitState(AtomicU8);

impl Default for WaitState {
    fn default() -> Self {
        Self::new()
    }
}

impl WaitState {
    /// A running thread.
    pub fn new() -> Self {
        WaitState(AtomicU8::new(State::Running as u8))
    }

    /// The current state (a snapshot).
    pub fn state(&self) -> State {
        State::from_u8(self.0.load(Ordering::Acquire))
    }

    /// `running → waiting`, by the thread itself, before it checks its
    /// wait condition.
    pub fn prepare_wait(&self) {
        debug_assert_eq!(self.state(), State::Running);
        // Relaxed store + SeqCst fence: the fence orders it before the
        // condition's loads (and loom models fences, not SeqCst accesses).
        self.0.store(State::Waiting as u8, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// `waiting → running`, by the thread itself, when its condition came
    /// true. `false`: a waker claimed the thread first; it must block until
    /// the scheduler switches it back in ([`Block::block`]).
    #[must_use = "a failed stop_wait means the thread is being queued and must block"]
    pub fn stop_wait(&self) -> bool {
        self.0
            .compare_exchange(State::Waiting as u8, State::Running as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// `waiting → waking`, by a waker after it made the condition true.
    /// `true`: this caller claimed the thread and must queue it on its CPU
    /// (a run queue or a wakeup ring). `false`: not waiting (already
    /// running, or claimed by another waker).
    #[must_use = "a claimed thread that is not queued never runs again"]
    pub fn wake(&self) -> bool {
        fence(Ordering::SeqCst);
        self.0
            .compare_exchange(State::Waiting as u8, State::Waking as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// `waking → queued`, by the scheduler of the thread's CPU when it takes
    /// the thread from a wakeup ring into its run queue.
    pub fn set_queued(&self) {
        self.0.store(State::Queued as u8, Ordering::Release);
    }

    /// `queued`/`waking → running`, by the scheduler when it switches the
    /// thread in.
    pub fn set_running(&self) {
        self.0.store(State::Running as u8, Ordering::Release);
    }

    /// `running → terminated`, by the exiting thread.
    pub fn set_terminated(&self) {
        self.0.store(State::Terminated as u8, Ordering::Release);
    }
}

/// Switching away from the current thread (the kernel: `schedule()`; tests:
/// parking a host thread).
pub trait Block {
    /// Gives up the CPU while `state` is not [`State::Running`]; returns once
    /// the scheduler has made the thread run again. The scheduler must not
    /// requeue a thread whose state is waiting or waking.
    fn block(&self, state: &WaitState);
}

/// Blocks the current thread (whose state is `state`) until `cond()` holds.
/// `cond` is evaluated with the thread marked waiting, so any waker that makes
/// it true and then calls [`WaitState::wake`] is seen.
pub fn wait_until(state: &WaitState, blocker: &impl Block, mut cond: impl FnMut() -> bool) {
    loop {
        state.prepare_wait();
        if cond() {
            if !state.stop_wait() {
                blocker.block(state);
            }
            return;
        }
        blocker.block(state);
    }
}

/// A parking token on top of the state machine: what the kernel's [`Park`]
/// implementation uses for each thread.
///
/// [`Park`]: crate::park::Park
#[derive(Debug, Default)]
pub struct Parker {
    state: WaitState,
    token: AtomicBool,
}

impl Parker {
    /// A running thread with no token.
    pub fn new() -> Self {
        Parker { state: WaitState::new(), token: AtomicBool::new(false) }
    }

    /// The thread's state machine (for the scheduler).
    pub fn state(&self) -> &WaitState {
        &self.state
    }

    /// By the thread itself: waits for the token, then consumes it.
    pub fn park(&self, blocker: &impl Block) {
        wait_until(&self.state, blocker, || self.token.swap(false, Ordering::Acquire));
    }

    /// By a waker: sets the token. `true`: the caller claimed the thread and
    /// must queue it on its CPU.
    #[must_use = "a claimed thread that is not queued never runs again"]
    pub fn unpark(&self) -> bool {
        // An RMW, so it is totally ordered with the parker's consuming swap
        // (with a plain store here, loom 0.7 finds an execution where the
        // parker's later swap misses the token; RMWs rule it out).
        self.token.swap(true, Ordering::Release);
        self.state.wake()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Never;
    impl Block for Never {
        fn block(&self, _: &WaitState) {
            panic!("must not block");
        }
    }

    #[test]
    fn condition_already_true_does_not_block() {
        let st = WaitState::new();
        wait_until(&st, &Never, || true);
        assert_eq!(st.state(), State::Running);
        assert!(!st.wake(), "a running thread is not claimed");
    }

    #[test]
    fn token_before_park_is_kept() {
        let p = Parker::new();
        assert!(!p.unpark());
        p.park(&Never);
        assert_eq!(p.state().state(), State::Running);
    }

    #[test]
    fn only_one_waker_claims() {
        let st = WaitState::new();
        st.prepare_wait();
        assert!(st.wake());
        assert!(!st.wake());
        assert!(!st.stop_wait());
        st.set_queued();
        st.set_running();
        assert_eq!(st.state(), State::Running);
    }
}
