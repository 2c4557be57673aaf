//! ramfs: a memory filesystem with sparse files, directories, symbolic links
//! and hard links.
//!
//! File data lives in 4 KiB pages in a `BTreeMap`; a page that was never
//! written is a hole and reads as zeros (`SEEK_DATA`/`SEEK_HOLE` see them).
//! Timestamps come from the [`Clock`] given to [`RamFs::new`]; reads do not
//! touch `atime`. Locking follows the crate's lock order: per-directory
//! `RwLock` over the entries; per file a byte-range lock for writes, a
//! sequence count that lets reads copy without locking, and a reader-scalable
//! lock over the page map; a leaf mutex for metadata and one for a
//! directory's parent pointer; and a per-filesystem rename mutex for renames
//! between two directories.

use alloc::boxed::Box;
use alloc::collections::btree_map::Entry;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;

use crate::brlock::BrLock;
use crate::ops::{
    Clock, Dirent, FsOps, HoleSeek, PollEvents, SetAttr, Stat, StatFs, Timespec, VType, VnodeOps, VnodeRef,
    WritePos,
};
use crate::range::RangeLock;
use crate::seq::WriteSeq;
use crate::sync::{spin_loop, Arc, AtomicU64, AtomicUsize, Mutex, Ordering, RwLock, RwLockWriteGuard, Weak};
use crate::{Errno, OpenFlags, Result};

/// Page size of file data.
const PAGE: u64 = 4096;
/// Largest file size (as Linux tmpfs on 64-bit: `MAX_LFS_FILESIZE`).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// `statfs` magic of ramfs on Linux.
pub const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// A count of live ramfs vnodes that outlives the filesystem (for leak checks).
#[derive(Clone)]
pub struct LiveNodes(Arc<AtomicUsize>);

impl LiveNodes {
    /// How many vnodes of the filesystem exist now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl core::fmt::Debug for LiveNodes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("LiveNodes").field(&self.get()).finish()
    }
}

struct Shared {
    clock: Arc<dyn Clock>,
    next_ino: AtomicU64,
    live: Arc<AtomicUsize>,
    pages: AtomicU64,
    rename_lock: Mutex<()>,
}

/// A ramfs instance; mount it with [`Vfs::new`](crate::Vfs::new) or
/// [`Vfs::mount`](crate::Vfs::mount).
pub struct RamFs {
    shared: Arc<Shared>,
    root: Arc<RamNode>,
}

impl RamFs {
    /// An empty filesystem whose timestamps come from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        let shared = Arc::new(Shared {
            clock,
            next_ino: AtomicU64::new(1),
            live: Arc::new(AtomicUsize::new(0)),
            pages: AtomicU64::new(0),
            rename_lock: Mutex::new(()),
        });
        let root = RamNode::new(&shared, NodeKind::Dir(Weak::new()), 0o755);
        Arc::new(Self { shared, root })
    }

    /// Number of live vnodes (reachable, open, cached or otherwise held).
    pub fn live_nodes(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// A handle on the live-vnode count that stays valid after the
    /// filesystem is dropped; it reads 0 once every vnode is gone.
    pub fn live_counter(&self) -> LiveNodes {
        LiveNodes(self.shared.live.clone())
    }
}

impl core::fmt::Debug for RamFs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RamFs").field("live_nodes", &self.live_nodes()).finish()
    }
}

impl FsOps for RamFs {
    fn name(&self) -> &str {
        "ramfs"
    }
    fn root(&self) -> VnodeRef {
        self.root.clone()
    }
    fn statfs(&self) -> Result<StatFs> {
        Ok(StatFs {
            fs_type: RAMFS_MAGIC,
            block_size: PAGE as u32,
            blocks: 0,
            blocks_free: 0,
            files: self.live_nodes() as u64,
            files_free: 0,
            name_max: crate::NAME_MAX as u32,
        })
    }
}

struct Meta {
    perm: u32,
    nlink: u64,
    atime: Timespec,
    mtime: Timespec,
    ctime: Timespec,
}

/// Words in one page.
const WORDS: usize = (PAGE / 8) as usize;

/// How often a reader tries the lock-free copy (see [`FileData::read`])
/// before it takes its byte range.
const FAST_TRIES: usize = 3;

/// One page of file data, as atomic words: a lock-free reader copies it with
/// relaxed loads while a writer of other bytes (or, until the reader's
/// validation fails, of the same bytes) stores into it. Which call may store
/// which bytes is decided by the file's range lock.
struct Page(Box<[AtomicU64]>);

impl Page {
    fn zeroed() -> Self {
        Self((0..WORDS).map(|_| AtomicU64::new(0)).collect())
    }

