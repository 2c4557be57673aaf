//! The VFS proper: mount table, path walk, open files and descriptors.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::brlock::BrLock;
use crate::cache::DentryCache;
use crate::ops::{
    Dirent, FsOps, HoleSeek, PollEvents, SetAttr, Stat, StatFs, Timespec, VType, VnodeRef, WritePos,
};
use crate::sync::{Arc, AtomicU64, Mutex, Ordering, RwLock, Weak};
use crate::{Errno, Result};

/// Longest name component, in bytes (`NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Path buffer size including the terminating NUL (`PATH_MAX`): a path of
/// `PATH_MAX` bytes or more is `ENAMETOOLONG`, as on Linux.
pub const PATH_MAX: usize = 4096;
/// Symbolic links followed in one path walk before `ELOOP` (Linux: 40).
pub const MAX_SYMLINKS: u32 = 40;
/// Size of the descriptor table (`EMFILE` beyond it).
pub const FD_LIMIT: usize = 1024;
/// Dentry cache capacity, in entries.
const CACHE_CAPACITY: usize = 4096;

/// `open` flags, with Linux's values. Unknown bits are ignored, as Linux does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OpenFlags(u32);

impl OpenFlags {
    /// Read only (access mode 0).
    pub const RDONLY: Self = Self(0);
    /// Write only.
    pub const WRONLY: Self = Self(0o1);
    /// Read and write.
    pub const RDWR: Self = Self(0o2);
    /// Create if missing.
    pub const CREAT: Self = Self(0o100);
    /// With `CREAT`: fail if it exists.
    pub const EXCL: Self = Self(0o200);
    /// Truncate a regular file to 0.
    pub const TRUNC: Self = Self(0o1000);
    /// Every write goes to the end.
    pub const APPEND: Self = Self(0o2000);
    /// Fail unless a directory.
    pub const DIRECTORY: Self = Self(0o200000);
    /// Do not follow a symbolic link in the last component (`ELOOP`).
    pub const NOFOLLOW: Self = Self(0o400000);
    const ACCMODE: u32 = 0o3;

    /// From raw bits.
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }
    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
    /// Are all of `other`'s bits set? (The access modes are not bits: use
    /// [`readable`](Self::readable)/[`writable`](Self::writable).)
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    /// Does the access mode allow reading?
    pub const fn readable(self) -> bool {
        matches!(self.0 & Self::ACCMODE, 0 | 2)
    }
    /// Does the access mode allow writing?
    pub const fn writable(self) -> bool {
        matches!(self.0 & Self::ACCMODE, 1 | 2)
    }
}

impl core::ops::BitOr for OpenFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl core::ops::BitOrAssign for OpenFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

/// `lseek` origins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Whence {
    /// From the start (`SEEK_SET`).
    Set,
    /// From the current offset (`SEEK_CUR`).
    Cur,
    /// From the end (`SEEK_END`).
    End,
    /// Next data at or after the offset (`SEEK_DATA`).
    Data,
    /// Next hole at or after the offset (`SEEK_HOLE`).
    Hole,
}

impl Whence {
    /// From Linux's numbers (0..=4); `EINVAL` otherwise.
    pub const fn from_raw(raw: i32) -> Result<Self> {
        Ok(match raw {
            0 => Self::Set,
            1 => Self::Cur,
            2 => Self::End,
            3 => Self::Data,
            4 => Self::Hole,
            _ => return Err(Errno::EINVAL),
        })
    }
}

/// A file descriptor: an index into the [`Vfs`] descriptor table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fd(u32);

impl Fd {
    /// The descriptor numbered `raw`.
    pub const fn new(raw: u32) -> Self {
        Self(raw)
    }
    /// Its number.
    pub const fn raw(self) -> u32 {
        self.0
    }
}

/// A mounted filesystem.
struct Mount {
    id: u64,
    fs: Arc<dyn FsOps>,
    root: VnodeRef,
}

/// A place in the namespace: a vnode and the mount it was reached through.
#[derive(Clone)]
struct Loc {
    mnt: Arc<Mount>,
    vn: VnodeRef,
}

impl Loc {
    fn is_dir(&self) -> bool {
        self.vn.vtype() == VType::Directory
    }
    fn key(&self) -> (u64, u64) {
        (self.mnt.id, self.vn.ino())
    }
    fn same(&self, other: &Loc) -> bool {
        self.key() == other.key()
    }
    fn is_mount_root(&self) -> bool {
        self.vn.ino() == self.mnt.root.ino()
    }
}

struct MountTable {
    root: Arc<Mount>,
    /// (mount id, inode) of a covered directory -> the mount on top of it.
    covered: BTreeMap<(u64, u64), Arc<Mount>>,
    /// mount id -> the directory it covers.
    parent: BTreeMap<u64, Loc>,
}

/// An open file description: shared by `dup`ed descriptors.
struct File {
    loc: Loc,
    flags: OpenFlags,
    pos: Mutex<u64>,
    /// May a call borrow it from the descriptor table for its whole length
    /// (see [`Vfs::with_file`])? Regular files and directories whose
    /// filesystem says their calls are short
    /// ([`VnodeOps::short_calls`](crate::VnodeOps::short_calls)).
    borrow: bool,
}

