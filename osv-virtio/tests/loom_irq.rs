//! loom model of the interrupt rendezvous ([`osv_virtio::irq::WaitSlot`]):
//! a thread that registers, checks the used ring and parks is never left
//! parked when the "device" completes its request and the "interrupt
//! handler" runs at any point of that sequence (no lost wakeup).
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test --release -p osv-virtio --test loom_irq`.
#![cfg(loom)]

use core::num::NonZeroUsize;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use osv_virtio::irq::WaitSlot;

/// The waiter: `prepare` (register), check the used ring, park if empty,
/// repeat. The device: write the used ring, then the interrupt handler
/// notifies the slot and unparks whoever it returns. loom reports a
/// deadlock if the waiter can stay parked forever.
fn model(spurious_interrupt: bool) {
    loom::model(move || {
        let slot = Arc::new(WaitSlot::new());
        let used = Arc::new(AtomicBool::new(false));
        let me = thread::current();
        let waiter = NonZeroUsize::new(1).unwrap();

        let device = {
            let (slot, used) = (slot.clone(), used.clone());
            thread::spawn(move || {
                if spurious_interrupt {
                    // An interrupt before anything is used: the waiter may
                    // be woken with nothing to find and must park again.
                    if slot.notify().is_some() {
                        me.unpark();
                    }
                }
                // The device writes the used ring, then interrupts.
                used.store(true, Ordering::Release);
                if slot.notify() == Some(NonZeroUsize::new(1).unwrap()) {
                    me.unpark();
                }
            })
        };

        loop {
            slot.register(waiter);
            if used.load(Ordering::Acquire) {
                break;
            }
            thread::park();
        }
        slot.unregister();
        device.join().unwrap();
        assert!(used.load(Ordering::Acquire));
    });
}

#[test]
fn no_lost_wakeup() {
    model(false);
}

#[test]
fn spurious_interrupt_then_completion() {
    model(true);
}

/// One round without parking: did the waiter find the used ring empty
/// while the interrupt found no waiter (a lost wakeup)? Counted over all
/// executions loom explores.
fn lost_wakeups(register_first: bool) -> bool {
    static LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    LOST.store(false, std::sync::atomic::Ordering::SeqCst);
    loom::model(move || {
        let slot = Arc::new(WaitSlot::new());
        let used = Arc::new(AtomicBool::new(false));
        let device = {
            let (slot, used) = (slot.clone(), used.clone());
            thread::spawn(move || {
                used.store(true, Ordering::Release);
                slot.notify().is_some()
            })
        };
        let waiter = NonZeroUsize::new(1).unwrap();
        let saw_used = if register_first {
            slot.register(waiter);
            used.load(Ordering::Acquire)
        } else {
            let u = used.load(Ordering::Acquire);
            slot.register(waiter);
            u
        };
        let woke = device.join().unwrap();
        if !saw_used && !woke {
            LOST.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    LOST.load(std::sync::atomic::Ordering::SeqCst)
}

/// The model can fail: registering after the check loses the wakeup in
/// some execution, and loom finds it; registering first never does.
#[test]
fn only_registering_first_is_free_of_lost_wakeups() {
    assert!(lost_wakeups(false), "loom must find the lost wakeup of the broken order");
    assert!(!lost_wakeups(true));
}
