//! Interrupt-driven completion: the pieces between a device's interrupt and
//! the thread waiting for a queue, kept free of hardware so they run in host
//! tests and under loom.
//!
//! The path of one completion:
//!
//! 1. A thread submits a request and waits through [`Wait`]: before each
//!    look at the used ring it calls [`Wait::prepare`] (the kernel's
//!    implementation registers the thread in the queue's [`WaitSlot`]),
//!    then checks the used ring, and only if that was empty calls
//!    [`Wait::wait`] (the kernel parks the thread). Registering *before*
//!    the check is what makes the protocol free of lost wakeups: an
//!    interrupt that arrives after the check and before the park finds the
//!    waiter registered and unparks it, and the park then returns at once
//!    (park/unpark keep a token, as osv-sched's do).
//! 2. The device raises its interrupt: an MSI-X message on PCI (one vector
//!    per queue, virtio 1.2 §4.1.4.3, programmed with
//!    [`PciTransport::set_queue_msix_vector`](crate::PciTransport::set_queue_msix_vector)),
//!    or its interrupt line on virtio-mmio (§4.2.2: `InterruptStatus`,
//!    acknowledged through `InterruptACK`).
//! 3. The kernel's handler for that vector calls [`on_interrupt`]: it reads
//!    and acknowledges the status through an [`InterruptSource`] (for MSI-X
//!    there is nothing to read: [`MsixSource`]), counts the interrupt in the
//!    [`WaitSlot`] and returns the registered waiter to wake; the kernel
//!    sends the local APIC's end-of-interrupt and unparks that thread.
//! 4. The woken thread polls the used ring again. An interrupt may find
//!    nothing there (a spurious one, one for a request of another thread,
//!    one for the configuration): the thread simply waits again. A device
//!    that never interrupts ends in [`Wait::wait`] returning `false` at the
//!    caller's deadline, and the driver fails the request with a timeout
//!    error after resetting the device, so the buffers are free.
//!
//! Polling stays available: any `FnMut() -> bool` is a [`Wait`] that spins.

use core::num::NonZeroUsize;

use crate::mmio::Mmio;
use crate::sync::{fence, AtomicU64, AtomicUsize, Ordering};
use crate::transport::mmio::reg;
use crate::transport::InterruptStatus;

/// How a blocking driver call waits for its request.
///
/// The driver's loop is: `prepare()`, poll the used ring; if the request
/// finished, `done()` and return; otherwise `wait()`, and `false` from it
/// gives up (the driver resets the device and returns a timeout error).
pub trait Wait {
    /// Called before each poll of the used ring: register as the queue's
    /// waiter so an interrupt from now on wakes this thread.
    fn prepare(&mut self) {}
    /// The used ring had nothing for us: block (or spin) until woken or
    /// until the deadline. `false`: give up.
    fn wait(&mut self) -> bool;
    /// The request finished (or failed): stop being the queue's waiter.
    fn done(&mut self) {}
}

/// Any closure is a polling [`Wait`] (the hook the blocking APIs always
/// took: spin, halt, yield, or give up by returning `false`).
impl<F: FnMut() -> bool> Wait for F {
    fn wait(&mut self) -> bool {
        self()
    }
}

/// The rendezvous between one queue's interrupt and the thread waiting for
/// that queue: a registered waiter (an opaque non-zero word the kernel
/// chooses, e.g. a thread pointer) and a count of interrupts.
///
/// Lock-free: the waiter registers with a store, the interrupt handler reads
/// it. "Waiter registered, then used ring checked" on one side and "used
/// ring written, then waiter read" on the other is the store-buffering
/// pattern: a sequentially consistent fence on each side, between its store
/// and its load, keeps both from missing the other (the model is
/// `tests/loom_irq.rs`; without the fences loom finds the lost wakeup).
#[derive(Debug, Default)]
pub struct WaitSlot {
    waiter: AtomicUsize,
    interrupts: AtomicU64,
}

impl WaitSlot {
    /// An empty slot.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self { waiter: AtomicUsize::new(0), interrupts: AtomicU64::new(0) }
    }

    /// An empty slot (loom's atomics have no `const` constructor).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self { waiter: AtomicUsize::new(0), interrupts: AtomicU64::new(0) }
    }

    /// Registers `waiter` (before the used ring is checked).
    pub fn register(&self, waiter: NonZeroUsize) {
        self.waiter.store(waiter.get(), Ordering::SeqCst);
        // Orders the store before the caller's look at the used ring.
        fence(Ordering::SeqCst);
    }

    /// Removes the waiter (once its request finished).
    pub fn unregister(&self) {
        self.waiter.store(0, Ordering::SeqCst);
    }

    /// The interrupt side: counts the interrupt and returns the waiter to
    /// wake, if one is registered. The waiter stays registered (it may be
    /// woken again; a wakeup with nothing in the used ring is harmless).
    pub fn notify(&self) -> Option<NonZeroUsize> {
        // Orders the device's used-ring write (which the interrupt follows)
        // before the look at the waiter.
        fence(Ordering::SeqCst);
        self.interrupts.fetch_add(1, Ordering::SeqCst);
        NonZeroUsize::new(self.waiter.load(Ordering::SeqCst))
    }

    /// The registered waiter, without counting an interrupt (a kernel's
    /// timeout watchdog wakes it so it can check its deadline).
    pub fn waiter(&self) -> Option<NonZeroUsize> {
        NonZeroUsize::new(self.waiter.load(Ordering::SeqCst))
    }

    /// Interrupts counted so far.
    pub fn interrupts(&self) -> u64 {
        self.interrupts.load(Ordering::Relaxed)
    }
}

