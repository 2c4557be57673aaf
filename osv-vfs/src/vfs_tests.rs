//! Unit tests of path resolution and of each descriptor call's errors.

use super::*;
use crate::ops::{Clock, Timespec};
use crate::{RamFs, ZeroClock};
use std::string::ToString;
use std::sync::atomic::{AtomicI64, Ordering as O};

fn vfs() -> Vfs {
    Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap()
}

const RW: OpenFlags = OpenFlags::RDWR;
const C: OpenFlags = OpenFlags::CREAT;

fn touch(v: &Vfs, p: &str) {
    let fd = v.open(p, RW | C, 0o644).unwrap();
    v.close(fd).unwrap();
}

#[test]
fn dots_and_empty_components() {
    let v = vfs();
    v.mkdir("/a", 0o755).unwrap();
    v.mkdir("/a/b", 0o755).unwrap();
    touch(&v, "/a/b/f");
    let ino = v.stat("/a/b/f").unwrap().ino;
    for p in ["//a///b//f", "/a/./b/./f", "/a/b/../b/f", "/../../a/b/f", "a/b/f", "./a/b/f"] {
        assert_eq!(v.stat(p).unwrap().ino, ino, "{p}");
    }
    assert_eq!(v.stat("/..").unwrap().ino, v.stat("/").unwrap().ino);
    assert_eq!(v.stat("/a/b/").unwrap().kind, VType::Directory);
    assert_eq!(v.stat(""), Err(Errno::ENOENT));
    assert_eq!(v.stat("/a/b/f/"), Err(Errno::ENOTDIR));
    assert_eq!(v.stat("/a/b/f/."), Err(Errno::ENOTDIR));
    assert_eq!(v.stat("/a/b/f/x"), Err(Errno::ENOTDIR));
    assert_eq!(v.stat("/a/nope/f"), Err(Errno::ENOENT));
}

#[test]
fn name_and_path_limits() {
    let v = vfs();
    let ok = "n".repeat(NAME_MAX);
    let long = "n".repeat(NAME_MAX + 1);
    v.mkdir(&ok, 0o755).unwrap();
    assert_eq!(v.mkdir(&long, 0o755), Err(Errno::ENAMETOOLONG));
    assert_eq!(v.stat(&long), Err(Errno::ENAMETOOLONG));
    // A missing directory is found before the long name is looked at.
    assert_eq!(v.stat(&format!("/missing/{long}")), Err(Errno::ENOENT));
    let deep = "a/".repeat(PATH_MAX / 2);
    assert_eq!(v.stat(&deep), Err(Errno::ENAMETOOLONG));
    let just = format!("/{}", "/".repeat(PATH_MAX - 2));
    assert_eq!(just.len(), PATH_MAX - 1);
    assert!(v.stat(&just).is_ok());
    assert_eq!(v.symlink(&"x".repeat(PATH_MAX), "/l"), Err(Errno::ENAMETOOLONG));
    assert_eq!(v.symlink("", "/l"), Err(Errno::ENOENT));
}

