//! virtio-fs as an [`osv_vfs`] filesystem: [`VirtioFs`] implements
//! `FsOps`, its vnodes `VnodeOps`, read-write over FUSE (feature `vfs`).
//!
//! # Node ids, vnodes and lookup counts
//!
//! Every positive FUSE entry (LOOKUP, CREATE, MKDIR) adds one to the
//! server's lookup count of that node, and the client owes a `FUSE_FORGET`
//! with the total when it lets the node go. Here there is at most one
//! vnode per live node id (a table of weak references); each entry the
//! server returns adds one to that vnode's count, and dropping the vnode
//! (when the VFS, its dentry cache and open files let go) sends one
//! `FUSE_FORGET` on the hiprio queue. The root (`FUSE_ROOT_ID`) is never
//! forgotten, as in Linux.
//!
//! A vnode's [`ino`](VnodeOps::ino), `stat`'s inode number and the
//! directory records' all are the server's inode number (`fuse_attr.ino`):
//! the VFS matches them against each other (`getcwd`). They are unique among
//! the live inodes of one host filesystem; a host that reuses the number of
//! a deleted inode is one more reason the dentry cache is off by default.
//!
//! # Open files
//!
//! `VnodeOps::open`/`close` pair up per open file but carry no handle, so
//! a vnode keeps the FUSE handles of its open files: one for reading and
//! one for writing (one `O_RDWR` handle serves both), opened on demand and
//! released when its last open file closes. `O_APPEND` writes ask the
//! server for the size first (under the vnode's handle lock, so local
//! appends do not interleave; a host process appending at the same time
//! can). Operations on a vnode without an open file (a `truncate` by path)
//! go by node id alone, or open a handle for the one request.
//!
//! # Directories
//!
//! `readdir` cookies are positions (0 `.`, 1 `..`, then the server's
//! entries); the vnode keeps the records read so far with the server's
//! offset cookie after them, starting over at cookie 0. Names that are not
//! UTF-8 are skipped (osv-vfs names are `String`s).
//!
//! # Coherence
//!
//! Everything goes to the server at once (no page cache; virtiofsd's
//! `--cache never` matches). The VFS's dentry cache is off by default
//! ([`Options::dentry_cache`]), so a file the host renames or removes is
//! seen at the next path walk.
//!
//! # Lock order
//!
//! A vnode's directory-record lock, then its handle lock, then the node
//! table or the device lock (never both at once). No vnode is dropped
//! while the device lock or the table lock is held (a drop takes both, one
//! after the other, to FORGET).

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec;
use alloc::vec::Vec;
use core::any::Any;

use osv_vfs::{
    makedev, Dirent, Errno, FsOps, OpenFlags, Result, SetAttr, Stat, StatFs, Timespec, VType, VnodeOps,
    VnodeRef, WritePos,
};
use spin::Mutex;

use super::device::{FsError, Tag, VirtIOFs};
use super::proto::{
    self, open_flags, Attr, DirentIter, EntryOut, FileHandle, FileType, NodeId, SetattrIn, ROOT_ID,
};
use crate::hal::Hal;
use crate::transport::Transport;

/// `statfs` type of FUSE filesystems (Linux `FUSE_SUPER_MAGIC`,
/// `include/uapi/linux/magic.h`).
pub const FUSE_SUPER_MAGIC: u64 = 0x6573_5546;

/// Bytes asked for per `FUSE_READDIR`.
const READDIR_CHUNK: usize = 8192;

/// Mount options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Let the VFS cache name lookups in this filesystem (faster walks;
    /// changes the host makes behind the guest's back are then seen only
    /// after the entry is evicted). Off by default.
    pub dentry_cache: bool,
}