impl Drop for File {
    fn drop(&mut self) {
        // Nothing to report to: the last reference is going.
        let _ = self.loc.vn.close();
    }
}

/// The last component of a path, as a parent walk leaves it.
enum Last {
    Name(String),
    Dot,
    DotDot,
    /// The path named the root (`/`): there is no last component.
    Root,
}

struct Parent {
    dir: Loc,
    last: Last,
    trailing_slash: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Follow,
    NoFollow,
    Parent,
}

enum End {
    Node(Loc),
    Parent(Parent),
}

/// The virtual filesystem of one unikernel: namespace, open files and
/// descriptors. All state is in the value; share it as `&Vfs` (it is `Sync`).
pub struct Vfs {
    mounts: RwLock<MountTable>,
    next_mount: AtomicU64,
    cache: DentryCache,
    /// The descriptor table. Read-locked by every descriptor call (a reader
    /// writes only its own stripe's cache line), write-locked by the calls
    /// that change it (open, close, dup, dup2).
    fds: BrLock<Vec<Option<Arc<File>>>>,
    cwd: RwLock<Loc>,
}

impl core::fmt::Debug for Vfs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vfs")
            .field("mounts", &self.mounts.read().parent.len())
            .field("dentries", &self.cache.len())
            .finish()
    }
}

fn push_components(stack: &mut Vec<String>, path: &str) {
    stack.extend(path.split('/').filter(|c| !c.is_empty()).rev().map(String::from));
}

