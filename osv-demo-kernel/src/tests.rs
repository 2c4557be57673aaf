//! The in-kernel tests: what can only be checked on the (virtual) machine.

use crate::check;
use crate::ktest::{Outcome, Test};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use osv_boot::rt::{self, probe};
use osv_boot::trap::{vector, TrapFrame};
use osv_boot::{arch, BootInfo};
use osv_sched::hal::ContextSwitch;

/// Every suite the kernel runs, in order: one line per subsystem's test
/// module (each module owns its `ALL` list).
pub static SUITES: &[&[Test]] = &[
    ALL,
    crate::mm::ALL,
    crate::zfs::ALL,
    crate::sched_tests::ALL,
    crate::tls::ALL,
    crate::blk_bench::ALL,
    crate::net::ALL,
    crate::virtiofs::ALL,
];

pub static ALL: &[Test] = &[
    Test { name: "exceptions::breakpoint_is_caught_and_resumed", run: breakpoint },
    Test { name: "exceptions::page_fault_is_caught_and_reported", run: page_fault },
    Test { name: "exceptions::general_protection_is_caught", run: general_protection },
    Test { name: "heap::alloc_and_free", run: heap_alloc_free },
    Test { name: "heap::exhaustion_is_an_error", run: heap_exhaustion },
    Test { name: "memmap::sane", run: memmap_sane },
    Test { name: "memmap::usable_ram_is_readable_and_writable", run: memmap_usable },
    Test { name: "time::tsc_advances", run: tsc_advances },
    Test { name: "time::calibration_is_plausible", run: calibration },
    Test { name: "time::lapic_oneshot_fires_after_deadline", run: lapic_oneshot },
    Test { name: "boot::sse_state_survives_interrupts", run: sse_survives_interrupts },
    Test { name: "vfs::ramfs_file_io_through_descriptors", run: vfs_file_io },
    Test { name: "vfs::namespace_operations_and_no_leaks", run: vfs_namespace },
    Test { name: "sched::context_switch_ping_pong", run: context_switch },
    Test { name: "devfs::null_zero_console", run: devfs_nodes },
    Test { name: "procfs::meminfo_uptime_cpuinfo_mounts", run: procfs_files },
    Test { name: "virtio::blk_through_dev_vblk", run: virtio_blk },
    Test { name: "virtio::rng_through_dev_random", run: virtio_rng },
];

/// Added by `test.fail` on the command line.
pub static DELIBERATE_FAILURE: &[Test] =
    &[Test { name: "ktest::deliberate_failure", run: deliberate_failure }];

fn deliberate_failure(_: &'static BootInfo) -> Outcome {
    check!(1 + 1 == 3, "this test fails on purpose (test.fail)");
    Ok(())
}

fn breakpoint(_: &'static BootInfo) -> Outcome {
    let (before, _) = rt::trap::breakpoints();
    let after_int3: u64;
    // SAFETY: `int3` traps to the breakpoint handler, which records the
    // return RIP and resumes at the next instruction; no state is changed.
    unsafe { core::arch::asm!("lea {0}, [rip + 2f]", "int3", "2:", out(reg) after_int3) };
    let (after, rip) = rt::trap::breakpoints();
    check!(after == before + 1, "breakpoint count {before} -> {after}");
    check!(rip == after_int3, "handler saw rip {rip:#x}, the int3 ends at {after_int3:#x}");
    Ok(())
}

fn page_fault(_: &'static BootInfo) -> Outcome {
    // 8 GiB: outside the boot identity map (0-4 GiB).
    let addr = 0x2_0000_0000u64;
    // SAFETY: a plain read; the fault is expected and caught.
    let r = unsafe { probe::read_u64(addr) };
    match r {
        Err(probe::Fault::Page { addr: a, code }) => {
            check!(a == addr, "cr2 {a:#x}, expected {addr:#x}");
            check!(!code.present() && !code.write() && !code.fetch(), "error code {code}");
        }
        other => return Err(alloc::format!("expected a page fault, got {other:?}").into()),
    }
    // A write fault reports the write bit.
    // SAFETY: the target is unmapped, so nothing is written; the fault is caught.
    match unsafe { probe::write_u64(addr + 8, 1) } {
        Err(probe::Fault::Page { addr: a, code }) => {
            check!(a == addr + 8 && code.write(), "write fault at {a:#x}: {code}");
        }
        other => return Err(alloc::format!("expected a write page fault, got {other:?}").into()),
    }
    // And a mapped address still reads fine afterwards.
    let x = 0x5a5a_1234_u64;
    // SAFETY: reading a live local.
    let v = unsafe { probe::read_u64(&raw const x as u64) };
    check!(v == Ok(x), "{v:?}");
    Ok(())
}

