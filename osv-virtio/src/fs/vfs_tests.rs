//! virtio-fs mounted in osv-vfs's `Vfs` (feature `vfs`), against the fake
//! FUSE server, through the descriptor API.

use std::string::String;
use std::sync::Arc;
use std::vec;
use std::vec::Vec;

use osv_vfs::{Errno, OpenFlags, RamFs, VType, Vfs, Whence, ZeroClock};
use proptest::prelude::*;

use super::device::VirtIOFs;
use super::fake::FuseBackend;
use super::vfs::{Options, VirtioFs, FUSE_SUPER_MAGIC};
use crate::fake::{FakeDevice, FakeHal, FakeMmioRegs};
use crate::transport::mmio::MmioTransport;

type Mounted = Arc<VirtioFs<FakeHal, MmioTransport<FakeMmioRegs>>>;

fn mount(options: Options) -> (FakeHal, FakeDevice, FuseBackend, Mounted, Vfs) {
    let hal = FakeHal::new();
    let server = FuseBackend::new("host");
    let dev = server.device(&hal, 64);
    let t = MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap();
    let fs = VirtioFs::with_options(VirtIOFs::new(&hal, t).unwrap(), options).unwrap();
    let vfs = Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap();
    vfs.mkdir("/host", 0o755).unwrap();
    vfs.mount("/host", fs.clone()).unwrap();
    (hal, dev, server, fs, vfs)
}

fn names(vfs: &Vfs, path: &str) -> Vec<String> {
    let fd = vfs.open(path, OpenFlags::RDONLY | OpenFlags::DIRECTORY, 0).unwrap();
    let mut out = Vec::new();
    loop {
        let d = vfs.getdents(fd, 3).unwrap();
        if d.is_empty() {
            break;
        }
        out.extend(d.into_iter().map(|d| d.name));
    }
    vfs.close(fd).unwrap();
    out
}

/// After everything is closed and the VFS lets go: every lookup was given
/// back, every handle released, and the session destroyed.
fn unmount_and_check(server: &FuseBackend, fs: Mounted, vfs: Vfs, hal: FakeHal) {
    vfs.drop_caches();
    vfs.umount("/host").unwrap();
    assert_eq!(fs.live_nodes(), 1, "only the root is left");
    drop(vfs);
    drop(fs);
    assert_eq!(server.lookups(), vec![], "lookups not forgotten");
    assert_eq!(server.bad_forgets(), 0, "forgot more than was looked up");
    assert_eq!(server.open_handles(), 0, "handles not released");
    assert!(server.destroyed());
    assert_eq!(hal.memory().live_allocations(), 0);
}