fn check_path(path: &str) -> Result {
    if path.is_empty() {
        return Err(Errno::ENOENT);
    }
    if path.len() >= PATH_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

fn check_name(name: &str) -> Result {
    if name.len() > NAME_MAX {
        Err(Errno::ENAMETOOLONG)
    } else {
        Ok(())
    }
}

impl Vfs {
    /// A VFS with `root_fs` mounted as `/`; the cwd is `/`.
    pub fn new(root_fs: Arc<dyn FsOps>) -> Result<Self> {
        root_fs.mount()?;
        let mnt = Arc::new(Mount { id: 1, root: root_fs.root(), fs: root_fs });
        let root = Loc { vn: mnt.root.clone(), mnt: mnt.clone() };
        Ok(Self {
            mounts: RwLock::new(MountTable { root: mnt, covered: BTreeMap::new(), parent: BTreeMap::new() }),
            next_mount: AtomicU64::new(2),
            cache: DentryCache::new(CACHE_CAPACITY),
            fds: BrLock::new(Vec::new()),
            cwd: RwLock::new(root),
        })
    }

    // ----- namespace -----

    fn root(&self) -> Loc {
        let t = self.mounts.read();
        Loc { mnt: t.root.clone(), vn: t.root.root.clone() }
    }

    fn cwd(&self) -> Loc {
        self.cwd.read().clone()
    }

    /// Looks `name` up in `dir` through the dentry cache, without crossing
    /// mounts.
    fn lookup_raw(&self, dir: &Loc, name: &str) -> Result<VnodeRef> {
        if !dir.vn.cacheable() {
            return dir.vn.lookup(name);
        }
        let key = dir.key();
        match self.cache.get(key, name) {
            Ok(v) => Ok(v),
            Err(generation) => {
                let v = dir.vn.lookup(name)?;
                self.cache.insert(key, name, v.clone(), generation);
                Ok(v)
            }
        }
    }

    fn cross_mounts(&self, mut loc: Loc) -> Loc {
        loop {
            let m = self.mounts.read().covered.get(&loc.key()).cloned();
            match m {
                Some(m) => loc = Loc { vn: m.root.clone(), mnt: m },
                None => return loc,
            }
        }
    }

    fn is_mount_point(&self, dir: &Loc, vn: &VnodeRef) -> bool {
        self.mounts.read().covered.contains_key(&(dir.mnt.id, vn.ino()))
    }

    fn lookup_child(&self, dir: &Loc, name: &str) -> Result<Loc> {
        let vn = self.lookup_raw(dir, name)?;
        Ok(self.cross_mounts(Loc { mnt: dir.mnt.clone(), vn }))
    }

    fn dotdot(&self, cur: &Loc, root: &Loc) -> Result<Loc> {
        let mut cur = cur.clone();
        loop {
            if cur.same(root) {
                return Ok(cur);
            }
            if cur.is_mount_root() {
                let up = self.mounts.read().parent.get(&cur.mnt.id).cloned();
                match up {
                    Some(l) => {
                        cur = l;
                        continue;
                    }
                    // A detached mount (only reachable through an old cwd).
                    None => return Ok(cur),
                }
            }
            let vn = cur.vn.lookup("..")?;
            return Ok(Loc { mnt: cur.mnt, vn });
        }
    }

    /// The path walk (namei). `links` counts symlinks followed so far.
    fn walk(&self, start: Loc, path: &str, mode: Mode, links: &mut u32) -> Result<End> {
        check_path(path)?;
        let root = self.root();
        let mut cur = if path.starts_with('/') { root.clone() } else { start };
        let mut stack = Vec::new();
        push_components(&mut stack, path);
        let mut trailing = path.ends_with('/');
        loop {
            let Some(comp) = stack.pop() else {
                return Ok(match mode {
                    Mode::Parent => {
                        End::Parent(Parent { dir: cur, last: Last::Root, trailing_slash: trailing })
                    }
                    _ => End::Node(cur),
                });
            };
            let is_last = stack.is_empty();
            if !cur.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            if is_last && mode == Mode::Parent {
                let last = match comp.as_str() {
                    "." => Last::Dot,
                    ".." => Last::DotDot,
                    _ => {
                        check_name(&comp)?;
                        Last::Name(comp)
                    }
                };
                return Ok(End::Parent(Parent { dir: cur, last, trailing_slash: trailing }));
            }
            let next = match comp.as_str() {
                "." => cur.clone(),
                ".." => self.dotdot(&cur, &root)?,
                name => {
                    check_name(name)?;
                    let child = self.lookup_child(&cur, name)?;
                    if child.vn.vtype() == VType::Symlink && (!is_last || mode == Mode::Follow || trailing) {
                        *links += 1;
                        if *links > MAX_SYMLINKS {
                            return Err(Errno::ELOOP);
                        }
                        let target = child.vn.readlink()?;
                        if target.is_empty() {
                            return Err(Errno::ENOENT);
                        }
                        if target.starts_with('/') {
                            cur = root.clone();
                        }
                        if is_last && target.ends_with('/') {
                            trailing = true;
                        }
                        push_components(&mut stack, &target);
                        continue;
                    }
                    child
                }
            };
            cur = next;
            if is_last {
                if trailing && !cur.is_dir() {
                    return Err(Errno::ENOTDIR);
                }
                return Ok(End::Node(cur));
            }
        }
    }

    fn resolve(&self, path: &str, follow: bool) -> Result<Loc> {
        let mode = if follow { Mode::Follow } else { Mode::NoFollow };
        match self.walk(self.cwd(), path, mode, &mut 0)? {
            End::Node(l) => Ok(l),
            End::Parent(_) => Err(Errno::EINVAL),
        }
    }

    fn resolve_parent_from(&self, start: Loc, path: &str, links: &mut u32) -> Result<Parent> {
        match self.walk(start, path, Mode::Parent, links)? {
            End::Parent(p) => Ok(p),
            End::Node(_) => Err(Errno::EINVAL),
        }
    }

    fn resolve_parent(&self, path: &str) -> Result<Parent> {
        self.resolve_parent_from(self.cwd(), path, &mut 0)
    }

    /// Mounts `fs` on the directory `path`.
    pub fn mount(&self, path: &str, fs: Arc<dyn FsOps>) -> Result {
        let at = self.resolve(path, true)?;
        if !at.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        fs.mount()?;
        let mnt =
            Arc::new(Mount { id: self.next_mount.fetch_add(1, Ordering::Relaxed), root: fs.root(), fs });
        let mut t = self.mounts.write();
        if t.covered.contains_key(&at.key()) {
            return Err(Errno::EBUSY);
        }
        t.covered.insert(at.key(), mnt.clone());
        t.parent.insert(mnt.id, at);
        Ok(())
    }

    /// Unmounts the filesystem whose root is `path`. `EBUSY` while it is the
    /// root, has mounts below it, or has open files or the cwd in it.
    pub fn umount(&self, path: &str) -> Result {
        let loc = self.resolve(path, true)?;
        if !loc.is_mount_root() {
            return Err(Errno::EINVAL);
        }
        if self.cwd.read().mnt.id == loc.mnt.id {
            return Err(Errno::EBUSY);
        }
        let mut t = self.mounts.write();
        if Arc::ptr_eq(&t.root, &loc.mnt)
            || t.parent.values().any(|l| l.mnt.id == loc.mnt.id)
            // Held by the table and by `loc`; anything more is a user.
            || Arc::strong_count(&loc.mnt) > 2
        {
            return Err(Errno::EBUSY);
        }
        let Some(at) = t.parent.get(&loc.mnt.id).cloned() else {
            return Err(Errno::EINVAL);
        };
        // The filesystem must not call back into the VFS (see `VnodeOps`).
        loc.mnt.fs.unmount()?;
        t.covered.remove(&at.key());
        t.parent.remove(&loc.mnt.id);
        drop(t);
        self.cache.invalidate_mount(loc.mnt.id);
        Ok(())
    }

    /// Switches the root (`pivot_root`): the filesystem mounted at `new_root`
    /// becomes `/`, and the old root filesystem is mounted on `put_old`, a
    /// directory of the new root filesystem. A cwd at the old root moves to
    /// the new one.
    pub fn pivot_root(&self, new_root: &str, put_old: &str) -> Result {
        let nr = self.resolve(new_root, true)?;
        let po = self.resolve(put_old, true)?;
        if !nr.is_dir() || !po.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let old_root = self.root();
        if nr.mnt.id == old_root.mnt.id {
            return Err(Errno::EBUSY);
        }
        if !nr.is_mount_root() || po.mnt.id != nr.mnt.id {
            return Err(Errno::EINVAL);
        }
        if po.same(&nr) {
            return Err(Errno::EBUSY);
        }
        let mut t = self.mounts.write();
        if Arc::ptr_eq(&t.root, &nr.mnt) {
            return Err(Errno::EBUSY);
        }
        if let Some(at) = t.parent.remove(&nr.mnt.id) {
            t.covered.remove(&at.key());
        }
        let old = core::mem::replace(&mut t.root, nr.mnt.clone());
        t.covered.insert(po.key(), old.clone());
        t.parent.insert(old.id, po);
        drop(t);
        let mut cwd = self.cwd.write();
        if cwd.same(&old_root) {
            *cwd = nr;
        }
        Ok(())
    }

    /// Statistics of the filesystem holding `path`.
    pub fn statfs(&self, path: &str) -> Result<StatFs> {
        self.resolve(path, true)?.mnt.fs.statfs()
    }

    /// Flushes every mounted filesystem.
    pub fn sync(&self) -> Result {
        let fss: Vec<Arc<dyn FsOps>> = {
            let t = self.mounts.read();
            core::iter::once(t.root.fs.clone()).chain(t.covered.values().map(|m| m.fs.clone())).collect()
        };
        fss.iter().try_for_each(|fs| fs.sync())
    }

    /// Number of dentry-cache entries.
    pub fn dentry_cache_len(&self) -> usize {
        self.cache.len()
    }

    /// One eviction sweep of the dentry cache (entries not used since the
    /// previous sweep go); returns how many were dropped.
    pub fn evict_unused(&self) -> usize {
        self.cache.evict_unused()
    }

    /// Empties the dentry cache.
    pub fn drop_caches(&self) {
        self.cache.clear();
    }

    // ----- descriptors -----

    /// The open file of `fd`, with a reference of its own (for calls that
    /// are not on the I/O path).
    fn file(&self, fd: Fd) -> Result<Arc<File>> {
        let fds = self.fds.read();
        fds.get(fd.0 as usize).and_then(Option::clone).ok_or(Errno::EBADF)
    }

    /// Runs `op` on the open file of `fd`. For a regular file or a directory
    /// whose calls are short
    /// ([`VnodeOps::short_calls`](crate::VnodeOps::short_calls): ramfs) the
    /// file is borrowed from the table, which stays read-locked during `op`: no
    /// reference count is touched, so the call writes no cache line another
    /// CPU's call writes. A `close` or `dup2` meanwhile waits for `op` to
    /// finish, which is short. Other objects (a device may wait for input; a
    /// filesystem may read its disk through a descriptor, which would take
    /// the table again) get a reference of their own and the table is
    /// released before `op`.
    fn with_file<R>(&self, fd: Fd, op: impl FnOnce(&File) -> Result<R>) -> Result<R> {
        let fds = self.fds.read();
        let f = fds.get(fd.0 as usize).and_then(Option::as_ref).ok_or(Errno::EBADF)?;
        if f.borrow {
            return op(f);
        }
        let f = f.clone();
        drop(fds);
        op(&f)
    }

    fn install(&self, file: Arc<File>) -> Result<Fd> {
        let mut fds = self.fds.write();
        let slot = match fds.iter().position(Option::is_none) {
            Some(i) => i,
            None if fds.len() < FD_LIMIT => {
                fds.push(None);
                fds.len() - 1
            }
            None => return Err(Errno::EMFILE),
        };
        fds[slot] = Some(file);
        Ok(Fd(slot as u32))
    }

    fn table_full(&self) -> bool {
        let fds = self.fds.read();
        fds.len() >= FD_LIMIT && fds.iter().all(Option::is_some)
    }

    /// Opens (and with `CREAT` maybe creates, with permissions `perm`) a file.
    pub fn open(&self, path: &str, flags: OpenFlags, perm: u32) -> Result<Fd> {
        if flags.bits() & OpenFlags::ACCMODE == OpenFlags::ACCMODE
            || flags.contains(OpenFlags::CREAT | OpenFlags::DIRECTORY)
        {
            return Err(Errno::EINVAL);
        }
        if self.table_full() {
            return Err(Errno::EMFILE);
        }
        let loc = if flags.contains(OpenFlags::CREAT) {
            self.open_create(path, flags, perm)?
        } else {
            let mode = if flags.contains(OpenFlags::NOFOLLOW) { Mode::NoFollow } else { Mode::Follow };
            match self.walk(self.cwd(), path, mode, &mut 0)? {
                End::Node(l) => l,
                End::Parent(_) => return Err(Errno::EINVAL),
            }
        };
        let kind = loc.vn.vtype();
        if kind == VType::Symlink {
            return Err(Errno::ELOOP);
        }
        if flags.contains(OpenFlags::DIRECTORY) && kind != VType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if kind == VType::Directory
            && (flags.writable() || flags.contains(OpenFlags::TRUNC) || flags.contains(OpenFlags::CREAT))
        {
            return Err(Errno::EISDIR);
        }
        loc.vn.open(flags)?;
        let borrow = matches!(kind, VType::Regular | VType::Directory) && loc.vn.short_calls();
        let file = Arc::new(File { loc, flags, pos: Mutex::new(0), borrow });
        if flags.contains(OpenFlags::TRUNC) && kind == VType::Regular {
            file.loc.vn.truncate(0)?;
        }
        self.install(file)
    }

    fn open_create(&self, path: &str, flags: OpenFlags, perm: u32) -> Result<Loc> {
        let mut links = 0;
        let mut p = self.resolve_parent_from(self.cwd(), path, &mut links)?;
        loop {
            let Last::Name(name) = &p.last else {
                return Err(Errno::EISDIR);
            };
            if p.trailing_slash {
                return Err(Errno::EISDIR);
            }
            match self.lookup_child(&p.dir, name) {
                Ok(child) => {
                    if flags.contains(OpenFlags::EXCL) {
                        return Err(Errno::EEXIST);
                    }
                    if child.vn.vtype() != VType::Symlink || flags.contains(OpenFlags::NOFOLLOW) {
                        return Ok(child);
                    }
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Errno::ELOOP);
                    }
                    let target = child.vn.readlink()?;
                    p = self.resolve_parent_from(p.dir, &target, &mut links)?;
                }
                Err(Errno::ENOENT) => {
                    let vn = p.dir.vn.create(name, perm)?;
                    return Ok(Loc { mnt: p.dir.mnt, vn });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes a descriptor; the open file goes with its last descriptor.
    pub fn close(&self, fd: Fd) -> Result {
        let file = {
            let mut fds = self.fds.write();
            fds.get_mut(fd.0 as usize).and_then(Option::take).ok_or(Errno::EBADF)?
        };
        drop(file);
        Ok(())
    }

    /// A new descriptor (the lowest free) for the same open file.
    pub fn dup(&self, fd: Fd) -> Result<Fd> {
        let f = self.file(fd)?;
        self.install(f)
    }

    /// Makes `new` refer to `old`'s open file, closing what `new` had.
    pub fn dup2(&self, old: Fd, new: Fd) -> Result<Fd> {
        let f = self.file(old)?;
        if new.0 as usize >= FD_LIMIT {
            return Err(Errno::EBADF);
        }
        if old == new {
            return Ok(new);
        }
        let prev = {
            let mut fds = self.fds.write();
            let i = new.0 as usize;
            if fds.len() <= i {
                fds.resize(i + 1, None);
            }
            fds[i].replace(f)
        };
        drop(prev);
        Ok(new)
    }

    /// Reads at the file offset and advances it.
    pub fn read(&self, fd: Fd, buf: &mut [u8]) -> Result<usize> {
        self.readv(fd, &mut [buf])
    }

    /// Scatter read at the file offset.
    pub fn readv(&self, fd: Fd, iov: &mut [&mut [u8]]) -> Result<usize> {
        self.with_file(fd, |f| {
            if !f.flags.readable() {
                return Err(Errno::EBADF);
            }
            if f.loc.is_dir() {
                // Whatever the filesystem's `read` says (Linux: `EISDIR` for
                // every directory, `generic_read_dir`).
                return Err(Errno::EISDIR);
            }
            let mut pos = f.pos.lock();
            let n = f.loc.vn.read(*pos, iov)?;
            *pos += n as u64;
            Ok(n)
        })
    }

    /// Reads at `off`, leaving the file offset alone.
    pub fn pread(&self, fd: Fd, buf: &mut [u8], off: i64) -> Result<usize> {
        self.preadv(fd, &mut [buf], off)
    }

    /// Scatter read at `off`.
    pub fn preadv(&self, fd: Fd, iov: &mut [&mut [u8]], off: i64) -> Result<usize> {
        let off = u64::try_from(off).map_err(|_| Errno::EINVAL)?;
        self.with_file(fd, |f| {
            if !f.flags.readable() {
                return Err(Errno::EBADF);
            }
            if f.loc.is_dir() {
                return Err(Errno::EISDIR);
            }
            f.loc.vn.read(off, iov)
        })
    }

    /// Writes at the file offset (or the end, with `APPEND`) and advances it.
    pub fn write(&self, fd: Fd, buf: &[u8]) -> Result<usize> {
        self.writev(fd, &[buf])
    }

    /// Gather write at the file offset.
    pub fn writev(&self, fd: Fd, iov: &[&[u8]]) -> Result<usize> {
        self.with_file(fd, |f| {
            if !f.flags.writable() {
                return Err(Errno::EBADF);
            }
            let mut pos = f.pos.lock();
            let at = if f.flags.contains(OpenFlags::APPEND) { WritePos::Append } else { WritePos::At(*pos) };
            let (n, end) = f.loc.vn.write(at, iov)?;
            if n > 0 {
                *pos = end;
            }
            Ok(n)
        })
    }

    /// Writes at `off` (at the end with `APPEND`, as Linux does), leaving the
    /// file offset alone.
    pub fn pwrite(&self, fd: Fd, buf: &[u8], off: i64) -> Result<usize> {
        self.pwritev(fd, &[buf], off)
    }

    /// Gather write at `off`.
    pub fn pwritev(&self, fd: Fd, iov: &[&[u8]], off: i64) -> Result<usize> {
        let off = u64::try_from(off).map_err(|_| Errno::EINVAL)?;
        self.with_file(fd, |f| {
            if !f.flags.writable() {
                return Err(Errno::EBADF);
            }
            let at = if f.flags.contains(OpenFlags::APPEND) { WritePos::Append } else { WritePos::At(off) };
            Ok(f.loc.vn.write(at, iov)?.0)
        })
    }

    /// Moves the file offset. Directories accept `Set` and `Cur` only.
    pub fn lseek(&self, fd: Fd, off: i64, whence: Whence) -> Result<u64> {
        let f = self.file(fd)?;
        let mut pos = f.pos.lock();
        let dir = f.loc.is_dir();
        let new: i64 = match whence {
            Whence::Set => off,
            Whence::Cur => {
                i64::try_from(*pos).ok().and_then(|p| p.checked_add(off)).ok_or(Errno::EOVERFLOW)?
            }
            _ if dir => return Err(Errno::EINVAL),
            Whence::End => {
                let size = f.loc.vn.getattr()?.size;
                i64::try_from(size).ok().and_then(|s| s.checked_add(off)).ok_or(Errno::EOVERFLOW)?
            }
            Whence::Data | Whence::Hole => {
                let which = if whence == Whence::Data { HoleSeek::Data } else { HoleSeek::Hole };
                let off = u64::try_from(off).map_err(|_| Errno::ENXIO)?;
                let at = match f.loc.vn.seek_hole(off, which) {
                    Err(Errno::ENOSYS) => {
                        let size = f.loc.vn.getattr()?.size;
                        if off >= size {
                            return Err(Errno::ENXIO);
                        }
                        if which == HoleSeek::Data {
                            off
                        } else {
                            size
                        }
                    }
                    r => r?,
                };
                i64::try_from(at).map_err(|_| Errno::EOVERFLOW)?
            }
        };
        let new = u64::try_from(new).map_err(|_| Errno::EINVAL)?;
        *pos = new;
        Ok(new)
    }

    fn stat_loc(loc: &Loc) -> Result<Stat> {
        let mut st = loc.vn.getattr()?;
        st.dev = loc.mnt.id;
        Ok(st)
    }

    /// Attributes of an open file.
    pub fn fstat(&self, fd: Fd) -> Result<Stat> {
        Self::stat_loc(&self.file(fd)?.loc)
    }

    /// Attributes, following a final symbolic link.
    pub fn stat(&self, path: &str) -> Result<Stat> {
        Self::stat_loc(&self.resolve(path, true)?)
    }

    /// Attributes of the link itself when the last component is one.
    pub fn lstat(&self, path: &str) -> Result<Stat> {
        Self::stat_loc(&self.resolve(path, false)?)
    }

    /// Up to `max` entries of an open directory from its offset (`.` and `..`
    /// first); an empty result is the end.
    pub fn getdents(&self, fd: Fd, max: usize) -> Result<Vec<Dirent>> {
        let f = self.file(fd)?;
        if !f.loc.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let mut pos = f.pos.lock();
        let mut out = Vec::new();
        while out.len() < max {
            match f.loc.vn.readdir(*pos)? {
                Some(d) => {
                    out.push(d);
                    *pos += 1;
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// Creates a directory.
    pub fn mkdir(&self, path: &str, perm: u32) -> Result {
        let p = self.resolve_parent(path)?;
        let Last::Name(name) = p.last else {
            return Err(Errno::EEXIST);
        };
        p.dir.vn.mkdir(&name, perm).map(drop)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, path: &str) -> Result {
        let p = self.resolve_parent(path)?;
        let name = match p.last {
            Last::Name(n) => n,
            Last::Dot => return Err(Errno::EINVAL),
            Last::DotDot => return Err(Errno::ENOTEMPTY),
            Last::Root => return Err(Errno::EBUSY),
        };
        let child = self.lookup_raw(&p.dir, &name)?;
        if child.vtype() != VType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if self.is_mount_point(&p.dir, &child) {
            return Err(Errno::EBUSY);
        }
        let r = p.dir.vn.rmdir(&name);
        self.cache.invalidate(p.dir.key(), &name);
        r
    }

    /// Removes a name of a non-directory.
    pub fn unlink(&self, path: &str) -> Result {
        let p = self.resolve_parent(path)?;
        let Last::Name(name) = p.last else {
            return Err(Errno::EISDIR);
        };
        let child = self.lookup_raw(&p.dir, &name)?;
        let is_dir = child.vtype() == VType::Directory;
        if p.trailing_slash || is_dir {
            return Err(if is_dir { Errno::EISDIR } else { Errno::ENOTDIR });
        }
        let r = p.dir.vn.remove(&name);
        self.cache.invalidate(p.dir.key(), &name);
        r
    }

    /// Renames, replacing a compatible target atomically.
    pub fn rename(&self, old: &str, new: &str) -> Result {
        let po = self.resolve_parent(old)?;
        let pn = self.resolve_parent(new)?;
        if po.dir.mnt.id != pn.dir.mnt.id {
            return Err(Errno::EXDEV);
        }
        let (Last::Name(on), Last::Name(nn)) = (&po.last, &pn.last) else {
            return Err(Errno::EBUSY);
        };
        let ov = self.lookup_raw(&po.dir, on)?;
        if ov.vtype() != VType::Directory && (po.trailing_slash || pn.trailing_slash) {
            return Err(Errno::ENOTDIR);
        }
        if self.is_mount_point(&po.dir, &ov) {
            return Err(Errno::EBUSY);
        }
        if let Ok(nv) = self.lookup_raw(&pn.dir, nn) {
            if self.is_mount_point(&pn.dir, &nv) {
                return Err(Errno::EBUSY);
            }
        }
        let r = po.dir.vn.rename(on, &*pn.dir.vn, nn);
        self.cache.invalidate(po.dir.key(), on);
        self.cache.invalidate(pn.dir.key(), nn);
        r
    }

    /// Adds the name `new` for the existing non-directory `old` (not followed
    /// if a symbolic link).
    pub fn link(&self, old: &str, new: &str) -> Result {
        let src = self.resolve(old, false)?;
        let pn = self.resolve_parent(new)?;
        let Last::Name(nn) = &pn.last else {
            return Err(Errno::EEXIST);
        };
        if self.lookup_raw(&pn.dir, nn).is_ok() {
            return Err(Errno::EEXIST);
        }
        if pn.trailing_slash {
            return Err(Errno::ENOENT);
        }
        if src.mnt.id != pn.dir.mnt.id {
            return Err(Errno::EXDEV);
        }
        if src.is_dir() {
            return Err(Errno::EPERM);
        }
        pn.dir.vn.link(nn, &*src.vn)
    }

    /// Creates the symbolic link `path` with contents `target`.
    pub fn symlink(&self, target: &str, path: &str) -> Result {
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.len() >= PATH_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let pn = self.resolve_parent(path)?;
        let Last::Name(nn) = &pn.last else {
            return Err(Errno::EEXIST);
        };
        if self.lookup_raw(&pn.dir, nn).is_ok() {
            return Err(Errno::EEXIST);
        }
        if pn.trailing_slash {
            return Err(Errno::ENOENT);
        }
        pn.dir.vn.symlink(nn, target).map(drop)
    }

    /// The target of a symbolic link.
    pub fn readlink(&self, path: &str) -> Result<String> {
        let l = self.resolve(path, false)?;
        if l.vn.vtype() != VType::Symlink {
            return Err(Errno::EINVAL);
        }
        l.vn.readlink()
    }

    /// Sets a regular file's size (following symbolic links).
    pub fn truncate(&self, path: &str, len: i64) -> Result {
        let len = u64::try_from(len).map_err(|_| Errno::EINVAL)?;
        let l = self.resolve(path, true)?;
        match l.vn.vtype() {
            VType::Regular => l.vn.truncate(len),
            VType::Directory => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Sets the size of a regular file open for writing.
    pub fn ftruncate(&self, fd: Fd, len: i64) -> Result {
        let len = u64::try_from(len).map_err(|_| Errno::EINVAL)?;
        let f = self.file(fd)?;
        if f.loc.vn.vtype() != VType::Regular || !f.flags.writable() {
            return Err(Errno::EINVAL);
        }
        f.loc.vn.truncate(len)
    }

    /// Changes attributes of the object at `path` (`VOP_SETATTR`), following
    /// symbolic links: the permission bits (`chmod`) and times (`utimensat`).
    pub fn setattr(&self, path: &str, attr: &SetAttr) -> Result {
        self.resolve(path, true)?.vn.setattr(attr)
    }

    /// Changes attributes of an open file (`fchmod`, `futimens`).
    pub fn fsetattr(&self, fd: Fd, attr: &SetAttr) -> Result {
        self.file(fd)?.loc.vn.setattr(attr)
    }

    /// Sets the permission bits (`chmod`; the type bits are ignored).
    pub fn chmod(&self, path: &str, perm: u32) -> Result {
        self.setattr(path, &SetAttr { perm: Some(perm & 0o7777), ..SetAttr::default() })
    }

    /// Sets the access and modification times; `None` leaves one alone
    /// (`utimensat` with `UTIME_OMIT`).
    pub fn utimens(&self, path: &str, atime: Option<Timespec>, mtime: Option<Timespec>) -> Result {
        self.setattr(path, &SetAttr { atime, mtime, ..SetAttr::default() })
    }

    /// Makes an open file's data durable.
    pub fn fsync(&self, fd: Fd) -> Result {
        self.file(fd)?.loc.vn.fsync()
    }

    /// Which of `events` are ready on an open file.
    pub fn poll(&self, fd: Fd, events: PollEvents) -> Result<PollEvents> {
        self.file(fd)?.loc.vn.poll(events)
    }

    /// A device-specific request on an open file.
    pub fn ioctl(&self, fd: Fd, cmd: u32, arg: usize) -> Result<usize> {
        self.file(fd)?.loc.vn.ioctl(cmd, arg)
    }

    /// Asks whether `len` bytes from `off` of an open file may be mapped.
    pub fn mmap_check(&self, fd: Fd, off: u64, len: u64, shared: bool) -> Result {
        let f = self.file(fd)?;
        if !f.flags.readable() || (shared && !f.flags.writable()) {
            return Err(Errno::EACCES);
        }
        f.loc.vn.mmap(off, len, shared)
    }

    /// Changes the working directory.
    pub fn chdir(&self, path: &str) -> Result {
        let l = self.resolve(path, true)?;
        if !l.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        *self.cwd.write() = l;
        Ok(())
    }

    /// Changes the working directory to an open directory.
    pub fn fchdir(&self, fd: Fd) -> Result {
        let l = self.file(fd)?.loc.clone();
        if !l.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        *self.cwd.write() = l;
        Ok(())
    }

    /// The absolute path of the working directory (`ENOENT` if it was
    /// removed or is outside the root).
    pub fn getcwd(&self) -> Result<String> {
        self.path_of(self.cwd())
    }

    /// The absolute path of `loc`, found by walking `..` up to the root and
    /// searching each parent for the child's inode.
    fn path_of(&self, mut cur: Loc) -> Result<String> {
        let root = self.root();
        let mut parts: Vec<String> = Vec::new();
        let mut len = 1;
        while !cur.same(&root) {
            if cur.is_mount_root() {
                let up = self.mounts.read().parent.get(&cur.mnt.id).cloned();
                cur = up.ok_or(Errno::ENOENT)?;
                continue;
            }
            let parent = Loc { vn: cur.vn.lookup("..")?, mnt: cur.mnt.clone() };
            let ino = cur.vn.ino();
            let mut cookie = 2;
            let name = loop {
                match parent.vn.readdir(cookie)? {
                    Some(d) if d.ino == ino && d.name != "." && d.name != ".." => break d.name,
                    Some(_) => cookie += 1,
                    None => return Err(Errno::ENOENT),
                }
            };
            len += name.len() + 1;
            if len >= PATH_MAX {
                return Err(Errno::ENAMETOOLONG);
            }
            parts.push(name);
            cur = parent;
        }
        let mut s = String::with_capacity(len);
        for p in parts.iter().rev() {
            s.push('/');
            s.push_str(p);
        }
        if s.is_empty() {
            s.push('/');
        }
        Ok(s)
    }

    /// The mount table, read-only: the root first, then the other mounts in
    /// the order they were made. What `/proc/self/mounts` prints.
    ///
    /// The table is copied under its lock and the paths are computed after
    /// it is released (a path walk calls into filesystems). A mount whose
    /// mount point has no path from the root (it cannot happen through this
    /// API, which refuses to remove a mount point) is left out. While this
    /// runs, a concurrent [`umount`](Self::umount) of a listed filesystem may
    /// fail with `EBUSY`, as it would with the filesystem in use.
    pub fn mounts(&self) -> Vec<MountInfo> {
        let list: Vec<(u64, String, Loc)> = {
            let t = self.mounts.read();
            let root = Loc { mnt: t.root.clone(), vn: t.root.root.clone() };
            let mut v = Vec::with_capacity(1 + t.parent.len());
            v.push((t.root.id, String::from(t.root.fs.name()), root));
            for (id, at) in &t.parent {
                if let Some(m) = t.covered.get(&at.key()) {
                    v.push((*id, String::from(m.fs.name()), at.clone()));
                }
            }
            v
        };
        let root_id = list.first().map(|m| m.0);
        list.into_iter()
            .filter_map(|(id, fs_type, at)| {
                let path = if Some(id) == root_id { String::from("/") } else { self.path_of(at).ok()? };
                Some(MountInfo { id, path, fs_type })
            })
            .collect()
    }
}

/// One entry of the mount table, as [`Vfs::mounts`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// The mount's id (what [`Stat::dev`] reports for its files).
    pub id: u64,
    /// The absolute path of the mount point.
    pub path: String,
    /// The filesystem's type name ([`FsOps::name`]).
    pub fs_type: String,
}

/// Where procfs gets the mount table from (`/proc/self/mounts`).
///
/// [`Vfs`] implements it; procfs holds it as `Arc<dyn MountList>`, so the
/// kernel passes `Arc::new(vfs)` for a `&'static Vfs`, or
/// `Arc::new(Arc::downgrade(&vfs))` for an `Arc<Vfs>` (a `Weak`, so that the
/// procfs mounted in the VFS does not keep the VFS alive in a cycle).
///
/// `mounts` is called while a procfs file is read: the VFS then holds only
/// the reader's file-offset mutex, and procfs holds no lock of its own, so
/// the walk it does (mount table, then directory locks) cannot wait on a
/// lock held by its own caller.
pub trait MountList: Send + Sync {
    /// The mounts, root first.
    fn mounts(&self) -> Vec<MountInfo>;
}

impl MountList for Vfs {
    fn mounts(&self) -> Vec<MountInfo> {
        Vfs::mounts(self)
    }
}

impl<T: MountList + ?Sized> MountList for &'static T {
    fn mounts(&self) -> Vec<MountInfo> {
        (**self).mounts()
    }
}

impl<T: MountList> MountList for Weak<T> {
    /// Empty once the VFS is gone.
    fn mounts(&self) -> Vec<MountInfo> {
        self.upgrade().map(|v| v.mounts()).unwrap_or_default()
    }
}

#[cfg(test)]
#[path = "vfs_tests.rs"]
mod tests;