/// An errno for a driver error: the server's own errno where osv-vfs has
/// it, `EIO` for everything else (a protocol violation, a broken device).
pub fn errno(e: FsError) -> Errno {
    match e {
        FsError::Server(n) => match n {
            1 => Errno::EPERM,
            2 => Errno::ENOENT,
            6 => Errno::ENXIO,
            9 => Errno::EBADF,
            12 => Errno::ENOMEM,
            13 => Errno::EACCES,
            16 => Errno::EBUSY,
            17 => Errno::EEXIST,
            18 => Errno::EXDEV,
            19 => Errno::ENODEV,
            20 => Errno::ENOTDIR,
            21 => Errno::EISDIR,
            22 => Errno::EINVAL,
            23 => Errno::ENFILE,
            24 => Errno::EMFILE,
            25 => Errno::ENOTTY,
            27 => Errno::EFBIG,
            28 => Errno::ENOSPC,
            29 => Errno::ESPIPE,
            30 => Errno::EROFS,
            31 => Errno::EMLINK,
            34 => Errno::ERANGE,
            36 => Errno::ENAMETOOLONG,
            38 => Errno::ENOSYS,
            39 => Errno::ENOTEMPTY,
            40 => Errno::ELOOP,
            75 => Errno::EOVERFLOW,
            95 => Errno::EOPNOTSUPP,
            _ => Errno::EIO,
        },
        FsError::InvalidArgument | FsError::Proto(proto::ProtoError::InvalidName) => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

fn vtype(t: FileType) -> VType {
    match t {
        FileType::Regular => VType::Regular,
        FileType::Directory => VType::Directory,
        FileType::Symlink => VType::Symlink,
        FileType::CharDevice => VType::CharDevice,
        FileType::BlockDevice => VType::BlockDevice,
        FileType::Fifo => VType::Fifo,
        FileType::Socket => VType::Socket,
    }
}

fn timespec(t: proto::Time) -> Timespec {
    Timespec { sec: i64::try_from(t.sec).unwrap_or(i64::MAX), nsec: t.nsec }
}

fn wire_time(t: Timespec) -> (u64, u32) {
    (u64::try_from(t.sec).unwrap_or(0), t.nsec.min(999_999_999))
}

struct Table<H: Hal, T: Transport> {
    nodes: BTreeMap<u64, Weak<Node<H, T>>>,
    live: usize,
}

struct Shared<H: Hal, T: Transport> {
    dev: Mutex<VirtIOFs<H, T>>,
    table: Mutex<Table<H, T>>,
    options: Options,
}

impl<H: Hal, T: Transport> Drop for Shared<H, T> {
    fn drop(&mut self) {
        // Every vnode is gone (they hold this), so every FORGET was sent.
        let _ = self.dev.get_mut().destroy();
    }
}

#[derive(Default)]
struct Handles {
    /// Open files on this vnode.
    opens: u32,
    /// A handle that can read, and one that can write (maybe the same).
    read: Option<FileHandle>,
    write: Option<FileHandle>,
    /// Every distinct handle with the flags it was opened with.
    all: Vec<(FileHandle, u32)>,
}

#[derive(Default)]
struct DirRecords {
    entries: Vec<Dirent>,
    /// The server's cookie after the last record read.
    next_off: u64,
    eof: bool,
}

struct NodeState<H: Hal, T: Transport> {
    nlookup: u64,
    /// The directory this one was last found in (directories only; `..`).
    parent: Option<Arc<Node<H, T>>>,
}

/// A virtio-fs vnode.
struct Node<H: Hal, T: Transport> {
    shared: Arc<Shared<H, T>>,
    me: Weak<Node<H, T>>,
    id: NodeId,
    ino: u64,
    kind: VType,
    state: Mutex<NodeState<H, T>>,
    handles: Mutex<Handles>,
    dir: Mutex<DirRecords>,
}

/// A virtio-fs device as a filesystem: mount it with
/// [`Vfs::mount`](osv_vfs::Vfs::mount).
pub struct VirtioFs<H: Hal, T: Transport> {
    shared: Arc<Shared<H, T>>,
    root: Arc<Node<H, T>>,
    tag: Tag,
}

impl<H: Hal, T: Transport> core::fmt::Debug for VirtioFs<H, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioFs").field("tag", &self.tag).field("live_nodes", &self.live_nodes()).finish()
    }
}

impl<H, T> VirtioFs<H, T>
where
    H: Hal + Send + 'static,
    T: Transport + Send + 'static,
{
    /// The filesystem of an initialized driver, with default [`Options`].
    pub fn new(dev: VirtIOFs<H, T>) -> core::result::Result<Arc<Self>, FsError> {
        Self::with_options(dev, Options::default())
    }

    /// The filesystem with `options`. Checks that the root is a directory.
    pub fn with_options(
        mut dev: VirtIOFs<H, T>,
        options: Options,
    ) -> core::result::Result<Arc<Self>, FsError> {
        let attr = dev.getattr(ROOT_ID, None)?;
        if attr.file_type() != Some(FileType::Directory) {
            return Err(FsError::Proto(proto::ProtoError::BadValue("root is not a directory")));
        }
        let tag = dev.tag();
        let shared = Arc::new(Shared {
            dev: Mutex::new(dev),
            table: Mutex::new(Table { nodes: BTreeMap::new(), live: 1 }),
            options,
        });
        let root = Arc::new_cyclic(|me| Node {
            shared: shared.clone(),
            me: me.clone(),
            id: ROOT_ID,
            ino: attr.ino,
            kind: VType::Directory,
            state: Mutex::new(NodeState { nlookup: 0, parent: None }),
            handles: Mutex::new(Handles::default()),
            dir: Mutex::new(DirRecords::default()),
        });
        shared.table.lock().nodes.insert(ROOT_ID.0, Arc::downgrade(&root));
        Ok(Arc::new(Self { shared, root, tag }))
    }

    /// The device's tag.
    pub fn tag(&self) -> Tag {
        self.tag
    }
}

