//! The operation tables: [`VnodeOps`] (OSv's `struct vnops`) and [`FsOps`]
//! (OSv's `struct vfsops`), plus the plain types they exchange.
//!
//! Every operation a filesystem may leave out has a default body that returns
//! an error ([`Errno::ENOSYS`] unless POSIX names a better one), so a
//! filesystem implements only what it supports and the VFS never panics on a
//! missing operation.

use alloc::string::String;
use core::any::Any;

use crate::sync::Arc;
use crate::{Errno, Result};

/// A shared reference to a vnode: the VFS, the dentry cache and open files
/// hold these; a vnode lives as long as one of them does.
pub type VnodeRef = Arc<dyn VnodeOps>;

/// What kind of object a vnode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VType {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

impl VType {
    /// The `S_IFMT` bits Linux uses for this type.
    pub const fn mode_bits(self) -> u32 {
        match self {
            VType::Regular => 0o100000,
            VType::Directory => 0o040000,
            VType::Symlink => 0o120000,
            VType::CharDevice => 0o020000,
            VType::BlockDevice => 0o060000,
            VType::Fifo => 0o010000,
            VType::Socket => 0o140000,
        }
    }
}

/// A point in time: seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timespec {
    /// Whole seconds.
    pub sec: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nsec: u32,
}

/// Wall-clock time for timestamps; the kernel implements it (tests use a fake).
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timespec;
}

/// A clock stuck at the epoch, for early boot before time is known.
#[derive(Clone, Copy, Debug, Default)]
pub struct ZeroClock;

impl Clock for ZeroClock {
    fn now(&self) -> Timespec {
        Timespec::default()
    }
}

/// The host's wall clock (`std` only).
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug, Default)]
pub struct StdClock;

#[cfg(feature = "std")]
impl Clock for StdClock {
    fn now(&self) -> Timespec {
        extern crate std;
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timespec { sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nsec: d.subsec_nanos() }
    }
}

/// File attributes, as `getattr` reports them (`struct stat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Device: the id of the mount the vnode belongs to (filled by the VFS).
    pub dev: u64,
    /// Inode number, unique within its filesystem.
    pub ino: u64,
    /// Object type.
    pub kind: VType,
    /// Permission bits (`0o7777`); the type is in `kind`.
    pub perm: u32,
    /// Number of hard links (directories: 2 + subdirectories).
    pub nlink: u64,
    /// Size in bytes (symlinks: length of the target).
    pub size: u64,
    /// 512-byte blocks actually allocated (holes take none).
    pub blocks: u64,
    /// Preferred I/O size.
    pub blksize: u32,
    /// The device a character or block device node stands for
    /// (`makedev(major, minor)` as glibc encodes it, see [`makedev`]); 0 for
    /// other objects.
    pub rdev: u64,
    /// Last access (ramfs does not update it on read: `noatime`).
    pub atime: Timespec,
    /// Last data change.
    pub mtime: Timespec,
    /// Last status change.
    pub ctime: Timespec,
}

/// A device number from its major and minor parts, encoded as glibc's
/// `makedev` does (`st_rdev`).
pub const fn makedev(major: u32, minor: u32) -> u64 {
    let (ma, mi) = (major as u64, minor as u64);
    ((ma & 0xffff_f000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffff_ff00) << 12) | (mi & 0xff)
}

impl Stat {
    /// `st_mode`: the type bits and the permission bits.
    pub const fn mode(&self) -> u32 {
        self.kind.mode_bits() | self.perm
    }
}

/// Attribute changes for `setattr`; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub perm: Option<u32>,
    /// New access time.
    pub atime: Option<Timespec>,
    /// New modification time.
    pub mtime: Option<Timespec>,
}

/// One directory entry, as `readdir` and `getdents` return it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirent {
    /// Inode number.
    pub ino: u64,
    /// Object type.
    pub kind: VType,
    /// The name (no `/`).
    pub name: String,
}

/// Filesystem statistics (`struct statfs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// A magic number naming the filesystem type (Linux values where one exists).
    pub fs_type: u64,
    /// Block size.
    pub block_size: u32,
    /// Total blocks (0: unlimited).
    pub blocks: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Number of inodes in use.
    pub files: u64,
    /// Free inodes (0: unlimited).
    pub files_free: u64,
    /// Longest name.
    pub name_max: u32,
}

/// Where `write` puts the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritePos {
    /// At this byte offset.
    At(u64),
    /// At the end of the file, decided atomically under the file's write lock
    /// (`O_APPEND`).
    Append,
}

/// Which way [`VnodeOps::seek_hole`] searches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoleSeek {
    /// The next offset `>= off` holding data (`SEEK_DATA`).
    Data,
    /// The next offset `>= off` in a hole; the end of file counts (`SEEK_HOLE`).
    Hole,
}

