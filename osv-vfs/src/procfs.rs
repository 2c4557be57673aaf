//! procfs: the process-information filesystem the kernel mounts on `/proc`.
//!
//! ```text
//! /proc/cpuinfo        processor blocks, from ProcSource::cpuinfo
//! /proc/meminfo        MemTotal/MemFree/MemAvailable, from ProcSource::meminfo
//! /proc/mounts   -> self/mounts
//! /proc/self/mounts    the VFS's mount table, from a MountList
//! /proc/uptime         uptime and idle seconds, from ProcSource
//! ```
//!
//! There is one process (the unikernel), so `self` is a directory rather
//! than a link to a pid. The texts follow Linux's formats byte for byte where
//! the fields exist (see the unit tests for exact samples). Each file's text
//! is generated afresh on every `read` and the requested range copied out,
//! so reads at any offset work and `stat` reports size 0, as on Linux; a
//! reader that reads in several pieces while the numbers change may see
//! pieces of two generations (Linux's `seq_file` keeps a per-open buffer;
//! the vnode interface here has no per-open state).
//!
//! Everything is read-only: opening a file for writing, and creating or
//! removing entries, fail with `EACCES`.
//!
//! Locking: procfs has no locks of its own. Reading `self/mounts` calls
//! [`MountList::mounts`], which walks the VFS; see there why that is safe.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt::Write;

use crate::ops::{Dirent, FsOps, PollEvents, Stat, StatFs, Timespec, VType, VnodeOps, VnodeRef, WritePos};
use crate::sync::{Arc, Weak};
use crate::vfs::MountList;
use crate::{Errno, OpenFlags, Result};

/// `statfs` magic of procfs on Linux.
pub const PROC_SUPER_MAGIC: u64 = 0x9fa0;

/// Memory totals for `/proc/meminfo`, in bytes (printed in KiB, rounded
/// down).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// All memory the kernel manages.
    pub total: u64,
    /// Memory not in use.
    pub free: u64,
    /// Memory that could be given to a new allocation (free plus reclaimable
    /// caches).
    pub available: u64,
}

/// Processor description for `/proc/cpuinfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// Number of CPUs (one `processor` block each).
    pub count: u32,
    /// CPUID vendor string (`GenuineIntel`, `AuthenticAMD`).
    pub vendor: String,
    /// CPUID brand string.
    pub model_name: String,
    /// Clock rate in kHz (printed as MHz with three decimals).
    pub khz: u64,
}

/// What procfs reports, implemented by the kernel (memory manager, clock,
/// CPUID). Called on every read of the matching file, with no lock held.
pub trait ProcSource: Send + Sync {
    /// Memory totals.
    fn meminfo(&self) -> MemInfo;
    /// Nanoseconds since boot.
    fn uptime_ns(&self) -> u64;
    /// Nanoseconds the CPUs spent idle since boot, summed over CPUs (Linux's
    /// second `/proc/uptime` field). The default: 0, not tracked.
    fn idle_ns(&self) -> u64 {
        0
    }
    /// The processors.
    fn cpuinfo(&self) -> CpuInfo;
}

/// A procfs instance; mount it with [`Vfs::mount`](crate::Vfs::mount) on
/// `/proc`.
pub struct ProcFs {
    root: Arc<ProcDir>,
}

impl ProcFs {
    /// procfs reporting `source`'s figures and `mounts`' mount table (see
    /// [`MountList`] for how to pass the VFS without a reference cycle).
    pub fn new(source: Arc<dyn ProcSource>, mounts: Arc<dyn MountList>) -> Arc<Self> {
        let data = Arc::new(Data { source, mounts });
        let file = |ino, kind| -> VnodeRef { Arc::new(ProcFile { ino, kind, data: data.clone() }) };
        let root = Arc::new_cyclic(|root_weak: &Weak<ProcDir>| {
            let self_dir: VnodeRef = Arc::new(ProcDir {
                ino: 2,
                parent: root_weak.clone(),
                entries: vec![("mounts", file(6, Kind::Mounts))],
            });
            ProcDir {
                ino: 1,
                parent: root_weak.clone(),
                entries: vec![
                    ("cpuinfo", file(5, Kind::CpuInfo)),
                    ("meminfo", file(3, Kind::MemInfo)),
                    ("mounts", Arc::new(ProcLink { ino: 7, target: "self/mounts" })),
                    ("self", self_dir),
                    ("uptime", file(4, Kind::Uptime)),
                ],
            }
        });
        Arc::new(Self { root })
    }
}