#[test]
fn symlinks_follow_and_loop() {
    let v = vfs();
    v.mkdir("/d", 0o755).unwrap();
    v.mkdir("/d/e", 0o755).unwrap();
    touch(&v, "/d/e/f");
    v.symlink("d/e", "/rel").unwrap();
    v.symlink("/d/e/f", "/abs").unwrap();
    assert_eq!(v.stat("/rel/f").unwrap().ino, v.stat("/abs").unwrap().ino);
    assert_eq!(v.lstat("/abs").unwrap().kind, VType::Symlink);
    assert_eq!(v.lstat("/abs").unwrap().size, 6);
    assert_eq!(v.readlink("/abs").unwrap(), "/d/e/f");
    assert_eq!(v.readlink("/d"), Err(Errno::EINVAL));
    // `..` after a symlink is physical: /rel/.. is /d, not /.
    assert_eq!(v.stat("/rel/..").unwrap().ino, v.stat("/d").unwrap().ino);
    // A trailing slash follows, and demands a directory.
    assert_eq!(v.lstat("/rel/").unwrap().kind, VType::Directory);
    assert_eq!(v.lstat("/abs/"), Err(Errno::ENOTDIR));
    v.symlink("/loop2", "/loop1").unwrap();
    v.symlink("/loop1", "/loop2").unwrap();
    assert_eq!(v.stat("/loop1"), Err(Errno::ELOOP));
    assert_eq!(v.lstat("/loop1").unwrap().kind, VType::Symlink);
    // A chain of exactly MAX_SYMLINKS resolves; one more is ELOOP.
    v.symlink("/d", "/c0").unwrap();
    for i in 1..=MAX_SYMLINKS {
        v.symlink(&format!("/c{}", i - 1), &format!("/c{i}")).unwrap();
    }
    assert!(v.stat(&format!("/c{}", MAX_SYMLINKS - 1)).is_ok());
    assert_eq!(v.stat(&format!("/c{MAX_SYMLINKS}")), Err(Errno::ELOOP));
    v.symlink("/nowhere", "/dangling").unwrap();
    assert_eq!(v.stat("/dangling"), Err(Errno::ENOENT));
    // open(O_CREAT) through a dangling symlink creates its target.
    let fd = v.open("/dangling", RW | C, 0o644).unwrap();
    v.close(fd).unwrap();
    assert_eq!(v.stat("/nowhere").unwrap().kind, VType::Regular);
    assert_eq!(v.open("/dangling", RW | C | OpenFlags::EXCL, 0), Err(Errno::EEXIST));
    assert_eq!(v.open("/abs", OpenFlags::RDONLY | OpenFlags::NOFOLLOW, 0), Err(Errno::ELOOP));
}

#[test]
fn mounts_and_dotdot() {
    let v = vfs();
    v.mkdir("/mnt", 0o755).unwrap();
    v.mkdir("/mnt/hidden", 0o755).unwrap();
    let inner = RamFs::new(Arc::new(ZeroClock));
    v.mount("/mnt", inner.clone()).unwrap();
    assert_eq!(v.stat("/mnt/hidden"), Err(Errno::ENOENT));
    v.mkdir("/mnt/sub", 0o755).unwrap();
    assert_ne!(v.stat("/mnt").unwrap().dev, v.stat("/").unwrap().dev);
    assert_eq!(v.stat("/mnt/sub/../..").unwrap().ino, v.stat("/").unwrap().ino);
    assert_eq!(v.stat("/mnt/..").unwrap().dev, v.stat("/").unwrap().dev);
    v.chdir("/mnt/sub").unwrap();
    assert_eq!(v.getcwd().unwrap(), "/mnt/sub");
    assert_eq!(v.umount("/mnt"), Err(Errno::EBUSY));
    v.chdir("..").unwrap();
    assert_eq!(v.getcwd().unwrap(), "/mnt");
    v.chdir("..").unwrap();
    assert_eq!(v.getcwd().unwrap(), "/");
    touch(&v, "/f");
    assert_eq!(v.link("/f", "/mnt/f"), Err(Errno::EXDEV));
    assert_eq!(v.rename("/f", "/mnt/f"), Err(Errno::EXDEV));
    assert_eq!(v.rmdir("/mnt"), Err(Errno::EBUSY));
    assert_eq!(v.rename("/mnt", "/m2"), Err(Errno::EBUSY));
    assert_eq!(v.umount("/"), Err(Errno::EBUSY));
    assert_eq!(v.umount("/mnt/sub"), Err(Errno::EINVAL));
    let fd = v.open("/mnt/sub", OpenFlags::RDONLY, 0).unwrap();
    assert_eq!(v.umount("/mnt"), Err(Errno::EBUSY));
    v.close(fd).unwrap();
    v.umount("/mnt").unwrap();
    assert!(v.stat("/mnt/hidden").is_ok());
    assert_eq!(v.statfs("/").unwrap().fs_type, crate::ramfs::RAMFS_MAGIC);
    v.sync().unwrap();
}

