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

use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;

use osv_boot::BootInfo;
use osv_vfs::OpenFlags;

use crate::check;
use crate::ktest::{Outcome, Test};
use crate::virtio::BLK_WAIT_NS;

pub static ALL: &[Test] = &[Test { name: "bench::virtio_blk_4k_requests", run: blk_requests }];

/// Requests per pattern.
const REQUESTS: u64 = 512;
const BLOCK: u64 = 4096;
/// The region used: past the first MiB (sector 0 carries the runner's
/// check pattern).
const FIRST: u64 = 1 << 20;

fn blk_requests(boot: &'static BootInfo) -> Outcome {
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
    for (pattern, offsets) in [("sequential", &sequential), ("random", &random)] {
        for write in [true, false] {
            let wait_before = BLK_WAIT_NS.load(Relaxed);
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
            results.push((
                pattern,
                if write { "write" } else { "read" },
                total / REQUESTS,
                (total - wait) / REQUESTS,
            ));
        }
    }
    v.fsync(fd).map_err(|e| alloc::format!("fsync: {e}"))?;
    v.close(fd).map_err(|e| alloc::format!("close: {e}"))?;
    let unit =
        if boot.cmdline.has_flag("icount") { "guest instructions" } else { "ns (TCG wall time, noisy)" };
    for (pattern, op, total, work) in results {
        osv_boot::println!(
            "  virtio-blk 4 KiB {pattern} {op}: {work} {unit} per request without the device wait, {total} with it ({REQUESTS} requests)"
        );
    }
    Ok(())
}