    /// Copies bytes `start..start + dst.len()` of the page (within it) out.
    fn copy_out(&self, start: usize, dst: &mut [u8]) {
        let mut pos = start;
        let head = ((8 - pos % 8) % 8).min(dst.len());
        let (head_dst, rest) = dst.split_at_mut(head);
        if head > 0 {
            let w = self.0[pos / 8].load(Ordering::Relaxed).to_ne_bytes();
            head_dst.copy_from_slice(&w[pos % 8..pos % 8 + head]);
            pos += head;
        }
        let full = rest.len() / 8;
        let (body, tail) = rest.split_at_mut(full * 8);
        for (d, w) in body.chunks_exact_mut(8).zip(&self.0[pos / 8..]) {
            d.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        pos += full * 8;
        if !tail.is_empty() {
            let w = self.0[pos / 8].load(Ordering::Relaxed).to_ne_bytes();
            tail.copy_from_slice(&w[..tail.len()]);
        }
    }

    /// Stores `bytes` at byte `at` of one word, leaving its other bytes as
    /// they are (another writer may own them: an atomic read-modify-write).
    fn store_part(word: &AtomicU64, at: usize, bytes: &[u8]) {
        if bytes.len() == 8 {
            let mut v = [0u8; 8];
            v.copy_from_slice(bytes);
            word.store(u64::from_ne_bytes(v), Ordering::Relaxed);
            return;
        }
        let (mut v, mut m) = ([0u8; 8], [0u8; 8]);
        v[at..at + bytes.len()].copy_from_slice(bytes);
        m[at..at + bytes.len()].fill(0xff);
        let (v, m) = (u64::from_ne_bytes(v), u64::from_ne_bytes(m));
        let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some((w & !m) | v));
    }

    /// Copies `src` into the page from byte `start` (within it).
    fn copy_in(&self, start: usize, src: &[u8]) {
        let mut pos = start;
        let head = ((8 - pos % 8) % 8).min(src.len());
        let (head_src, rest) = src.split_at(head);
        if head > 0 {
            Self::store_part(&self.0[pos / 8], pos % 8, head_src);
            pos += head;
        }
        let full = rest.len() / 8;
        let (body, tail) = rest.split_at(full * 8);
        for (s, w) in body.chunks_exact(8).zip(&self.0[pos / 8..]) {
            Self::store_part(w, 0, s);
        }
        pos += full * 8;
        if !tail.is_empty() {
            Self::store_part(&self.0[pos / 8], 0, tail);
        }
    }

    /// Zeroes the page from byte `start` on.
    fn zero_from(&self, start: usize) {
        if !start.is_multiple_of(8) {
            Self::store_part(&self.0[start / 8], start % 8, &[0; 8][..8 - start % 8]);
        }
        for w in &self.0[start.div_ceil(8)..] {
            w.store(0, Ordering::Relaxed);
        }
    }
}

/// A regular file's data (see "Locking" in the crate docs).
struct FileData {
    /// Byte ranges in use: writes lock theirs exclusively, truncate and
    /// append everything from a point on, and a read that cannot take the
    /// lock-free path locks its range shared.
    ranges: RangeLock,
    /// Counts writes (and truncates) begun and ended: a lock-free read
    /// validates its copy against it.
    seq: WriteSeq,
    /// Page index -> page; a missing page is a hole. Readers and writers
    /// hold it shared across their copy (a reader-scalable lock: a reader
    /// writes only its stripe's line); a writer takes it exclusively to add
    /// pages, truncate to drop them.
    pages: BrLock<BTreeMap<u64, Page>>,
    /// The size. Bytes at or past it are zero in every page, and no page
    /// starts at or past it. Only a call holding a range that reaches past the
    /// old size can change it (see `write` and `truncate`).
    size: AtomicU64,
}

impl FileData {
    fn new() -> Self {
        Self {
            ranges: RangeLock::new(),
            seq: WriteSeq::new(),
            pages: BrLock::new(BTreeMap::new()),
            size: AtomicU64::new(0),
        }
    }

    /// Copies from byte `off` into the buffers, up to the size; the bytes
    /// copied. The caller holds the page map shared and either a snapshot
    /// of `seq` (and validates the result) or the range it reads.
    fn copy_to(&self, pages: &BTreeMap<u64, Page>, off: u64, iov: &mut [&mut [u8]]) -> usize {
        let size = self.size.load(Ordering::Acquire);
        let mut pos = off;
        let mut total = 0;
        for buf in iov.iter_mut() {
            if pos >= size {
                break;
            }
            let n = usize::try_from(size - pos).map_or(buf.len(), |r| r.min(buf.len()));
            let mut done = 0;
            while done < n {
                let page = pos / PAGE;
                let in_page = (pos % PAGE) as usize;
                let chunk = (PAGE as usize - in_page).min(n - done);
                let dst = &mut buf[done..done + chunk];
                match pages.get(&page) {
                    Some(p) => p.copy_out(in_page, dst),
                    None => dst.fill(0),
                }
                done += chunk;
                pos += chunk as u64;
            }
            total += n;
            if n < buf.len() {
                break;
            }
        }
        total
    }