impl<H: Hal, T: Transport> VirtioFs<H, T> {
    /// Vnodes alive now (the root included): for leak checks.
    pub fn live_nodes(&self) -> usize {
        self.shared.table.lock().live
    }
}

impl<H, T> FsOps for VirtioFs<H, T>
where
    H: Hal + Send + 'static,
    T: Transport + Send + 'static,
{
    fn name(&self) -> &str {
        "virtiofs"
    }
    fn root(&self) -> VnodeRef {
        self.root.clone()
    }
    fn statfs(&self) -> Result<StatFs> {
        let s = self.shared.dev.lock().statfs(ROOT_ID).map_err(errno)?;
        Ok(StatFs {
            fs_type: FUSE_SUPER_MAGIC,
            block_size: s.bsize,
            blocks: s.blocks,
            blocks_free: s.bfree,
            files: s.files,
            files_free: s.ffree,
            name_max: s.namelen,
        })
    }
    fn sync(&self) -> Result {
        // Writes go to the server at once; there is nothing dirty here.
        Ok(())
    }
}

impl<H, T> Node<H, T>
where
    H: Hal + Send + 'static,
    T: Transport + Send + 'static,
{
    fn dev(&self) -> spin::MutexGuard<'_, VirtIOFs<H, T>> {
        self.shared.dev.lock()
    }

    /// The vnode for a positive entry the server just returned (its lookup
    /// is counted on the vnode), with `parent` as its `..`.
    fn node_for(&self, e: &EntryOut, parent: Option<Arc<Self>>) -> Result<Arc<Self>> {
        let kind = e.attr.file_type().map(vtype);
        let mut table = self.shared.table.lock();
        if let Some(n) = table.nodes.get(&e.nodeid.0).and_then(Weak::upgrade) {
            drop(table);
            let old_parent = {
                let mut s = n.state.lock();
                s.nlookup += 1;
                if n.kind == VType::Directory && parent.is_some() {
                    core::mem::replace(&mut s.parent, parent)
                } else {
                    None
                }
            };
            drop(old_parent);
            // An inode's type never changes: a server that says otherwise
            // is broken (the count is kept and given back on drop).
            return if kind == Some(n.kind) { Ok(n) } else { Err(Errno::EIO) };
        }
        let Some(kind) = kind else {
            drop(table);
            let _ = self.dev().forget(e.nodeid, 1);
            return Err(Errno::EIO);
        };
        table.live += 1;
        let parent = if kind == VType::Directory { parent } else { None };
        let node = Arc::new_cyclic(|me| Node {
            shared: self.shared.clone(),
            me: me.clone(),
            id: e.nodeid,
            ino: e.attr.ino,
            kind,
            state: Mutex::new(NodeState { nlookup: 1, parent }),
            handles: Mutex::new(Handles::default()),
            dir: Mutex::new(DirRecords::default()),
        });
        table.nodes.insert(e.nodeid.0, Arc::downgrade(&node));
        drop(table);
        Ok(node)
    }

    /// Runs `f` with a handle that can read (`write == false`) or write;
    /// without an open file, opens one for the call.
    fn with_fh<R>(&self, write: bool, f: impl FnOnce(FileHandle) -> Result<R>) -> Result<R> {
        let have = {
            let h = self.handles.lock();
            if write {
                h.write
            } else {
                h.read
            }
        };
        if let Some(fh) = have {
            return f(fh);
        }
        let flags = if write { open_flags::WRONLY } else { open_flags::RDONLY };
        let o = self.dev().open(self.id, flags, false).map_err(errno)?;
        let r = f(o.fh);
        let rel = self.dev().release(self.id, o.fh, flags, false).map_err(errno);
        let r = r?;
        rel?;
        Ok(r)
    }

    fn fill_records(&self, d: &mut DirRecords) -> Result {
        let have = self.handles.lock().read;
        let (fh, temp) = match have {
            Some(fh) => (fh, false),
            None => (self.dev().open(self.id, open_flags::RDONLY, true).map_err(errno)?.fh, true),
        };
        let r = self.fill_records_with(d, fh);
        if temp {
            let rel = self.dev().release(self.id, fh, open_flags::RDONLY, true).map_err(errno);
            r?;
            return rel;
        }
        r
    }

    fn fill_records_with(&self, d: &mut DirRecords, fh: FileHandle) -> Result {
        let mut buf = vec![0u8; READDIR_CHUNK];
        let n = self.dev().readdir(self.id, fh, d.next_off, &mut buf, false).map_err(errno)?;
        if n == 0 {
            d.eof = true;
            return Ok(());
        }
        let start = d.next_off;
        let mut unknown: Vec<(usize, String)> = Vec::new();
        for rec in DirentIter::new(&buf[..n], false) {
            let rec = rec.map_err(|_| Errno::EIO)?;
            d.next_off = rec.off;
            if rec.name == b"." || rec.name == b".." {
                continue;
            }
            let Ok(name) = core::str::from_utf8(rec.name) else { continue };
            let kind = match rec.kind {
                Some(k) => vtype(k),
                None => {
                    unknown.push((d.entries.len(), String::from(name)));
                    VType::Regular
                }
            };
            d.entries.push(Dirent { ino: rec.ino, kind, name: String::from(name) });
        }
        if d.next_off == start {
            // A page that does not move the cookie would loop forever.
            return Err(Errno::EIO);
        }
        // DT_UNKNOWN: ask the server for the type.
        for (i, name) in unknown {
            let vn = self.lookup(&name)?;
            if let Some(e) = d.entries.get_mut(i) {
                e.kind = vn.vtype();
            }
            drop(vn);
        }
        Ok(())
    }

    fn check_dir(&self) -> Result {
        if self.kind != VType::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(())
    }

    fn check_file(&self) -> Result {
        match self.kind {
            VType::Regular => Ok(()),
            VType::Directory => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }
}

