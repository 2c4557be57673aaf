//! devfs: the device filesystem the kernel mounts on `/dev`.
//!
//! | node      | type  | rdev   | read                         | write                      |
//! |-----------|-------|--------|------------------------------|----------------------------|
//! | `null`    | char  | 1:3    | end of file                  | swallowed, full count      |
//! | `zero`    | char  | 1:5    | zeros                        | swallowed, full count      |
//! | `console` | char  | 5:1    | end of file (no input yet)   | to the [`ConsoleSink`]     |
//! | `random`  | char  | 1:8    | from the [`EntropySource`]   | offered to the source      |
//! | `urandom` | char  | 1:9    | from the [`EntropySource`]   | offered to the source      |
//! | `vblkN`   | block | 252:N  | [`BlockDev`] at byte offsets | [`BlockDev`] at byte offsets |
//!
//! The kernel implements the three traits: [`ConsoleSink`] (the serial port
//! or VGA text), [`EntropySource`] (RDRAND, virtio-rng) and [`BlockDev`]
//! (virtio-blk, registered by its driver at run time with
//! [`DevFs::register_block`]).
//!
//! **Console reads** return end of file (0 bytes) at once: there is no input
//! path yet, and a program that reads stdin then sees an empty stream rather
//! than blocking forever or spinning on `EAGAIN`.
//!
//! **random and urandom** are the same device, as on Linux since 5.6 once the
//! pool is initialised: reads never block and fill the whole buffer, or fail
//! with the source's error.
//!
//! **Block devices** take reads and writes at any byte offset and length.
//! Whole sectors go straight between the caller's buffer and the device; a
//! partial sector at either end of a request goes through a one-sector bounce
//! buffer, and a write to one is a read-modify-write of that whole sector.
//! So that a read-modify-write cannot lose a concurrent write to the same
//! sector, a write with a partial sector takes the node's I/O lock
//! exclusively; reads and whole-sector writes take it shared and run
//! concurrently. Reads stop at the end of the device (0 at or past it);
//! writes past the end are cut short there, and a write that starts at or
//! past the end fails with `ENOSPC`, as Linux's block devices do. `fsync`
//! calls [`BlockDev::flush`]. The `ioctl`s `BLKGETSIZE64` and `BLKSSZGET`
//! return the size and sector size as the call's result (there is no user
//! memory to write through).
//!
//! The root directory's entries change behind the VFS's back (drivers add
//! devices), so it opts out of the dentry cache ([`VnodeOps::cacheable`]).
//! The directory itself is read-only through the VFS: creating, removing or
//! renaming entries fails with `EACCES`. Timestamps are zero.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::any::Any;

use crate::ops::{
    makedev, Dirent, FsOps, PollEvents, Stat, StatFs, Timespec, VType, VnodeOps, VnodeRef, WritePos,
};
use crate::sync::{Arc, AtomicU64, Ordering, RwLock, Weak};
use crate::{Errno, OpenFlags, Result};

/// `statfs` magic of devfs (Linux's `TMPFS_MAGIC`, which devtmpfs reports).
pub const DEVFS_MAGIC: u64 = 0x0102_1994;
/// The major number of the block devices registered here (`vblkN` is
/// `252:N`, the first of Linux's dynamic block majors).
pub const VBLK_MAJOR: u32 = 252;
/// `ioctl` request: the device size in bytes (Linux `BLKGETSIZE64`).
pub const BLKGETSIZE64: u32 = 0x8008_1272;
/// `ioctl` request: the logical sector size (Linux `BLKSSZGET`).
pub const BLKSSZGET: u32 = 0x1268;

/// Where `/dev/console` output goes. The kernel implements it over its
/// console (serial port, VGA text).
pub trait ConsoleSink: Send + Sync {
    /// Writes all of `bytes` to the console; it cannot fail.
    fn write(&self, bytes: &[u8]);
}

