//! loom models of the VFS's locking protocol. Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release -p osv-vfs --test loom_vfs`
//! (each model sets its own preemption bound).
#![cfg(loom)]

use std::sync::Arc;

use loom::thread;
use osv_vfs::{Errno, OpenFlags, RamFs, Vfs, ZeroClock};

/// Explores every interleaving with at most 2 preemptions (enough for the
/// two-thread races below; more makes the bigger models run for minutes).
fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(2, f);
}

/// [`model`] with another preemption bound (the three-thread model takes 1).
fn model_bounded(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    // Waiters spin (yielding); with three threads a path can take more
    // than loom's default 1000 scheduling points.
    b.max_branches = 20_000;
    b.check(f);
}

fn vfs_with_file(contents: &[u8]) -> (Arc<Vfs>, u64) {
    let vfs = Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap();
    let fd = vfs.open("/f", OpenFlags::RDWR | OpenFlags::CREAT, 0o644).unwrap();
    vfs.write(fd, contents).unwrap();
    vfs.close(fd).unwrap();
    let ino = vfs.stat("/f").unwrap().ino;
    // Start uncached, so the racing lookup goes to the filesystem and then
    // inserts into the cache: the interleaving that could leave a stale entry.
    vfs.drop_caches();
    (Arc::new(vfs), ino)
}

/// A lookup racing an unlink of the same name sees the old vnode (whole, its
/// data readable) or `ENOENT`, and afterwards the name is gone for good: the
/// lookup cannot leave a stale dentry-cache entry behind.
#[test]
fn lookup_against_unlink() {
    model(|| {
        let (vfs, ino) = vfs_with_file(b"x");
        let v2 = vfs.clone();
        let unlinker = thread::spawn(move || v2.unlink("/f"));
        match vfs.open("/f", OpenFlags::RDONLY, 0) {
            Ok(fd) => {
                assert_eq!(vfs.fstat(fd).unwrap().ino, ino);
                let mut b = [0u8; 2];
                assert_eq!(vfs.read(fd, &mut b).unwrap(), 1);
                assert_eq!(b[0], b'x');
                vfs.close(fd).unwrap();
            }
            Err(e) => assert_eq!(e, Errno::ENOENT),
        }
        unlinker.join().unwrap().unwrap();
        assert_eq!(vfs.stat("/f"), Err(Errno::ENOENT));
    });
}

/// A lookup racing a rename of the same name finds the file under exactly
/// one of the names, and the cache agrees with the directory afterwards.
#[test]
fn lookup_against_rename() {
    model(|| {
        let (vfs, ino) = vfs_with_file(b"y");
        let v2 = vfs.clone();
        let renamer = thread::spawn(move || v2.rename("/f", "/g"));
        match vfs.stat("/f") {
            Ok(st) => assert_eq!(st.ino, ino),
            Err(e) => assert_eq!(e, Errno::ENOENT),
        }
        renamer.join().unwrap().unwrap();
        assert_eq!(vfs.stat("/f"), Err(Errno::ENOENT));
        assert_eq!(vfs.stat("/g").unwrap().ino, ino);
    });
}

/// A read racing a truncate sees the data before or after, never a mix.
#[test]
fn read_against_truncate() {
    model(|| {
        let (vfs, _) = vfs_with_file(b"abcd");
        let v2 = vfs.clone();
        let truncater = thread::spawn(move || v2.truncate("/f", 1));
        let fd = vfs.open("/f", OpenFlags::RDONLY, 0).unwrap();
        let mut b = [0u8; 4];
        let n = vfs.pread(fd, &mut b, 0).unwrap();
        assert!((n == 4 && &b == b"abcd") || (n == 1 && b[0] == b'a'), "torn read {n} {b:?}");
        vfs.close(fd).unwrap();
        truncater.join().unwrap().unwrap();
        assert_eq!(vfs.stat("/f").unwrap().size, 1);
    });
}

/// Cache eviction racing a lookup of a cached name: the lookup still finds
/// the same vnode, and the cache stays consistent.
#[test]
fn eviction_against_lookup() {
    model(|| {
        let (vfs, ino) = vfs_with_file(b"z");
        vfs.stat("/f").unwrap();
        let v2 = vfs.clone();
        let evicter = thread::spawn(move || {
            v2.evict_unused();
            v2.evict_unused();
        });
        assert_eq!(vfs.stat("/f").unwrap().ino, ino);
        evicter.join().unwrap();
        assert_eq!(vfs.stat("/f").unwrap().ino, ino);
        assert!(vfs.dentry_cache_len() <= 1);
    });
}

fn empty_vfs() -> Arc<Vfs> {
    Arc::new(Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap())
}

fn create(vfs: &Vfs, path: &str) -> osv_vfs::Result {
    vfs.close(vfs.open(path, OpenFlags::WRONLY | OpenFlags::CREAT, 0o644)?)
}