#[test]
fn files_through_descriptors() {
    let (hal, dev, server, fs, vfs) = mount(Options::default());
    let fd =
        vfs.open("/host/hello.txt", OpenFlags::RDWR | OpenFlags::CREAT | OpenFlags::EXCL, 0o644).unwrap();
    assert_eq!(vfs.write(fd, b"hello, virtio-fs").unwrap(), 16);
    assert_eq!(server.file("hello.txt").unwrap(), b"hello, virtio-fs");
    assert_eq!(vfs.lseek(fd, 7, Whence::Set).unwrap(), 7);
    let mut buf = [0u8; 64];
    assert_eq!(vfs.read(fd, &mut buf).unwrap(), 9);
    assert_eq!(&buf[..9], b"virtio-fs");
    assert_eq!(vfs.read(fd, &mut buf).unwrap(), 0, "end of file");
    assert_eq!(vfs.pwrite(fd, b"HELLO", 0).unwrap(), 5);
    assert_eq!(vfs.pread(fd, &mut buf[..5], 0).unwrap(), 5);
    assert_eq!(&buf[..5], b"HELLO");
    assert_eq!(vfs.lseek(fd, 0, Whence::End).unwrap(), 16);
    let st = vfs.fstat(fd).unwrap();
    assert_eq!((st.kind, st.size, st.perm), (VType::Regular, 16, 0o644));
    vfs.fsync(fd).unwrap();
    assert_eq!(server.fsyncs(), 1);
    vfs.ftruncate(fd, 5).unwrap();
    assert_eq!(server.file("hello.txt").unwrap(), b"HELLO");
    vfs.close(fd).unwrap();
    assert_eq!(server.open_handles(), 0);
    // O_EXCL on an existing file, O_TRUNC, O_APPEND.
    assert_eq!(
        vfs.open("/host/hello.txt", OpenFlags::WRONLY | OpenFlags::CREAT | OpenFlags::EXCL, 0o644),
        Err(Errno::EEXIST)
    );
    let fd = vfs.open("/host/hello.txt", OpenFlags::WRONLY | OpenFlags::APPEND, 0).unwrap();
    vfs.write(fd, b" world").unwrap();
    vfs.close(fd).unwrap();
    assert_eq!(server.file("hello.txt").unwrap(), b"HELLO world");
    let fd = vfs.open("/host/hello.txt", OpenFlags::WRONLY | OpenFlags::TRUNC, 0).unwrap();
    vfs.close(fd).unwrap();
    assert_eq!(server.file("hello.txt").unwrap(), b"");
    // Larger than one FUSE request each way (max_write 64 KiB).
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let fd = vfs.open("/host/big", OpenFlags::RDWR | OpenFlags::CREAT, 0o600).unwrap();
    assert_eq!(vfs.write(fd, &big).unwrap(), big.len());
    let mut back = vec![0u8; 400_000];
    assert_eq!(vfs.pread(fd, &mut back, 0).unwrap(), big.len());
    assert_eq!(&back[..big.len()], &big[..]);
    let (mut a, mut b) = (vec![0u8; 100_000], vec![0u8; 100_000]);
    assert_eq!(vfs.preadv(fd, &mut [&mut a, &mut b], 150_000).unwrap(), 150_000);
    assert_eq!(&a[..], &big[150_000..250_000]);
    assert_eq!(&b[..50_000], &big[250_000..]);
    vfs.close(fd).unwrap();
    assert_eq!(server.file("big").unwrap(), big);
    // A read-only open cannot write; a write-only one cannot read.
    let fd = vfs.open("/host/big", OpenFlags::RDONLY, 0).unwrap();
    assert_eq!(vfs.write(fd, b"x"), Err(Errno::EBADF));
    let fd2 = vfs.open("/host/big", OpenFlags::WRONLY, 0).unwrap();
    assert_eq!(vfs.read(fd2, &mut buf), Err(Errno::EBADF));
    assert_eq!(vfs.pwrite(fd2, b"Z", 0), Ok(1));
    assert_eq!(vfs.pread(fd, &mut buf[..1], 0), Ok(1));
    assert_eq!(buf[0], b'Z');
    vfs.close(fd).unwrap();
    vfs.close(fd2).unwrap();
    // truncate by path, with no open file.
    vfs.truncate("/host/big", 10).unwrap();
    assert_eq!(vfs.stat("/host/big").unwrap().size, 10);
    let s = vfs.statfs("/host").unwrap();
    assert_eq!((s.fs_type, s.block_size, s.blocks), (FUSE_SUPER_MAGIC, 4096, 1000));
    assert_eq!(dev.faults(), 0);
    unmount_and_check(&server, fs, vfs, hal);
}

#[test]
fn namespace_operations() {
    let (hal, _dev, server, fs, vfs) = mount(Options::default());
    vfs.mkdir("/host/d", 0o750).unwrap();
    assert_eq!(vfs.stat("/host/d").unwrap().kind, VType::Directory);
    assert_eq!(vfs.mkdir("/host/d", 0o750), Err(Errno::EEXIST));
    for n in ["a", "b", "c", "e", "f"] {
        let fd = vfs.open(&format!("/host/d/{n}"), OpenFlags::WRONLY | OpenFlags::CREAT, 0o644).unwrap();
        vfs.write(fd, n.as_bytes()).unwrap();
        vfs.close(fd).unwrap();
    }
    assert_eq!(names(&vfs, "/host/d"), [".", "..", "a", "b", "c", "e", "f"]);
    assert_eq!(vfs.rmdir("/host/d"), Err(Errno::ENOTEMPTY));
    assert_eq!(vfs.unlink("/host/d"), Err(Errno::EISDIR));
    assert_eq!(vfs.open("/host/d/zz", OpenFlags::RDONLY, 0), Err(Errno::ENOENT));
    vfs.rename("/host/d/a", "/host/moved").unwrap();
    assert_eq!(server.file("moved").unwrap(), b"a");
    assert_eq!(vfs.stat("/host/d/a"), Err(Errno::ENOENT));
    // Replace an existing file.
    vfs.rename("/host/d/b", "/host/d/c").unwrap();
    assert_eq!(server.file("d/c").unwrap(), b"b");
    // A directory moves with `..` following it.
    vfs.mkdir("/host/d/sub", 0o755).unwrap();
    vfs.mkdir("/host/other", 0o755).unwrap();
    vfs.rename("/host/d/sub", "/host/other/sub").unwrap();
    vfs.chdir("/host/other/sub").unwrap();
    assert_eq!(vfs.stat("..").unwrap().ino, vfs.stat("/host/other").unwrap().ino);
    assert_eq!(vfs.getcwd().unwrap(), "/host/other/sub");
    vfs.chdir("/").unwrap();
    assert_eq!(vfs.stat("/host/..").unwrap().kind, VType::Directory);
    for n in ["c", "e", "f"] {
        vfs.unlink(&format!("/host/d/{n}")).unwrap();
    }
    vfs.rmdir("/host/d").unwrap();
    vfs.rmdir("/host/other/sub").unwrap();
    vfs.rmdir("/host/other").unwrap();
    vfs.unlink("/host/moved").unwrap();
    assert_eq!(names(&vfs, "/host"), [".", ".."]);
    assert_eq!(server.list("").unwrap(), Vec::<Vec<u8>>::new());
    unmount_and_check(&server, fs, vfs, hal);
}