impl<H, T> VnodeOps for Node<H, T>
where
    H: Hal + Send + 'static,
    T: Transport + Send + 'static,
{
    fn ino(&self) -> u64 {
        self.ino
    }
    fn vtype(&self) -> VType {
        self.kind
    }
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn open(&self, flags: OpenFlags) -> Result {
        let mut h = self.handles.lock();
        match self.kind {
            VType::Directory if h.read.is_none() => {
                let o = self.dev().open(self.id, open_flags::RDONLY, true).map_err(errno)?;
                h.read = Some(o.fh);
                h.all.push((o.fh, open_flags::RDONLY));
            }
            VType::Regular => {
                let (r, w) = (flags.readable(), flags.writable());
                if (r && h.read.is_none()) || (w && h.write.is_none()) {
                    let mode = match (r, w) {
                        (true, true) => open_flags::RDWR,
                        (false, true) => open_flags::WRONLY,
                        _ => open_flags::RDONLY,
                    };
                    let o = self.dev().open(self.id, mode, false).map_err(errno)?;
                    if r && h.read.is_none() {
                        h.read = Some(o.fh);
                    }
                    if w && h.write.is_none() {
                        h.write = Some(o.fh);
                    }
                    h.all.push((o.fh, mode));
                }
            }
            _ => {}
        }
        h.opens += 1;
        Ok(())
    }

    fn close(&self) -> Result {
        let mut h = self.handles.lock();
        h.opens = h.opens.saturating_sub(1);
        if h.opens > 0 {
            return Ok(());
        }
        let all = core::mem::take(&mut h.all);
        h.read = None;
        h.write = None;
        let dir = self.kind == VType::Directory;
        let mut result = Ok(());
        for (fh, flags) in all {
            if let Err(e) = self.dev().release(self.id, fh, flags, dir) {
                result = Err(errno(e));
            }
        }
        // The records go after the handle lock (lock order: records first).
        drop(h);
        if dir {
            *self.dir.lock() = DirRecords::default();
        }
        result
    }

    fn read(&self, off: u64, iov: &mut [&mut [u8]]) -> Result<usize> {
        self.check_file()?;
        self.with_fh(false, |fh| {
            let mut done = 0usize;
            let mut pos = off;
            for buf in iov.iter_mut() {
                let mut at = 0;
                while at < buf.len() {
                    let mut dev = self.dev();
                    let end = buf.len().min(at + dev.max_read() as usize);
                    let n = dev.read(self.id, fh, pos, &mut buf[at..end]).map_err(errno)?;
                    drop(dev);
                    done += n;
                    pos += n as u64;
                    if n < end - at {
                        return Ok(done); // end of file
                    }
                    at = end;
                }
            }
            Ok(done)
        })
    }

    fn write(&self, pos: WritePos, iov: &[&[u8]]) -> Result<(usize, u64)> {
        self.check_file()?;
        // Serialise local appends: the size and the write under one lock.
        let _append = matches!(pos, WritePos::Append).then(|| self.handles.lock());
        let have = _append.as_ref().map(|h| h.write);
        let run = |fh: FileHandle| -> Result<(usize, u64)> {
            let mut at = match pos {
                WritePos::At(o) => o,
                WritePos::Append => self.dev().getattr(self.id, Some(fh)).map_err(errno)?.size,
            };
            let mut done = 0usize;
            for buf in iov {
                let mut i = 0;
                while i < buf.len() {
                    let mut dev = self.dev();
                    let end = buf.len().min(i + dev.max_write() as usize);
                    let n = dev.write(self.id, fh, at, &buf[i..end]).map_err(errno)?;
                    drop(dev);
                    if n == 0 {
                        return Ok((done, at));
                    }
                    done += n;
                    i += n;
                    at += n as u64;
                }
            }
            Ok((done, at))
        };
        match have {
            Some(Some(fh)) => run(fh),
            Some(None) => {
                // Appending without an open write handle: open one for this.
                let o = self.dev().open(self.id, open_flags::WRONLY, false).map_err(errno)?;
                let r = run(o.fh);
                let rel = self.dev().release(self.id, o.fh, open_flags::WRONLY, false).map_err(errno);
                let r = r?;
                rel?;
                Ok(r)
            }
            None => self.with_fh(true, run),
        }
    }

    fn readdir(&self, cookie: u64) -> Result<Option<Dirent>> {
        self.check_dir()?;
        match cookie {
            0 => {
                *self.dir.lock() = DirRecords::default();
                return Ok(Some(Dirent { ino: self.ino, kind: VType::Directory, name: ".".into() }));
            }
            1 => {
                let parent = self.state.lock().parent.clone();
                let ino = parent.as_ref().map_or(self.ino, |p| p.ino);
                drop(parent);
                return Ok(Some(Dirent { ino, kind: VType::Directory, name: "..".into() }));
            }
            _ => {}
        }
        let k = usize::try_from(cookie - 2).map_err(|_| Errno::EINVAL)?;
        let mut d = self.dir.lock();
        while d.entries.len() <= k && !d.eof {
            self.fill_records(&mut d)?;
        }
        Ok(d.entries.get(k).cloned())
    }

    fn lookup(&self, name: &str) -> Result<VnodeRef> {
        self.check_dir()?;
        if name == ".." {
            if self.id == ROOT_ID {
                return self.me.upgrade().map(|n| n as VnodeRef).ok_or(Errno::EIO);
            }
            let parent = self.state.lock().parent.clone();
            if let Some(p) = parent {
                return Ok(p);
            }
        }
        let e = self.dev().lookup(self.id, name.as_bytes()).map_err(errno)?;
        let parent = if name == ".." { None } else { self.me.upgrade() };
        Ok(self.node_for(&e, parent)? as VnodeRef)
    }

    fn cacheable(&self) -> bool {
        self.shared.options.dentry_cache
    }

    fn create(&self, name: &str, perm: u32) -> Result<VnodeRef> {
        self.check_dir()?;
        let flags = open_flags::RDWR | open_flags::CREAT | open_flags::EXCL;
        let (e, o) = self
            .dev()
            .create(self.id, name.as_bytes(), flags, proto::mode::IFREG | (perm & 0o7777))
            .map_err(errno)?;
        // The VFS opens the vnode itself next: give this handle back.
        let rel = self.dev().release(e.nodeid, o.fh, flags, false).map_err(errno);
        let node = self.node_for(&e, None)?;
        rel?;
        Ok(node as VnodeRef)
    }

    fn remove(&self, name: &str) -> Result {
        self.check_dir()?;
        self.dev().remove(self.id, name.as_bytes(), false).map_err(errno)
    }

    fn rename(&self, name: &str, new_dir: &dyn VnodeOps, new_name: &str) -> Result {
        self.check_dir()?;
        let target = new_dir.as_any().downcast_ref::<Node<H, T>>().ok_or(Errno::EXDEV)?;
        if !Arc::ptr_eq(&self.shared, &target.shared) {
            return Err(Errno::EXDEV);
        }
        target.check_dir()?;
        // The moved vnode, so that a directory's `..` follows it.
        let moved = self.lookup(name)?;
        let r = self.dev().rename(self.id, name.as_bytes(), target.id, new_name.as_bytes(), 0).map_err(errno);
        if r.is_ok() && moved.vtype() == VType::Directory {
            if let (Some(m), Some(t)) = (moved.as_any().downcast_ref::<Node<H, T>>(), target.me.upgrade()) {
                let old = m.state.lock().parent.replace(t);
                drop(old);
            }
        }
        drop(moved);
        r
    }

    fn mkdir(&self, name: &str, perm: u32) -> Result<VnodeRef> {
        self.check_dir()?;
        let e = self.dev().mkdir(self.id, name.as_bytes(), perm & 0o7777).map_err(errno)?;
        Ok(self.node_for(&e, self.me.upgrade())? as VnodeRef)
    }

    fn rmdir(&self, name: &str) -> Result {
        self.check_dir()?;
        self.dev().remove(self.id, name.as_bytes(), true).map_err(errno)
    }

    fn getattr(&self) -> Result<Stat> {
        let a: Attr = self.dev().getattr(self.id, None).map_err(errno)?;
        // An inode's type and number never change.
        if a.file_type().map(vtype) != Some(self.kind) || a.ino != self.ino {
            return Err(Errno::EIO);
        }
        let major = (a.rdev & 0xfff00) >> 8;
        let minor = (a.rdev & 0xff) | ((a.rdev >> 12) & 0xfff00);
        Ok(Stat {
            dev: 0,
            ino: a.ino,
            kind: self.kind,
            perm: a.mode & 0o7777,
            nlink: u64::from(a.nlink),
            size: a.size,
            blocks: a.blocks,
            blksize: a.blksize,
            rdev: if matches!(self.kind, VType::CharDevice | VType::BlockDevice) {
                makedev(major, minor)
            } else {
                0
            },
            atime: timespec(a.atime),
            mtime: timespec(a.mtime),
            ctime: timespec(a.ctime),
        })
    }

    fn setattr(&self, attr: &SetAttr) -> Result {
        let s = SetattrIn {
            mode: attr.perm.map(|p| p & 0o7777),
            atime: attr.atime.map(wire_time),
            mtime: attr.mtime.map(wire_time),
            ..SetattrIn::default()
        };
        self.dev().setattr(self.id, s).map(drop).map_err(errno)
    }

    fn truncate(&self, len: u64) -> Result {
        self.check_file()?;
        let fh = self.handles.lock().write;
        let s = SetattrIn { size: Some(len), fh, ..SetattrIn::default() };
        self.dev().setattr(self.id, s).map(drop).map_err(errno)
    }

    fn fsync(&self) -> Result {
        match self.kind {
            VType::Regular => {
                self.with_fh(true, |fh| self.dev().fsync(self.id, fh, false, false).map_err(errno))
            }
            VType::Directory => match self.handles.lock().read {
                Some(fh) => self.dev().fsync(self.id, fh, false, true).map_err(errno),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

impl<H: Hal, T: Transport> Drop for Node<H, T> {
    fn drop(&mut self) {
        let (n, parent) = {
            let s = self.state.get_mut();
            (s.nlookup, s.parent.take())
        };
        let leftover = core::mem::take(&mut self.handles.get_mut().all);
        {
            let mut t = self.shared.table.lock();
            if t.nodes.get(&self.id.0).is_some_and(|w| core::ptr::eq(w.as_ptr(), self)) {
                t.nodes.remove(&self.id.0);
            }
            t.live -= 1;
        }
        {
            let mut dev = self.shared.dev.lock();
            let dir = self.kind == VType::Directory;
            // Open files keep their vnode, so none should be left; be safe.
            for (fh, flags) in leftover {
                let _ = dev.release(self.id, fh, flags, dir);
            }
            if n > 0 && self.id != ROOT_ID {
                let _ = dev.forget(self.id, n);
            }
        }
        drop(parent);
    }
}
