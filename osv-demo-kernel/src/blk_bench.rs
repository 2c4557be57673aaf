//! virtio-blk request costs: 4 KiB sequential and random reads and writes
//! through `/dev/vblkN` (descriptor API → devfs → virtio-blk driver → QEMU).
//!
//! Under QEMU TCG wall time is emulated and noisy, so the figure that means
//! something is the guest instruction count: run with `-icount shift=0`
//! (one instruction = one nanosecond of virtual time) and the command-line
//! flag `icount`, and the nanoseconds printed here *are* instructions per
//! request. `cargo xtask test` does that in its `kernel-bench-icount` stage.
//! How long the guest spins until QEMU completes a request depends on the
//! host, so the figure to compare is the one without that wait
//! ([`BLK_WAIT_NS`](crate::virtio::BLK_WAIT_NS)); both are printed.
//!
//! Both completion modes run, from a scheduler thread: polling (the thread
//! spins on the used ring; the wait is the spin) and interrupts (the
//! thread parks until the device's interrupt; the wait is the parked span,
//! which also holds the switch to the idle thread and back and the
//! interrupt handler, so the interrupt mode's figure without the wait is
//! the request path's own instructions, not everything the CPU did).
//! The interrupts and parks per request are printed beside them.

use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;

use osv_boot::BootInfo;
use osv_vfs::OpenFlags;

use crate::check;
use crate::ktest::{Outcome, Test};
use crate::virtio::{blk_interrupts, BLK_PARKS, BLK_WAIT_NS};

/// Registered after `sched_tests::ALL` in `tests::SUITES`: these tests start
/// the scheduler (interrupt-mode requests come from threads).
pub static ALL: &[Test] = &[
    Test { name: "virtio::blk_interrupts_from_a_thread", run: blk_interrupt_thread },
    Test { name: "bench::virtio_blk_4k_requests", run: blk_requests },
];

/// A thread writes and reads back through `/dev/vblkN` in interrupt mode:
/// the data must round-trip and the device must have interrupted (the
/// parks, when QEMU was slow enough to need them, are printed).
pub(crate) fn blk_interrupt_thread(boot: &'static BootInfo) -> Outcome {
    let Some(path) = crate::tests::scratch_disk() else {
        return Err(crate::tests::missing(boot, "virtio-blk"));
    };
    crate::virtio::enable_thread_waits(boot).map_err(|e| alloc::format!("scheduler: {e}"))?;
    let (irqs0, spurious0) = blk_interrupts();
    check!(crate::virtio::blk_routed() > 0, "no virtio-blk device has a routed interrupt");
    let parks0 = BLK_PARKS.load(Relaxed);
    crate::virtio::set_blk_interrupts(true);
    let t = crate::threads::spawn("blk-irq", move || {
        let r = (|| -> Result<(), alloc::string::String> {
            let v = crate::fs::vfs();
            let fd = v.open(&path, OpenFlags::RDWR, 0).map_err(|e| alloc::format!("open {path}: {e}"))?;
            for i in 0..16u64 {
                let off = FIRST + (REQUESTS + i) * BLOCK;
                let mut buf = alloc::vec![0u8; BLOCK as usize];
                buf[..8].copy_from_slice(&(off ^ 0x1a2b).to_le_bytes());
                v.pwrite(fd, &buf, off as i64).map_err(|e| alloc::format!("write at {off}: {e}"))?;
                let mut back = alloc::vec![0xffu8; BLOCK as usize];
                v.pread(fd, &mut back, off as i64).map_err(|e| alloc::format!("read at {off}: {e}"))?;
                if back != buf {
                    return Err(alloc::format!("read at {off} returned other data"));
                }
            }
            v.close(fd).map_err(|e| alloc::format!("close: {e}"))
        })();
        if let Err(e) = r {
            IRQ_TEST_ERROR.lock().replace(e);
        }
    });
    let _ = t.join();
    crate::virtio::set_blk_interrupts(false);
    crate::virtio::quiesce_watchdog();
    if let Some(e) = IRQ_TEST_ERROR.lock().take() {
        return Err(e.into());
    }
    let (irqs, spurious) = blk_interrupts();
    let parks = BLK_PARKS.load(Relaxed) - parks0;
    // Every request raises its interrupt in the thread (interrupts on);
    // whether the thread had to park depends on how fast QEMU completes
    // it (often inside the notify, under TCG), so parks are only reported.
    check!(irqs - irqs0 >= 16, "32 requests, {} used-buffer interrupts", irqs - irqs0);
    osv_boot::println!(
        "  virtio-blk interrupt mode: 32 requests, {} interrupts ({} spurious), {parks} parks",
        irqs - irqs0,
        spurious - spurious0
    );
    Ok(())
}

