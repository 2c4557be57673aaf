//! loom models of the byte-range lock (`osv_vfs::RangeLock`, built on the
//! crate's `sync` facade, so loom sees its mutex, its release counter and its
//! waiting loop) and of ramfs's use of it. Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release -p osv-vfs --test loom_range`.
#![cfg(loom)]

use std::sync::Arc;

use loom::cell::UnsafeCell;
use loom::thread;
use osv_vfs::{OpenFlags, RamFs, RangeLock, Vfs, ZeroClock};

/// Explores every interleaving with at most `bound` preemptions.
fn model(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    // Waiters spin (yielding): a path can take more than loom's default 1000
    // scheduling points.
    b.max_branches = 20_000;
    b.check(f);
}

/// Three bytes behind a range lock. The bytes are loom cells: loom fails the
/// model if two threads ever touch one cell at once with at least one of
/// them writing, i.e. if the lock let two conflicting ranges in together.
struct Guarded {
    lock: RangeLock,
    bytes: [UnsafeCell<u8>; 3],
}

// SAFETY: the cells are only touched under the range lock that covers them;
// that is exactly what the model checks (loom reports any unsynchronised
// access as a failure instead of letting it happen).
#[allow(unsafe_code)]
unsafe impl Sync for Guarded {}

impl Guarded {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            lock: RangeLock::new(),
            bytes: [UnsafeCell::new(0), UnsafeCell::new(0), UnsafeCell::new(0)],
        })
    }
    /// Writes `v` into bytes `start..end` under an exclusive range.
    fn write(&self, start: usize, end: usize, v: u8) {
        let _g = self.lock.write(start as u64, end as u64);
        for c in &self.bytes[start..end] {
            // SAFETY: the exclusive range covers this cell; loom checks it.
            c.with_mut(|p| unsafe { *p = v });
        }
    }
    /// Reads bytes `start..end` under a shared range.
    fn read(&self, start: usize, end: usize) -> Vec<u8> {
        let _g = self.lock.read(start as u64, end as u64);
        // SAFETY: the shared range covers these cells; loom checks it.
        self.bytes[start..end].iter().map(|c| c.with(|p| unsafe { *p })).collect()
    }
}

/// Two writers of overlapping ranges, then a reader on one of them
/// overlapping the other writer: the lock keeps them apart (loom's cell
/// check), nobody deadlocks, the reader sees the other writer's bytes whole
/// or not at all, and the range list empties.
#[test]
fn overlapping_writers_and_a_reader() {
    model(2, || {
        let g = Guarded::new();
        let g1 = g.clone();
        let a = thread::spawn(move || g1.write(0, 2, 1));
        g.write(1, 3, 2);
        let seen = g.read(0, 3);
        // Ours is there; the other writer's range is all its value or none
        // of it (ours may have overwritten the shared byte 1 after it).
        assert!(matches!(seen[..], [0, 2, 2] | [1, 2, 2] | [1, 1, 2]), "{seen:?}");
        a.join().unwrap();
        let end = g.read(0, 3);
        assert!(end == [1, 2, 2] || end == [1, 1, 2], "{end:?}");
        assert_eq!(g.lock.pending(), 0);
    });
}

/// Disjoint exclusive ranges and overlapping shared ones all go ahead: the
/// model would report a deadlock if any of them waited for another (each
/// thread holds its range while the others take theirs).
#[test]
fn disjoint_writers_and_shared_readers_do_not_wait() {
    model(2, || {
        let g = Guarded::new();
        let held = g.lock.write(0, 1);
        let g1 = g.clone();
        // A writer of the next byte and two readers of the last two bytes,
        // while this thread keeps byte 0: none of them may block.
        let w = thread::spawn(move || g1.write(1, 2, 7));
        let g2 = g.clone();
        let r = thread::spawn(move || g2.read(1, 3));
        let seen = g.read(2, 3);
        assert_eq!(seen, [0]);
        let r = r.join().unwrap();
        assert!(r == [0, 0] || r == [7, 0], "{r:?}");
        w.join().unwrap();
        drop(held);
        assert_eq!(g.lock.pending(), 0);
    });
}

fn vfs_with_file(contents: &[u8]) -> Arc<Vfs> {
    let vfs = Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap();
    let fd = vfs.open("/f", OpenFlags::RDWR | OpenFlags::CREAT, 0o644).unwrap();
    vfs.write(fd, contents).unwrap();
    vfs.close(fd).unwrap();
    Arc::new(vfs)
}

/// ramfs: two `pwrite`s to disjoint ranges of one file (one extending it)
/// from two threads, then a `pread` of the whole file on one of them while
/// the other write may still run. Both writes land; the read sees the other
/// write whole or not at all, and a size that matches what it saw.
#[test]
fn ramfs_disjoint_pwrites_and_a_read() {
    model(2, || {
        let vfs = vfs_with_file(b"aaaa");
        let fd = vfs.open("/f", OpenFlags::RDWR, 0).unwrap();
        let v1 = vfs.clone();
        let other = thread::spawn(move || v1.pwrite(fd, b"YYYY", 2).unwrap());
        assert_eq!(vfs.pwrite(fd, b"XX", 0).unwrap(), 2);
        let mut buf = [0u8; 8];
        let n = vfs.pread(fd, &mut buf, 0).unwrap();
        let seen = &buf[..n];
        assert!(seen == b"XXaa" || seen == b"XXYYYY", "torn read {:?}", String::from_utf8_lossy(seen));
        assert_eq!(other.join().unwrap(), 4);
        let n = vfs.pread(fd, &mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"XXYYYY");
        vfs.close(fd).unwrap();
    });
}

/// ramfs: an `O_APPEND` write racing a truncate and a write below the new
/// size. The append lands whole at the end that was current when it ran, the
/// truncate cuts at its point, the low write goes on beside them.
#[test]
fn ramfs_append_against_truncate() {
    model(2, || {
        let vfs = vfs_with_file(b"abcd");
        let fd = vfs.open("/f", OpenFlags::WRONLY | OpenFlags::APPEND, 0).unwrap();
        let v1 = vfs.clone();
        let t = thread::spawn(move || v1.truncate("/f", 2).unwrap());
        assert_eq!(vfs.write(fd, b"XY").unwrap(), 2);
        t.join().unwrap();
        let r = vfs.open("/f", OpenFlags::RDONLY, 0).unwrap();
        let mut buf = [0u8; 8];
        let n = vfs.read(r, &mut buf).unwrap();
        // Append first: "abcdXY" cut to "ab". Truncate first: "ab" + "XY".
        assert!(&buf[..n] == b"ab" || &buf[..n] == b"abXY", "{:?}", String::from_utf8_lossy(&buf[..n]));
        vfs.close(fd).unwrap();
        vfs.close(r).unwrap();
    });
}