    /// A read: first lock-free (a copy validated against `seq`, at most
    /// [`FAST_TRIES`] times), then under the shared range.
    fn read(&self, off: u64, iov: &mut [&mut [u8]]) -> usize {
        for _ in 0..FAST_TRIES {
            match self.seq.read_begin() {
                Some(snap) => {
                    let n = self.copy_to(&self.pages.read(), off, iov);
                    if self.seq.read_validate(snap) {
                        return n;
                    }
                }
                None => spin_loop(),
            }
        }
        // A write is in flight or keeps coming: wait for the overlapping
        // ones only. The page map is taken after the range (lock order).
        let want: u64 = iov.iter().map(|b| b.len() as u64).sum();
        let _range = self.ranges.read(off, off.saturating_add(want));
        self.copy_to(&self.pages.read(), off, iov)
    }
}

struct DirData {
    entries: BTreeMap<String, Arc<RamNode>>,
    subdirs: u64,
    removed: bool,
}

enum Body {
    File(Box<FileData>),
    Dir { data: RwLock<DirData>, parent: Mutex<Weak<RamNode>> },
    Symlink(String),
}

enum NodeKind<'a> {
    File,
    Dir(Weak<RamNode>),
    Symlink(&'a str),
}

/// One ramfs vnode.
struct RamNode {
    ino: u64,
    me: Weak<RamNode>,
    shared: Arc<Shared>,
    meta: Mutex<Meta>,
    body: Body,
}

impl Drop for RamNode {
    fn drop(&mut self) {
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
        if let Body::File(data) = &self.body {
            let n = data.pages.read().len() as u64;
            self.shared.pages.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

impl RamNode {
    fn new(shared: &Arc<Shared>, kind: NodeKind<'_>, perm: u32) -> Arc<Self> {
        let now = shared.clock.now();
        let ino = shared.next_ino.fetch_add(1, Ordering::Relaxed);
        let (body, nlink) = match kind {
            NodeKind::File => (Body::File(Box::new(FileData::new())), 1),
            NodeKind::Dir(parent) => (
                Body::Dir {
                    data: RwLock::new(DirData { entries: BTreeMap::new(), subdirs: 0, removed: false }),
                    parent: Mutex::new(parent),
                },
                2,
            ),
            NodeKind::Symlink(t) => (Body::Symlink(String::from(t)), 1),
        };
        shared.live.fetch_add(1, Ordering::SeqCst);
        Arc::new_cyclic(|me| Self {
            ino,
            me: me.clone(),
            shared: shared.clone(),
            meta: Mutex::new(Meta { perm: perm & 0o7777, nlink, atime: now, mtime: now, ctime: now }),
            body,
        })
    }

    fn arc(&self) -> Arc<RamNode> {
        // `me` is set by `new_cyclic` and `self` is alive, so this succeeds.
        self.me.upgrade().unwrap_or_else(unreachable_node)
    }

    fn file_data(&self) -> Result<&FileData> {
        match &self.body {
            Body::File(d) => Ok(d),
            Body::Dir { .. } => Err(Errno::EISDIR),
            Body::Symlink(_) => Err(Errno::EINVAL),
        }
    }

    fn dir(&self) -> Result<&RwLock<DirData>> {
        match &self.body {
            Body::Dir { data, .. } => Ok(data),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir { .. })
    }

    fn parent(&self) -> Option<Arc<RamNode>> {
        match &self.body {
            Body::Dir { parent, .. } => parent.lock().upgrade(),
            _ => None,
        }
    }

    fn set_parent(&self, p: &Arc<RamNode>) {
        if let Body::Dir { parent, .. } = &self.body {
            *parent.lock() = Arc::downgrade(p);
        }
    }

    fn touch(&self, data_changed: bool) {
        let now = self.shared.clock.now();
        let mut m = self.meta.lock();
        m.ctime = now;
        if data_changed {
            m.mtime = now;
        }
    }

    fn new_child(&self, name: &str, kind: NodeKind<'_>, perm: u32) -> Result<Arc<RamNode>> {
        let is_dir = matches!(kind, NodeKind::Dir(_));
        let mut d = self.dir()?.write();
        if d.removed {
            return Err(Errno::ENOENT);
        }
        if d.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let node = RamNode::new(&self.shared, kind, perm);
        d.entries.insert(String::from(name), node.clone());
        if is_dir {
            d.subdirs += 1;
        }
        drop(d);
        self.touch(true);
        Ok(node)
    }

    fn same_fs<'a>(&self, other: &'a dyn VnodeOps) -> Result<&'a RamNode> {
        match other.as_any().downcast_ref::<RamNode>() {
            Some(n) if Arc::ptr_eq(&n.shared, &self.shared) => Ok(n),
            _ => Err(Errno::EXDEV),
        }
    }
}

#[cold]
fn unreachable_node() -> Arc<RamNode> {
    unreachable!("a live ramfs node always upgrades its own weak reference")
}

/// Is `a` the directory `b` or one of its ancestors? Walks parent pointers;
/// the caller holds the rename mutex, so the tree shape is still.
fn is_ancestor_or_self(a: &RamNode, b: &RamNode) -> bool {
    if a.ino == b.ino {
        return true;
    }
    let mut cur = b.parent();
    while let Some(p) = cur {
        if p.ino == a.ino {
            return true;
        }
        cur = p.parent();
    }
    false
}

/// Write-locks the directories in ascending inode order (the crate's lock
/// order); duplicates are locked once. Returns the guards sorted by inode.
fn lock_dirs<'a>(nodes: &[&'a RamNode]) -> Result<Vec<(u64, RwLockWriteGuard<'a, DirData>)>> {
    let mut sorted: Vec<&RamNode> = nodes.to_vec();
    sorted.sort_by_key(|n| n.ino);
    sorted.dedup_by_key(|n| n.ino);
    let mut out = Vec::with_capacity(sorted.len());
    for n in sorted {
        out.push((n.ino, n.dir()?.write()));
    }
    Ok(out)
}