fn general_protection(_: &'static BootInfo) -> Outcome {
    // SAFETY: a read of a non-canonical address faults (#GP) and is caught.
    let r = unsafe { probe::read_u64(0x8000_0000_0000_0000) };
    check!(r == Err(probe::Fault::Other { vector: vector::GENERAL_PROTECTION, error_code: 0 }), "{r:?}");
    Ok(())
}

fn heap_alloc_free(_: &'static BootInfo) -> Outcome {
    let base = crate::heap::used();
    {
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        check!(big.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        let mut m = BTreeMap::new();
        for i in 0..10_000u32 {
            m.insert(i.wrapping_mul(2_654_435_761), Box::new(i));
        }
        check!(m.len() == 10_000);
        check!(m.values().map(|b| u64::from(**b)).sum::<u64>() == 49_995_000);
        check!(crate::heap::used() >= base + (1 << 20));
    }
    let after = crate::heap::used();
    check!(after == base, "heap use {base} before, {after} after freeing everything");
    Ok(())
}

fn heap_exhaustion(_: &'static BootInfo) -> Outcome {
    let (lo, hi) = *crate::heap::HEAP_RANGE.get().ok_or("heap not initialised")?;
    let mut v: Vec<u8> = Vec::new();
    // More than the whole heap: must be an error, not a panic or a hang.
    let r = v.try_reserve_exact((hi - lo) as usize + 1);
    check!(r.is_err(), "reserving more than the heap succeeded");
    // And the heap still works.
    let mut w = Vec::new();
    check!(w.try_reserve(4096).is_ok());
    w.push(1u8);
    Ok(())
}

fn memmap_sane(boot: &'static BootInfo) -> Outcome {
    let m = &boot.memory;
    check!(!m.ranges().is_empty(), "no usable memory");
    let mut prev_end = 0;
    for r in m.ranges() {
        check!(r.start() % 4096 == 0 && r.end() % 4096 == 0, "{r:?} not page-aligned");
        check!(r.start() >= prev_end, "{r:?} overlaps or is out of order");
        check!(r.start() >= 0x10_0000, "{r:?} is in the first MiB");
        check!(!r.overlaps(boot.kernel), "{r:?} overlaps the kernel image {:?}", boot.kernel);
        prev_end = r.end();
    }
    // QEMU's -m default is 128 MiB; the runner uses 256 MiB. Usable RAM is
    // what the loader reported less the first MiB and the kernel.
    check!(m.total() >= 64 << 20, "only {} KiB usable", m.total() >> 10);
    check!(m.total() + boot.kernel.len() + (1 << 20) >= boot.ram_total, "memory lost");
    check!(m.total() < boot.ram_total);
    check!(boot.kernel.start() == 0x10_0000 && !boot.kernel.is_empty(), "{:?}", boot.kernel);
    Ok(())
}

fn memmap_usable(boot: &'static BootInfo) -> Outcome {
    let (heap_lo, heap_hi) = *crate::heap::HEAP_RANGE.get().ok_or("heap not initialised")?;
    for r in boot.memory.ranges() {
        // Touch the first and last word of each usable range below 4 GiB,
        // outside the heap, and restore what was there.
        for addr in [r.start(), r.end() - 8] {
            if addr >= 1 << 32 || (heap_lo..heap_hi).contains(&addr) {
                continue;
            }
            // SAFETY: usable RAM nobody owns yet (not the kernel, not the
            // heap); the original value is written back.
            let old = unsafe { probe::read_u64(addr) }.map_err(|f| alloc::format!("{addr:#x}: {f:?}"))?;
            // SAFETY: as above.
            unsafe { probe::write_u64(addr, !old) }.map_err(|f| alloc::format!("{addr:#x}: {f:?}"))?;
            // SAFETY: as above.
            let new = unsafe { probe::read_u64(addr) };
            // SAFETY: as above.
            unsafe { probe::write_u64(addr, old) }.map_err(|f| alloc::format!("{addr:#x}: {f:?}"))?;
            check!(new == Ok(!old), "{addr:#x} did not keep a written value");
        }
    }
    Ok(())
}

fn tsc_advances(_: &'static BootInfo) -> Outcome {
    let mut prev = arch::rdtsc();
    let first = prev;
    for _ in 0..10_000 {
        let now = arch::rdtsc();
        check!(now >= prev, "TSC went backwards: {prev} -> {now}");
        prev = now;
    }
    check!(prev > first, "TSC did not advance over 10000 reads");
    let t0 = rt::now_ns();
    let t1 = rt::now_ns();
    check!(t1 >= t0);
    Ok(())
}

fn calibration(boot: &'static BootInfo) -> Outcome {
    let hz = boot.tsc.hz();
    check!((100_000_000..20_000_000_000).contains(&hz), "TSC at {hz} Hz");
    if rt::lapic().is_some() {
        let l = boot.lapic_timer_hz;
        check!((1_000_000..20_000_000_000).contains(&l), "LAPIC timer at {l} Hz");
    }
    Ok(())
}

static TIMER_FIRED: AtomicU64 = AtomicU64::new(0);
static TIMER_FIRED_TSC: AtomicU64 = AtomicU64::new(0);
const TIMER_VECTOR: u8 = 0x40;

fn on_timer(_: &mut TrapFrame) {
    TIMER_FIRED_TSC.store(arch::rdtsc(), Ordering::Relaxed);
    TIMER_FIRED.fetch_add(1, Ordering::Relaxed);
    if let Some(l) = rt::lapic() {
        l.eoi();
    }
}

fn lapic_oneshot(boot: &'static BootInfo) -> Outcome {
    let lapic = rt::lapic().ok_or("no local APIC")?;
    check!(rt::trap::set_handler(TIMER_VECTOR, on_timer));
    let period_ns = 2_000_000u64; // 2 ms
    let ticks = u32::try_from(u128::from(boot.lapic_timer_hz) * u128::from(period_ns) / 1_000_000_000)
        .map_err(|_| "period does not fit the timer")?;
    let before = TIMER_FIRED.load(Ordering::Relaxed);
    let start = arch::rdtsc();
    lapic.oneshot(TIMER_VECTOR, ticks);
    let limit = boot.tsc.ns_to_ticks(1_000_000_000);
    while TIMER_FIRED.load(Ordering::Relaxed) == before && arch::rdtsc() - start < limit {
        // SAFETY: the IDT is loaded and the timer vector has a handler.
        unsafe { arch::enable_and_halt() };
    }
    arch::cli();
    rt::trap::clear_handler(TIMER_VECTOR);
    let fired = TIMER_FIRED.load(Ordering::Relaxed) - before;
    check!(fired == 1, "timer fired {fired} times in 1 s (one-shot)");
    let elapsed = boot.tsc.ticks_to_ns(TIMER_FIRED_TSC.load(Ordering::Relaxed) - start);
    // The timer may not fire early. Both clocks were calibrated against the
    // PIT over a few ms; allow 5% for that calibration error.
    check!(elapsed >= period_ns * 95 / 100, "fired after {elapsed} ns, armed for {period_ns} ns");
    Ok(())
}

fn sse_survives_interrupts(boot: &'static BootInfo) -> Outcome {
    // Keep values in SSE registers across timer interrupts whose handlers
    // run Rust (which uses SSE): the entry path must save and restore them.
    let lapic = rt::lapic().ok_or("no local APIC")?;
    check!(rt::trap::set_handler(TIMER_VECTOR, on_timer));
    let ticks = (boot.lapic_timer_hz / 10_000).max(1) as u32; // 100 us
    let mut bad = 0u32;
    for round in 0..20u64 {
        let before = TIMER_FIRED.load(Ordering::Relaxed);
        lapic.oneshot(TIMER_VECTOR, ticks);
        let pattern = 0x0123_4567_89ab_cdef_u64 ^ round;
        let out: u64;
        // SAFETY: only xmm7 and a scratch register are used, both declared;
        // `sti; hlt` waits for the timer, whose handler is installed.
        unsafe {
            core::arch::asm!(
                "movq xmm7, {p}",
                "sti",
                "hlt",
                "cli",
                "movq {o}, xmm7",
                p = in(reg) pattern,
                o = out(reg) out,
                out("xmm7") _,
            );
        }
        if TIMER_FIRED.load(Ordering::Relaxed) == before {
            continue; // woke for something else; nothing to judge
        }
        if out != pattern {
            bad += 1;
        }
    }
    rt::trap::clear_handler(TIMER_VECTOR);
    check!(bad == 0, "xmm7 clobbered across {bad} interrupts");
    Ok(())
}

fn vfs_file_io(_: &'static BootInfo) -> Outcome {
    use osv_vfs::{OpenFlags, Whence};
    let v = crate::fs::vfs();
    v.mkdir("/tmp", 0o755).map_err(|e| alloc::format!("mkdir /tmp: {e}"))?;
    let fd = v
        .open("/tmp/data", OpenFlags::CREAT | OpenFlags::RDWR | OpenFlags::EXCL, 0o644)
        .map_err(|e| alloc::format!("open: {e}"))?;
    let a: Vec<u8> = (0..6000u32).map(|i| (i % 253) as u8).collect();
    let b = [7u8; 4096];
    let n = v.writev(fd, &[&a, &b]).map_err(|e| alloc::format!("writev: {e}"))?;
    check!(n == a.len() + b.len(), "wrote {n}");
    check!(v.lseek(fd, 0, Whence::Set) == Ok(0));
    let mut back = alloc::vec![0u8; n];
    let r = v.read(fd, &mut back).map_err(|e| alloc::format!("read: {e}"))?;
    check!(r == n && back[..a.len()] == a[..] && back[a.len()..] == b[..]);
    let mut one = [0u8; 3];
    check!(v.pread(fd, &mut one, 253) == Ok(3) && one == [0, 1, 2], "{one:?}");
    // A sparse write far out reads back zeros in the hole.
    check!(v.pwrite(fd, b"end", 1 << 20) == Ok(3));
    check!(v.pread(fd, &mut one, 512 * 1024) == Ok(3) && one == [0, 0, 0]);
    let st = v.fstat(fd).map_err(|e| alloc::format!("fstat: {e}"))?;
    check!(st.size == (1 << 20) + 3, "size {}", st.size);
    // File times come from the boot clock: after boot, not after now.
    let now_ns = rt::now_ns();
    let mtime_ns = st.mtime.sec as u64 * 1_000_000_000 + u64::from(st.mtime.nsec);
    check!(mtime_ns > 0 && mtime_ns <= now_ns, "mtime {:?}, now {now_ns} ns", st.mtime);
    // O_EXCL on an existing file.
    check!(
        v.open("/tmp/data", OpenFlags::CREAT | OpenFlags::EXCL | OpenFlags::RDWR, 0o644)
            == Err(osv_vfs::Errno::EEXIST)
    );
    v.close(fd).map_err(|e| alloc::format!("close: {e}"))?;
    check!(v.close(fd) == Err(osv_vfs::Errno::EBADF));
    Ok(())
}

fn vfs_namespace(_: &'static BootInfo) -> Outcome {
    use osv_vfs::{Errno, OpenFlags, VType};
    let v = crate::fs::vfs();
    let live_before = crate::fs::root().live_nodes();
    v.mkdir("/ns", 0o755).map_err(|e| alloc::format!("mkdir: {e}"))?;
    let fd =
        v.open("/ns/a", OpenFlags::CREAT | OpenFlags::WRONLY, 0o644).map_err(|e| alloc::format!("{e}"))?;
    check!(v.write(fd, b"hello") == Ok(5));
    v.close(fd).map_err(|e| alloc::format!("{e}"))?;
    v.rename("/ns/a", "/ns/b").map_err(|e| alloc::format!("rename: {e}"))?;
    check!(v.stat("/ns/a") == Err(Errno::ENOENT));
    v.link("/ns/b", "/ns/c").map_err(|e| alloc::format!("link: {e}"))?;
    check!(v.stat("/ns/c").map(|s| s.nlink) == Ok(2));
    v.symlink("b", "/ns/s").map_err(|e| alloc::format!("symlink: {e}"))?;
    check!(v.readlink("/ns/s").as_deref() == Ok("b"));
    check!(v.stat("/ns/s").map(|s| s.size) == Ok(5), "stat follows the link");
    check!(v.lstat("/ns/s").map(|s| s.kind) == Ok(VType::Symlink));
    let dir = v.open("/ns", OpenFlags::DIRECTORY, 0).map_err(|e| alloc::format!("{e}"))?;
    let mut names: Vec<_> =
        v.getdents(dir, 64).map_err(|e| alloc::format!("{e}"))?.into_iter().map(|d| d.name).collect();
    names.sort();
    check!(names.iter().filter(|n| !n.starts_with('.')).eq(["b", "c", "s"].iter()), "{names:?}");
    v.close(dir).map_err(|e| alloc::format!("{e}"))?;
    check!(v.rmdir("/ns") == Err(Errno::ENOTEMPTY));
    check!(v.chdir("/ns").is_ok() && v.getcwd().as_deref() == Ok("/ns"));
    check!(v.chdir("/").is_ok());
    for n in ["/ns/b", "/ns/c", "/ns/s"] {
        v.unlink(n).map_err(|e| alloc::format!("unlink {n}: {e}"))?;
    }
    v.rmdir("/ns").map_err(|e| alloc::format!("rmdir: {e}"))?;
    v.drop_caches();
    let live = crate::fs::root().live_nodes();
    check!(live == live_before, "ramfs nodes: {live_before} before, {live} after removing everything");
    Ok(())
}

/// Skips a device test when QEMU was started without the device, but fails
/// it when the runner said (`expect=virtio-...`) that it attached one.
pub(crate) fn missing(boot: &'static BootInfo, name: &str) -> crate::ktest::NotPassed {
    if boot.cmdline.value("expect").is_some_and(|e| e.split(',').any(|x| x == name)) {
        alloc::format!("no {name} device, but the runner attached one").into()
    } else {
        crate::ktest::NotPassed::Skipped(alloc::format!("no {name} device (QEMU started without one)"))
    }
}

/// xorshift64*: a seeded, repeatable stream for test data.
struct TestRng(u64);

impl TestRng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Sector 0 as the runner expects it: a signature line, then bytes 0..=255
/// repeating (`xtask/src/stages.rs` checks the same layout).
fn host_check_sector() -> Vec<u8> {
    let sig = b"osv-demo-kernel virtio-blk test sector\n";
    let mut v: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
    v[..sig.len()].copy_from_slice(sig);
    v
}

/// The first bytes of the runner's scratch disk (`scratch_disk` in
/// xtask/src/main.rs).
const SCRATCH_MAGIC: &[u8; 24] = b"osv scratch disk, write\n";

/// The runner's scratch disk: the block device that starts with
/// `SCRATCH_MAGIC`, or with the sector `virtio_blk` leaves there. Other
/// disks (a ZFS pool's vdevs) are never written.
pub(crate) fn scratch_disk() -> Option<alloc::string::String> {
    use osv_vfs::OpenFlags;
    let v = crate::fs::vfs();
    let done = host_check_sector();
    crate::fs::mounted().block_devices.iter().map(|(n, _)| alloc::format!("/dev/{n}")).find(|p| {
        let mut head = [0u8; 64];
        v.open(p, OpenFlags::RDONLY, 0).is_ok_and(|fd| {
            let n = v.pread(fd, &mut head, 0);
            let _ = v.close(fd);
            n == Ok(head.len()) && (head.starts_with(SCRATCH_MAGIC) || head[..] == done[..head.len()])
        })
    })
}

fn virtio_blk(boot: &'static BootInfo) -> Outcome {
    use osv_vfs::{OpenFlags, VType};
    let v = crate::fs::vfs();
    let Some(path) = scratch_disk() else {
        return Err(missing(boot, "virtio-blk"));
    };
    let st = v.stat(&path).map_err(|e| alloc::format!("stat {path}: {e}"))?;
    check!(st.kind == VType::BlockDevice, "{path} is {:?}", st.kind);
    let size = st.size;
    check!(size >= 1 << 20, "{path}: {size} bytes");
    let fd = v.open(&path, OpenFlags::RDWR, 0).map_err(|e| alloc::format!("open {path}: {e}"))?;
    // Random writes across the whole disk, 1-8 sectors each, some at
    // unaligned offsets (devfs does the read-modify-write), one region per
    // 1/32 of the disk so they do not overlap; then read every one back.
    let mut rng = TestRng(0x9e37_79b9_7f4a_7c15 ^ arch::rdtsc());
    let slot = size / 32;
    let mut written: Vec<(u64, Vec<u8>)> = Vec::new();
    for i in 0..32u64 {
        let len = 512 * (1 + rng.next() % 8) - if i % 4 == 3 { 100 } else { 0 };
        let off = (i * slot + rng.next() % (slot - len)).max(512);
        let off = if i % 4 == 3 { off | 7 } else { off & !511 };
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let n = v.pwrite(fd, &data, off as i64).map_err(|e| alloc::format!("pwrite at {off}: {e}"))?;
        check!(n == data.len(), "short write at {off}: {n}");
        written.push((off, data));
    }
    // A known sector the runner checks in the image file after QEMU exits
    // (proof that the data reached the host's disk, not just a cache).
    check!(v.pwrite(fd, &host_check_sector(), 0) == Ok(512));
    v.fsync(fd).map_err(|e| alloc::format!("fsync (virtio flush): {e}"))?;
    for (off, data) in &written {
        let mut back = alloc::vec![0u8; data.len()];
        let n = v.pread(fd, &mut back, *off as i64).map_err(|e| alloc::format!("pread at {off}: {e}"))?;
        check!(n == data.len() && &back == data, "{path} at {off}: read back differs");
    }
    // The last sector, exactly, and the end of the device.
    let last = alloc::vec![0xa5u8; 512];
    check!(v.pwrite(fd, &last, (size - 512) as i64) == Ok(512));
    let mut back = alloc::vec![0u8; 1024];
    check!(v.pread(fd, &mut back, (size - 512) as i64) == Ok(512), "read at the end is cut to the device");
    check!(back[..512] == last[..]);
    check!(v.pread(fd, &mut back, size as i64) == Ok(0), "read at the end of the device is not EOF");
    v.close(fd).map_err(|e| alloc::format!("close: {e}"))?;
    Ok(())
}

fn virtio_rng(boot: &'static BootInfo) -> Outcome {
    use osv_vfs::OpenFlags;
    if crate::fs::mounted().entropy.is_none() {
        return Err(missing(boot, "virtio-rng"));
    }
    let v = crate::fs::vfs();
    let mut a = [0u8; 256];
    let mut b = [0u8; 256];
    for (path, buf) in [("/dev/random", &mut a), ("/dev/urandom", &mut b)] {
        let fd = v.open(path, OpenFlags::RDONLY, 0).map_err(|e| alloc::format!("open {path}: {e}"))?;
        let n = v.read(fd, buf).map_err(|e| alloc::format!("read {path}: {e}"))?;
        check!(n == buf.len(), "{path}: {n} bytes");
        v.close(fd).map_err(|e| alloc::format!("close: {e}"))?;
    }
    check!(a != b, "two reads returned the same 256 bytes");
    // About half of the 2048 bits set: the mean is 1024 and the standard
    // deviation 22.6, so this bound (11 deviations) only fails a stuck,
    // zeroed or heavily biased source.
    for buf in [&a, &b] {
        let ones: u32 = buf.iter().map(|x| x.count_ones()).sum();
        check!((768..=1280).contains(&ones), "{ones} of 2048 bits set");
    }
    Ok(())
}

fn devfs_nodes(_: &'static BootInfo) -> Outcome {
    use osv_vfs::{OpenFlags, VType};
    let v = crate::fs::vfs();
    let null = v.open("/dev/null", OpenFlags::RDWR, 0).map_err(|e| alloc::format!("open /dev/null: {e}"))?;
    check!(v.write(null, b"swallowed") == Ok(9));
    let mut buf = [1u8; 64];
    check!(v.read(null, &mut buf) == Ok(0), "/dev/null is not at EOF");
    v.close(null).map_err(|e| alloc::format!("{e}"))?;
    let zero =
        v.open("/dev/zero", OpenFlags::RDONLY, 0).map_err(|e| alloc::format!("open /dev/zero: {e}"))?;
    check!(v.read(zero, &mut buf) == Ok(64) && buf.iter().all(|&b| b == 0));
    v.close(zero).map_err(|e| alloc::format!("{e}"))?;
    check!(v.stat("/dev/console").map(|s| s.kind) == Ok(VType::CharDevice));
    let con = v.open("/dev/console", OpenFlags::WRONLY, 0).map_err(|e| alloc::format!("{e}"))?;
    let msg = b"  (written to /dev/console)\n";
    check!(v.write(con, msg) == Ok(msg.len()));
    v.close(con).map_err(|e| alloc::format!("{e}"))?;
    Ok(())
}

fn read_text(path: &str) -> Result<String, crate::ktest::NotPassed> {
    use osv_vfs::OpenFlags;
    let v = crate::fs::vfs();
    let fd = v.open(path, OpenFlags::RDONLY, 0).map_err(|e| alloc::format!("open {path}: {e}"))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = v.read(fd, &mut buf).map_err(|e| alloc::format!("read {path}: {e}"))?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    v.close(fd).map_err(|e| alloc::format!("close {path}: {e}"))?;
    String::from_utf8(out).map_err(|_| alloc::format!("{path} is not UTF-8").into())
}

fn procfs_files(boot: &'static BootInfo) -> Outcome {
    let meminfo = read_text("/proc/meminfo")?;
    let total_kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok());
    check!(total_kb == Some(boot.memory.total() / 1024), "MemTotal {total_kb:?}\n{meminfo}");
    let uptime = read_text("/proc/uptime")?;
    let secs: Option<f64> = uptime.split_whitespace().next().and_then(|s| s.parse().ok());
    let now = rt::now_ns() as f64 / 1e9;
    check!(secs.is_some_and(|s| s > 0.0 && s <= now + 0.01), "uptime {uptime:?}, now {now}");
    let cpuinfo = read_text("/proc/cpuinfo")?;
    check!(cpuinfo.lines().any(|l| l.starts_with("processor")), "{cpuinfo}");
    let mounts = read_text("/proc/self/mounts")?;
    let fields: Vec<(&str, &str)> = mounts
        .lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            let _source = w.next()?;
            Some((w.next()?, w.next()?))
        })
        .collect();
    for want in [("/", "ramfs"), ("/dev", "devfs"), ("/proc", "proc")] {
        check!(fields.contains(&want), "{want:?} missing from /proc/self/mounts:\n{mounts}");
    }
    Ok(())
}