impl core::fmt::Debug for ProcFs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ProcFs").finish_non_exhaustive()
    }
}

impl FsOps for ProcFs {
    fn name(&self) -> &str {
        "proc"
    }
    fn root(&self) -> VnodeRef {
        self.root.clone()
    }
    fn statfs(&self) -> Result<StatFs> {
        Ok(StatFs {
            fs_type: PROC_SUPER_MAGIC,
            block_size: 4096,
            blocks: 0,
            blocks_free: 0,
            files: 7,
            files_free: 0,
            name_max: crate::NAME_MAX as u32,
        })
    }
}

struct Data {
    source: Arc<dyn ProcSource>,
    mounts: Arc<dyn MountList>,
}

fn attr(ino: u64, kind: VType, perm: u32, nlink: u64, size: u64) -> Stat {
    Stat {
        dev: 0,
        ino,
        kind,
        perm,
        nlink,
        size,
        blocks: 0,
        blksize: 1024,
        rdev: 0,
        atime: Timespec::default(),
        mtime: Timespec::default(),
        ctime: Timespec::default(),
    }
}

/// A fixed directory.
struct ProcDir {
    ino: u64,
    /// The root's parent is itself.
    parent: Weak<ProcDir>,
    /// Sorted by name.
    entries: Vec<(&'static str, VnodeRef)>,
}

impl VnodeOps for ProcDir {
    fn ino(&self) -> u64 {
        self.ino
    }
    fn vtype(&self) -> VType {
        VType::Directory
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn readdir(&self, cookie: u64) -> Result<Option<Dirent>> {
        let parent_ino = self.parent.upgrade().map_or(self.ino, |p| p.ino);
        Ok(match cookie {
            0 => Some(Dirent { ino: self.ino, kind: VType::Directory, name: String::from(".") }),
            1 => Some(Dirent { ino: parent_ino, kind: VType::Directory, name: String::from("..") }),
            c => usize::try_from(c - 2).ok().and_then(|i| self.entries.get(i)).map(|(name, v)| Dirent {
                ino: v.ino(),
                kind: v.vtype(),
                name: String::from(*name),
            }),
        })
    }
    fn lookup(&self, name: &str) -> Result<VnodeRef> {
        if name == ".." {
            return self.parent.upgrade().map(|d| d as VnodeRef).ok_or(Errno::ENOENT);
        }
        self.entries.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).ok_or(Errno::ENOENT)
    }
    crate::ops::read_only_dir_ops!(Errno::EACCES);
    fn getattr(&self) -> Result<Stat> {
        let subdirs = self.entries.iter().filter(|(_, v)| v.vtype() == VType::Directory).count() as u64;
        Ok(attr(self.ino, VType::Directory, 0o555, 2 + subdirs, 0))
    }
}

/// A symbolic link with a fixed target.
struct ProcLink {
    ino: u64,
    target: &'static str,
}

impl VnodeOps for ProcLink {
    fn ino(&self) -> u64 {
        self.ino
    }
    fn vtype(&self) -> VType {
        VType::Symlink
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn readlink(&self) -> Result<String> {
        Ok(String::from(self.target))
    }
    fn getattr(&self) -> Result<Stat> {
        Ok(attr(self.ino, VType::Symlink, 0o777, 1, self.target.len() as u64))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    MemInfo,
    Uptime,
    CpuInfo,
    Mounts,
}

/// A generated text file.
struct ProcFile {
    ino: u64,
    kind: Kind,
    data: Arc<Data>,
}

impl ProcFile {
    fn text(&self) -> String {
        let src = &*self.data.source;
        match self.kind {
            Kind::MemInfo => meminfo_text(&src.meminfo()),
            Kind::Uptime => uptime_text(src.uptime_ns(), src.idle_ns()),
            Kind::CpuInfo => cpuinfo_text(&src.cpuinfo()),
            Kind::Mounts => mounts_text(&self.data.mounts.mounts()),
        }
    }
}

impl VnodeOps for ProcFile {
    fn ino(&self) -> u64 {
        self.ino
    }
    fn vtype(&self) -> VType {
        VType::Regular
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn open(&self, flags: OpenFlags) -> Result {
        if flags.writable() || flags.contains(OpenFlags::TRUNC) {
            return Err(Errno::EACCES);
        }
        Ok(())
    }
    fn read(&self, off: u64, iov: &mut [&mut [u8]]) -> Result<usize> {
        let text = self.text();
        let bytes = text.as_bytes();
        let mut at = usize::try_from(off).unwrap_or(usize::MAX).min(bytes.len());
        let mut done = 0;
        for buf in iov.iter_mut() {
            let n = buf.len().min(bytes.len() - at);
            buf[..n].copy_from_slice(&bytes[at..at + n]);
            at += n;
            done += n;
        }
        Ok(done)
    }
    fn write(&self, _pos: WritePos, _iov: &[&[u8]]) -> Result<(usize, u64)> {
        Err(Errno::EACCES)
    }
    fn truncate(&self, _len: u64) -> Result {
        Err(Errno::EACCES)
    }
    fn getattr(&self) -> Result<Stat> {
        Ok(attr(self.ino, VType::Regular, 0o444, 1, 0))
    }
    fn poll(&self, events: PollEvents) -> Result<PollEvents> {
        Ok(events.intersection(PollEvents::IN))
    }
}

/// `/proc/meminfo`: Linux's `show_val_kb` layout, a 16-column label and an
/// 8-column right-aligned number of KiB.
fn meminfo_text(m: &MemInfo) -> String {
    let mut s = String::new();
    for (label, bytes) in [("MemTotal:", m.total), ("MemFree:", m.free), ("MemAvailable:", m.available)] {
        let _ = writeln!(s, "{label:<16}{:>8} kB", bytes / 1024);
    }
    s
}

/// `/proc/uptime`: seconds since boot and idle seconds, two decimals
/// (truncated, as Linux does).
fn uptime_text(up_ns: u64, idle_ns: u64) -> String {
    let f = |ns: u64| (ns / 1_000_000_000, (ns % 1_000_000_000) / 10_000_000);
    let ((us, uc), (is, ic)) = (f(up_ns), f(idle_ns));
    format!("{us}.{uc:02} {is}.{ic:02}\n")
}

/// `/proc/cpuinfo`: one block per CPU, fields as Linux's x86 `show_cpuinfo`
/// names them, a blank line after each.
fn cpuinfo_text(c: &CpuInfo) -> String {
    let mut s = String::new();
    for i in 0..c.count {
        let _ = write!(
            s,
            "processor\t: {i}\nvendor_id\t: {}\nmodel name\t: {}\ncpu MHz\t\t: {}.{:03}\ncpu cores\t: {}\n\n",
            c.vendor,
            c.model_name,
            c.khz / 1000,
            c.khz % 1000,
            c.count,
        );
    }
    s
}

/// `/proc/self/mounts`: `fsname mountpoint fstype options 0 0`, the
/// filesystem type standing for the source too, space, tab, newline and
/// backslash in the path escaped as octal (`\040`), as Linux's `mangle`.
fn mounts_text(mounts: &[crate::MountInfo]) -> String {
    let mut s = String::new();
    for m in mounts {
        let mut path = String::with_capacity(m.path.len());
        for ch in m.path.chars() {
            match ch {
                ' ' | '\t' | '\n' | '\\' => {
                    let _ = write!(path, "\\{:03o}", ch as u32);
                }
                c => path.push(c),
            }
        }
        let _ = writeln!(s, "{0} {path} {0} rw 0 0", m.fs_type);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devfs::fake::{Console, Entropy};
    use crate::{DevFs, MountInfo, RamFs, Vfs, Whence, ZeroClock};

    struct Fixed;

    impl ProcSource for Fixed {
        fn meminfo(&self) -> MemInfo {
            MemInfo { total: 2 << 30, free: (1 << 30) + 1023, available: 1536 << 20 }
        }
        fn uptime_ns(&self) -> u64 {
            12_345_678_901_234
        }
        fn idle_ns(&self) -> u64 {
            500_000_000
        }
        fn cpuinfo(&self) -> CpuInfo {
            CpuInfo {
                count: 2,
                vendor: String::from("GenuineIntel"),
                model_name: String::from("Intel(R) Xeon(R) CPU @ 2.20GHz"),
                khz: 2_199_998,
            }
        }
    }

    const MOUNTS: &str = "ramfs / ramfs rw 0 0\n\
                          devfs /dev devfs rw 0 0\n\
                          proc /proc proc rw 0 0\n\
                          ramfs /tmp/a\\040b ramfs rw 0 0\n";

    /// ramfs as `/`, devfs on `/dev`, procfs on `/proc`, ramfs on `/tmp/a b`.
    fn world() -> Arc<Vfs> {
        let vfs = Arc::new(Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap());
        for d in ["/dev", "/proc", "/tmp", "/tmp/a b"] {
            vfs.mkdir(d, 0o755).unwrap();
        }
        vfs.mount("/dev", DevFs::new(Arc::new(Console::default()), Arc::new(Entropy::default()))).unwrap();
        let list: Arc<dyn MountList> = Arc::new(Arc::downgrade(&vfs));
        vfs.mount("/proc", ProcFs::new(Arc::new(Fixed), list)).unwrap();
        vfs.mount("/tmp/a b", RamFs::new(Arc::new(ZeroClock))).unwrap();
        vfs
    }

    fn read_all(vfs: &Vfs, path: &str) -> String {
        let fd = vfs.open(path, OpenFlags::RDONLY, 0).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            match vfs.read(fd, &mut buf).unwrap() {
                0 => break,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
        vfs.close(fd).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn meminfo_text_exact() {
        let vfs = world();
        assert_eq!(
            read_all(&vfs, "/proc/meminfo"),
            "MemTotal:        2097152 kB\nMemFree:         1048576 kB\nMemAvailable:    1572864 kB\n"
        );
    }

    #[test]
    fn uptime_text_exact() {
        let vfs = world();
        assert_eq!(read_all(&vfs, "/proc/uptime"), "12345.67 0.50\n");
        assert_eq!(uptime_text(0, 0), "0.00 0.00\n");
        assert_eq!(uptime_text(1_009_999_999, 90_000_000), "1.00 0.09\n");
    }

    #[test]
    fn cpuinfo_text_exact() {
        let vfs = world();
        let block = |i| {
            format!(
                "processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\
                 cpu MHz\t\t: 2199.998\ncpu cores\t: 2\n\n"
            )
        };
        assert_eq!(read_all(&vfs, "/proc/cpuinfo"), block(0) + &block(1));
    }

    #[test]
    fn mounts_listing() {
        let vfs = world();
        let ids: Vec<_> = vfs.mounts().into_iter().map(|m: MountInfo| (m.path, m.fs_type)).collect();
        assert_eq!(ids[0], (String::from("/"), String::from("ramfs")));
        assert_eq!(ids[3], (String::from("/tmp/a b"), String::from("ramfs")));
        assert_eq!(read_all(&vfs, "/proc/self/mounts"), MOUNTS);
        assert_eq!(read_all(&vfs, "/proc/mounts"), MOUNTS);
        vfs.umount("/tmp/a b").unwrap();
        let left = MOUNTS.rsplit_once("ramfs /tmp").unwrap().0;
        assert_eq!(read_all(&vfs, "/proc/self/mounts"), left);
    }

    #[test]
    fn mounts_after_pivot_root() {
        let vfs = world();
        vfs.mkdir("/tmp/a b/old", 0o755).unwrap();
        vfs.pivot_root("/tmp/a b", "/tmp/a b/old").unwrap();
        assert_eq!(
            read_all(&vfs, "/old/proc/self/mounts"),
            "ramfs / ramfs rw 0 0\nramfs /old ramfs rw 0 0\ndevfs /old/dev devfs rw 0 0\nproc /old/proc proc rw 0 0\n"
        );
    }

    #[test]
    fn reads_at_offsets() {
        let vfs = world();
        let fd = vfs.open("/proc/uptime", OpenFlags::RDONLY, 0).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(vfs.pread(fd, &mut buf, 6).unwrap(), 4);
        assert_eq!(&buf, b"67 0");
        assert_eq!(vfs.pread(fd, &mut buf, 12).unwrap(), 2);
        assert_eq!(&buf[..2], b"0\n");
        assert_eq!(vfs.pread(fd, &mut buf, 14).unwrap(), 0);
        assert_eq!(vfs.pread(fd, &mut buf, 1 << 50).unwrap(), 0);
        assert_eq!(vfs.lseek(fd, 9, Whence::Set).unwrap(), 9);
        assert_eq!(vfs.read(fd, &mut buf).unwrap(), 4);
        assert_eq!(&buf, b"0.50");
    }

    #[test]
    fn read_only_and_listing() {
        let vfs = world();
        assert_eq!(vfs.open("/proc/meminfo", OpenFlags::WRONLY, 0), Err(Errno::EACCES));
        assert_eq!(vfs.open("/proc/meminfo", OpenFlags::RDONLY | OpenFlags::TRUNC, 0), Err(Errno::EACCES));
        assert_eq!(vfs.open("/proc/new", OpenFlags::CREAT | OpenFlags::RDWR, 0o644), Err(Errno::EACCES));
        assert_eq!(vfs.mkdir("/proc/self/x", 0o755), Err(Errno::EACCES));
        assert_eq!(vfs.truncate("/proc/uptime", 0), Err(Errno::EACCES));
        assert_eq!(vfs.readlink("/proc/mounts").unwrap(), "self/mounts");
        let st = vfs.stat("/proc/meminfo").unwrap();
        assert_eq!((st.kind, st.perm, st.size), (VType::Regular, 0o444, 0));
        assert_eq!(vfs.stat("/proc/self/..").unwrap().ino, vfs.stat("/proc").unwrap().ino);
        assert_eq!(vfs.stat("/proc/..").unwrap().ino, vfs.stat("/").unwrap().ino);
        assert_eq!(vfs.stat("/proc").unwrap().nlink, 3);
        let fd = vfs.open("/proc", OpenFlags::DIRECTORY, 0).unwrap();
        let names: Vec<_> = vfs.getdents(fd, 100).unwrap().into_iter().map(|d| d.name).collect();
        assert_eq!(names, [".", "..", "cpuinfo", "meminfo", "mounts", "self", "uptime"]);
        vfs.chdir("/proc/self").unwrap();
        assert_eq!(vfs.getcwd().unwrap(), "/proc/self");
        assert_eq!(read_all(&vfs, "mounts"), MOUNTS);
        assert_eq!(vfs.statfs("/proc").unwrap().fs_type, PROC_SUPER_MAGIC);
    }

    #[test]
    fn mounts_empty_once_the_vfs_is_gone() {
        let vfs = world();
        let weak: Arc<dyn MountList> = Arc::new(Arc::downgrade(&vfs));
        drop(vfs);
        assert!(weak.mounts().is_empty());
        let st: &'static Vfs = Box::leak(Box::new(Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap()));
        let list: Arc<dyn MountList> = Arc::new(st);
        assert_eq!(list.mounts().len(), 1);
    }
}