static IRQ_TEST_ERROR: spin::Mutex<Option<alloc::string::String>> = spin::Mutex::new(None);

/// Requests per pattern.
const REQUESTS: u64 = 512;
const BLOCK: u64 = 4096;
/// The region used: past the first MiB (sector 0 carries the runner's
/// check pattern).
const FIRST: u64 = 1 << 20;

pub(crate) fn blk_requests(boot: &'static BootInfo) -> Outcome {
    let Some(path) = crate::tests::scratch_disk() else {
        return Err(crate::tests::missing(boot, "virtio-blk"));
    };
    let v = crate::fs::vfs();
    let size = v.stat(&path).map_err(|e| alloc::format!("stat {path}: {e}"))?.size;
    check!(size >= FIRST + REQUESTS * BLOCK, "{path}: {size} bytes is too small");
    let blocks = (size - FIRST) / BLOCK;
    let fd = v.open(&path, OpenFlags::RDWR, 0).map_err(|e| alloc::format!("open {path}: {e}"))?;
    // A fixed permutation-ish walk for the random pattern (an LCG modulo the
    // block count, seeded so every run does the same requests).
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let random: Vec<u64> = (0..REQUESTS)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            FIRST + (x >> 33) % blocks * BLOCK
        })
        .collect();
    let sequential: Vec<u64> = (0..REQUESTS).map(|i| FIRST + i * BLOCK).collect();
    let mut buf = alloc::vec![0u8; BLOCK as usize];
    let mut results = Vec::new();
    // Both modes from the same (scheduler) thread; a device without a
    // routed interrupt polls in both, which the counts below would show.
    crate::virtio::enable_thread_waits(boot).map_err(|e| alloc::format!("scheduler: {e}"))?;
    // Per pattern and operation, polling then interrupts, so both modes of
    // one figure come from the same run, back to back.
    for (pattern, offsets) in [("sequential", &sequential), ("random", &random)] {
        for write in [true, false] {
            let mut modes = [(0u64, 0u64, 0u64, 0u64); 2];
            for (m, interrupts) in [false, true].into_iter().enumerate() {
                crate::virtio::set_blk_interrupts(interrupts);
                let wait_before = BLK_WAIT_NS.load(Relaxed);
                let (irqs_before, _) = blk_interrupts();
                let parks_before = BLK_PARKS.load(Relaxed);
                let start = osv_boot::rt::now_ns();
                for (i, off) in offsets.iter().enumerate() {
                    let r = if write {
                        buf[..8].copy_from_slice(&off.to_le_bytes());
                        buf[8] = i as u8;
                        v.pwrite(fd, &buf, *off as i64)
                    } else {
                        v.pread(fd, &mut buf, *off as i64)
                    };
                    check!(r == Ok(BLOCK as usize), "{pattern} request at {off}: {r:?}");
                    if !write {
                        check!(buf[..8] == off.to_le_bytes(), "{pattern} read at {off} returned other data");
                    }
                }
                let total = osv_boot::rt::now_ns() - start;
                let wait = BLK_WAIT_NS.load(Relaxed) - wait_before;
                let irqs = blk_interrupts().0 - irqs_before;
                let parks = BLK_PARKS.load(Relaxed) - parks_before;
                if interrupts {
                    check!(irqs > 0, "interrupt mode: the device never interrupted");
                } else {
                    check!(
                        parks == 0 && irqs == 0,
                        "polling mode took {irqs} interrupts, parked {parks} times"
                    );
                }
                modes[m] = (total / REQUESTS, (total - wait) / REQUESTS, irqs, parks);
            }
            results.push((pattern, if write { "write" } else { "read" }, modes));
        }
    }
    crate::virtio::set_blk_interrupts(false);
    crate::virtio::quiesce_watchdog();
    v.fsync(fd).map_err(|e| alloc::format!("fsync: {e}"))?;
    v.close(fd).map_err(|e| alloc::format!("close: {e}"))?;
    let unit =
        if boot.cmdline.has_flag("icount") { "guest instructions" } else { "ns (TCG wall time, noisy)" };
    // One line per figure, both modes on it (the xtask stage collects one
    // line per pattern and operation).
    for (pattern, op, [(pt, pw, _, _), (it, iw, irqs, parks)]) in results {
        osv_boot::println!(
            "  virtio-blk 4 KiB {pattern} {op}: polling {pw} {unit} per request without the device wait, {pt} with it; interrupts {iw} without the wait, {it} with it ({irqs} interrupts, {parks} parks; {REQUESTS} requests each)"
        );
    }
    Ok(())
}