/// Two renames across the same two directories in opposite directions
/// (`/a/x -> /b/x` and `/b/y -> /a/y`): each locks both directories, in
/// inode order, so they cannot deadlock; both succeed and every entry ends
/// up in exactly one place.
#[test]
fn rename_against_rename_across_directories() {
    model(|| {
        let vfs = empty_vfs();
        vfs.mkdir("/a", 0o755).unwrap();
        vfs.mkdir("/b", 0o755).unwrap();
        create(&vfs, "/a/x").unwrap();
        create(&vfs, "/b/y").unwrap();
        let v2 = vfs.clone();
        let t = thread::spawn(move || v2.rename("/a/x", "/b/x"));
        vfs.rename("/b/y", "/a/y").unwrap();
        t.join().unwrap().unwrap();
        let names = |d| {
            let fd = vfs.open(d, OpenFlags::RDONLY | OpenFlags::DIRECTORY, 0).unwrap();
            let mut n: Vec<String> = vfs.getdents(fd, 16).unwrap().into_iter().map(|e| e.name).collect();
            vfs.close(fd).unwrap();
            n.retain(|n| n != "." && n != "..");
            n
        };
        assert_eq!(names("/a"), ["y"]);
        assert_eq!(names("/b"), ["x"]);
    });
}

/// Two renames that would each move one directory under the other
/// (`/a -> /b/a` and `/b -> /a/b`): both together would make a loop cut off
/// from the root. The rename mutex serialises them: exactly one succeeds,
/// the other sees its target inside its source (`EINVAL`) or its source
/// gone (`ENOENT`), and the tree stays reachable.
#[test]
fn rename_against_rename_no_loop() {
    model(|| {
        let vfs = empty_vfs();
        vfs.mkdir("/a", 0o755).unwrap();
        vfs.mkdir("/b", 0o755).unwrap();
        let v2 = vfs.clone();
        let t = thread::spawn(move || v2.rename("/a", "/b/a"));
        let r1 = vfs.rename("/b", "/a/b");
        let r2 = t.join().unwrap();
        match (r1, r2) {
            (Ok(()), Err(e)) => {
                assert!(e == Errno::EINVAL || e == Errno::ENOENT, "{e:?}");
                assert!(vfs.stat("/a/b").is_ok());
            }
            (Err(e), Ok(())) => {
                assert!(e == Errno::EINVAL || e == Errno::ENOENT, "{e:?}");
                assert!(vfs.stat("/b/a").is_ok());
            }
            other => panic!("both or neither rename went through: {other:?}"),
        }
    });
}

/// `rmdir` of a directory racing a file creation inside it: either the
/// create fails with `ENOENT` (the directory went first) or the rmdir fails
/// with `ENOTEMPTY`; never a file left in a removed directory.
#[test]
fn rmdir_against_create() {
    model(|| {
        let vfs = empty_vfs();
        vfs.mkdir("/d", 0o755).unwrap();
        let v2 = vfs.clone();
        let t = thread::spawn(move || create(&v2, "/d/f"));
        let rm = vfs.rmdir("/d");
        let cr = t.join().unwrap();
        match (rm, cr) {
            (Ok(()), Err(Errno::ENOENT)) => assert_eq!(vfs.stat("/d"), Err(Errno::ENOENT)),
            (Err(Errno::ENOTEMPTY), Ok(())) => assert!(vfs.stat("/d/f").is_ok()),
            other => panic!("rmdir/create: {other:?}"),
        }
    });
}

/// A lookup of a name racing a rename that replaces it (`/f -> /g` over an
/// existing `/g`): the lookup finds the old `/g` or the moved file, never
/// nothing (rename replaces atomically), and the cache agrees afterwards.
#[test]
fn lookup_against_rename_over() {
    model(|| {
        let (vfs, f_ino) = vfs_with_file(b"f");
        create(&vfs, "/g").unwrap();
        let g_ino = vfs.stat("/g").unwrap().ino;
        vfs.drop_caches();
        let v2 = vfs.clone();
        let t = thread::spawn(move || v2.rename("/f", "/g"));
        let ino = vfs.stat("/g").unwrap().ino;
        assert!(ino == f_ino || ino == g_ino);
        t.join().unwrap().unwrap();
        assert_eq!(vfs.stat("/g").unwrap().ino, f_ino);
        assert_eq!(vfs.stat("/f"), Err(Errno::ENOENT));
    });
}

/// Two readers of one file during a truncate: each sees the whole old
/// content or the cut one, never a mix, and they do not wait on each other
/// (a deadlock would fail the model). Three threads through the whole VFS:
/// at most one preemption, to stay within a minute.
#[test]
fn two_reads_against_truncate() {
    model_bounded(1, || {
        let (vfs, _) = vfs_with_file(b"ab");
        let fd = vfs.open("/f", OpenFlags::RDWR, 0).unwrap();
        let (v2, v3) = (vfs.clone(), vfs.clone());
        let t = thread::spawn(move || v2.ftruncate(fd, 0));
        let r = thread::spawn(move || {
            let mut b = [0u8; 2];
            let n = v3.pread(fd, &mut b, 0).unwrap();
            (n, b)
        });
        let mut b = [0u8; 2];
        let n = vfs.pread(fd, &mut b, 0).unwrap();
        assert!((n == 2 && &b == b"ab") || n == 0, "torn read {n} {b:?}");
        let (n, b) = r.join().unwrap();
        assert!((n == 2 && &b == b"ab") || n == 0, "torn read {n} {b:?}");
        t.join().unwrap().unwrap();
        vfs.close(fd).unwrap();
    });
}