/// Shared state of the context-switch test: the three contexts and the
/// counters, reached from the threads through a pointer passed as their
/// argument.
struct PingPong {
    main: osv_boot::rt::context::Context,
    a: osv_boot::rt::context::Context,
    b: osv_boot::rt::context::Context,
    rounds: u64,
    count: u64,
    a_mxcsr_ok: bool,
    b_mxcsr_ok: bool,
}

fn read_mxcsr() -> u32 {
    let mut v = 0u32;
    // SAFETY: stores MXCSR into a local.
    unsafe { core::arch::asm!("stmxcsr [{}]", in(reg) &raw mut v, options(nostack)) };
    v
}

fn write_mxcsr(v: u32) {
    // SAFETY: loads a valid MXCSR value (only the rounding-control bits
    // differ from the default; all exceptions stay masked).
    unsafe { core::arch::asm!("ldmxcsr [{}]", in(reg) &raw const v, options(nostack)) };
}

/// Round-down instead of round-to-nearest (MXCSR.RC = 01, SDM vol. 1 §10.2.3.3).
const MXCSR_ROUND_DOWN: u32 = 0x1f80 | (1 << 13);

/// Switches from `from` to `to`, both fields of the `PingPong` at `p`.
///
/// # Safety
/// `p` is the live `PingPong` of the test, interrupts are off, and `to` was
/// made by `init` or saved by a switch.
unsafe fn hop(
    p: *mut PingPong,
    from: fn(*mut PingPong) -> *mut osv_boot::rt::context::Context,
    to: fn(*mut PingPong) -> *mut osv_boot::rt::context::Context,
) {
    // SAFETY: the caller's contract; the two contexts are distinct fields,
    // and only this CPU touches them (the other threads are suspended).
    unsafe { crate::threads::X86Switch::switch(&mut *from(p), &*to(p)) };
}

