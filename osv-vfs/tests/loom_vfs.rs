//! loom models of the VFS's locking protocol. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release -p osv-vfs --test loom_vfs`.
#![cfg(loom)]

use std::sync::Arc;

use loom::thread;
use osv_vfs::{Errno, OpenFlags, RamFs, Vfs, ZeroClock};

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
    loom::model(|| {
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
    loom::model(|| {
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
    loom::model(|| {
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
    loom::model(|| {
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