/// A lock-free `pread` racing an overlapping `pwrite` (the sequence-count
/// path in ramfs). The write spans two of a page's 8-byte words, so it is
/// not one atomic store: the read sees the old bytes or the new ones, never
/// a mix.
#[test]
fn read_against_overlapping_write() {
    model(|| {
        let (vfs, _) = vfs_with_file(b"abcdefghijkl");
        let fd = vfs.open("/f", OpenFlags::RDWR, 0).unwrap();
        let v2 = vfs.clone();
        let w = thread::spawn(move || v2.pwrite(fd, b"WXYZWXYZWXYZ", 0).unwrap());
        let mut b = [0u8; 12];
        let n = vfs.pread(fd, &mut b, 0).unwrap();
        assert!(n == 12 && (&b == b"abcdefghijkl" || &b == b"WXYZWXYZWXYZ"), "torn read {n} {b:?}");
        assert_eq!(w.join().unwrap(), 12);
        vfs.close(fd).unwrap();
    });
}

/// A read against a write (spanning two words) and a truncate of the same
/// bytes at once (three threads: at most one preemption). The read sees one
/// of the states the file passes through (the old bytes, the new ones, or
/// either cut to 2 bytes; the write after the truncate gives the new bytes
/// again), never a mix, never garbage.
#[test]
fn read_against_write_and_truncate() {
    model_bounded(1, || {
        let (vfs, _) = vfs_with_file(b"abcdefghijkl");
        let fd = vfs.open("/f", OpenFlags::RDWR, 0).unwrap();
        let (v2, v3) = (vfs.clone(), vfs.clone());
        let w = thread::spawn(move || v2.pwrite(fd, b"WXYZWXYZWXYZ", 0).unwrap());
        let t = thread::spawn(move || v3.ftruncate(fd, 2).unwrap());
        let mut b = [0u8; 12];
        let n = vfs.pread(fd, &mut b, 0).unwrap();
        let seen = &b[..n];
        assert!(
            [&b"abcdefghijkl"[..], b"WXYZWXYZWXYZ", b"ab", b"WX"].contains(&seen),
            "torn read {:?}",
            String::from_utf8_lossy(seen)
        );
        w.join().unwrap();
        t.join().unwrap();
        vfs.close(fd).unwrap();
    });
}

/// A `pread` through a descriptor racing its `close` (the read borrows the
/// open file from the descriptor table instead of taking a reference): the
/// read returns the data or `EBADF`, and after the close the descriptor is
/// gone and the file still opens and reads.
#[test]
fn pread_against_close() {
    model(|| {
        let (vfs, _) = vfs_with_file(b"ab");
        let fd = vfs.open("/f", OpenFlags::RDONLY, 0).unwrap();
        let v2 = vfs.clone();
        let c = thread::spawn(move || v2.close(fd));
        let mut b = [0u8; 2];
        match vfs.pread(fd, &mut b, 0) {
            Ok(n) => assert!(n == 2 && &b == b"ab", "{n} {b:?}"),
            Err(e) => assert_eq!(e, Errno::EBADF),
        }
        c.join().unwrap().unwrap();
        assert_eq!(vfs.pread(fd, &mut b, 0), Err(Errno::EBADF));
        let fd = vfs.open("/f", OpenFlags::RDONLY, 0).unwrap();
        assert_eq!(vfs.pread(fd, &mut b, 0), Ok(2));
        vfs.close(fd).unwrap();
    });
}

/// A `pread` racing a `dup2` onto its descriptor: the descriptor names the
/// old file or the new one, never nothing (`dup2` replaces atomically), and
/// afterwards the new one.
#[test]
fn pread_against_dup2() {
    model(|| {
        let (vfs, _) = vfs_with_file(b"ff");
        create(&vfs, "/g").unwrap();
        let g = vfs.open("/g", OpenFlags::RDWR, 0).unwrap();
        vfs.pwrite(g, b"gg", 0).unwrap();
        let f = vfs.open("/f", OpenFlags::RDONLY, 0).unwrap();
        let v2 = vfs.clone();
        let d = thread::spawn(move || v2.dup2(f, g));
        let mut b = [0u8; 2];
        assert_eq!(vfs.pread(g, &mut b, 0), Ok(2));
        assert!(&b == b"gg" || &b == b"ff", "{b:?}");
        assert_eq!(d.join().unwrap(), Ok(g));
        assert_eq!(vfs.pread(g, &mut b, 0), Ok(2));
        assert_eq!(&b, b"ff");
        vfs.close(f).unwrap();
        vfs.close(g).unwrap();
    });
}