fn ctx_main(p: *mut PingPong) -> *mut osv_boot::rt::context::Context {
    // SAFETY: `p` is live (the callers pass the test's `PingPong`); only the
    // field's address is taken.
    unsafe { &raw mut (*p).main }
}
fn ctx_a(p: *mut PingPong) -> *mut osv_boot::rt::context::Context {
    // SAFETY: as in `ctx_main`.
    unsafe { &raw mut (*p).a }
}
fn ctx_b(p: *mut PingPong) -> *mut osv_boot::rt::context::Context {
    // SAFETY: as in `ctx_main`.
    unsafe { &raw mut (*p).b }
}

extern "C" fn ping(arg: usize) -> ! {
    // The `PingPong` the test keeps alive until both threads have switched
    // back for the last time; one thread runs at a time, and each access
    // goes through the raw pointer (no reference outlives a switch).
    let p = arg as *mut PingPong;
    write_mxcsr(MXCSR_ROUND_DOWN);
    let mut ok = true;
    // SAFETY: `p` is live (see above).
    let rounds = unsafe { (*p).rounds };
    for _ in 0..rounds {
        // SAFETY: `p` is live and nobody else runs.
        unsafe { (*p).count += 1 };
        // SAFETY: interrupts are off; `b` is alive and suspended.
        unsafe { hop(p, ctx_a, ctx_b) };
        ok &= read_mxcsr() == MXCSR_ROUND_DOWN;
    }
    // SAFETY: as above; then back to `main`, which waits in its switch.
    unsafe {
        (*p).a_mxcsr_ok = ok;
        hop(p, ctx_a, ctx_main);
    }
    unreachable!("the ping thread is never resumed after it finishes")
}