fn guard<'g, 'a>(guards: &'g mut [(u64, RwLockWriteGuard<'a, DirData>)], ino: u64) -> &'g mut DirData {
    let i = guards.iter().position(|(i, _)| *i == ino).unwrap_or(0);
    &mut guards[i].1
}

impl VnodeOps for RamNode {
    fn ino(&self) -> u64 {
        self.ino
    }

    fn vtype(&self) -> VType {
        match self.body {
            Body::File(_) => VType::Regular,
            Body::Dir { .. } => VType::Directory,
            Body::Symlink(_) => VType::Symlink,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    /// Memory only: no call waits for anything but other calls on the same
    /// file, and none uses the VFS.
    fn short_calls(&self) -> bool {
        true
    }

    fn open(&self, _flags: OpenFlags) -> Result {
        Ok(())
    }

    fn read(&self, off: u64, iov: &mut [&mut [u8]]) -> Result<usize> {
        Ok(self.file_data()?.read(off, iov))
    }

    fn write(&self, pos: WritePos, iov: &[&[u8]]) -> Result<(usize, u64)> {
        let data = self.file_data()?;
        let len: u64 = iov.iter().map(|b| b.len() as u64).sum();
        if len == 0 {
            let start = match pos {
                WritePos::At(o) => o,
                WritePos::Append => data.size.load(Ordering::SeqCst),
            };
            return Ok((0, start));
        }
        let (start, range) = match pos {
            WritePos::At(o) => {
                let end = o.checked_add(len).ok_or(Errno::EFBIG)?;
                if end > MAX_FILE_SIZE {
                    return Err(Errno::EFBIG);
                }
                (o, data.ranges.write(o, end))
            }
            // Lock from the current end to infinity. Once held, nobody else
            // can move the end (that needs a range reaching past it), so if
            // the end is still where we locked from, it is ours.
            WritePos::Append => loop {
                let s = data.size.load(Ordering::SeqCst);
                let g = data.ranges.write(s, u64::MAX);
                if data.size.load(Ordering::SeqCst) == s {
                    break (s, g);
                }
            },
        };
        let end = start.checked_add(len).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        // Add the missing pages first (zero pages in place of holes read the
        // same, so lock-free readers need not notice), allocated outside the
        // exclusive map lock. Another writer may add one of them meanwhile
        // (another part of a shared page); then ours is dropped. Once added,
        // the pages stay: only a truncate removes pages in our range, and our
        // range keeps it out. So the second look finds them all.
        let (first, last) = (start / PAGE, (end - 1) / PAGE);
        let mut new_pages = 0;
        let pages = loop {
            let pages = data.pages.read();
            let missing: Vec<u64> = (first..=last).filter(|i| !pages.contains_key(i)).collect();
            if missing.is_empty() {
                break pages;
            }
            drop(pages);
            let fresh: Vec<Page> = missing.iter().map(|_| Page::zeroed()).collect();
            let mut pages = data.pages.write();
            for (i, page) in missing.into_iter().zip(fresh) {
                if let Entry::Vacant(e) = pages.entry(i) {
                    e.insert(page);
                    new_pages += 1;
                }
            }
        };
        {
            let seq = data.seq.write_begin();
            let mut p = start;
            for buf in iov {
                let mut done = 0;
                while done < buf.len() {
                    let in_page = (p % PAGE) as usize;
                    let chunk = (PAGE as usize - in_page).min(buf.len() - done);
                    // Present: see above.
                    let Some(page) = pages.get(&(p / PAGE)) else {
                        return Err(Errno::EIO);
                    };
                    page.copy_in(in_page, &buf[done..done + chunk]);
                    done += chunk;
                    p += chunk as u64;
                }
            }
            // After the data: a reader of another range that sees the new size
            // reads zeros (a hole) outside our range, which is what it holds.
            // Skipped when the size does not grow, so that writes inside the
            // file do not write the size's cache line.
            if data.size.load(Ordering::Acquire) < end {
                data.size.fetch_max(end, Ordering::AcqRel);
            }
            drop(pages);
            drop(seq);
        }
        drop(range);
        if new_pages > 0 {
            self.shared.pages.fetch_add(new_pages, Ordering::Relaxed);
        }
        self.touch(true);
        Ok((len as usize, end))
    }

    fn truncate(&self, len: u64) -> Result {
        let data = self.file_data()?;
        if len > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        // Everything from the new size on: a shrink conflicts with every call
        // that touches a byte it cuts off; an extension with every call that
        // reaches past the new end. Calls wholly below `len` go on meanwhile.
        let range = data.ranges.write(len, u64::MAX);
        let seq = data.seq.write_begin();
        let gone = {
            let mut pages = data.pages.write();
            let gone = pages.split_off(&len.div_ceil(PAGE));
            if !len.is_multiple_of(PAGE) {
                if let Some(p) = pages.get(&(len / PAGE)) {
                    p.zero_from((len % PAGE) as usize);
                }
            }
            data.size.store(len, Ordering::Release);
            gone
        };
        drop(seq);
        drop(range);
        // The pages go outside every lock.
        let gone = gone.len() as u64;
        self.shared.pages.fetch_sub(gone, Ordering::Relaxed);
        self.touch(true);
        Ok(())
    }

    fn seek_hole(&self, off: u64, which: HoleSeek) -> Result<u64> {
        let data = match &self.body {
            Body::File(d) => d,
            _ => return Err(Errno::ENXIO),
        };
        let _range = data.ranges.read(off, u64::MAX);
        let size = data.size.load(Ordering::SeqCst);
        if off >= size {
            return Err(Errno::ENXIO);
        }
        let pages = data.pages.read();
        let page = off / PAGE;
        match which {
            HoleSeek::Data => {
                if pages.contains_key(&page) {
                    return Ok(off);
                }
                match pages.range(page..).next() {
                    Some((p, _)) if p * PAGE < size => Ok(p * PAGE),
                    _ => Err(Errno::ENXIO),
                }
            }
            HoleSeek::Hole => {
                let mut p = page;
                while pages.contains_key(&p) {
                    p += 1;
                }
                if p == page {
                    Ok(off)
                } else {
                    Ok((p * PAGE).min(size))
                }
            }
        }
    }

    fn readdir(&self, cookie: u64) -> Result<Option<Dirent>> {
        let d = self.dir()?.read();
        if d.removed {
            return Ok(None);
        }
        let ent = match cookie {
            0 => Some(Dirent { ino: self.ino, kind: VType::Directory, name: String::from(".") }),
            1 => Some(Dirent {
                ino: self.parent().map_or(self.ino, |p| p.ino),
                kind: VType::Directory,
                name: String::from(".."),
            }),
            k => usize::try_from(k - 2).ok().and_then(|i| d.entries.iter().nth(i)).map(|(name, n)| Dirent {
                ino: n.ino,
                kind: n.vtype(),
                name: name.clone(),
            }),
        };
        Ok(ent)
    }

    fn lookup(&self, name: &str) -> Result<VnodeRef> {
        let d = self.dir()?.read();
        if d.removed {
            return Err(Errno::ENOENT);
        }
        if name == ".." {
            drop(d);
            return Ok(self.parent().unwrap_or_else(|| self.arc()));
        }
        if name == "." {
            return Ok(self.arc());
        }
        match d.entries.get(name) {
            Some(n) => Ok(n.clone()),
            None => Err(Errno::ENOENT),
        }
    }

    fn create(&self, name: &str, perm: u32) -> Result<VnodeRef> {
        Ok(self.new_child(name, NodeKind::File, perm)?)
    }

    fn mkdir(&self, name: &str, perm: u32) -> Result<VnodeRef> {
        Ok(self.new_child(name, NodeKind::Dir(self.me.clone()), perm)?)
    }

    fn symlink(&self, name: &str, target: &str) -> Result<VnodeRef> {
        Ok(self.new_child(name, NodeKind::Symlink(target), 0o777)?)
    }

    fn remove(&self, name: &str) -> Result {
        let mut d = self.dir()?.write();
        let Some(n) = d.entries.get(name) else {
            return Err(Errno::ENOENT);
        };
        if n.is_dir() {
            return Err(Errno::EISDIR);
        }
        let n = d.entries.remove(name);
        drop(d);
        if let Some(n) = n {
            n.meta.lock().nlink -= 1;
            n.touch(false);
        }
        self.touch(true);
        Ok(())
    }

    fn rmdir(&self, name: &str) -> Result {
        loop {
            let child = match self.dir()?.read().entries.get(name) {
                Some(c) => c.clone(),
                None => return Err(Errno::ENOENT),
            };
            if !child.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            let mut g = lock_dirs(&[self, &child])?;
            let still = guard(&mut g, self.ino).entries.get(name).is_some_and(|c| Arc::ptr_eq(c, &child));
            if !still {
                continue;
            }
            let cd = guard(&mut g, child.ino);
            if !cd.entries.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            cd.removed = true;
            let pd = guard(&mut g, self.ino);
            pd.entries.remove(name);
            pd.subdirs -= 1;
            drop(g);
            child.meta.lock().nlink = 0;
            self.touch(true);
            return Ok(());
        }
    }

    fn link(&self, name: &str, target: &dyn VnodeOps) -> Result {
        let target = self.same_fs(target)?;
        if target.is_dir() {
            return Err(Errno::EPERM);
        }
        let mut d = self.dir()?.write();
        if d.removed {
            return Err(Errno::ENOENT);
        }
        if d.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        {
            let mut m = target.meta.lock();
            if m.nlink == 0 {
                return Err(Errno::ENOENT);
            }
            m.nlink += 1;
        }
        d.entries.insert(String::from(name), target.arc());
        drop(d);
        target.touch(false);
        self.touch(true);
        Ok(())
    }

    fn rename(&self, name: &str, new_dir: &dyn VnodeOps, new_name: &str) -> Result {
        let new_dir = self.same_fs(new_dir)?;
        self.dir()?;
        new_dir.dir()?;
        let same = self.ino == new_dir.ino;
        let _tree = if same { None } else { Some(self.shared.rename_lock.lock()) };
        loop {
            let old = match self.dir()?.read().entries.get(name) {
                Some(n) => n.clone(),
                None => return Err(Errno::ENOENT),
            };
            if !same && old.is_dir() && is_ancestor_or_self(&old, new_dir) {
                return Err(Errno::EINVAL);
            }
            let new = new_dir.dir()?.read().entries.get(new_name).cloned();
            if let Some(n) = &new {
                if !same && n.is_dir() && is_ancestor_or_self(n, self) {
                    return Err(Errno::ENOTEMPTY);
                }
                if Arc::ptr_eq(n, &old) {
                    return Ok(());
                }
                match (old.is_dir(), n.is_dir()) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    _ => {}
                }
            }
            let mut set: Vec<&RamNode> = alloc::vec![self, new_dir];
            if let Some(n) = new.as_deref().filter(|n| n.is_dir()) {
                set.push(n);
            }
            let mut g = lock_dirs(&set)?;
            let old_ok = guard(&mut g, self.ino).entries.get(name).is_some_and(|n| Arc::ptr_eq(n, &old));
            let new_now = guard(&mut g, new_dir.ino).entries.get(new_name).cloned();
            let new_ok = match (&new, &new_now) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            if !old_ok || !new_ok {
                continue;
            }
            if guard(&mut g, new_dir.ino).removed {
                return Err(Errno::ENOENT);
            }
            if let Some(n) = new.as_deref().filter(|n| n.is_dir()) {
                let nd = guard(&mut g, n.ino);
                if !nd.entries.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
                nd.removed = true;
            }
            let od = guard(&mut g, self.ino);
            od.entries.remove(name);
            if old.is_dir() {
                od.subdirs -= 1;
            }
            let nd = guard(&mut g, new_dir.ino);
            let replaced = nd.entries.insert(String::from(new_name), old.clone());
            if old.is_dir() {
                nd.subdirs += 1;
            }
            if let Some(r) = &replaced {
                if r.is_dir() {
                    nd.subdirs -= 1;
                }
            }
            drop(g);
            if old.is_dir() && !same {
                old.set_parent(&new_dir.arc());
            }
            if let Some(r) = replaced {
                let mut m = r.meta.lock();
                m.nlink = if r.is_dir() { 0 } else { m.nlink - 1 };
            }
            old.touch(false);
            self.touch(true);
            new_dir.touch(true);
            return Ok(());
        }
    }

    fn getattr(&self) -> Result<Stat> {
        let (kind, size, pages, dir_links) = match &self.body {
            Body::File(d) => {
                (VType::Regular, d.size.load(Ordering::SeqCst), d.pages.read().len() as u64, None)
            }
            Body::Dir { data, .. } => {
                let d = data.read();
                let links = if d.removed { 0 } else { 2 + d.subdirs };
                (VType::Directory, 0, 0, Some(links))
            }
            Body::Symlink(t) => (VType::Symlink, t.len() as u64, 0, None),
        };
        let m = self.meta.lock();
        Ok(Stat {
            dev: 0,
            ino: self.ino,
            kind,
            perm: m.perm,
            nlink: dir_links.unwrap_or(m.nlink),
            size,
            blocks: pages * (PAGE / 512),
            blksize: PAGE as u32,
            rdev: 0,
            atime: m.atime,
            mtime: m.mtime,
            ctime: m.ctime,
        })
    }

    fn setattr(&self, attr: &SetAttr) -> Result {
        let now = self.shared.clock.now();
        let mut m = self.meta.lock();
        if let Some(p) = attr.perm {
            m.perm = p & 0o7777;
        }
        if let Some(t) = attr.atime {
            m.atime = t;
        }
        if let Some(t) = attr.mtime {
            m.mtime = t;
        }
        m.ctime = now;
        Ok(())
    }

    fn readlink(&self) -> Result<String> {
        match &self.body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn poll(&self, events: PollEvents) -> Result<PollEvents> {
        Ok(events.intersection(PollEvents::IN.union(PollEvents::OUT)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ZeroClock;

    fn fs() -> Arc<RamFs> {
        RamFs::new(Arc::new(ZeroClock))
    }

    #[test]
    fn sparse_read_and_holes() {
        let fs = fs();
        let f = fs.root().create("f", 0o644).unwrap();
        f.write(WritePos::At(3 * PAGE + 10), &[b"abc"]).unwrap();
        let mut buf = [1u8; 8];
        assert_eq!(f.read(0, &mut [&mut buf]).unwrap(), 8);
        assert_eq!(buf, [0; 8]);
        assert_eq!(f.seek_hole(0, HoleSeek::Data).unwrap(), 3 * PAGE);
        assert_eq!(f.seek_hole(0, HoleSeek::Hole).unwrap(), 0);
        assert_eq!(f.seek_hole(3 * PAGE, HoleSeek::Hole).unwrap(), 3 * PAGE + 13);
        assert_eq!(f.seek_hole(3 * PAGE + 13, HoleSeek::Data), Err(Errno::ENXIO));
        f.truncate(3 * PAGE + 11).unwrap();
        f.truncate(4 * PAGE).unwrap();
        let mut buf = [9u8; 4];
        f.read(3 * PAGE + 9, &mut [&mut buf]).unwrap();
        assert_eq!(buf, [0, b'a', 0, 0]);
        assert_eq!(f.getattr().unwrap().blocks, 8);
    }

    #[test]
    fn unimplemented_ops_are_errors() {
        let fs = fs();
        let root = fs.root();
        assert_eq!(root.ioctl(1, 0), Err(Errno::ENOTTY));
        assert_eq!(root.mmap(0, 4096, false), Err(Errno::ENODEV));
        assert_eq!(root.readlink(), Err(Errno::EINVAL));
        let f = root.create("f", 0).unwrap();
        assert_eq!(f.lookup("x").err(), Some(Errno::ENOTDIR));
        assert_eq!(f.readdir(0), Err(Errno::ENOTDIR));
        assert_eq!(fs.statfs().unwrap().fs_type, RAMFS_MAGIC);
    }

    #[test]
    fn live_count_drops_to_zero() {
        let fs = fs();
        let live = fs.live_counter();
        let d = fs.root().mkdir("d", 0o755).unwrap();
        d.create("f", 0o644).unwrap();
        drop(d);
        assert_eq!(live.get(), 3);
        drop(fs);
        assert_eq!(live.get(), 0);
    }

    fn node(v: &VnodeRef) -> &RamNode {
        v.as_any().downcast_ref::<RamNode>().unwrap()
    }

    /// A call waits for a held overlapping range and only for that. With
    /// `[0, 4096)` held as a writer holds it while it copies (its range and
    /// an open write in the sequence count), a write to the next page
    /// completes, and a write and a read overlapping the held range wait
    /// until it is released. With only the range held (a writer that has
    /// not started storing), a read goes ahead without it, lock-free, and
    /// sees the old bytes.
    #[test]
    fn disjoint_writes_do_not_wait_overlapping_ones_do() {
        use std::sync::atomic::AtomicBool;
        let fs = fs();
        let f = fs.root().create("f", 0o644).unwrap();
        f.write(WritePos::At(0), &[&[1u8; 2 * PAGE as usize]]).unwrap();
        let data = node(&f).file_data().unwrap();
        let held = data.ranges.write(0, PAGE);
        let mut b = [0u8; 1];
        assert_eq!(f.read(10, &mut [&mut b]).unwrap(), 1, "lock-free read with no write in flight");
        assert_eq!(b, [1]);
        let writing = data.seq.write_begin();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Would spin forever if writes to one file were serialised.
            s.spawn(|| f.write(WritePos::At(PAGE), &[&[2u8; PAGE as usize]]).unwrap()).join().unwrap();
            let (w, r) = (
                s.spawn(|| {
                    f.write(WritePos::At(PAGE - 1), &[&[3u8; 2]]).unwrap();
                    done.store(true, Ordering::SeqCst);
                }),
                s.spawn(|| {
                    let mut b = [0u8; 1];
                    f.read(10, &mut [&mut b]).unwrap();
                    done.store(true, Ordering::SeqCst);
                }),
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!done.load(Ordering::SeqCst), "a call overlapping a held range went ahead");
            drop(writing);
            drop(held);
            w.join().unwrap();
            r.join().unwrap();
        });
        let mut b = [0u8; 2];
        f.read(PAGE - 1, &mut [&mut b]).unwrap();
        assert_eq!(b, [3, 3]);
        assert_eq!(node(&f).file_data().unwrap().ranges.pending(), 0);
    }

    /// Host threads `pwrite` disjoint, unaligned slices of one file (some
    /// share a page) and extend it concurrently; the content is exactly what
    /// each wrote, and the size the furthest end.
    #[test]
    fn concurrent_disjoint_writes_keep_every_byte() {
        const THREADS: usize = 4;
        const SLICE: usize = 3000; // not a page multiple: neighbours share pages
        const ROUNDS: usize = 8;
        let fs = fs();
        let f = fs.root().create("f", 0o644).unwrap();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let f = &f;
                s.spawn(move || {
                    for r in 0..ROUNDS {
                        let slot = r * THREADS + t;
                        let byte = (slot % 251) as u8 + 1;
                        let off = (slot * SLICE) as u64;
                        let (a, b) = ([byte; SLICE / 2], [byte; SLICE - SLICE / 2]);
                        assert_eq!(
                            f.write(WritePos::At(off), &[&a, &b]).unwrap(),
                            (SLICE, off + SLICE as u64)
                        );
                    }
                });
            }
        });
        let total = THREADS * ROUNDS * SLICE;
        assert_eq!(f.getattr().unwrap().size, total as u64);
        let mut all = vec![0u8; total + 10];
        assert_eq!(f.read(0, &mut [&mut all]).unwrap(), total);
        for (slot, chunk) in all[..total].chunks(SLICE).enumerate() {
            let byte = (slot % 251) as u8 + 1;
            assert!(chunk.iter().all(|&b| b == byte), "slot {slot} damaged");
        }
        assert_eq!(fs.shared.pages.load(Ordering::SeqCst), total.div_ceil(PAGE as usize) as u64);
    }