/// Where `/dev/random` and `/dev/urandom` get their bytes. The kernel
/// implements it over RDRAND or virtio-rng.
pub trait EntropySource: Send + Sync {
    /// Fills all of `buf` with random bytes, or fails (`EIO`) without a
    /// partial result. Must not block for long: reads of `/dev/random` call it
    /// directly.
    fn fill(&self, buf: &mut [u8]) -> Result;
    /// Bytes written to `/dev/random` or `/dev/urandom`, offered to be mixed
    /// into the pool; a source is free to ignore them (the default).
    fn add(&self, _bytes: &[u8]) {}
}

/// A sector index on a block device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sector(pub u64);

/// A block device, as a driver registers it with
/// [`DevFs::register_block`]. Transfers are in whole sectors; devfs does the
/// byte-offset arithmetic.
pub trait BlockDev: Send + Sync {
    /// Bytes per sector: a power of two (512 or 4096 in practice).
    fn sector_size(&self) -> u32;
    /// Capacity in bytes: a multiple of the sector size.
    fn size(&self) -> u64;
    /// Reads `buf.len() / sector_size` sectors starting at `sector`. devfs
    /// passes a non-zero multiple of the sector size that lies within the
    /// device.
    fn read_at(&self, sector: Sector, buf: &mut [u8]) -> Result;
    /// Writes whole sectors starting at `sector`; the same promises as
    /// [`read_at`](Self::read_at).
    fn write_at(&self, sector: Sector, buf: &[u8]) -> Result;
    /// Makes written data durable.
    fn flush(&self) -> Result;
}

/// First inode number handed to registered devices.
const FIRST_DYNAMIC_INO: u64 = 16;

/// A devfs instance; mount it with [`Vfs::mount`](crate::Vfs::mount) on
/// `/dev`.
pub struct DevFs {
    root: Arc<DevDir>,
}

impl DevFs {
    /// devfs with `null`, `zero`, `console` writing to `console`, and
    /// `random`/`urandom` reading from `entropy`.
    pub fn new(console: Arc<dyn ConsoleSink>, entropy: Arc<dyn EntropySource>) -> Arc<Self> {
        let mut entries = BTreeMap::new();
        let fixed = [
            ("null", 2, Dev::Null, makedev(1, 3), 0o666),
            ("zero", 3, Dev::Zero, makedev(1, 5), 0o666),
            ("console", 4, Dev::Console(console), makedev(5, 1), 0o600),
            ("random", 5, Dev::Random(entropy.clone()), makedev(1, 8), 0o666),
            ("urandom", 6, Dev::Random(entropy), makedev(1, 9), 0o666),
        ];
        for (name, ino, dev, rdev, perm) in fixed {
            entries.insert(String::from(name), Arc::new(DevNode { ino, dev, rdev, perm }));
        }
        Arc::new(Self {
            root: Arc::new_cyclic(|me| DevDir {
                me: me.clone(),
                entries: RwLock::new(entries),
                next_ino: AtomicU64::new(FIRST_DYNAMIC_INO),
                next_blk: AtomicU64::new(0),
            }),
        })
    }

    /// Adds a block device as `/dev/vblkN` (N counts up from 0 and is never
    /// reused) and returns its name. `EINVAL` if the sector size is not a
    /// power of two or the size not a multiple of it.
    pub fn register_block(&self, dev: Arc<dyn BlockDev>) -> Result<String> {
        let ss = dev.sector_size();
        if !ss.is_power_of_two() || !dev.size().is_multiple_of(u64::from(ss)) {
            return Err(Errno::EINVAL);
        }
        let n = self.root.next_blk.fetch_add(1, Ordering::Relaxed);
        let name = format!("vblk{n}");
        let node = DevNode {
            ino: self.root.next_ino.fetch_add(1, Ordering::Relaxed),
            dev: Dev::Block { dev, io: RwLock::new(()) },
            rdev: makedev(VBLK_MAJOR, u32::try_from(n).map_err(|_| Errno::ENOSPC)?),
            perm: 0o660,
        };
        self.root.entries.write().insert(name.clone(), Arc::new(node));
        Ok(name)
    }

