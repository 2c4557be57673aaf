//! virtio-fs in the demo kernel: the host directory QEMU shares through
//! `vhost-user-fs` (served by virtiofsd on the host) is mounted at `/host`
//! with osv-virtio's `VirtioFs`, and these tests use it through the VFS
//! descriptor API.
//!
//! The runner (`cargo xtask test`, stage `kernel-tests-virtiofs-*`) puts
//! `from-host.txt` into the shared directory before boot and checks
//! `from-guest.txt` after the guest exits; it passes `virtiofs=host` on
//! the command line, which makes a missing device a failure instead of a
//! skip.

use crate::check;
use crate::ktest::{NotPassed, Outcome, Test};
use crate::virtio::{take, AnyTransport, HeapHal};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use osv_boot::BootInfo;
use osv_vfs::{Errno, FsOps, OpenFlags, VType, Whence};
use osv_virtio::fs::vfs::VirtioFs;
use osv_virtio::fs::VirtIOFs;
use osv_virtio::{DeviceType, MmioTransport, PciTransport, VolatileMmio};

pub static ALL: &[Test] = &[
    Test { name: "virtiofs::mount_host_and_read_the_hosts_file", run: mount_and_read },
    Test { name: "virtiofs::files_through_descriptors", run: files },
    Test { name: "virtiofs::namespace_operations", run: namespace },
    Test { name: "virtiofs::leave_a_file_for_the_host", run: leave_file },
];

/// What the host puts in the shared directory before boot (xtask checks
/// the same text).
const FROM_HOST: &[u8] = b"written by the host for the osv demo kernel\n";
/// What the guest leaves: a signature line, then bytes 0..=255 repeating,
/// 10000 bytes in all (`xtask/src/stages.rs` checks the same layout).
fn guest_file() -> Vec<u8> {
    let sig = b"osv-demo-kernel virtio-fs test file\n";
    let mut v: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    v[..sig.len()].copy_from_slice(sig);
    v
}

enum Mounted {
    Mmio(Arc<VirtioFs<HeapHal, MmioTransport<VolatileMmio>>>),
    Pci(Arc<VirtioFs<HeapHal, PciTransport<VolatileMmio>>>),
}

impl Mounted {
    fn live_nodes(&self) -> usize {
        match self {
            Mounted::Mmio(f) => f.live_nodes(),
            Mounted::Pci(f) => f.live_nodes(),
        }
    }
}

static MOUNT: spin::Once<Result<Mounted, String>> = spin::Once::new();

