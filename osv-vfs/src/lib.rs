//! A UNIX-style VFS for unikernels: vnodes with operation tables, mounts,
//! path lookup, an open-file and descriptor table, and three filesystems:
//! ramfs, devfs and procfs.
//!
//! # Layers
//!
//! ```text
//!  Vfs (vfs.rs)          open/read/write/lseek/dup/stat/getdents/rename/...: the API apps use
//!   ├─ descriptors       FdTable: fd -> Arc<File>; File = (mount, vnode, flags, offset)
//!   ├─ namespace         mount table, path walk (namei), root switch (pivot_root)
//!   ├─ dentry cache      (mount, dir ino, name) -> vnode, reference counted, evictable
//!   └─ operation tables  VnodeOps / FsOps (ops.rs): what a filesystem implements
//!        ├─ ramfs        files (sparse, byte-range locked), directories,
//!        │                 symlinks, hard links
//!        ├─ devfs        null, zero, console, random, urandom, vblkN
//!        │                 (kernel traits: ConsoleSink, EntropySource, BlockDev)
//!        └─ procfs       meminfo, uptime, cpuinfo, self/mounts
//!                          (kernel traits: ProcSource; MountList, which Vfs implements)
//! ```
//!
//! The VFS needs a heap: names, directory maps, file data and the tables live
//! there. It is behind the `alloc` feature, on by default; without it only
//! [`Errno`] and [`Result`] remain. `std` adds `StdClock`. There is no global state: the kernel owns
//! a [`Vfs`] value and passes it around (one process: the unikernel).
//!
//! # Why trait objects for the operation tables
//!
//! OSv's `struct vnops` is a table of function pointers plus a `void *v_data`
//! the filesystem casts back. A Rust trait object *is* that table (the vtable)
//! with the private data typed (`self`), so [`VnodeOps`] and [`FsOps`] are
//! traits used as `Arc<dyn VnodeOps>`:
//! - default methods give every optional operation a clear error (`ENOSYS`,
//!   or the POSIX one such as `ENOTDIR` for `lookup` on a file, `ENOTTY` for
//!   `ioctl`) with no per-filesystem boilerplate and no null pointers;
//! - the vnode's life is the `Arc`'s: no manual `vref`/`vrele`, and a vnode
//!   cannot be freed while a lookup, a cache entry or an open file holds it;
//! - no `unsafe` casts of `v_data`: the one place that needs the concrete type
//!   of a *second* vnode (`rename`, `link`) uses [`VnodeOps::as_any`].
//!
//! A static table of function pointers would save one pointer per vnode but
//! needs `Any`-style downcasts on every call; dynamic dispatch costs the same
//! indirect call as `VOP_*`.
//!
//! # Locking, and the lock order
//!
//! OSv holds the vnode lock for a whole read or write. Here:
//! - **the read path writes no shared cache line.** A `read`/`pread` of a
//!   regular file (of a filesystem whose calls are short,
//!   [`VnodeOps::short_calls`]: ramfs) finds its open file in the descriptor
//!   table without a lock
//!   word or a reference count that other CPUs write: the table is a
//!   [`BrLock`] (a reader increments a count on its own stripe's cache line;
//!   open, close, dup and dup2 take it exclusively), and the call borrows the
//!   open file from it instead of cloning an `Arc`. In ramfs the read is a
//!   seqlock-style copy ([`WriteSeq`]): it loads the file's write counters,
//!   copies the bytes with relaxed atomic loads under the file's page-map
//!   [`BrLock`] (its own stripe again), and checks that no write began
//!   meanwhile. Reads do not update `atime` (there is no mount option asking
//!   for it: `noatime`), and nothing else on the way is written.
//! - **file data**: a byte-range lock per ramfs file ([`RangeLock`], usable
//!   by any filesystem). A write locks the bytes it touches exclusively, so
//!   writes to disjoint ranges of one file run concurrently; a read takes its
//!   range shared only when it cannot use the lock-free copy (a write of the
//!   file was in flight on 3 tries), and then waits only for overlapping
//!   writes. Calls on overlapping ranges are granted in arrival order (no
//!   starvation either way).
//!   Calls that move the end of the file lock from a point to infinity: a
//!   truncate to `len` locks `[len, ∞)` (everything it cuts off or exposes);
//!   an `O_APPEND` write reads the size, locks `[size, ∞)` and re-checks that
//!   the size did not move meanwhile (it cannot move while that range is
//!   held, since moving it needs a range reaching past it). A write that
//!   extends the file raises the size (an atomic maximum) after copying its
//!   data. Inside the locked range the bytes live in 4 KiB pages of 8-byte
//!   atomic words (a store to part of a word is an atomic read-modify-write,
//!   so two writers of neighbouring bytes never undo each other), in a page
//!   map behind a [`BrLock`]: readers and writers hold it shared across
//!   their copy, a writer takes it exclusively only to add pages (before it
//!   starts storing, holding nothing of it), truncate to drop and cut pages.
//!
//!   **What a reader sees.** A write or truncate counts as in flight from
//!   when it starts storing (after it holds its range) until its last store.
//!   A lock-free read returns the file (size and bytes) as it was at one
//!   instant during the call at which no write or truncate of the file was
//!   in flight: it sees every write and truncate of the file completely or
//!   not at all. A read on the locked path sees each *overlapping* write or
//!   truncate completely or not at all (as POSIX.1-2017 XSH 2.9.7 asks of
//!   regular files); a write to other bytes that raises the size meanwhile
//!   can make it return more bytes, those between the old end and that
//!   write's range reading as zeros, as they are. Either way a read
//!   concurrent with a truncate returns the bytes before or after it
//!   (truncate changes the pages and the size under the page map's exclusive
//!   lock), never a mix, freed memory or a panic. Overlapping writes land
//!   whole, one after the other; an `O_APPEND` write lands whole at the end,
//!   never interleaved with another. `SEEK_DATA`/`SEEK_HOLE` lock `[off, ∞)`
//!   shared. `stat` takes no range: its size and block count are each
//!   current, not necessarily from the same instant as a write in flight.
//! - **directories**: an `RwLock` per directory over its entries. Lookups and
//!   `readdir` share it; `create`, `mkdir`, `unlink`, `rmdir`, `rename`,
//!   `link`, `symlink` take only the directories they change.
//! - **metadata** (permissions, link count, times): a small leaf mutex per
//!   vnode. Reads do not update `atime` (`noatime`), so readers never write.
//!
//! Every path takes locks in this order, and never the other way:
//!
//! 1. VFS tables, each held briefly and never across a filesystem call: the
//!    mount table (`RwLock`), the dentry cache (`Mutex`), the cwd (`RwLock`);
//!    and the descriptor table ([`BrLock`]), whose exclusive side (open,
//!    close, dup, dup2) is held only to change a slot, never across a
//!    filesystem call, and whose shared side is held across a call on a
//!    regular file or a directory whose filesystem says its calls are short
//!    ([`VnodeOps::short_calls`]: they never wait for outside events and
//!    never use descriptors, so they never wait for the exclusive side nor
//!    take the shared side a second time). Calls on other objects (a device
//!    may wait for input; ZFS reads its disks through descriptors) take a
//!    reference to the open file and release the table first, so a `close`
//!    never waits for them.
//! 2. A `File`'s offset mutex (read/write/lseek through a descriptor; `pread`
//!    and `pwrite` skip it).
//! 3. Inside the filesystem: the per-filesystem rename mutex (only for a
//!    rename between two different directories, as Linux's
//!    `s_vfs_rename_mutex`: it keeps the tree shape still while checking that
//!    a directory is not moved under itself).
//! 4. Directory locks, **in ascending inode number** when more than one is
//!    needed (rename: source dir, target dir, a replaced directory; rmdir:
//!    parent and victim). A vnode's inode number never changes, so the order
//!    is stable and two operations cannot wait on each other in a cycle. A
//!    directory operation that must first find the victim does it under a
//!    shared lock, drops it, takes the ordered set and re-checks.
//! 5. A file's data locks, in this order: (a) its range lock, one range per
//!    call, held for the whole call (a holder never waits for a second range
//!    of the same file); (b) the page-map [`BrLock`]. Writers take (b)
//!    exclusively (to add pages) without holding it shared, then shared for
//!    their copy; a lock-free reader takes only (b), shared; a reader on the
//!    locked path takes (a) before (b), after releasing (b) from its
//!    lock-free tries; truncate holds (a), then (b) exclusively. Nobody waits
//!    for anything while holding (b) shared, so a writer waiting for (b)
//!    exclusively always gets it. (The range lock's own mutex is a leaf: it
//!    is held only while the list of ranges is checked or changed, never
//!    while waiting.)
//! 6. Leaf locks: a vnode's metadata mutex, a directory's parent pointer.
//!
//! A waiter spins (a CPU hint in a kernel; with `std`, a yield to the host's
//! scheduler): there is no sleeping primitive in this crate, the same choice
//! as for its other locks. The range lock's waiters spin on a release counter
//! and re-check under its mutex only when a range was released, so they do
//! not compete with the holder for the mutex it needs to release.
//!
//! The dentry cache uses a generation number so that a lookup racing an
//! unlink cannot re-insert the entry the unlink just removed (see
//! `tests/loom_vfs.rs`). A directory whose entries change behind the VFS's
//! back (devfs) opts out of the cache with [`VnodeOps::cacheable`].
//!
//! devfs and procfs fit into the order as filesystems: devfs's directory
//! `RwLock` is a level-4 lock, a block device's I/O lock a level-5 one;
//! procfs has none. Reading `/proc/self/mounts` is the one filesystem
//! operation that calls back into the VFS ([`Vfs::mounts`]); it holds no lock
//! of its own then, and the VFS holds only the reader's offset mutex, which no
//! path holds while waiting for a VFS table (see [`MountList`]).
//!
//! # Example
//!
//! ```
//! use osv_vfs::{OpenFlags, RamFs, Vfs, Whence, ZeroClock};
//! use std::sync::Arc;
//!
//! let vfs = Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap();
//! vfs.mkdir("/tmp", 0o755).unwrap();
//! vfs.mount("/tmp", RamFs::new(Arc::new(ZeroClock))).unwrap();
//!
//! let fd = vfs
//!     .open("/tmp/hello.txt", OpenFlags::RDWR | OpenFlags::CREAT, 0o644)
//!     .unwrap();
//! assert_eq!(vfs.write(fd, b"hello, world").unwrap(), 12);
//! vfs.lseek(fd, 0, Whence::Set).unwrap();
//! let mut buf = [0u8; 5];
//! assert_eq!(vfs.read(fd, &mut buf).unwrap(), 5);
//! assert_eq!(&buf, b"hello");
//! assert_eq!(vfs.stat("/tmp/../tmp/hello.txt").unwrap().size, 12);
//! vfs.close(fd).unwrap();
//! ```
//!
//! # Mounting devfs and procfs
//!
//! The kernel implements the source traits and mounts the two filesystems on
//! directories of the root:
//!
//! ```
//! use osv_vfs::{
//!     ConsoleSink, CpuInfo, DevFs, EntropySource, MemInfo, MountList, OpenFlags, ProcFs, ProcSource,
//!     RamFs, Result, Vfs, ZeroClock,
//! };
//! use std::sync::Arc;
//!
//! struct Serial;
//! impl ConsoleSink for Serial {
//!     fn write(&self, bytes: &[u8]) { /* out to the UART */ let _ = bytes; }
//! }
//! struct Rng;
//! impl EntropySource for Rng {
//!     fn fill(&self, buf: &mut [u8]) -> Result { buf.fill(4); Ok(()) } // RDRAND in a kernel
//! }
//! struct Kernel;
//! impl ProcSource for Kernel {
//!     fn meminfo(&self) -> MemInfo { MemInfo { total: 64 << 20, free: 32 << 20, available: 32 << 20 } }
//!     fn uptime_ns(&self) -> u64 { 1_500_000_000 }
//!     fn cpuinfo(&self) -> CpuInfo { CpuInfo { count: 1, ..CpuInfo::default() } }
//! }
//!
//! let vfs = Arc::new(Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap());
//! vfs.mkdir("/dev", 0o755).unwrap();
//! vfs.mkdir("/proc", 0o555).unwrap();
//! let devfs = DevFs::new(Arc::new(Serial), Arc::new(Rng));
//! vfs.mount("/dev", devfs.clone()).unwrap();
//! // A Weak, so that procfs inside the VFS does not keep the VFS alive. A
//! // kernel with a `&'static Vfs` passes `Arc::new(vfs)` instead.
//! let mounts: Arc<dyn MountList> = Arc::new(Arc::downgrade(&vfs));
//! vfs.mount("/proc", ProcFs::new(Arc::new(Kernel), mounts)).unwrap();
//! // A driver registers its disk at run time:
//! // let name = devfs.register_block(Arc::new(my_virtio_blk))?; // "vblk0"
//!
//! let fd = vfs.open("/proc/uptime", OpenFlags::RDONLY, 0).unwrap();
//! let mut buf = [0u8; 128];
//! let n = vfs.read(fd, &mut buf).unwrap();
//! assert_eq!(&buf[..n], b"1.50 0.00\n");
//! let fd = vfs.open("/proc/self/mounts", OpenFlags::RDONLY, 0).unwrap();
//! let n = vfs.read(fd, &mut buf).unwrap();
//! assert_eq!(&buf[..n], &b"ramfs / ramfs rw 0 0\ndevfs /dev devfs rw 0 0\nproc /proc proc rw 0 0\n"[..]);
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(feature = "alloc")]
pub mod brlock;
#[cfg(feature = "alloc")]
mod cache;
#[cfg(feature = "alloc")]
pub mod devfs;
#[cfg(feature = "alloc")]
mod ops;
#[cfg(feature = "alloc")]
pub mod procfs;
#[cfg(feature = "alloc")]
pub mod ramfs;
#[cfg(feature = "alloc")]
pub mod range;
#[cfg(feature = "alloc")]
pub mod seq;
#[cfg(feature = "alloc")]
mod sync;
#[cfg(feature = "alloc")]
mod vfs;