    /// Removes a registered block device's node. Open files on it keep the
    /// device until they are closed. `ENOENT` if there is no such node,
    /// `EPERM` for the built-in character devices.
    pub fn unregister(&self, name: &str) -> Result {
        let mut e = self.root.entries.write();
        match e.get(name) {
            None => Err(Errno::ENOENT),
            Some(n) if !matches!(n.dev, Dev::Block { .. }) => Err(Errno::EPERM),
            Some(_) => {
                e.remove(name);
                Ok(())
            }
        }
    }
}

impl core::fmt::Debug for DevFs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DevFs").field("nodes", &self.root.entries.read().len()).finish()
    }
}

impl FsOps for DevFs {
    fn name(&self) -> &str {
        "devfs"
    }
    fn root(&self) -> VnodeRef {
        self.root.clone()
    }
    fn statfs(&self) -> Result<StatFs> {
        Ok(StatFs {
            fs_type: DEVFS_MAGIC,
            block_size: 4096,
            blocks: 0,
            blocks_free: 0,
            files: 1 + self.root.entries.read().len() as u64,
            files_free: 0,
            name_max: crate::NAME_MAX as u32,
        })
    }
}

/// The `/dev` directory.
struct DevDir {
    me: Weak<DevDir>,
    entries: RwLock<BTreeMap<String, Arc<DevNode>>>,
    next_ino: AtomicU64,
    next_blk: AtomicU64,
}

const ROOT_INO: u64 = 1;

fn stat(ino: u64, kind: VType, perm: u32, nlink: u64, size: u64, blksize: u32, rdev: u64) -> Stat {
    Stat {
        dev: 0,
        ino,
        kind,
        perm,
        nlink,
        size,
        blocks: 0,
        blksize,
        rdev,
        atime: Timespec::default(),
        mtime: Timespec::default(),
        ctime: Timespec::default(),
    }
}