#[test]
fn pivot_root_switches() {
    let v = vfs();
    touch(&v, "/old-file");
    v.mkdir("/new", 0o755).unwrap();
    v.mount("/new", RamFs::new(Arc::new(ZeroClock))).unwrap();
    v.mkdir("/new/old", 0o755).unwrap();
    touch(&v, "/new/new-file");
    assert_eq!(v.pivot_root("/new/old", "/new/old"), Err(Errno::EINVAL));
    assert_eq!(v.pivot_root("/new", "/new"), Err(Errno::EBUSY));
    v.pivot_root("/new", "/new/old").unwrap();
    assert!(v.stat("/new-file").is_ok());
    assert!(v.stat("/old/old-file").is_ok());
    assert_eq!(v.getcwd().unwrap(), "/");
    assert_eq!(v.stat("/old/..").unwrap().ino, v.stat("/").unwrap().ino);
    assert_eq!(v.pivot_root("/", "/old"), Err(Errno::EBUSY));
}

#[test]
fn open_flag_errors() {
    let v = vfs();
    v.mkdir("/d", 0o755).unwrap();
    touch(&v, "/f");
    assert_eq!(v.open("/f", OpenFlags::from_bits(3), 0), Err(Errno::EINVAL));
    assert_eq!(v.open("/g", C | OpenFlags::DIRECTORY, 0), Err(Errno::EINVAL));
    assert_eq!(v.open("/missing", RW, 0), Err(Errno::ENOENT));
    assert_eq!(v.open("/f", RW | C | OpenFlags::EXCL, 0), Err(Errno::EEXIST));
    assert_eq!(v.open("/f", OpenFlags::RDONLY | OpenFlags::DIRECTORY, 0), Err(Errno::ENOTDIR));
    assert_eq!(v.open("/d", RW, 0), Err(Errno::EISDIR));
    assert_eq!(v.open("/d", OpenFlags::RDONLY | OpenFlags::TRUNC, 0), Err(Errno::EISDIR));
    assert_eq!(v.open("/d", OpenFlags::RDONLY | C, 0), Err(Errno::EISDIR));
    assert_eq!(v.open("/new/", RW | C, 0), Err(Errno::EISDIR));
    assert_eq!(v.open("/", RW | C, 0), Err(Errno::EISDIR));
    assert_eq!(v.open("/f/x", RW | C, 0), Err(Errno::ENOTDIR));
    assert_eq!(v.open("/nodir/x", RW | C, 0), Err(Errno::ENOENT));
    let fd = v.open("/d", OpenFlags::RDONLY | OpenFlags::DIRECTORY, 0).unwrap();
    let mut b = [0u8; 4];
    assert_eq!(v.read(fd, &mut b), Err(Errno::EISDIR));
    assert_eq!(v.write(fd, b"x"), Err(Errno::EBADF));
    assert_eq!(v.ftruncate(fd, 0), Err(Errno::EINVAL));
    assert_eq!(v.lseek(fd, 0, Whence::End), Err(Errno::EINVAL));
    v.close(fd).unwrap();
}