/// `poll` event bits (Linux values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PollEvents(pub u16);

impl PollEvents {
    /// Readable (`POLLIN`).
    pub const IN: Self = Self(0x1);
    /// Writable (`POLLOUT`).
    pub const OUT: Self = Self(0x4);
    /// Error (`POLLERR`).
    pub const ERR: Self = Self(0x8);
    /// Hung up (`POLLHUP`).
    pub const HUP: Self = Self(0x10);

    /// Both sets' bits.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    /// Bits in both sets.
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
}

/// The vnode operation table: what a filesystem implements for each of its
/// objects (OSv's `struct vnops`, `VOP_*`).
///
/// The identity methods ([`ino`](Self::ino), [`vtype`](Self::vtype),
/// [`as_any`](Self::as_any)) are required; every operation has a default that
/// returns an error, so a filesystem fills in only what it supports.
///
/// # Contract
/// - Names passed in are single components: non-empty, no `/`, at most
///   [`NAME_MAX`](crate::NAME_MAX) bytes, never `.`; `lookup` alone may be
///   given `..` and must return the parent (the filesystem root returns
///   itself). The VFS handles `.` and mount crossings.
/// - Directory operations are called on directories only; data operations
///   (`read`, `write`, `truncate`) on any type and must reject what they
///   cannot do (`EISDIR`, `EINVAL`).
/// - Locking is the filesystem's: it must follow the crate's lock order (see
///   the crate docs) and must not call back into the VFS.
pub trait VnodeOps: Any + Send + Sync {
    /// The inode number: stable for the vnode's life, unique in its filesystem.
    /// The VFS orders locks by it.
    fn ino(&self) -> u64;
    /// The object type; it never changes.
    fn vtype(&self) -> VType;
    /// `self`, for filesystems that must see the concrete type of a second
    /// vnode (rename and link between two vnodes of the same filesystem).
    fn as_any(&self) -> &dyn Any;