impl VnodeOps for DevDir {
    fn ino(&self) -> u64 {
        ROOT_INO
    }
    fn vtype(&self) -> VType {
        VType::Directory
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn readdir(&self, cookie: u64) -> Result<Option<Dirent>> {
        Ok(match cookie {
            0 => Some(Dirent { ino: ROOT_INO, kind: VType::Directory, name: String::from(".") }),
            1 => Some(Dirent { ino: ROOT_INO, kind: VType::Directory, name: String::from("..") }),
            c => {
                let i = usize::try_from(c - 2).map_err(|_| Errno::EINVAL)?;
                self.entries.read().iter().nth(i).map(|(name, n)| Dirent {
                    ino: n.ino,
                    kind: n.vtype(),
                    name: name.clone(),
                })
            }
        })
    }
    fn lookup(&self, name: &str) -> Result<VnodeRef> {
        if name == ".." {
            // The filesystem root is its own parent (the VFS crosses to the
            // mount point's parent before asking).
            return self.me.upgrade().map(|d| d as VnodeRef).ok_or(Errno::ENOENT);
        }
        self.entries.read().get(name).cloned().map(|n| n as VnodeRef).ok_or(Errno::ENOENT)
    }
    fn cacheable(&self) -> bool {
        false
    }
    crate::ops::read_only_dir_ops!(Errno::EACCES);
    fn getattr(&self) -> Result<Stat> {
        Ok(stat(ROOT_INO, VType::Directory, 0o755, 2, 0, 4096, 0))
    }
}

enum Dev {
    Null,
    Zero,
    Console(Arc<dyn ConsoleSink>),
    Random(Arc<dyn EntropySource>),
    Block {
        dev: Arc<dyn BlockDev>,
        /// Shared by reads and whole-sector writes, exclusive for writes
        /// with a read-modify-write (see the module docs).
        io: RwLock<()>,
    },
}

/// One device node.
struct DevNode {
    ino: u64,
    dev: Dev,
    rdev: u64,
    perm: u32,
}

fn total(iov: &[&[u8]]) -> usize {
    iov.iter().map(|b| b.len()).sum()
}

impl VnodeOps for DevNode {
    fn ino(&self) -> u64 {
        self.ino
    }
    fn vtype(&self) -> VType {
        match self.dev {
            Dev::Block { .. } => VType::BlockDevice,
            _ => VType::CharDevice,
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn open(&self, _flags: OpenFlags) -> Result {
        Ok(())
    }
    fn read(&self, off: u64, iov: &mut [&mut [u8]]) -> Result<usize> {
        match &self.dev {
            Dev::Null | Dev::Console(_) => Ok(0),
            Dev::Zero => {
                iov.iter_mut().for_each(|b| b.fill(0));
                Ok(total_mut(iov))
            }
            Dev::Random(src) => {
                for b in iov.iter_mut() {
                    src.fill(b)?;
                }
                Ok(total_mut(iov))
            }
            Dev::Block { dev, io } => {
                let _g = io.read();
                block_read(&**dev, off, iov)
            }
        }
    }
    fn write(&self, pos: WritePos, iov: &[&[u8]]) -> Result<(usize, u64)> {
        let off = match pos {
            WritePos::At(o) => o,
            // Devices have no end to append at: Linux writes at the offset.
            WritePos::Append => 0,
        };
        let n = match &self.dev {
            Dev::Null | Dev::Zero => total(iov),
            Dev::Console(sink) => {
                iov.iter().for_each(|b| sink.write(b));
                total(iov)
            }
            Dev::Random(src) => {
                iov.iter().for_each(|b| src.add(b));
                total(iov)
            }
            Dev::Block { dev, io } => return block_write(&**dev, io, off, iov),
        };
        Ok((n, off.saturating_add(n as u64)))
    }
    fn getattr(&self) -> Result<Stat> {
        let (size, blksize) = match &self.dev {
            Dev::Block { dev, .. } => (dev.size(), dev.sector_size()),
            _ => (0, 4096),
        };
        Ok(stat(self.ino, self.vtype(), self.perm, 1, size, blksize, self.rdev))
    }
    fn truncate(&self, _len: u64) -> Result {
        Err(Errno::EINVAL)
    }
    fn fsync(&self) -> Result {
        match &self.dev {
            Dev::Block { dev, .. } => dev.flush(),
            _ => Err(Errno::EINVAL),
        }
    }
    fn ioctl(&self, cmd: u32, _arg: usize) -> Result<usize> {
        let Dev::Block { dev, .. } = &self.dev else {
            return Err(Errno::ENOTTY);
        };
        match cmd {
            BLKGETSIZE64 => usize::try_from(dev.size()).map_err(|_| Errno::EOVERFLOW),
            BLKSSZGET => Ok(dev.sector_size() as usize),
            _ => Err(Errno::ENOTTY),
        }
    }
    fn poll(&self, events: PollEvents) -> Result<PollEvents> {
        Ok(events.intersection(PollEvents::IN.union(PollEvents::OUT)))
    }
}

fn total_mut(iov: &[&mut [u8]]) -> usize {
    iov.iter().map(|b| b.len()).sum()
}

/// Reads from byte `off` into the buffers, in whole sectors where it can and
/// through a bounce sector at the ends.
fn block_read(dev: &dyn BlockDev, mut off: u64, iov: &mut [&mut [u8]]) -> Result<usize> {
    let ss = u64::from(dev.sector_size());
    let size = dev.size();
    let mut done = 0;
    let mut bounce = Vec::new();
    for buf in iov.iter_mut() {
        let mut at = 0;
        while at < buf.len() && off < size {
            let want = ((buf.len() - at) as u64).min(size - off);
            let in_sector = off % ss;
            let n = if in_sector != 0 || want < ss {
                if bounce.is_empty() {
                    bounce = vec![0; ss as usize];
                }
                dev.read_at(Sector(off / ss), &mut bounce)?;
                let n = want.min(ss - in_sector) as usize;
                buf[at..at + n].copy_from_slice(&bounce[in_sector as usize..in_sector as usize + n]);
                n
            } else {
                let n = (want - want % ss) as usize;
                dev.read_at(Sector(off / ss), &mut buf[at..at + n])?;
                n
            };
            at += n;
            off += n as u64;
            done += n;
        }
        if off >= size {
            break;
        }
    }
    Ok(done)
}

/// Writes the buffers at byte `off`: whole sectors directly, partial ones by
/// read-modify-write under the exclusive I/O lock.
fn block_write(dev: &dyn BlockDev, io: &RwLock<()>, mut off: u64, iov: &[&[u8]]) -> Result<(usize, u64)> {
    let ss = u64::from(dev.sector_size());
    let size = dev.size();
    let len = total(iov) as u64;
    if len == 0 {
        return Ok((0, off));
    }
    if off >= size {
        return Err(Errno::ENOSPC);
    }
    let end = off + len.min(size - off);
    let partial = !off.is_multiple_of(ss)
        || !end.is_multiple_of(ss)
        || iov.iter().any(|b| !(b.len() as u64).is_multiple_of(ss));
    // Hold one guard for the whole request: shared when every piece is whole
    // sectors, exclusive when a read-modify-write is needed.
    let _shared;
    let _exclusive;
    if partial {
        _exclusive = io.write();
    } else {
        _shared = io.read();
    }
    let mut bounce = Vec::new();
    let mut done = 0;
    for buf in iov {
        let mut at = 0;
        while at < buf.len() && off < end {
            let want = ((buf.len() - at) as u64).min(end - off);
            let in_sector = off % ss;
            let n = if in_sector != 0 || want < ss {
                if bounce.is_empty() {
                    bounce = vec![0; ss as usize];
                }
                dev.read_at(Sector(off / ss), &mut bounce)?;
                let n = want.min(ss - in_sector) as usize;
                bounce[in_sector as usize..in_sector as usize + n].copy_from_slice(&buf[at..at + n]);
                dev.write_at(Sector(off / ss), &bounce)?;
                n
            } else {
                let n = (want - want % ss) as usize;
                dev.write_at(Sector(off / ss), &buf[at..at + n])?;
                n
            };
            at += n;
            off += n as u64;
            done += n;
        }
    }
    Ok((done, off))
}

#[cfg(test)]
pub(crate) mod fake {
    //! Fakes of the kernel's side, shared with the procfs tests and benches.
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// A console that keeps what it is given.
    #[derive(Default)]
    pub(crate) struct Console(pub(crate) StdMutex<Vec<u8>>);

    impl ConsoleSink for Console {
        fn write(&self, bytes: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
    }

    /// A counter-mode "random" source: byte i of the stream is `i as u8 ^ 0xa5`,
    /// so tests can tell which bytes came from it; records what was added.
    #[derive(Default)]
    pub(crate) struct Entropy {
        pub(crate) served: StdMutex<u64>,
        pub(crate) added: StdMutex<Vec<u8>>,
    }

    impl EntropySource for Entropy {
        fn fill(&self, buf: &mut [u8]) -> Result {
            let mut n = self.served.lock().unwrap();
            for b in buf {
                *b = (*n as u8) ^ 0xa5;
                *n += 1;
            }
            Ok(())
        }
        fn add(&self, bytes: &[u8]) {
            self.added.lock().unwrap().extend_from_slice(bytes);
        }
    }

    /// A memory disk that panics on any request devfs promised never to
    /// make (unaligned, empty or out of range), and counts flushes.
    pub(crate) struct Disk {
        pub(crate) ss: u32,
        pub(crate) data: StdMutex<Vec<u8>>,
        pub(crate) flushes: StdMutex<u32>,
    }

    impl Disk {
        pub(crate) fn new(ss: u32, sectors: usize) -> Self {
            let data = (0..ss as usize * sectors).map(|i| (i % 251) as u8).collect();
            Self { ss, data: StdMutex::new(data), flushes: StdMutex::new(0) }
        }
        fn range(&self, sector: Sector, len: usize) -> core::ops::Range<usize> {
            assert!(len > 0 && len.is_multiple_of(self.ss as usize), "unaligned length {len}");
            let start = sector.0 as usize * self.ss as usize;
            assert!(start + len <= self.data.lock().unwrap().len(), "past the end");
            start..start + len
        }
    }

    impl BlockDev for Disk {
        fn sector_size(&self) -> u32 {
            self.ss
        }
        fn size(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn read_at(&self, sector: Sector, buf: &mut [u8]) -> Result {
            let r = self.range(sector, buf.len());
            buf.copy_from_slice(&self.data.lock().unwrap()[r]);
            Ok(())
        }
        fn write_at(&self, sector: Sector, buf: &[u8]) -> Result {
            let r = self.range(sector, buf.len());
            self.data.lock().unwrap()[r].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&self) -> Result {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Console, Disk, Entropy};
    use super::*;
    use crate::{Vfs, ZeroClock};

    struct World {
        vfs: Vfs,
        dev: Arc<DevFs>,
        console: Arc<Console>,
        entropy: Arc<Entropy>,
    }

    fn world() -> World {
        let vfs = Vfs::new(crate::RamFs::new(Arc::new(ZeroClock))).unwrap();
        vfs.mkdir("/dev", 0o755).unwrap();
        let console = Arc::new(Console::default());
        let entropy = Arc::new(Entropy::default());
        let dev = DevFs::new(console.clone(), entropy.clone());
        vfs.mount("/dev", dev.clone()).unwrap();
        World { vfs, dev, console, entropy }
    }

    #[test]
    fn null_swallows_and_reads_eof() {
        let w = world();
        let fd = w.vfs.open("/dev/null", OpenFlags::RDWR, 0).unwrap();
        assert_eq!(w.vfs.write(fd, b"gone").unwrap(), 4);
        assert_eq!(w.vfs.writev(fd, &[b"a", b"bc"]).unwrap(), 3);
        let mut buf = [7u8; 8];
        assert_eq!(w.vfs.read(fd, &mut buf).unwrap(), 0);
        assert_eq!(buf, [7; 8]);
        // O_TRUNC and O_CREAT on an existing device are harmless.
        let fd2 =
            w.vfs.open("/dev/null", OpenFlags::WRONLY | OpenFlags::TRUNC | OpenFlags::CREAT, 0).unwrap();
        assert_eq!(w.vfs.write(fd2, b"x").unwrap(), 1);
    }

    #[test]
    fn zero_fills() {
        let w = world();
        let fd = w.vfs.open("/dev/zero", OpenFlags::RDWR, 0).unwrap();
        let mut a = [1u8; 100];
        let mut b = [2u8; 3];
        assert_eq!(w.vfs.readv(fd, &mut [&mut a, &mut b]).unwrap(), 103);
        assert!(a.iter().chain(b.iter()).all(|&x| x == 0));
        assert_eq!(w.vfs.write(fd, b"ignored").unwrap(), 7);
        assert_eq!(w.vfs.pread(fd, &mut a, 1 << 40).unwrap(), 100);
    }

    #[test]
    fn random_and_urandom_use_the_source() {
        let w = world();
        let mut buf = [0u8; 6];
        let fd = w.vfs.open("/dev/random", OpenFlags::RDWR, 0).unwrap();
        assert_eq!(w.vfs.read(fd, &mut buf).unwrap(), 6);
        assert_eq!(buf, [0xa5, 0xa4, 0xa7, 0xa6, 0xa1, 0xa0]);
        let fd = w.vfs.open("/dev/urandom", OpenFlags::RDWR, 0).unwrap();
        assert_eq!(w.vfs.read(fd, &mut buf[..2]).unwrap(), 2);
        assert_eq!(buf[..2], [6 ^ 0xa5, 7 ^ 0xa5]);
        assert_eq!(*w.entropy.served.lock().unwrap(), 8);
        assert_eq!(w.vfs.write(fd, b"seed").unwrap(), 4);
        assert_eq!(&*w.entropy.added.lock().unwrap(), b"seed");
    }

    #[test]
    fn random_passes_source_errors_on() {
        struct Broken;
        impl EntropySource for Broken {
            fn fill(&self, _buf: &mut [u8]) -> Result {
                Err(Errno::EIO)
            }
        }
        let vfs = Vfs::new(DevFs::new(Arc::new(Console::default()), Arc::new(Broken))).unwrap();
        let fd = vfs.open("/random", OpenFlags::RDONLY, 0).unwrap();
        assert_eq!(vfs.read(fd, &mut [0u8; 4]), Err(Errno::EIO));
    }

    #[test]
    fn console_sink_receives_bytes_and_reads_eof() {
        let w = world();
        let fd = w.vfs.open("/dev/console", OpenFlags::RDWR | OpenFlags::APPEND, 0).unwrap();
        assert_eq!(w.vfs.write(fd, b"hello, ").unwrap(), 7);
        assert_eq!(w.vfs.writev(fd, &[b"con", b"sole\n"]).unwrap(), 8);
        assert_eq!(&*w.console.0.lock().unwrap(), b"hello, console\n");
        assert_eq!(w.vfs.read(fd, &mut [0u8; 4]).unwrap(), 0);
    }

    #[test]
    fn stat_types_and_listing() {
        let w = world();
        let st = w.vfs.stat("/dev/null").unwrap();
        assert_eq!((st.kind, st.rdev, st.mode()), (VType::CharDevice, makedev(1, 3), 0o020666));
        assert_eq!(w.vfs.stat("/dev/urandom").unwrap().rdev, makedev(1, 9));
        assert_eq!(w.vfs.stat("/dev/console").unwrap().rdev, makedev(5, 1));
        assert_eq!(w.vfs.stat("/dev").unwrap().kind, VType::Directory);
        assert_eq!(w.vfs.stat("/dev/..").unwrap().ino, w.vfs.stat("/").unwrap().ino);
        assert_eq!(w.dev.register_block(Arc::new(Disk::new(512, 8))).unwrap(), "vblk0");
        let st = w.vfs.stat("/dev/vblk0").unwrap();
        assert_eq!((st.kind, st.size, st.blksize), (VType::BlockDevice, 4096, 512));
        assert_eq!((st.rdev, st.mode() & 0o170000), (makedev(VBLK_MAJOR, 0), 0o060000));
        let fd = w.vfs.open("/dev", OpenFlags::DIRECTORY, 0).unwrap();
        let names: Vec<_> = w.vfs.getdents(fd, 100).unwrap().into_iter().map(|d| (d.name, d.kind)).collect();
        let c = VType::CharDevice;
        let want = [
            (".", VType::Directory),
            ("..", VType::Directory),
            ("console", c),
            ("null", c),
            ("random", c),
            ("urandom", c),
            ("vblk0", VType::BlockDevice),
            ("zero", c),
        ];
        assert_eq!(names, want.map(|(n, k)| (String::from(n), k)));
        assert_eq!(w.vfs.mkdir("/dev/x", 0o755), Err(Errno::EACCES));
        assert_eq!(w.vfs.open("/dev/x", OpenFlags::CREAT | OpenFlags::RDWR, 0o644), Err(Errno::EACCES));
        assert_eq!(w.vfs.unlink("/dev/null"), Err(Errno::EACCES));
        assert_eq!(w.vfs.statfs("/dev").unwrap().fs_type, DEVFS_MAGIC);
    }

    #[test]
    fn registration_is_seen_past_the_dentry_cache() {
        let w = world();
        assert_eq!(w.vfs.stat("/dev/vblk0"), Err(Errno::ENOENT));
        let name = w.dev.register_block(Arc::new(Disk::new(512, 2))).unwrap();
        assert_eq!(w.vfs.stat("/dev/vblk0").unwrap().size, 1024);
        let fd = w.vfs.open("/dev/vblk0", OpenFlags::RDONLY, 0).unwrap();
        w.dev.unregister(&name).unwrap();
        assert_eq!(w.vfs.stat("/dev/vblk0"), Err(Errno::ENOENT));
        // The open file keeps the device.
        assert_eq!(w.vfs.pread(fd, &mut [0u8; 4], 0).unwrap(), 4);
        assert_eq!(w.dev.register_block(Arc::new(Disk::new(512, 2))).unwrap(), "vblk1");
        assert_eq!(w.dev.unregister("null"), Err(Errno::EPERM));
        assert_eq!(w.dev.unregister("vblk0"), Err(Errno::ENOENT));
        assert_eq!(w.dev.register_block(Arc::new(Disk::new(500, 2))), Err(Errno::EINVAL));
    }

    #[test]
    fn block_round_trip_unaligned() {
        let w = world();
        let disk = Arc::new(Disk::new(512, 8));
        let orig = disk.data.lock().unwrap().clone();
        w.dev.register_block(disk.clone()).unwrap();
        let fd = w.vfs.open("/dev/vblk0", OpenFlags::RDWR, 0).unwrap();
        let mut model = orig.clone();

        // Unaligned at both ends, spanning a whole sector in between.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(w.vfs.pwrite(fd, &data, 100).unwrap(), 1000);
        model[100..1100].copy_from_slice(&data);
        assert_eq!(*disk.data.lock().unwrap(), model);
        let mut back = vec![0u8; 1000];
        assert_eq!(w.vfs.pread(fd, &mut back, 100).unwrap(), 1000);
        assert_eq!(back, data);

        // Within one sector; odd iovec pieces; through the file offset.
        w.vfs.lseek(fd, 1030, crate::Whence::Set).unwrap();
        assert_eq!(w.vfs.writev(fd, &[b"ab", &[9u8; 600], b"c"]).unwrap(), 603);
        model[1030..1032].copy_from_slice(b"ab");
        model[1032..1632].fill(9);
        model[1632] = b'c';
        assert_eq!(*disk.data.lock().unwrap(), model);
        let (mut x, mut y) = ([0u8; 3], [0u8; 700]);
        assert_eq!(w.vfs.preadv(fd, &mut [&mut x, &mut y], 1029).unwrap(), 703);
        assert_eq!(x[..], model[1029..1032]);
        assert_eq!(y[..], model[1032..1732]);

        // Aligned, whole sectors.
        assert_eq!(w.vfs.pwrite(fd, &[3u8; 1024], 2048).unwrap(), 1024);
        model[2048..3072].fill(3);
        assert_eq!(*disk.data.lock().unwrap(), model);

        // The end: short read, short write, then ENOSPC and EOF.
        let mut tail = [0u8; 100];
        assert_eq!(w.vfs.pread(fd, &mut tail, 4096 - 30).unwrap(), 30);
        assert_eq!(tail[..30], model[4066..]);
        assert_eq!(w.vfs.pread(fd, &mut tail, 4096).unwrap(), 0);
        assert_eq!(w.vfs.pwrite(fd, &[5u8; 100], 4096 - 10).unwrap(), 10);
        model[4086..].fill(5);
        assert_eq!(*disk.data.lock().unwrap(), model);
        assert_eq!(w.vfs.pwrite(fd, b"x", 4096), Err(Errno::ENOSPC));
        assert_eq!(w.vfs.pwrite(fd, b"", 4096).unwrap(), 0);

        assert_eq!(w.vfs.ioctl(fd, BLKGETSIZE64, 0).unwrap(), 4096);
        assert_eq!(w.vfs.ioctl(fd, BLKSSZGET, 0).unwrap(), 512);
        assert_eq!(w.vfs.ioctl(fd, 0x1234, 0), Err(Errno::ENOTTY));
        w.vfs.fsync(fd).unwrap();
        assert_eq!(*disk.flushes.lock().unwrap(), 1);
        assert_eq!(w.vfs.lseek(fd, 0, crate::Whence::End).unwrap(), 4096);
    }

    #[test]
    fn block_4k_sectors() {
        let w = world();
        let disk = Arc::new(Disk::new(4096, 3));
        let mut model = disk.data.lock().unwrap().clone();
        w.dev.register_block(disk.clone()).unwrap();
        let fd = w.vfs.open("/dev/vblk0", OpenFlags::RDWR, 0).unwrap();
        assert_eq!(w.vfs.pwrite(fd, &[1u8; 5000], 4000).unwrap(), 5000);
        model[4000..9000].fill(1);
        assert_eq!(*disk.data.lock().unwrap(), model);
        let mut all = vec![0u8; 20000];
        assert_eq!(w.vfs.pread(fd, &mut all, 1).unwrap(), 12287);
        assert_eq!(all[..12287], model[1..]);
    }
}