#[test]
fn read_write_seek() {
    let v = vfs();
    let fd = v.open("/f", RW | C, 0o644).unwrap();
    assert_eq!(v.writev(fd, &[b"hello", b" ", b"world"]).unwrap(), 11);
    assert_eq!(v.lseek(fd, 0, Whence::Cur).unwrap(), 11);
    assert_eq!(v.lseek(fd, -5, Whence::End).unwrap(), 6);
    let (mut a, mut b) = ([0u8; 2], [0u8; 10]);
    assert_eq!(v.readv(fd, &mut [&mut a, &mut b]).unwrap(), 5);
    assert_eq!(&a, b"wo");
    assert_eq!(&b[..3], b"rld");
    assert_eq!(v.lseek(fd, -1, Whence::Set), Err(Errno::EINVAL));
    assert_eq!(v.lseek(fd, -100, Whence::Cur), Err(Errno::EINVAL));
    assert_eq!(v.lseek(fd, i64::MAX, Whence::End), Err(Errno::EOVERFLOW));
    assert_eq!(Whence::from_raw(5), Err(Errno::EINVAL));
    assert_eq!(v.pwrite(fd, b"!", 20000).unwrap(), 1);
    assert_eq!(v.lseek(fd, 0, Whence::Data).unwrap(), 0);
    assert_eq!(v.lseek(fd, 0, Whence::Hole).unwrap(), 4096);
    assert_eq!(v.lseek(fd, 5000, Whence::Data).unwrap(), 16384);
    assert_eq!(v.lseek(fd, 20001, Whence::Data), Err(Errno::ENXIO));
    assert_eq!(v.lseek(fd, -1, Whence::Hole), Err(Errno::ENXIO));
    let mut z = [7u8; 3];
    assert_eq!(v.pread(fd, &mut z, 11).unwrap(), 3);
    assert_eq!(z, [0, 0, 0]);
    assert_eq!(v.pread(fd, &mut z, -1), Err(Errno::EINVAL));
    assert_eq!(v.pwrite(fd, b"x", -1), Err(Errno::EINVAL));
    assert_eq!(v.fstat(fd).unwrap().size, 20001);
    assert_eq!(v.ftruncate(fd, -1), Err(Errno::EINVAL));
    v.ftruncate(fd, 3).unwrap();
    assert_eq!(v.pread(fd, &mut z, 0).unwrap(), 3);
    assert_eq!(&z, b"hel");
    assert_eq!(v.pread(fd, &mut z, 3).unwrap(), 0);
    v.fsync(fd).unwrap();
    assert_eq!(v.poll(fd, PollEvents::IN).unwrap(), PollEvents::IN);
    assert_eq!(v.ioctl(fd, 0x5401, 0), Err(Errno::ENOTTY));
    assert_eq!(v.mmap_check(fd, 0, 4096, false), Err(Errno::ENODEV));
    v.close(fd).unwrap();
    // Access modes.
    let r = v.open("/f", OpenFlags::RDONLY, 0).unwrap();
    let w = v.open("/f", OpenFlags::WRONLY | OpenFlags::APPEND, 0).unwrap();
    assert_eq!(v.write(r, b"x"), Err(Errno::EBADF));
    assert_eq!(v.pwrite(r, b"x", 0), Err(Errno::EBADF));
    assert_eq!(v.read(w, &mut z), Err(Errno::EBADF));
    assert_eq!(v.pread(w, &mut z, 0), Err(Errno::EBADF));
    assert_eq!(v.ftruncate(r, 0), Err(Errno::EINVAL));
    assert_eq!(v.write(w, b"XY").unwrap(), 2);
    assert_eq!(v.pwrite(w, b"Z", 0).unwrap(), 1);
    assert_eq!(v.pread(r, &mut z, 3).unwrap(), 3);
    assert_eq!(&z, b"XYZ");
    assert_eq!(v.lseek(w, 0, Whence::Cur).unwrap(), 5);
    v.close(r).unwrap();
    v.close(w).unwrap();
    let t = v.open("/f", OpenFlags::RDONLY | OpenFlags::TRUNC, 0).unwrap();
    assert_eq!(v.fstat(t).unwrap().size, 0);
    v.close(t).unwrap();
}