    /// Overlapping writes and reads of one file from several threads: each
    /// write fills 3 pages (from an unaligned offset) with one byte value; a
    /// read of the same range sees one writer's value in every byte, never a
    /// mix (POSIX.1-2017 XSH 2.9.7: read and write are atomic to each other
    /// on regular files). Appends stay whole and ordered.
    #[test]
    fn overlapping_calls_are_atomic() {
        use std::sync::atomic::AtomicUsize;
        const LEN: usize = 3 * PAGE as usize;
        let fs = fs();
        let f = fs.root().create("f", 0o644).unwrap();
        f.write(WritePos::At(100), &[&[1u8; LEN]]).unwrap();
        let writers_left = AtomicUsize::new(2);
        let reads = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..2u8 {
                let (f, writers_left) = (&f, &writers_left);
                s.spawn(move || {
                    for i in 0..2000u32 {
                        let v = 2 + t * 100 + (i % 100) as u8;
                        f.write(WritePos::At(100), &[&[v; LEN / 2], &[v; LEN - LEN / 2]]).unwrap();
                        if i % 64 == 0 {
                            f.truncate(100 + LEN as u64 / 2).unwrap();
                        }
                    }
                    writers_left.fetch_sub(1, Ordering::SeqCst);
                });
            }
            for _ in 0..2 {
                let (f, writers_left, reads) = (&f, &writers_left, &reads);
                s.spawn(move || {
                    let mut b = vec![0u8; LEN];
                    // Read for as long as a writer runs.
                    while writers_left.load(Ordering::SeqCst) > 0 {
                        // Whole, or cut at the truncation point.
                        let n = f.read(100, &mut [&mut b]).unwrap();
                        assert!(n == LEN || n == LEN / 2, "read {n}");
                        let b = &b[..n];
                        assert!(b.iter().all(|&x| x == b[0]), "torn read: {} and {}", b[0], b[n - 1]);
                        reads.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert!(reads.load(Ordering::SeqCst) > 0);
        // Appends from 2 threads: every record lands whole, none overlap.
        f.truncate(0).unwrap();
        std::thread::scope(|s| {
            for t in 0..2u8 {
                let f = &f;
                s.spawn(move || {
                    for _ in 0..100 {
                        f.write(WritePos::Append, &[&[b'a' + t; 700]]).unwrap();
                    }
                });
            }
        });
        let mut all = vec![0u8; 200 * 700];
        assert_eq!(f.read(0, &mut [&mut all]).unwrap(), 200 * 700);
        let counts = all.chunks(700).fold([0; 2], |mut c, rec| {
            assert!(rec.iter().all(|&x| x == rec[0]), "torn append");
            c[usize::from(rec[0] - b'a')] += 1;
            c
        });
        assert_eq!(counts, [100, 100]);
    }
}