#[test]
fn host_changes_are_seen_and_listings_span_pages() {
    let (hal, _dev, server, fs, vfs) = mount(Options::default());
    server.put_dir("many");
    // More than one READDIR page (8 KiB of records).
    let mut want = vec![String::from("."), String::from("..")];
    let mut files: Vec<String> = (0..300).map(|i| format!("file-with-a-longer-name-{i:04}")).collect();
    files.sort();
    for f in &files {
        server.put_file(&format!("many/{f}"), f.as_bytes());
    }
    want.extend(files.iter().cloned());
    assert_eq!(names(&vfs, "/host/many"), want);
    // Without the dentry cache, a file the host adds after a walk is found.
    assert_eq!(vfs.stat("/host/late"), Err(Errno::ENOENT));
    server.put_file("late", b"from the host");
    let fd = vfs.open("/host/late", OpenFlags::RDONLY, 0).unwrap();
    let mut buf = [0u8; 32];
    assert_eq!(vfs.read(fd, &mut buf).unwrap(), 13);
    assert_eq!(&buf[..13], b"from the host");
    vfs.close(fd).unwrap();
    unmount_and_check(&server, fs, vfs, hal);
}

#[test]
fn with_the_dentry_cache() {
    let (hal, _dev, server, fs, vfs) = mount(Options { dentry_cache: true });
    vfs.mkdir("/host/x", 0o755).unwrap();
    let fd = vfs.open("/host/x/y", OpenFlags::WRONLY | OpenFlags::CREAT, 0o644).unwrap();
    vfs.close(fd).unwrap();
    for _ in 0..3 {
        assert_eq!(vfs.stat("/host/x/y").unwrap().size, 0);
    }
    let lookups = server.ops().iter().filter(|&&o| o == 1).count();
    assert!(vfs.dentry_cache_len() > 0);
    for _ in 0..3 {
        vfs.stat("/host/x/y").unwrap();
    }
    assert_eq!(server.ops().iter().filter(|&&o| o == 1).count(), lookups, "cached walks ask no more");
    vfs.unlink("/host/x/y").unwrap();
    vfs.rmdir("/host/x").unwrap();
    unmount_and_check(&server, fs, vfs, hal);
}