/// Where an interrupt handler reads (and thereby acknowledges) why the
/// device interrupted.
pub trait InterruptSource {
    /// Reads the interrupt status and acknowledges it.
    fn ack(&mut self) -> InterruptStatus;
}

/// The interrupt registers of a virtio-mmio device (virtio 1.2 §4.2.2):
/// a handle the interrupt handler owns beside the driver's transport (both
/// may point at the same register window: the handler touches only
/// `InterruptStatus` and `InterruptACK`).
#[derive(Debug)]
pub struct MmioInterrupt<M: Mmio> {
    regs: M,
}

impl<M: Mmio> MmioInterrupt<M> {
    /// The interrupt side of the register window `regs`.
    pub fn new(regs: M) -> Self {
        Self { regs }
    }
}

impl<M: Mmio> InterruptSource for MmioInterrupt<M> {
    fn ack(&mut self) -> InterruptStatus {
        // §4.2.2: InterruptStatus bit 0 "used buffer notification", bit 1
        // "configuration change"; writing the bits to InterruptACK clears
        // them (and lowers the interrupt line).
        let s = self.regs.read32(reg::INTERRUPT_STATUS);
        if s != 0 {
            self.regs.write32(reg::INTERRUPT_ACK, s);
        }
        InterruptStatus::from_bits(s)
    }
}

/// An MSI-X vector bound to one queue (virtio 1.2 §4.1.5.1.2): the message
/// itself says which queue; there is no status to read or acknowledge (the
/// ISR is not used with MSI-X, §4.1.4.5).
#[derive(Clone, Copy, Debug, Default)]
pub struct MsixSource;

impl InterruptSource for MsixSource {
    fn ack(&mut self) -> InterruptStatus {
        InterruptStatus::from_bits(1)
    }
}

/// What one interrupt turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The status read (and acknowledged).
    pub status: InterruptStatus,
    /// The waiter to wake (if the status announced used buffers and a
    /// thread is registered).
    pub wake: Option<NonZeroUsize>,
}

impl Outcome {
    /// No status bit set: not this device's interrupt (a shared line) or a
    /// spurious one.
    pub fn spurious(&self) -> bool {
        self.status.bits() == 0
    }
}

/// The body of an interrupt handler: acknowledge through `source`, and if
/// used buffers were announced, count the interrupt in `slot` and return
/// the waiter to wake. The caller then sends the end-of-interrupt and wakes
/// [`Outcome::wake`].
pub fn on_interrupt(source: &mut impl InterruptSource, slot: &WaitSlot) -> Outcome {
    let status = source.ack();
    let wake = if status.queue() { slot.notify() } else { None };
    Outcome { status, wake }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closures_are_polling_waits() {
        let mut n = 0;
        let mut f = || {
            n += 1;
            n < 3
        };
        let w: &mut dyn Wait = &mut f;
        w.prepare();
        assert!(w.wait());
        assert!(w.wait());
        assert!(!w.wait());
        w.done();
    }

    #[test]
    fn slot_counts_and_returns_the_waiter() {
        let s = WaitSlot::new();
        assert_eq!(s.notify(), None, "nobody registered: nothing to wake");
        let w = NonZeroUsize::new(0x1000).unwrap();
        s.register(w);
        assert_eq!(s.notify(), Some(w));
        assert_eq!(s.notify(), Some(w), "stays registered until done");
        assert_eq!((s.waiter(), s.interrupts()), (Some(w), 3), "peeking counts nothing");
        s.unregister();
        assert_eq!(s.notify(), None);
        assert_eq!(s.interrupts(), 4);
    }

    struct Script(std::vec::Vec<u32>);
    impl InterruptSource for Script {
        fn ack(&mut self) -> InterruptStatus {
            InterruptStatus::from_bits(self.0.pop().unwrap_or(0))
        }
    }

    #[test]
    fn status_bits_decide_the_wakeup() {
        let s = WaitSlot::new();
        let w = NonZeroUsize::new(7).unwrap();
        s.register(w);
        // Popped from the back: used buffers, config change only, nothing.
        let mut src = Script(std::vec![0, 2, 1, 3]);
        let o = on_interrupt(&mut src, &s);
        assert_eq!((o.wake, o.spurious()), (Some(w), false), "used + config");
        let o = on_interrupt(&mut src, &s);
        assert_eq!((o.wake, o.spurious()), (Some(w), false), "used");
        let o = on_interrupt(&mut src, &s);
        assert_eq!((o.wake, o.spurious()), (None, false), "config change wakes no queue waiter");
        assert!(o.status.config_changed());
        let o = on_interrupt(&mut src, &s);
        assert_eq!((o.wake, o.spurious()), (None, true), "spurious");
        assert_eq!(s.interrupts(), 2, "only used-buffer interrupts are counted");
        assert_eq!(on_interrupt(&mut MsixSource, &s).wake, Some(w), "MSI-X: the vector is the queue");
    }
}
