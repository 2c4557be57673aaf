//! loom model of the cross-CPU wakeup rings and the idle/IPI handshake
//! (`osv_sched::wakeup`): every woken thread reaches its CPU exactly once, in
//! push order per source, and an idle CPU is never left halted with work
//! queued (a lost IPI shows up as a deadlock: the halted CPU parks forever).
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_wakeup`
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use osv_sched::wakeup::{Ipi, ThreadId, WakeupMatrix};
use osv_sched::CpuId;

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    // `LOOM_MAX_PREEMPTIONS` (read by `Builder::new`) wins; 2 otherwise.
    b.preemption_bound = b.preemption_bound.or(Some(2));
    b
}

/// The destination CPU: drain, and when nothing is queued go idle and halt
/// (park) until an IPI (unpark). Returns what it received. It keeps its
/// published runtime at 0 (a running thread no wakeup preempts), so only the
/// idle flag and its fences can trigger the IPI that ends the halt.
fn destination<const C: usize, const N: usize>(
    m: &WakeupMatrix<C, N>,
    me: CpuId,
    expect: usize,
) -> Vec<usize> {
    let mut got = Vec::new();
    loop {
        m.drain(me, |t| got.push(t.0));
        if got.len() == expect {
            return got;
        }
        if m.try_idle(me) {
            thread::park(); // hlt; the wakeup IPI ends it
            m.leave_idle(me);
        }
    }
}

#[test]
fn one_source_two_wakes_reach_an_idle_cpu() {
    builder().check(|| {
        let m: Arc<WakeupMatrix<2, 2>> = Arc::new(WakeupMatrix::new());
        m.set_running(CpuId::new(1), Some(0));
        let m2 = m.clone();
        let dst = thread::spawn(move || destination(&m2, CpuId::new(1), 2));
        let dst_thread = dst.thread().clone();
        for t in [7, 9] {
            let ipi = m.wake(CpuId::new(0), CpuId::new(1), ThreadId(t), 1u64).unwrap();
            if ipi == Ipi::Needed {
                dst_thread.unpark();
            }
        }
        assert_eq!(dst.join().unwrap(), [7, 9]);
    });
}

#[test]
fn two_sources_no_loss_no_duplicate() {
    builder().check(|| {
        let m: Arc<WakeupMatrix<3, 1>> = Arc::new(WakeupMatrix::new());
        m.set_running(CpuId::new(2), Some(0));
        let m2 = m.clone();
        let dst = thread::spawn(move || destination(&m2, CpuId::new(2), 2));
        let dst_thread = dst.thread().clone();
        let m3 = m.clone();
        let t2 = dst_thread.clone();
        let src1 = thread::spawn(move || {
            if m3.wake(CpuId::new(1), CpuId::new(2), ThreadId(11), 1u64).unwrap() == Ipi::Needed {
                t2.unpark();
            }
        });
        if m.wake(CpuId::new(0), CpuId::new(2), ThreadId(10), 1u64).unwrap() == Ipi::Needed {
            dst_thread.unpark();
        }
        src1.join().unwrap();
        let mut got = dst.join().unwrap();
        got.sort_unstable();
        assert_eq!(got, [10, 11]);
    });
}

#[test]
fn busy_cpu_gets_ipi_only_to_preempt() {
    builder().check(|| {
        let m: Arc<WakeupMatrix<2, 2>> = Arc::new(WakeupMatrix::new());
        m.set_running(CpuId::new(1), Some(5));
        let m2 = m.clone();
        let src = thread::spawn(move || {
            let a = m2.wake(CpuId::new(0), CpuId::new(1), ThreadId(1), 9u64).unwrap();
            let b = m2.wake(CpuId::new(0), CpuId::new(1), ThreadId(2), 1u64).unwrap();
            (a, b)
        });
        let mut got = Vec::new();
        while got.len() < 2 {
            m.drain(CpuId::new(1), |t| got.push(t.0));
            thread::yield_now();
        }
        assert_eq!(got, [1, 2]);
        assert_eq!(src.join().unwrap(), (Ipi::NotNeeded, Ipi::Needed));
    });
}

/// A one-slot ring: the waker finds it full, sends the IPI and retries; the
/// destination drains; nothing is lost or duplicated across wraparound.
#[test]
fn full_ring_retries_without_loss() {
    builder().check(|| {
        let m: Arc<WakeupMatrix<2, 1>> = Arc::new(WakeupMatrix::new());
        m.set_running(CpuId::new(1), Some(0));
        let m2 = m.clone();
        let dst = thread::spawn(move || destination(&m2, CpuId::new(1), 3));
        let dst_thread = dst.thread().clone();
        for t in [1, 2, 3] {
            loop {
                match m.wake(CpuId::new(0), CpuId::new(1), ThreadId(t), 1u64) {
                    Ok(Ipi::Needed) => {
                        dst_thread.unpark();
                        break;
                    }
                    Ok(Ipi::NotNeeded) => break,
                    Err(_) => {
                        dst_thread.unpark();
                        thread::yield_now();
                    }
                }
            }
        }
        assert_eq!(dst.join().unwrap(), [1, 2, 3]);
    });
}