#[test]
fn threads_share_the_mount() {
    let (hal, _dev, server, fs, vfs) = mount(Options::default());
    let vfs = Arc::new(vfs);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let vfs = vfs.clone();
            std::thread::spawn(move || {
                let path = format!("/host/t{t}");
                let data: Vec<u8> = (0..20_000u32).map(|i| (i as u8) ^ t as u8).collect();
                for _ in 0..5 {
                    let fd = vfs
                        .open(&path, OpenFlags::RDWR | OpenFlags::CREAT | OpenFlags::TRUNC, 0o600)
                        .unwrap();
                    assert_eq!(vfs.write(fd, &data).unwrap(), data.len());
                    let mut back = vec![0u8; data.len()];
                    assert_eq!(vfs.pread(fd, &mut back, 0).unwrap(), data.len());
                    assert_eq!(back, data);
                    vfs.close(fd).unwrap();
                    assert!(names(&vfs, "/host").contains(&format!("t{t}")));
                }
                vfs.unlink(&path).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let vfs = Arc::into_inner(vfs).unwrap();
    unmount_and_check(&server, fs, vfs, hal);
}

#[test]
fn a_broken_device_gives_eio_and_still_unmounts() {
    let (hal, dev, server, fs, vfs) = mount(Options::default());
    let fd = vfs.open("/host/f", OpenFlags::RDWR | OpenFlags::CREAT, 0o644).unwrap();
    assert_eq!(vfs.write(fd, b"data").unwrap(), 4);
    // A FUSE-level violation: that request fails, the next one works.
    server.misbehave(super::fake::FuseMisbehave::Unique);
    assert_eq!(vfs.pwrite(fd, b"x", 0), Err(Errno::EIO));
    assert_eq!(vfs.pwrite(fd, b"D", 0), Ok(1));
    // A virtqueue violation: the device is reset, everything after is EIO.
    dev.misbehave(crate::fake::Misbehave::UsedId(60));
    let mut buf = [0u8; 4];
    assert_eq!(vfs.pread(fd, &mut buf, 0), Err(Errno::EIO));
    assert_eq!(dev.status(), 0, "device reset");
    assert_eq!(vfs.stat("/host/f"), Err(Errno::EIO));
    // RELEASE cannot reach the server; close still succeeds (as Linux).
    assert_eq!(vfs.close(fd), Ok(()));
    vfs.umount("/host").unwrap();
    drop(vfs);
    drop(fs);
    assert_eq!(server.file("f").unwrap(), b"Data");
    assert_eq!(hal.memory().live_allocations(), 0);
}

/// One operation of the model test: names from a tiny alphabet in two
/// directories, so operations collide.
#[derive(Clone, Debug)]
enum Op {
    Write { path: &'static str, data: Vec<u8>, trunc: bool },
    Read { path: &'static str },
    Unlink { path: &'static str },
    Mkdir { path: &'static str },
    Rmdir { path: &'static str },
    Rename { from: &'static str, to: &'static str },
    List { path: &'static str },
    Stat { path: &'static str },
}

const PATHS: &[&str] = &["a", "b", "d", "d/a", "d/c", "e"];

fn op() -> impl Strategy<Value = Op> {
    let path = proptest::sample::select(PATHS);
    prop_oneof![
        4 => (path.clone(), proptest::collection::vec(any::<u8>(), 0..3000), any::<bool>())
            .prop_map(|(path, data, trunc)| Op::Write { path, data, trunc }),
        3 => path.clone().prop_map(|path| Op::Read { path }),
        2 => path.clone().prop_map(|path| Op::Unlink { path }),
        2 => path.clone().prop_map(|path| Op::Mkdir { path }),
        1 => path.clone().prop_map(|path| Op::Rmdir { path }),
        2 => (path.clone(), path.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => proptest::sample::select(&["", "d", "e"][..]).prop_map(|path| Op::List { path }),
        1 => path.prop_map(|path| Op::Stat { path }),
    ]
}

/// What an operation returned, comparable across two filesystems.
fn apply(vfs: &Vfs, root: &str, op: &Op) -> Result<Vec<u8>, Errno> {
    let p = |x: &str| if x.is_empty() { String::from(root) } else { format!("{root}/{x}") };
    match op {
        Op::Write { path, data, trunc } => {
            let mut flags = OpenFlags::WRONLY | OpenFlags::CREAT;
            if *trunc {
                flags |= OpenFlags::TRUNC;
            }
            let fd = vfs.open(&p(path), flags, 0o644)?;
            let r = vfs.pwrite(fd, data, 7);
            vfs.close(fd)?;
            Ok(r?.to_le_bytes().to_vec())
        }
        Op::Read { path } => {
            let fd = vfs.open(&p(path), OpenFlags::RDONLY, 0)?;
            let mut buf = vec![0u8; 4000];
            let r = vfs.read(fd, &mut buf);
            vfs.close(fd)?;
            buf.truncate(r?);
            Ok(buf)
        }
        Op::Unlink { path } => vfs.unlink(&p(path)).map(|()| Vec::new()),
        Op::Mkdir { path } => vfs.mkdir(&p(path), 0o755).map(|()| Vec::new()),
        Op::Rmdir { path } => vfs.rmdir(&p(path)).map(|()| Vec::new()),
        Op::Rename { from, to } => vfs.rename(&p(from), &p(to)).map(|()| Vec::new()),
        Op::List { path } => {
            let fd = vfs.open(&p(path), OpenFlags::RDONLY | OpenFlags::DIRECTORY, 0)?;
            let d = vfs.getdents(fd, 100);
            vfs.close(fd)?;
            let mut n: Vec<String> = d?.into_iter().map(|d| format!("{}:{:?}", d.name, d.kind)).collect();
            n.sort();
            Ok(n.join(",").into_bytes())
        }
        Op::Stat { path } => vfs.stat(&p(path)).map(|s| match s.kind {
            VType::Regular => format!("file {}", s.size).into_bytes(),
            k => format!("{k:?}").into_bytes(),
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// The same operations on virtio-fs (through the fake server) and on
    /// ramfs give the same results, and leave nothing behind.
    #[test]
    fn matches_ramfs(ops in proptest::collection::vec(op(), 1..40)) {
        let (hal, _dev, server, fs, vfs) = mount(Options::default());
        vfs.mkdir("/model", 0o755).unwrap();
        for op in &ops {
            let got = apply(&vfs, "/host", op);
            let want = apply(&vfs, "/model", op);
            prop_assert_eq!(got, want, "{:?}", op);
        }
        prop_assert_eq!(server.open_handles(), 0);
        unmount_and_check(&server, fs, vfs, hal);
    }
}