extern "C" fn pong(arg: usize) -> ! {
    let p = arg as *mut PingPong;
    let mut ok = true;
    loop {
        ok &= read_mxcsr() == 0x1f80;
        // SAFETY: as in `ping`.
        unsafe {
            (*p).b_mxcsr_ok = ok;
            (*p).count += 1;
            hop(p, ctx_b, ctx_a);
        }
    }
}

fn context_switch(boot: &'static BootInfo) -> Outcome {
    use osv_boot::rt::context::Context;
    let rounds = 10_000u64;
    let stack_a = alloc::vec![0u8; 64 * 1024];
    let stack_b = alloc::vec![0u8; 64 * 1024];
    let top = |s: &Vec<u8>| (s.as_ptr() as usize + s.len()) & !15;
    let mut p = Box::new(PingPong {
        main: Context::default(),
        a: Context::default(),
        b: Context::default(),
        rounds,
        count: 0,
        a_mxcsr_ok: false,
        b_mxcsr_ok: false,
    });
    let raw: *mut PingPong = &raw mut *p;
    // SAFETY: `raw` points at the boxed value, alive for the whole test.
    unsafe {
        (*raw).a = crate::threads::X86Switch::init(top(&stack_a), ping, raw as usize);
        (*raw).b = crate::threads::X86Switch::init(top(&stack_b), pong, raw as usize);
    }
    let main_mxcsr = read_mxcsr();
    let t0 = arch::rdtsc();
    arch::without_interrupts(|| {
        // SAFETY: interrupts are off; `a` was made by `init` on a live stack.
        unsafe { hop(raw, ctx_main, ctx_a) };
    });
    let ticks = arch::rdtsc() - t0;
    check!(p.count == 2 * rounds, "count {} after {rounds} round trips", p.count);
    check!(p.a_mxcsr_ok && p.b_mxcsr_ok, "a thread's MXCSR leaked into the other");
    check!(read_mxcsr() == main_mxcsr, "main's MXCSR changed");
    let switches = 2 * rounds + 2;
    // Baseline in the same run: as many calls of an empty out-of-line
    // function (TCG time is emulated: only same-run ratios mean anything).
    #[inline(never)]
    extern "C" fn empty(x: u64) -> u64 {
        core::hint::black_box(x)
    }
    let t1 = arch::rdtsc();
    let mut acc = 0u64;
    for i in 0..switches {
        acc = acc.wrapping_add(empty(i));
    }
    let call_ticks = (arch::rdtsc() - t1).max(1);
    core::hint::black_box(acc);
    osv_boot::println!(
        "  {switches} switches: {} ns each, {}x an empty function call ({} ns) in the same run",
        boot.tsc.ticks_to_ns(ticks) / switches,
        ticks / call_ticks,
        boot.tsc.ticks_to_ns(call_ticks) / switches
    );
    drop((stack_a, stack_b));
    Ok(())
}