#[cfg(feature = "alloc")]
pub use brlock::BrLock;
#[cfg(feature = "alloc")]
pub use devfs::{BlockDev, ConsoleSink, DevFs, EntropySource, Sector};
#[cfg(feature = "std")]
pub use ops::StdClock;
#[cfg(feature = "alloc")]
pub use ops::{
    makedev, Clock, Dirent, FsOps, HoleSeek, PollEvents, SetAttr, Stat, StatFs, Timespec, VType, VnodeOps,
    VnodeRef, WritePos, ZeroClock,
};
#[cfg(feature = "alloc")]
pub use procfs::{CpuInfo, MemInfo, ProcFs, ProcSource};
#[cfg(feature = "alloc")]
pub use ramfs::RamFs;
#[cfg(feature = "alloc")]
pub use range::{RangeGuard, RangeLock};
#[cfg(feature = "alloc")]
pub use seq::WriteSeq;
#[cfg(feature = "alloc")]
pub use vfs::{Fd, MountInfo, MountList, OpenFlags, Vfs, Whence, FD_LIMIT, MAX_SYMLINKS, NAME_MAX, PATH_MAX};

/// The result type of this crate: errors are [`Errno`] values.
pub type Result<T = ()> = core::result::Result<T, Errno>;

/// POSIX error numbers, with the values Linux uses (`asm-generic/errno-base.h`,
/// `errno.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
#[non_exhaustive]
pub enum Errno {
    /// Operation not permitted.
    EPERM = 1,
    /// No such file or directory.
    ENOENT = 2,
    /// I/O error.
    EIO = 5,
    /// No such device or address (`SEEK_DATA`/`SEEK_HOLE` past the end).
    ENXIO = 6,
    /// Bad file descriptor.
    EBADF = 9,
    /// Out of memory.
    ENOMEM = 12,
    /// Permission denied.
    EACCES = 13,
    /// Device or resource busy.
    EBUSY = 16,
    /// File exists.
    EEXIST = 17,
    /// Cross-device link.
    EXDEV = 18,
    /// No such device (operation unsupported by the device, e.g. mmap).
    ENODEV = 19,
    /// Not a directory.
    ENOTDIR = 20,
    /// Is a directory.
    EISDIR = 21,
    /// Invalid argument.
    EINVAL = 22,
    /// Too many open files in the system.
    ENFILE = 23,
    /// Too many open files (descriptor table full).
    EMFILE = 24,
    /// Inappropriate ioctl for device.
    ENOTTY = 25,
    /// File too large.
    EFBIG = 27,
    /// No space left on device.
    ENOSPC = 28,
    /// Illegal seek.
    ESPIPE = 29,
    /// Read-only filesystem.
    EROFS = 30,
    /// Too many links.
    EMLINK = 31,
    /// Result out of range.
    ERANGE = 34,
    /// File name too long.
    ENAMETOOLONG = 36,
    /// Function not implemented.
    ENOSYS = 38,
    /// Directory not empty.
    ENOTEMPTY = 39,
    /// Too many levels of symbolic links.
    ELOOP = 40,
    /// Value too large for defined data type.
    EOVERFLOW = 75,
    /// Operation not supported.
    EOPNOTSUPP = 95,
}

impl Errno {
    /// The numeric value.
    pub const fn as_i32(self) -> i32 {
        self as i32
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

impl core::error::Error for Errno {}

#[cfg(test)]
mod tests {
    #[test]
    fn values_match_linux() {
        assert_eq!(super::Errno::ENOENT.as_i32(), 2);
        assert_eq!(super::Errno::ENAMETOOLONG.as_i32(), 36);
        assert_eq!(super::Errno::ENOSYS.to_string(), "ENOSYS");
        assert_eq!(super::Errno::ELOOP.as_i32(), 40);
        assert_eq!(super::Errno::ENOTEMPTY.as_i32(), 39);
        assert_eq!(super::Errno::EOPNOTSUPP.as_i32(), 95);
    }
}