#[test]
fn descriptor_table() {
    let v = vfs();
    let mut b = [0u8; 1];
    let bad = Fd::new(77);
    assert_eq!(v.close(bad), Err(Errno::EBADF));
    assert_eq!(v.read(bad, &mut b), Err(Errno::EBADF));
    assert_eq!(v.write(bad, b"x"), Err(Errno::EBADF));
    assert_eq!(v.pread(bad, &mut b, 0), Err(Errno::EBADF));
    assert_eq!(v.lseek(bad, 0, Whence::Set), Err(Errno::EBADF));
    assert_eq!(v.fstat(bad), Err(Errno::EBADF));
    assert_eq!(v.getdents(bad, 1), Err(Errno::EBADF));
    assert_eq!(v.fsync(bad), Err(Errno::EBADF));
    assert_eq!(v.ftruncate(bad, 0), Err(Errno::EBADF));
    assert_eq!(v.dup(bad), Err(Errno::EBADF));
    assert_eq!(v.dup2(bad, Fd::new(1)), Err(Errno::EBADF));
    assert_eq!(v.fchdir(bad), Err(Errno::EBADF));
    let a = v.open("/f", RW | C, 0).unwrap();
    assert_eq!(a, Fd::new(0));
    let b2 = v.dup(a).unwrap();
    assert_eq!(b2, Fd::new(1));
    v.write(a, b"abc").unwrap();
    // dup shares the offset.
    assert_eq!(v.lseek(b2, 0, Whence::Cur).unwrap(), 3);
    assert_eq!(v.dup2(a, Fd::new(FD_LIMIT as u32)), Err(Errno::EBADF));
    assert_eq!(v.dup2(a, a).unwrap(), a);
    assert_eq!(v.dup2(a, Fd::new(10)).unwrap(), Fd::new(10));
    assert_eq!(v.lseek(Fd::new(10), 1, Whence::Set).unwrap(), 1);
    assert_eq!(v.lseek(a, 0, Whence::Cur).unwrap(), 1);
    v.close(a).unwrap();
    // The lowest free descriptor is reused.
    assert_eq!(v.dup(b2).unwrap(), Fd::new(0));
    assert_eq!(v.fchdir(b2), Err(Errno::ENOTDIR));
    let mut n = 3;
    while v.dup(b2).is_ok() {
        n += 1;
    }
    assert_eq!(n, FD_LIMIT);
    assert_eq!(v.dup(b2), Err(Errno::EMFILE));
    assert_eq!(v.open("/f", RW, 0), Err(Errno::EMFILE));
}

#[test]
fn directories_and_getdents() {
    let v = vfs();
    v.mkdir("/d", 0o755).unwrap();
    v.mkdir("/d/sub", 0o755).unwrap();
    touch(&v, "/d/b");
    touch(&v, "/d/a");
    assert_eq!(v.stat("/d").unwrap().nlink, 3);
    let fd = v.open("/d", OpenFlags::RDONLY, 0).unwrap();
    let names: Vec<String> = v.getdents(fd, 100).unwrap().into_iter().map(|d| d.name).collect();
    assert_eq!(names, [".", "..", "a", "b", "sub"]);
    assert!(v.getdents(fd, 100).unwrap().is_empty());
    v.lseek(fd, 2, Whence::Set).unwrap();
    assert_eq!(v.getdents(fd, 1).unwrap()[0].name, "a");
    v.close(fd).unwrap();
    let f = v.open("/d/a", OpenFlags::RDONLY, 0).unwrap();
    assert_eq!(v.getdents(f, 1), Err(Errno::ENOTDIR));
    v.close(f).unwrap();
    assert_eq!(v.mkdir("/d", 0), Err(Errno::EEXIST));
    assert_eq!(v.mkdir("/", 0), Err(Errno::EEXIST));
    assert_eq!(v.mkdir("/d/.", 0), Err(Errno::EEXIST));
    assert_eq!(v.mkdir("/d/a/x", 0), Err(Errno::ENOTDIR));
    v.mkdir("/d/new/", 0).unwrap();
    assert_eq!(v.rmdir("/d"), Err(Errno::ENOTEMPTY));
    assert_eq!(v.rmdir("/d/."), Err(Errno::EINVAL));
    assert_eq!(v.rmdir("/d/sub/.."), Err(Errno::ENOTEMPTY));
    assert_eq!(v.rmdir("/"), Err(Errno::EBUSY));
    assert_eq!(v.rmdir("/d/a"), Err(Errno::ENOTDIR));
    assert_eq!(v.rmdir("/d/zz"), Err(Errno::ENOENT));
    v.rmdir("/d/new/").unwrap();
    assert_eq!(v.unlink("/d/sub"), Err(Errno::EISDIR));
    assert_eq!(v.unlink("/d/a/"), Err(Errno::ENOTDIR));
    assert_eq!(v.unlink("/d/sub/"), Err(Errno::EISDIR));
    assert_eq!(v.unlink("/d/.."), Err(Errno::EISDIR));
    assert_eq!(v.unlink("/d/zz"), Err(Errno::ENOENT));
    v.unlink("/d/a").unwrap();
    assert_eq!(v.stat("/d/a"), Err(Errno::ENOENT));
    // chdir / getcwd.
    assert_eq!(v.chdir("/d/b"), Err(Errno::ENOTDIR));
    v.chdir("/d/sub").unwrap();
    assert_eq!(v.getcwd().unwrap(), "/d/sub");
    touch(&v, "rel");
    assert!(v.stat("/d/sub/rel").is_ok());
    v.unlink("rel").unwrap();
    v.chdir("/").unwrap();
    v.rmdir("/d/sub").unwrap();
    assert_eq!(v.stat("/d").unwrap().nlink, 2);
    v.mkdir("/gone", 0).unwrap();
    v.chdir("/gone").unwrap();
    v.rmdir("/gone").unwrap();
    assert_eq!(v.getcwd(), Err(Errno::ENOENT));
    assert_eq!(v.open("x", RW | C, 0), Err(Errno::ENOENT));
}

