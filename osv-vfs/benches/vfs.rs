//! Host benchmarks of the descriptor API over ramfs:
//! - path lookup of a 5-component path (dentry cache warm);
//! - 4 KiB `pread` and 4 KiB `pwrite`;
//! - 4 KiB `pread`s of one file from 2 threads at once, and 4 KiB `pwrite`s
//!   of one file from 2 threads to disjoint halves, each against two
//!   baselines in the same run: the same calls serialised behind one
//!   `std::sync::Mutex` (what holding a vnode lock for the whole call, as OSv
//!   does, costs), and the same total work on one thread. The speed-ups are
//!   also measured directly and printed before the criterion groups, after a
//!   check of how much parallelism the machine gives at that moment.
//!
//! Run: `cargo bench -p osv-vfs --bench vfs -- --quick`.

use criterion::{criterion_group, criterion_main, Criterion};
use osv_vfs::{Fd, OpenFlags, RamFs, Vfs, ZeroClock};
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PATH: &str = "/a/b/c/d/file";
const FILE_PAGES: u64 = 16;

fn setup() -> Arc<Vfs> {
    let vfs = Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap();
    for d in ["/a", "/a/b", "/a/b/c", "/a/b/c/d"] {
        vfs.mkdir(d, 0o755).unwrap();
    }
    let fd = vfs.open(PATH, OpenFlags::RDWR | OpenFlags::CREAT, 0o644).unwrap();
    let page = [0x5au8; 4096];
    for _ in 0..FILE_PAGES {
        vfs.write(fd, &page).unwrap();
    }
    vfs.close(fd).unwrap();
    Arc::new(vfs)
}

fn open_rw(vfs: &Vfs) -> Fd {
    vfs.open(PATH, OpenFlags::RDWR, 0).unwrap()
}

fn lookup_and_io(c: &mut Criterion) {
    let vfs = setup();
    vfs.stat(PATH).unwrap(); // warm the dentry cache
    c.bench_function("lookup_5_components_cached", |b| {
        b.iter(|| black_box(vfs.stat(black_box(PATH)).unwrap()))
    });

    let fd = open_rw(&vfs);
    let mut buf = vec![0u8; 4096];
    let mut off = 0u64;
    c.bench_function("pread_4k_ramfs", |b| {
        b.iter(|| {
            off = (off + 4096) % (FILE_PAGES * 4096);
            black_box(vfs.pread(fd, &mut buf, off as i64).unwrap())
        })
    });
    let data = vec![0xa5u8; 4096];
    c.bench_function("pwrite_4k_ramfs", |b| {
        b.iter(|| {
            off = (off + 4096) % (FILE_PAGES * 4096);
            black_box(vfs.pwrite(fd, &data, off as i64).unwrap())
        })
    });
}

#[derive(Clone, Copy, PartialEq)]
enum Io {
    Read,
    Write,
}

/// How the 2 × `per_thread` calls are run.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// 2 threads at once, each with its own descriptor.
    Concurrent,
    /// 2 threads, every call behind one `std::sync::Mutex` (what holding one
    /// lock per vnode for the whole call costs).
    Serialised(&'a Mutex<()>),
    /// 1 thread doing both threads' calls, one after the other.
    OneThread,
}

/// One 4 KiB call of thread `t`, its `i`th: each thread stays in its own
/// half of the file (disjoint ranges).
fn one_call(vfs: &Vfs, fd: Fd, io: Io, t: u64, i: u64, buf: &mut [u8]) {
    let half = FILE_PAGES / 2;
    let off = ((t * half + i % half) * 4096) as i64;
    match io {
        Io::Read => black_box(vfs.pread(fd, buf, off).unwrap()),
        Io::Write => black_box(vfs.pwrite(fd, buf, off).unwrap()),
    };
}

/// `per_thread` calls for each of 2 threads' worth of work; the wall time.
fn two_halves(vfs: &Arc<Vfs>, fds: [Fd; 2], io: Io, per_thread: u64, mode: Mode<'_>) -> Duration {
    let start = Instant::now();
    match mode {
        Mode::OneThread => {
            let mut buf = vec![0x3cu8; 4096];
            for t in 0..2 {
                for i in 0..per_thread {
                    one_call(vfs, fds[t as usize], io, t, i, &mut buf);
                }
            }
        }
        Mode::Concurrent | Mode::Serialised(_) => {
            let gate = match mode {
                Mode::Serialised(m) => Some(m),
                _ => None,
            };
            std::thread::scope(|s| {
                for (t, fd) in fds.into_iter().enumerate() {
                    let vfs = vfs.clone();
                    s.spawn(move || {
                        let mut buf = vec![0x3cu8; 4096];
                        for i in 0..per_thread {
                            let _g = gate.map(|m| m.lock().unwrap());
                            one_call(&vfs, fd, io, t as u64, i, &mut buf);
                        }
                    });
                }
            });
        }
    }
    start.elapsed()
}

fn two_threads(c: &mut Criterion) {
    let vfs = setup();
    let fds = [open_rw(&vfs), open_rw(&vfs)];
    let gate = Mutex::new(());

    // What parallelism the machine gives right now: 2 threads of pure
    // arithmetic against the same work on one thread.
    let spin =
        |k: u64| (0..k).fold(1u64, |a, i| black_box(a.wrapping_mul(6364136223846793005).wrapping_add(i)));
    let k = 20_000_000;
    let t = Instant::now();
    black_box(spin(2 * k));
    let one = t.elapsed();
    let t = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| black_box(spin(k)));
        s.spawn(|| black_box(spin(k)));
    });
    eprintln!(
        "machine check: 2 threads of pure arithmetic run {:.2}x faster than 1",
        one.as_secs_f64() / t.elapsed().as_secs_f64()
    );

    // A direct measure of the speed-ups, best of 3 runs of each, in this run.
    let n = 200_000;
    for (io, what) in [(Io::Read, "preads"), (Io::Write, "pwrites (disjoint halves)")] {
        let best = |m: Mode<'_>| (0..3).map(|_| two_halves(&vfs, fds, io, n, m)).min().unwrap();
        let (conc, ser, one) = (best(Mode::Concurrent), best(Mode::Serialised(&gate)), best(Mode::OneThread));
        let per = |d: Duration| d.as_nanos() as f64 / (2 * n) as f64;
        eprintln!(
            "2 threads x {n} {what} of 4 KiB to one file: concurrent {:.0} ns/call, serialised by a mutex \
             {:.0} ns/call, 1 thread {:.0} ns/call; speed-up {:.2}x over serialised, {:.2}x over 1 thread",
            per(conc),
            per(ser),
            per(one),
            ser.as_secs_f64() / conc.as_secs_f64(),
            one.as_secs_f64() / conc.as_secs_f64()
        );
    }

    for (io, name) in [(Io::Read, "two_threads_pread_4k"), (Io::Write, "two_threads_pwrite_4k_disjoint")] {
        let mut g = c.benchmark_group(name);
        g.bench_function("concurrent", |b| {
            b.iter_custom(|iters| two_halves(&vfs, fds, io, iters, Mode::Concurrent))
        });
        g.bench_function("baseline serialised by std Mutex", |b| {
            b.iter_custom(|iters| two_halves(&vfs, fds, io, iters, Mode::Serialised(&gate)))
        });
        g.bench_function("baseline one thread", |b| {
            b.iter_custom(|iters| two_halves(&vfs, fds, io, iters, Mode::OneThread))
        });
        g.finish();
    }
}

criterion_group!(benches, lookup_and_io, two_threads);
criterion_main!(benches);