/// Mounts the first virtio-fs device at `/host` (once).
fn mounted(boot: &'static BootInfo) -> Result<&'static Mounted, NotPassed> {
    let m = MOUNT.call_once(|| {
        let Some(found) = take(DeviceType::Fs) else {
            return Err(String::new());
        };
        let at = found.location;
        let (fs, m): (Arc<dyn FsOps>, Mounted) = match found.transport {
            AnyTransport::Mmio(t) => {
                let dev = VirtIOFs::new(&HeapHal, t).map_err(|e| alloc::format!("virtio-fs at {at}: {e}"))?;
                let fs = VirtioFs::new(dev).map_err(|e| alloc::format!("virtio-fs at {at}: {e}"))?;
                (fs.clone(), Mounted::Mmio(fs))
            }
            AnyTransport::Pci(t) => {
                let dev = VirtIOFs::new(&HeapHal, t).map_err(|e| alloc::format!("virtio-fs at {at}: {e}"))?;
                let fs = VirtioFs::new(dev).map_err(|e| alloc::format!("virtio-fs at {at}: {e}"))?;
                (fs.clone(), Mounted::Pci(fs))
            }
        };
        let v = crate::fs::vfs();
        v.mkdir("/host", 0o755)
            .and_then(|()| v.mount("/host", fs))
            .map_err(|e| alloc::format!("mount /host: {e}"))?;
        osv_boot::println!("/host: virtio-fs at {at}");
        Ok(m)
    });
    match m {
        Ok(m) => Ok(m),
        Err(e) if e.is_empty() => {
            if boot.cmdline.value("virtiofs").is_some() {
                Err("no virtio-fs device, but the runner attached one".into())
            } else {
                Err(NotPassed::Skipped("no virtio-fs device (QEMU started without one)".into()))
            }
        }
        Err(e) => Err(e.clone().into()),
    }
}

fn e(what: &str, err: Errno) -> NotPassed {
    alloc::format!("{what}: {err}").into()
}

fn mount_and_read(boot: &'static BootInfo) -> Outcome {
    mounted(boot)?;
    let v = crate::fs::vfs();
    let st = v.stat("/host").map_err(|x| e("stat /host", x))?;
    check!(st.kind == VType::Directory);
    let fs = v.statfs("/host").map_err(|x| e("statfs /host", x))?;
    check!(
        fs.fs_type == osv_virtio::fs::vfs::FUSE_SUPER_MAGIC && fs.block_size > 0 && fs.blocks > 0,
        "{fs:?}"
    );
    let fd = v.open("/host/from-host.txt", OpenFlags::RDONLY, 0).map_err(|x| e("open from-host.txt", x))?;
    let mut buf = [0u8; 256];
    let n = v.read(fd, &mut buf).map_err(|x| e("read", x))?;
    v.close(fd).map_err(|x| e("close", x))?;
    check!(&buf[..n] == FROM_HOST, "from-host.txt holds {:?}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}

fn files(boot: &'static BootInfo) -> Outcome {
    let m = mounted(boot)?;
    let v = crate::fs::vfs();
    let live = m.live_nodes();
    let _ = v.unlink("/host/osv-files.bin");
    let path = "/host/osv-files.bin";
    let fd = v
        .open(path, OpenFlags::RDWR | OpenFlags::CREAT | OpenFlags::EXCL, 0o644)
        .map_err(|x| e("create", x))?;
    // Larger than one FUSE request (128 KiB at most), at odd sizes.
    let data: Vec<u8> = (0..300_001u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let n = v.write(fd, &data).map_err(|x| e("write", x))?;
    check!(n == data.len(), "wrote {n}");
    check!(v.fstat(fd).map(|s| s.size) == Ok(data.len() as u64));
    let mut back = alloc::vec![0u8; data.len() + 100];
    let n = v.pread(fd, &mut back, 0).map_err(|x| e("pread", x))?;
    check!(n == data.len() && back[..n] == data[..], "read back {n} bytes, equal: {}", back[..n] == data[..]);
    let mut mid = [0u8; 1000];
    check!(v.pread(fd, &mut mid, 123_457) == Ok(1000) && mid[..] == data[123_457..124_457]);
    check!(v.pwrite(fd, b"PATCH", 10) == Ok(5));
    check!(v.lseek(fd, 10, Whence::Set) == Ok(10));
    check!(v.read(fd, &mut mid[..5]) == Ok(5) && &mid[..5] == b"PATCH");
    v.ftruncate(fd, 100).map_err(|x| e("ftruncate", x))?;
    check!(v.fstat(fd).map(|s| s.size) == Ok(100));
    v.fsync(fd).map_err(|x| e("fsync", x))?;
    v.close(fd).map_err(|x| e("close", x))?;
    // O_APPEND and O_TRUNC.
    let fd = v.open(path, OpenFlags::WRONLY | OpenFlags::APPEND, 0).map_err(|x| e("open append", x))?;
    check!(v.write(fd, b"tail") == Ok(4));
    v.close(fd).map_err(|x| e("close", x))?;
    check!(v.stat(path).map(|s| s.size) == Ok(104));
    let fd = v.open(path, OpenFlags::WRONLY | OpenFlags::TRUNC, 0).map_err(|x| e("open trunc", x))?;
    v.close(fd).map_err(|x| e("close", x))?;
    check!(v.stat(path).map(|s| s.size) == Ok(0));
    check!(v.open(path, OpenFlags::RDWR | OpenFlags::CREAT | OpenFlags::EXCL, 0o644) == Err(Errno::EEXIST));
    v.unlink(path).map_err(|x| e("unlink", x))?;
    check!(v.stat(path) == Err(Errno::ENOENT));
    v.drop_caches();
    let after = m.live_nodes();
    check!(after == live, "virtio-fs vnodes: {live} before, {after} after (FORGET not sent?)");
    Ok(())
}

fn names(dir: &str) -> Result<Vec<String>, NotPassed> {
    let v = crate::fs::vfs();
    let fd = v.open(dir, OpenFlags::RDONLY | OpenFlags::DIRECTORY, 0).map_err(|x| e("opendir", x))?;
    let mut out = Vec::new();
    loop {
        let d = v.getdents(fd, 16).map_err(|x| e("getdents", x))?;
        if d.is_empty() {
            break;
        }
        out.extend(d.into_iter().map(|d| d.name));
    }
    v.close(fd).map_err(|x| e("closedir", x))?;
    out.sort();
    Ok(out)
}

fn namespace(boot: &'static BootInfo) -> Outcome {
    let m = mounted(boot)?;
    let v = crate::fs::vfs();
    let live = m.live_nodes();
    let d = "/host/osv-ns";
    v.mkdir(d, 0o755).map_err(|x| e("mkdir", x))?;
    check!(v.mkdir(d, 0o755) == Err(Errno::EEXIST));
    for i in 0..40 {
        let p = alloc::format!("{d}/file-{i:02}");
        let fd = v.open(&p, OpenFlags::WRONLY | OpenFlags::CREAT, 0o600).map_err(|x| e("create", x))?;
        check!(v.write(fd, p.as_bytes()) == Ok(p.len()));
        v.close(fd).map_err(|x| e("close", x))?;
    }
    let list = names(d)?;
    check!(list.len() == 42 && list[0] == "." && list[1] == ".." && list[2] == "file-00", "{list:?}");
    v.mkdir("/host/osv-ns/sub", 0o700).map_err(|x| e("mkdir sub", x))?;
    v.rename("/host/osv-ns/file-07", "/host/osv-ns/sub/seven").map_err(|x| e("rename", x))?;
    check!(v.stat("/host/osv-ns/file-07") == Err(Errno::ENOENT));
    check!(v.stat("/host/osv-ns/sub/seven").map(|s| s.size) == Ok(20));
    check!(names("/host/osv-ns/sub")? == [".", "..", "seven"]);
    // `..` of a directory and getcwd inside the share.
    v.chdir("/host/osv-ns/sub").map_err(|x| e("chdir", x))?;
    let cwd = v.getcwd();
    check!(v.stat("..").map(|s| s.ino) == v.stat(d).map(|s| s.ino));
    v.chdir("/").map_err(|x| e("chdir /", x))?;
    check!(cwd.as_deref() == Ok("/host/osv-ns/sub"), "{cwd:?}");
    check!(v.rmdir(d) == Err(Errno::ENOTEMPTY));
    check!(v.unlink("/host/osv-ns/sub") == Err(Errno::EISDIR));
    v.unlink("/host/osv-ns/sub/seven").map_err(|x| e("unlink", x))?;
    v.rmdir("/host/osv-ns/sub").map_err(|x| e("rmdir sub", x))?;
    for i in (0..40).filter(|&i| i != 7) {
        v.unlink(&alloc::format!("{d}/file-{i:02}")).map_err(|x| e("unlink", x))?;
    }
    v.rmdir(d).map_err(|x| e("rmdir", x))?;
    check!(v.stat(d) == Err(Errno::ENOENT));
    v.drop_caches();
    let after = m.live_nodes();
    check!(after == live, "virtio-fs vnodes: {live} before, {after} after");
    Ok(())
}

fn leave_file(boot: &'static BootInfo) -> Outcome {
    mounted(boot)?;
    let v = crate::fs::vfs();
    let data = guest_file();
    // Written under a temporary name and renamed, as an atomic save does.
    let tmp = "/host/from-guest.tmp";
    let fd = v
        .open(tmp, OpenFlags::WRONLY | OpenFlags::CREAT | OpenFlags::TRUNC, 0o644)
        .map_err(|x| e("create", x))?;
    check!(v.write(fd, &data) == Ok(data.len()));
    v.fsync(fd).map_err(|x| e("fsync", x))?;
    v.close(fd).map_err(|x| e("close", x))?;
    v.rename(tmp, "/host/from-guest.txt").map_err(|x| e("rename", x))?;
    let list = names("/host")?;
    check!(
        list.iter().any(|n| n == "from-guest.txt") && !list.iter().any(|n| n == "from-guest.tmp"),
        "{list:?}"
    );
    Ok(())
}