#[test]
fn rename_and_link_rules() {
    let v = vfs();
    for d in ["/a", "/a/b", "/c", "/e"] {
        v.mkdir(d, 0o755).unwrap();
    }
    touch(&v, "/e/x");
    touch(&v, "/f");
    touch(&v, "/g");
    assert_eq!(v.rename("/a", "/a/b/z"), Err(Errno::EINVAL));
    assert_eq!(v.rename("/a", "/a"), Ok(()));
    assert_eq!(v.rename("/a/b", "/a"), Err(Errno::ENOTEMPTY));
    assert_eq!(v.rename("/f", "/c"), Err(Errno::EISDIR));
    assert_eq!(v.rename("/c", "/f"), Err(Errno::ENOTDIR));
    assert_eq!(v.rename("/c", "/e"), Err(Errno::ENOTEMPTY));
    assert_eq!(v.rename("/f/", "/h"), Err(Errno::ENOTDIR));
    assert_eq!(v.rename("/f", "/h/"), Err(Errno::ENOTDIR));
    assert_eq!(v.rename("/zz", "/h"), Err(Errno::ENOENT));
    assert_eq!(v.rename("/a/.", "/h"), Err(Errno::EBUSY));
    assert_eq!(v.rename("/f", "/"), Err(Errno::EBUSY));
    let ino = v.stat("/f").unwrap().ino;
    v.rename("/f", "/g").unwrap();
    assert_eq!(v.stat("/g").unwrap().ino, ino);
    assert_eq!(v.stat("/f"), Err(Errno::ENOENT));
    v.rename("/c", "/a/b/c2/").unwrap();
    v.chdir("/a/b/c2").unwrap();
    assert_eq!(v.getcwd().unwrap(), "/a/b/c2");
    assert_eq!(v.stat("..").unwrap().ino, v.stat("/a/b").unwrap().ino);
    v.chdir("/").unwrap();
    v.rename("/a/b/c2", "/e2").unwrap();
    // Hard links.
    v.link("/g", "/e/g2").unwrap();
    assert_eq!(v.stat("/g").unwrap().nlink, 2);
    assert_eq!(v.link("/g", "/e/g2"), Err(Errno::EEXIST));
    assert_eq!(v.link("/a", "/a2"), Err(Errno::EPERM));
    assert_eq!(v.link("/g", "/new/"), Err(Errno::ENOENT));
    assert_eq!(v.link("/g", "/."), Err(Errno::EEXIST));
    assert_eq!(v.link("/zz", "/y"), Err(Errno::ENOENT));
    v.rename("/g", "/e/g2").unwrap(); // Same inode: nothing happens.
    assert_eq!(v.stat("/g").unwrap().nlink, 2);
    v.unlink("/g").unwrap();
    assert_eq!(v.stat("/e/g2").unwrap().nlink, 1);
    v.symlink("/e/g2", "/s").unwrap();
    v.link("/s", "/s2").unwrap();
    assert_eq!(v.lstat("/s2").unwrap().kind, VType::Symlink);
    assert_eq!(v.symlink("x", "/s"), Err(Errno::EEXIST));
    assert_eq!(v.symlink("x", "/q/"), Err(Errno::ENOENT));
}