    /// Called when an open file is created on this vnode (`VOP_OPEN`).
    fn open(&self, _flags: crate::OpenFlags) -> Result {
        Ok(())
    }
    /// Called when the last descriptor of an open file goes (`VOP_CLOSE`).
    fn close(&self) -> Result {
        Ok(())
    }
    /// Reads into the buffers in order from byte `off`; returns the bytes read
    /// (0 at or past the end).
    fn read(&self, _off: u64, _iov: &mut [&mut [u8]]) -> Result<usize> {
        Err(Errno::ENOSYS)
    }
    /// Writes the buffers in order at `pos`; returns the bytes written and the
    /// offset just past them.
    fn write(&self, _pos: WritePos, _iov: &[&[u8]]) -> Result<(usize, u64)> {
        Err(Errno::ENOSYS)
    }
    /// The directory entry at position `cookie` (0 and 1 are `.` and `..`),
    /// or `None` past the end.
    fn readdir(&self, _cookie: u64) -> Result<Option<Dirent>> {
        Err(Errno::ENOTDIR)
    }
    /// Finds `name` in this directory (`..`: the parent).
    fn lookup(&self, _name: &str) -> Result<VnodeRef> {
        Err(Errno::ENOTDIR)
    }
    /// Are this vnode's data calls (`read`, `write`, `truncate`, `fsync`,
    /// `seek_hole`, `getattr`) short: they never wait for an outside event
    /// (input, a device, a disk) and never call the VFS's descriptor API,
    /// directly or through a device the filesystem reads (a filesystem over a
    /// block device that is opened through the VFS does)? Then a call through
    /// a descriptor borrows the open file from the descriptor table for its
    /// length instead of taking a reference, which keeps the read path free
    /// of shared writes (see "Locking" in the crate docs); a `close` or `dup2`
    /// meanwhile waits for it. The default, `false`, is always safe.
    fn short_calls(&self) -> bool {
        false
    }
    /// May the VFS keep this directory's lookups in its dentry cache? A
    /// directory whose entries change behind the VFS's back (devfs: drivers
    /// register and remove devices) returns `false`, and every lookup in it
    /// asks the filesystem.
    fn cacheable(&self) -> bool {
        true
    }
    /// Creates a regular file `name` (must not exist: `EEXIST`).
    fn create(&self, _name: &str, _perm: u32) -> Result<VnodeRef> {
        Err(Errno::ENOSYS)
    }
    /// Removes the non-directory entry `name`.
    fn remove(&self, _name: &str) -> Result {
        Err(Errno::ENOSYS)
    }
    /// Moves `name` to `new_dir`/`new_name` (same filesystem), replacing a
    /// compatible target. Checks, in order: `ENOENT`; moving a directory under
    /// itself `EINVAL`; the target an ancestor of this directory `ENOTEMPTY`;
    /// same inode: success; `ENOTDIR`/`EISDIR` for mismatched types;
    /// `ENOTEMPTY` for a non-empty directory target.
    fn rename(&self, _name: &str, _new_dir: &dyn VnodeOps, _new_name: &str) -> Result {
        Err(Errno::ENOSYS)
    }
    /// Creates the directory `name`.
    fn mkdir(&self, _name: &str, _perm: u32) -> Result<VnodeRef> {
        Err(Errno::ENOSYS)
    }
    /// Removes the empty directory `name`.
    fn rmdir(&self, _name: &str) -> Result {
        Err(Errno::ENOSYS)
    }
    /// The attributes (`dev` is filled in by the VFS).
    fn getattr(&self) -> Result<Stat> {
        Err(Errno::ENOSYS)
    }
    /// Changes attributes.
    fn setattr(&self, _attr: &SetAttr) -> Result {
        Err(Errno::ENOSYS)
    }
    /// Sets the size: cuts data off or extends with a hole.
    fn truncate(&self, _len: u64) -> Result {
        Err(Errno::ENOSYS)
    }
    /// Adds the entry `name` for `target` (a non-directory of the same
    /// filesystem).
    fn link(&self, _name: &str, _target: &dyn VnodeOps) -> Result {
        Err(Errno::ENOSYS)
    }
    /// Creates the symbolic link `name` pointing at `target`.
    fn symlink(&self, _name: &str, _target: &str) -> Result<VnodeRef> {
        Err(Errno::ENOSYS)
    }
    /// The target of a symbolic link.
    fn readlink(&self) -> Result<String> {
        Err(Errno::EINVAL)
    }
    /// Makes the data durable. Memory filesystems have nothing to do.
    fn fsync(&self) -> Result {
        Ok(())
    }
    /// A device-specific request.
    fn ioctl(&self, _cmd: u32, _arg: usize) -> Result<usize> {
        Err(Errno::ENOTTY)
    }
    /// Poll hook: which of `events` are ready now.
    fn poll(&self, _events: PollEvents) -> Result<PollEvents> {
        Err(Errno::ENOSYS)
    }
    /// mmap hook: may `len` bytes from `off` be mapped (shared if `shared`)?
    /// The memory manager then fills pages through `read`/`write`.
    fn mmap(&self, _off: u64, _len: u64, _shared: bool) -> Result {
        Err(Errno::ENODEV)
    }
    /// `SEEK_DATA`/`SEEK_HOLE`. `ENOSYS` makes the VFS use the generic answer
    /// (all data, one hole at the end); `ENXIO` when `off` is at or past the
    /// end.
    fn seek_hole(&self, _off: u64, _which: HoleSeek) -> Result<u64> {
        Err(Errno::ENOSYS)
    }
}

/// The filesystem operation table (OSv's `struct vfsops`).
pub trait FsOps: Send + Sync {
    /// A short type name (`"ramfs"`).
    fn name(&self) -> &str;
    /// The root directory. Required.
    fn root(&self) -> VnodeRef;
    /// Called when the filesystem is attached to the namespace.
    fn mount(&self) -> Result {
        Ok(())
    }
    /// Called when it is detached; an error keeps it mounted.
    fn unmount(&self) -> Result {
        Ok(())
    }
    /// Writes everything dirty back.
    fn sync(&self) -> Result {
        Ok(())
    }
    /// Statistics.
    fn statfs(&self) -> Result<StatFs> {
        Err(Errno::ENOSYS)
    }
}

/// The namespace-changing [`VnodeOps`] methods of a read-only directory
/// (devfs, procfs), each answering `$err`. Used inside an `impl VnodeOps`.
macro_rules! read_only_dir_ops {
    ($err:expr) => {
        fn create(&self, _name: &str, _perm: u32) -> Result<VnodeRef> {
            Err($err)
        }
        fn remove(&self, _name: &str) -> Result {
            Err($err)
        }
        fn rename(&self, _name: &str, _new_dir: &dyn VnodeOps, _new_name: &str) -> Result {
            Err($err)
        }
        fn mkdir(&self, _name: &str, _perm: u32) -> Result<VnodeRef> {
            Err($err)
        }
        fn rmdir(&self, _name: &str) -> Result {
            Err($err)
        }
        fn link(&self, _name: &str, _target: &dyn VnodeOps) -> Result {
            Err($err)
        }
        fn symlink(&self, _name: &str, _target: &str) -> Result<VnodeRef> {
            Err($err)
        }
    };
}
pub(crate) use read_only_dir_ops;