#[test]
fn unlinked_open_file_lives_until_close() {
    let fs = RamFs::new(Arc::new(ZeroClock));
    let live = fs.live_counter();
    let v = Vfs::new(fs.clone()).unwrap();
    drop(fs);
    let fd = v.open("/f", RW | C, 0).unwrap();
    v.write(fd, b"data").unwrap();
    assert_eq!(live.get(), 2);
    v.unlink("/f").unwrap();
    assert_eq!(v.fstat(fd).unwrap().nlink, 0);
    let mut b = [0u8; 4];
    assert_eq!(v.pread(fd, &mut b, 0).unwrap(), 4);
    assert_eq!(live.get(), 2);
    v.close(fd).unwrap();
    assert_eq!(live.get(), 1);
    drop(v);
    assert_eq!(live.get(), 0);
}

struct Tick(AtomicI64);
impl Clock for Tick {
    fn now(&self) -> Timespec {
        Timespec { sec: self.0.fetch_add(1, O::SeqCst), nsec: 0 }
    }
}

#[test]
fn timestamps_follow_the_clock() {
    let v = Vfs::new(RamFs::new(Arc::new(Tick(AtomicI64::new(100))))).unwrap();
    let fd = v.open("/f", RW | C, 0o600).unwrap();
    let t0 = v.fstat(fd).unwrap();
    assert_eq!(t0.perm, 0o600);
    assert_eq!(t0.mode(), 0o100600);
    v.write(fd, b"x").unwrap();
    let t1 = v.fstat(fd).unwrap();
    assert!(t1.mtime > t0.mtime && t1.ctime > t0.ctime);
    assert_eq!(t1.atime, t0.atime);
    let root_before = v.stat("/").unwrap().mtime;
    v.mkdir("/d", 0).unwrap();
    assert!(v.stat("/").unwrap().mtime > root_before);
    v.close(fd).unwrap();
}

#[test]
fn dentry_cache_evicts() {
    let v = vfs();
    v.mkdir("/a", 0).unwrap();
    v.mkdir("/a/b", 0).unwrap();
    v.stat("/a/b").unwrap();
    assert_eq!(v.dentry_cache_len(), 2);
    assert_eq!(v.evict_unused(), 0);
    v.stat("/a").unwrap();
    assert_eq!(v.evict_unused(), 1);
    assert_eq!(v.dentry_cache_len(), 1);
    v.drop_caches();
    assert_eq!(v.dentry_cache_len(), 0);
    assert!(v.stat("/a/b").is_ok());
    assert!(format!("{v:?}").starts_with("Vfs"));
    assert_eq!(Errno::EBUSY.to_string(), "EBUSY");
}

#[test]
fn concurrent_readers_and_writers() {
    let v = Arc::new(vfs());
    let fd = v.open("/f", RW | C, 0).unwrap();
    v.write(fd, &[7u8; 65536]).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let v = &v;
            s.spawn(move || {
                let mut buf = [0u8; 4096];
                for i in 0..200 {
                    if t == 0 {
                        v.pwrite(fd, &[7u8; 100], (i * 100) % 60000).unwrap();
                        let name = format!("/n{}", i % 7);
                        let _ = v.mkdir(&name, 0);
                        let _ = v.rename(&name, "/renamed");
                        let _ = v.rmdir("/renamed");
                    } else {
                        assert_eq!(v.pread(fd, &mut buf, (i * 4096) % 61440).unwrap(), 4096);
                        assert!(buf.iter().all(|&b| b == 7));
                        let _ = v.stat("/renamed");
                    }
                }
            });
        }
    });
    v.close(fd).unwrap();
}

#[cfg(feature = "std")]
#[test]
fn std_clock_reads_the_host_clock() {
    assert!(crate::StdClock.now().sec > 1_600_000_000);
}

#[test]
fn setattr_chmod_and_times() {
    let v = vfs();
    touch(&v, "/f");
    v.symlink("f", "/l").unwrap();
    v.chmod("/l", 0o100_600).unwrap(); // follows the link; type bits ignored
    assert_eq!(v.stat("/f").unwrap().perm, 0o600);
    assert_eq!(v.lstat("/l").unwrap().perm, 0o777);
    let t = Timespec { sec: 1_000, nsec: 5 };
    v.utimens("/f", Some(t), None).unwrap();
    let st = v.stat("/f").unwrap();
    assert_eq!((st.atime, st.mtime), (t, Timespec::default()));
    let fd = v.open("/f", OpenFlags::RDONLY, 0).unwrap();
    v.fsetattr(fd, &SetAttr { mtime: Some(t), ..SetAttr::default() }).unwrap();
    assert_eq!(v.fstat(fd).unwrap().mtime, t);
    assert_eq!(v.chmod("/nope", 0o644), Err(Errno::ENOENT));
    v.close(fd).unwrap();
    assert_eq!(v.fsetattr(fd, &SetAttr::default()), Err(Errno::EBADF));
}

#[test]
fn reading_a_directory_is_eisdir() {
    let v = vfs();
    v.mkdir("/d", 0o755).unwrap();
    let fd = v.open("/d", OpenFlags::RDONLY | OpenFlags::DIRECTORY, 0).unwrap();
    assert_eq!(v.read(fd, &mut [0u8; 4]), Err(Errno::EISDIR));
    assert_eq!(v.pread(fd, &mut [0u8; 4], 0), Err(Errno::EISDIR));
}

/// A filesystem whose one file reads through another descriptor of the same
/// VFS, as ZFS in the demo kernel reads its disks: its calls are not short
/// (the default), so a read through it takes its own reference and releases
/// the descriptor table before calling in. Opens and closes on another
/// thread meanwhile must not deadlock against the nested descriptor call
/// (they would if the outer call kept the table's shared side).
#[test]
fn reentrant_filesystem_reads_beside_open_and_close() {
    struct Relay {
        vfs: std::sync::Weak<Vfs>,
        inner: Fd,
    }
    impl crate::VnodeOps for Relay {
        fn ino(&self) -> u64 {
            1
        }
        fn vtype(&self) -> VType {
            VType::Regular
        }
        fn as_any(&self) -> &dyn core::any::Any {
            self
        }
        fn read(&self, off: u64, iov: &mut [&mut [u8]]) -> Result<usize> {
            let vfs = self.vfs.upgrade().ok_or(Errno::EIO)?;
            let off = i64::try_from(off).map_err(|_| Errno::EINVAL)?;
            vfs.pread(self.inner, &mut *iov[0], off)
        }
    }
    struct RelayFs(VnodeRef);
    impl FsOps for RelayFs {
        fn name(&self) -> &str {
            "relay"
        }
        fn root(&self) -> VnodeRef {
            self.0.clone()
        }
    }
    let v = std::sync::Arc::new(vfs());
    touch(&v, "/disk");
    let disk = v.open("/disk", RW, 0).unwrap();
    v.pwrite(disk, b"block", 0).unwrap();
    v.mkdir("/m", 0o755).unwrap();
    let relay: VnodeRef = Arc::new(Relay { vfs: std::sync::Arc::downgrade(&v), inner: disk });
    assert!(!relay.short_calls());
    v.mount("/m", Arc::new(RelayFs(relay))).unwrap();
    let fd = v.open("/m", OpenFlags::RDONLY, 0).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(O::SeqCst) {
                let f = v.open("/disk", OpenFlags::RDONLY, 0).unwrap();
                v.close(f).unwrap();
            }
        });
        for _ in 0..20_000 {
            let mut b = [0u8; 5];
            assert_eq!(v.pread(fd, &mut b, 0), Ok(5));
            assert_eq!(&b, b"block");
        }
        stop.store(true, O::SeqCst);
    });
    v.close(fd).unwrap();
    v.close(disk).unwrap();
}
