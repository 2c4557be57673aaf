//! A fake virtio-fs device: a tiny in-memory FUSE server behind
//! [`crate::fake::FakeDevice`], with scripted protocol violations, and the
//! body of the `virtio_fuse_reply` fuzz target.
//!
//! The server keeps a tree of nodes, counts lookups per node (LOOKUP,
//! CREATE, MKDIR and READDIRPLUS add one, FORGET on the hiprio queue takes
//! them back) and open handles, so tests can check that a client gives back
//! everything it took. It parses requests with its own code (not the
//! driver's encoder), so the two sides check each other.
//!
//! Available with `cfg(test)` or the `std` feature (re-exported from
//! [`crate::fake`]).
#![allow(clippy::missing_panics_doc)]

use std::boxed::Box;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::vec;
use std::vec::Vec;

use super::proto::{
    self, emit_dirent, init_flags, Attr, EntryOut, FileType, NodeId, Time, ATTR_LEN, ENTRY_OUT_LEN,
};
use crate::fake::{Backend, FakeDevice, FakeHal, FakeMmioRegs};

/// Linux errno values the fake answers with.
mod errno {
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EBADF: i32 = 9;
    pub const EEXIST: i32 = 17;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const ENOSYS: i32 = 38;
    pub const ENOTEMPTY: i32 = 39;
}

/// One scripted violation, applied to the next reply on a request queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuseMisbehave {
    /// Answer with another request's `unique`.
    Unique,
    /// Report only this many bytes written (less than a header).
    Short(u32),
    /// Put this value in `fuse_out_header.len` (the device still reports
    /// the true length).
    HeaderLen(u32),
    /// Turn the reply into an error (`EIO`) but keep its payload.
    ErrorWithPayload,
    /// Put this value in `fuse_out_header.error`, keeping the payload.
    Errno(i32),
    /// Cut this many bytes off the payload (the header stays consistent).
    Truncate(u32),
    /// Overwrite payload byte `at` with `value` (dirent fields, names).
    Corrupt {
        /// Offset in the payload.
        at: u32,
        /// The new byte.
        value: u8,
    },
}

#[derive(Clone, Debug)]
struct Node {
    kind: FileType,
    perm: u32,
    data: Vec<u8>,
    children: BTreeMap<Vec<u8>, u64>,
    parent: u64,
    nlookup: u64,
    nlink: u32,
    mtime: u64,
}

#[derive(Debug)]
struct State {
    tag: Vec<u8>,
    num_request_queues: u32,
    minor: u32,
    max_write: u32,
    nodes: BTreeMap<u64, Node>,
    next_node: u64,
    handles: BTreeMap<u64, (u64, bool)>,
    next_fh: u64,
    clock: u64,
    script: VecDeque<FuseMisbehave>,
    ops: Vec<u32>,
    forgets: Vec<(u64, u64)>,
    bad_forgets: u64,
    destroyed: bool,
    fsyncs: u64,
}

/// The in-memory FUSE server (a cheap shared handle: keep a clone to
/// inspect it while a [`FakeDevice`] owns another).
#[derive(Clone, Debug)]
pub struct FuseBackend {
    state: Arc<Mutex<State>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The root's node id.
const ROOT: u64 = proto::ROOT_ID.0;

impl Default for FuseBackend {
    fn default() -> Self {
        Self::new("host")
    }
}

impl FuseBackend {
    /// An empty root directory shared under `tag`.
    pub fn new(tag: &str) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            ROOT,
            Node {
                kind: FileType::Directory,
                perm: 0o755,
                data: Vec::new(),
                children: BTreeMap::new(),
                parent: ROOT,
                nlookup: 0,
                nlink: 2,
                mtime: 0,
            },
        );
        let state = State {
            tag: tag.as_bytes().to_vec(),
            num_request_queues: 1,
            minor: proto::KERNEL_MINOR_VERSION,
            max_write: 64 * 1024,
            nodes,
            next_node: 2,
            handles: BTreeMap::new(),
            next_fh: 100,
            clock: 1_700_000_000,
            script: VecDeque::new(),
            ops: Vec::new(),
            forgets: Vec::new(),
            bad_forgets: 0,
            destroyed: false,
            fsyncs: 0,
        };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    fn s(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A fake device (virtio-mmio registers) serving this backend, with one
    /// request queue of up to `queue_max` entries.
    pub fn device(&self, hal: &FakeHal, queue_max: u16) -> FakeDevice {
        FakeDevice::new(hal, Box::new(self.clone()), 2, queue_max)
    }

    /// Its registers, for `MmioTransport::new`.
    pub fn regs(dev: &FakeDevice) -> FakeMmioRegs {
        FakeMmioRegs::new(dev)
    }

    /// Sets the minor version the server announces in `FUSE_INIT`.
    pub fn set_minor(&self, minor: u32) {
        self.s().minor = minor;
    }
    /// Sets the server's `max_write`.
    pub fn set_max_write(&self, n: u32) {
        self.s().max_write = n;
    }
    /// Sets `num_request_queues` in the configuration (before the device
    /// is made).
    pub fn set_num_request_queues(&self, n: u32) {
        self.s().num_request_queues = n;
    }
    /// Queues a protocol violation for the next reply.
    pub fn misbehave(&self, m: FuseMisbehave) {
        self.s().script.push_back(m);
    }
    /// Opcodes received so far, in order.
    pub fn ops(&self) -> Vec<u32> {
        self.s().ops.clone()
    }
    /// `(node, nlookup)` of every FORGET received.
    pub fn forgets(&self) -> Vec<(u64, u64)> {
        self.s().forgets.clone()
    }
    /// FORGETs that gave back more than the node had, or named no node.
    pub fn bad_forgets(&self) -> u64 {
        self.s().bad_forgets
    }
    /// Nodes whose lookup count is not zero: `(node, count)`.
    pub fn lookups(&self) -> Vec<(u64, u64)> {
        self.s().nodes.iter().filter(|(_, n)| n.nlookup > 0).map(|(&i, n)| (i, n.nlookup)).collect()
    }
    /// Open handles (files and directories).
    pub fn open_handles(&self) -> usize {
        self.s().handles.len()
    }
    /// Whether `FUSE_DESTROY` arrived.
    pub fn destroyed(&self) -> bool {
        self.s().destroyed
    }
    /// FSYNC/FSYNCDIR requests served.
    pub fn fsyncs(&self) -> u64 {
        self.s().fsyncs
    }
    /// The contents of the file at `path` (`a/b/c` from the root).
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        let s = self.s();
        let id = s.walk(path)?;
        let n = s.nodes.get(&id)?;
        (n.kind == FileType::Regular).then(|| n.data.clone())
    }
    /// The names in the directory at `path` (`""` is the root).
    pub fn list(&self, path: &str) -> Option<Vec<Vec<u8>>> {
        let s = self.s();
        let id = s.walk(path)?;
        Some(s.nodes.get(&id)?.children.keys().cloned().collect())
    }
    /// Creates a file at `path` with `data` (its directory must exist), as
    /// the host would.
    pub fn put_file(&self, path: &str, data: &[u8]) {
        let mut s = self.s();
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent = s.walk(dir).expect("fake put_file: no such directory");
        let id = s.add(parent, name.as_bytes(), FileType::Regular, 0o644);
        s.nodes.get_mut(&id).expect("just added").data = data.to_vec();
    }
    /// Creates a directory at `path`, as the host would.
    pub fn put_dir(&self, path: &str) {
        let mut s = self.s();
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent = s.walk(dir).expect("fake put_dir: no such directory");
        s.add(parent, name.as_bytes(), FileType::Directory, 0o755);
    }
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
/// The NUL-terminated name at `at`, and the offset after its NUL.
fn cname(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = b.get(at..)?;
    let n = rest.iter().position(|&c| c == 0)?;
    Some((&rest[..n], at + n + 1))
}

type Reply = Result<Vec<u8>, i32>;

impl State {
    fn walk(&self, path: &str) -> Option<u64> {
        let mut id = ROOT;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            id = *self.nodes.get(&id)?.children.get(c.as_bytes())?;
        }
        Some(id)
    }

    /// Whether `anc` is `x` or one of its ancestors.
    fn is_ancestor(&self, anc: u64, mut x: u64) -> bool {
        loop {
            if x == anc {
                return true;
            }
            match self.nodes.get(&x) {
                Some(n) if x != ROOT => x = n.parent,
                _ => return false,
            }
        }
    }

    fn add(&mut self, parent: u64, name: &[u8], kind: FileType, perm: u32) -> u64 {
        let id = self.next_node;
        self.next_node += 1;
        self.clock += 1;
        let node = Node {
            kind,
            perm,
            data: Vec::new(),
            children: BTreeMap::new(),
            parent,
            nlookup: 0,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            mtime: self.clock,
        };
        self.nodes.insert(id, node);
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children.insert(name.to_vec(), id);
        }
        id
    }

    fn attr(&self, id: u64) -> Attr {
        let n = &self.nodes[&id];
        let t = Time { sec: n.mtime, nsec: 0 };
        Attr {
            ino: id + 1000,
            size: if n.kind == FileType::Directory { 4096 } else { n.data.len() as u64 },
            blocks: (n.data.len() as u64).div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            mode: n.kind.mode_bits() | n.perm,
            nlink: n.nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn entry(&mut self, id: u64) -> Vec<u8> {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.nlookup += 1;
        }
        let e = EntryOut { nodeid: NodeId(id), generation: 0, attr: self.attr(id) };
        let mut b = [0u8; ENTRY_OUT_LEN];
        e.emit(&mut b);
        b.to_vec()
    }

    fn attr_out(&self, id: u64) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        let mut a = [0u8; ATTR_LEN];
        self.attr(id).emit(&mut a);
        b.extend_from_slice(&a);
        b
    }

    fn node(&self, id: u64) -> Result<&Node, i32> {
        self.nodes.get(&id).ok_or(errno::ENOENT)
    }

    fn dir(&self, id: u64) -> Result<&Node, i32> {
        let n = self.node(id)?;
        if n.kind != FileType::Directory {
            return Err(errno::ENOTDIR);
        }
        Ok(n)
    }

    fn open_out(&mut self, id: u64, dir: bool) -> Vec<u8> {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, (id, dir));
        let mut b = vec![0u8; 16];
        b[..8].copy_from_slice(&fh.to_le_bytes());
        b
    }

    fn handle(&self, fh: u64, id: u64, dir: bool) -> Result<(), i32> {
        match self.handles.get(&fh) {
            Some(&(n, d)) if n == id && d == dir => Ok(()),
            _ => Err(errno::EBADF),
        }
    }

    fn serve(&mut self, op: u32, node: u64, a: &[u8], room: usize) -> Reply {
        match op {
            26 => {
                // INIT: fuse_init_in -> fuse_init_out.
                let flags = le32(a, 12).ok_or(errno::EINVAL)?;
                let mut o = vec![0u8; proto::INIT_OUT_LEN];
                o[0..4].copy_from_slice(&7u32.to_le_bytes());
                o[4..8].copy_from_slice(&self.minor.to_le_bytes());
                let ours = init_flags::BIG_WRITES | init_flags::MAX_PAGES | init_flags::DO_READDIRPLUS;
                o[12..16].copy_from_slice(&(flags & ours).to_le_bytes());
                o[20..24].copy_from_slice(&self.max_write.to_le_bytes());
                o[28..30].copy_from_slice(&32u16.to_le_bytes());
                Ok(o)
            }
            1 => {
                let (name, _) = cname(a, 0).ok_or(errno::EINVAL)?;
                let d = self.dir(node)?;
                let id = if name == b".." { d.parent } else { *d.children.get(name).ok_or(errno::ENOENT)? };
                Ok(self.entry(id))
            }
            3 => {
                self.node(node)?;
                Ok(self.attr_out(node))
            }
            4 => {
                let valid = le32(a, 0).ok_or(errno::EINVAL)?;
                let size = le64(a, 16).ok_or(errno::EINVAL)?;
                let mtime = le64(a, 40).ok_or(errno::EINVAL)?;
                let mode = le32(a, 68).ok_or(errno::EINVAL)?;
                let n = self.nodes.get_mut(&node).ok_or(errno::ENOENT)?;
                if valid & proto::fattr::SIZE != 0 {
                    if n.kind == FileType::Directory {
                        return Err(errno::EISDIR);
                    }
                    n.data.resize(usize::try_from(size).map_err(|_| errno::EINVAL)?, 0);
                }
                if valid & proto::fattr::MODE != 0 {
                    n.perm = mode & 0o7777;
                }
                if valid & proto::fattr::MTIME != 0 {
                    n.mtime = mtime;
                }
                Ok(self.attr_out(node))
            }
            14 | 27 => {
                let dir = op == 27;
                let n = self.node(node)?;
                match (n.kind == FileType::Directory, dir) {
                    (true, false) => return Err(errno::EISDIR),
                    (false, true) => return Err(errno::ENOTDIR),
                    _ => {}
                }
                Ok(self.open_out(node, dir))
            }
            15 | 28 | 44 => {
                let fh = le64(a, 0).ok_or(errno::EINVAL)?;
                let off = le64(a, 8).ok_or(errno::EINVAL)?;
                let size = le32(a, 16).ok_or(errno::EINVAL)? as usize;
                let room = size.min(room);
                self.handle(fh, node, op != 15)?;
                if op == 15 {
                    let d = &self.node(node)?.data;
                    let start = usize::try_from(off).unwrap_or(usize::MAX).min(d.len());
                    let end = start.saturating_add(room).min(d.len());
                    return Ok(d[start..end].to_vec());
                }
                let n = self.dir(node)?;
                let mut list: Vec<(Vec<u8>, u64)> = vec![(b".".to_vec(), node), (b"..".to_vec(), n.parent)];
                list.extend(n.children.iter().map(|(k, &v)| (k.clone(), v)));
                let mut out = Vec::new();
                for (i, (name, id)) in
                    list.into_iter().enumerate().skip(usize::try_from(off).unwrap_or(usize::MAX))
                {
                    let typ = self.nodes[&id].kind.mode_bits() >> 12;
                    let dot = name == b"." || name == b"..";
                    let entry = (op == 44).then(|| EntryOut {
                        nodeid: NodeId(id),
                        generation: 0,
                        attr: self.attr(id),
                    });
                    if !emit_dirent(&mut out, room, entry.as_ref(), id + 1000, i as u64 + 1, typ, &name) {
                        break;
                    }
                    if op == 44 && !dot {
                        self.nodes.get_mut(&id).expect("listed").nlookup += 1;
                    }
                }
                Ok(out)
            }
            16 => {
                let fh = le64(a, 0).ok_or(errno::EINVAL)?;
                let off = usize::try_from(le64(a, 8).ok_or(errno::EINVAL)?).map_err(|_| errno::EINVAL)?;
                let size = le32(a, 16).ok_or(errno::EINVAL)? as usize;
                let data = a.get(40..40 + size).ok_or(errno::EINVAL)?;
                self.handle(fh, node, false)?;
                let n = self.nodes.get_mut(&node).ok_or(errno::ENOENT)?;
                let end = off.checked_add(size).ok_or(errno::EINVAL)?;
                if n.data.len() < end {
                    n.data.resize(end, 0);
                }
                n.data[off..end].copy_from_slice(data);
                self.clock += 1;
                n.mtime = self.clock;
                let mut o = vec![0u8; 8];
                o[..4].copy_from_slice(&(size as u32).to_le_bytes());
                Ok(o)
            }
            35 | 9 => {
                let (fixed, kind) = if op == 35 { (16, FileType::Regular) } else { (8, FileType::Directory) };
                let flags = if op == 35 { le32(a, 0).ok_or(errno::EINVAL)? } else { 0 };
                let mode = le32(a, if op == 35 { 4 } else { 0 }).ok_or(errno::EINVAL)?;
                let (name, _) = cname(a, fixed).ok_or(errno::EINVAL)?;
                if let Some(&existing) = self.dir(node)?.children.get(name) {
                    if op == 9 || flags & proto::open_flags::EXCL != 0 {
                        return Err(errno::EEXIST);
                    }
                    let mut o = self.entry(existing);
                    o.extend(self.open_out(existing, false));
                    return Ok(o);
                }
                let id = self.add(node, name, kind, mode & 0o7777);
                if op == 9 {
                    self.nodes.get_mut(&node).expect("parent").nlink += 1;
                }
                let mut o = self.entry(id);
                if op == 35 {
                    o.extend(self.open_out(id, false));
                }
                Ok(o)
            }
            10 | 11 => {
                let (name, _) = cname(a, 0).ok_or(errno::EINVAL)?;
                let id = *self.dir(node)?.children.get(name).ok_or(errno::ENOENT)?;
                let victim = self.node(id)?;
                match (victim.kind == FileType::Directory, op == 11) {
                    (true, false) => return Err(errno::EISDIR),
                    (false, true) => return Err(errno::ENOTDIR),
                    (true, true) if !victim.children.is_empty() => return Err(errno::ENOTEMPTY),
                    _ => {}
                }
                self.nodes.get_mut(&node).expect("dir").children.remove(name);
                let v = self.nodes.get_mut(&id).expect("victim");
                v.nlink = 0;
                if op == 11 {
                    self.nodes.get_mut(&node).expect("dir").nlink -= 1;
                }
                Ok(Vec::new())
            }
            12 | 45 => {
                let newdir = le64(a, 0).ok_or(errno::EINVAL)?;
                let (flags, at) = if op == 45 { (le32(a, 8).ok_or(errno::EINVAL)?, 16) } else { (0, 8) };
                let (old, next) = cname(a, at).ok_or(errno::EINVAL)?;
                let (new, _) = cname(a, next).ok_or(errno::EINVAL)?;
                let id = *self.dir(node)?.children.get(old).ok_or(errno::ENOENT)?;
                self.dir(newdir)?;
                // The checks and their order of Linux (and osv-vfs's ramfs).
                let src_dir = self.node(id)?.kind == FileType::Directory;
                if src_dir && self.is_ancestor(id, newdir) {
                    return Err(errno::EINVAL);
                }
                if let Some(&target) = self.dir(newdir)?.children.get(new) {
                    if flags & 1 != 0 {
                        return Err(errno::EEXIST); // RENAME_NOREPLACE
                    }
                    if self.is_ancestor(target, node) {
                        return Err(errno::ENOTEMPTY);
                    }
                    if target == id {
                        return Ok(Vec::new());
                    }
                    let dst = self.node(target)?;
                    let dst_dir = dst.kind == FileType::Directory;
                    if src_dir != dst_dir {
                        return Err(if dst_dir { errno::EISDIR } else { errno::ENOTDIR });
                    }
                    if dst_dir && !dst.children.is_empty() {
                        return Err(errno::ENOTEMPTY);
                    }
                    if dst_dir {
                        self.nodes.get_mut(&newdir).expect("dir").nlink -= 1;
                    }
                }
                if src_dir && node != newdir {
                    self.nodes.get_mut(&node).expect("dir").nlink -= 1;
                    self.nodes.get_mut(&newdir).expect("dir").nlink += 1;
                }
                self.nodes.get_mut(&node).expect("dir").children.remove(old);
                self.nodes.get_mut(&newdir).expect("dir").children.insert(new.to_vec(), id);
                self.nodes.get_mut(&id).expect("moved").parent = newdir;
                Ok(Vec::new())
            }
            17 => {
                let mut o = vec![0u8; proto::STATFS_OUT_LEN];
                o[0..8].copy_from_slice(&1000u64.to_le_bytes());
                o[8..16].copy_from_slice(&600u64.to_le_bytes());
                o[16..24].copy_from_slice(&500u64.to_le_bytes());
                o[24..32].copy_from_slice(&(self.nodes.len() as u64).to_le_bytes());
                o[32..40].copy_from_slice(&9999u64.to_le_bytes());
                o[40..44].copy_from_slice(&4096u32.to_le_bytes());
                o[44..48].copy_from_slice(&255u32.to_le_bytes());
                o[48..52].copy_from_slice(&4096u32.to_le_bytes());
                Ok(o)
            }
            18 | 29 => {
                let fh = le64(a, 0).ok_or(errno::EINVAL)?;
                self.handle(fh, node, op == 29)?;
                self.handles.remove(&fh);
                Ok(Vec::new())
            }
            20 | 30 | 25 => {
                let fh = le64(a, 0).ok_or(errno::EINVAL)?;
                self.handle(fh, node, op == 30)?;
                if op != 25 {
                    self.fsyncs += 1;
                }
                Ok(Vec::new())
            }
            38 => {
                self.destroyed = true;
                Ok(Vec::new())
            }
            _ => Err(errno::ENOSYS),
        }
    }

    fn forget(&mut self, req: &[u8]) {
        let (Some(2), Some(node), Some(n)) = (le32(req, 4), le64(req, 16), le64(req, 40)) else {
            self.bad_forgets += 1;
            return;
        };
        self.forgets.push((node, n));
        match self.nodes.get_mut(&node) {
            Some(x) if x.nlookup >= n => x.nlookup -= n,
            _ => self.bad_forgets += 1,
        }
    }
}

impl Backend for FuseBackend {
    fn device_id(&self) -> u32 {
        26
    }
    fn features(&self) -> u64 {
        0
    }
    fn config(&self) -> Vec<u8> {
        let s = self.s();
        let mut c = vec![0u8; 40];
        let n = s.tag.len().min(36);
        c[..n].copy_from_slice(&s.tag[..n]);
        c[36..40].copy_from_slice(&s.num_request_queues.to_le_bytes());
        c
    }
    fn handle(&mut self, queue: u16, req: &[u8], resp: &mut [u8]) -> u32 {
        let mut s = self.s();
        if queue == 0 {
            s.forget(req);
            return 0;
        }
        let (Some(len), Some(op), Some(unique), Some(node)) =
            (le32(req, 0), le32(req, 4), le64(req, 8), le64(req, 16))
        else {
            return 0;
        };
        s.ops.push(op);
        let room = resp.len().saturating_sub(16);
        let r =
            if len as usize != req.len() { Err(errno::EINVAL) } else { s.serve(op, node, &req[40..], room) };
        let (mut error, mut payload) = match r {
            Ok(p) => (0i32, p),
            Err(e) => (-e, Vec::new()),
        };
        if payload.len() > room {
            (error, payload) = (-errno::EIO, Vec::new());
        }
        let mut unique = unique;
        let mut header_len = None;
        let mut short = None;
        match s.script.pop_front() {
            Some(FuseMisbehave::Unique) => unique ^= 0x55,
            Some(FuseMisbehave::Short(n)) => short = Some(n),
            Some(FuseMisbehave::HeaderLen(n)) => header_len = Some(n),
            Some(FuseMisbehave::ErrorWithPayload) => {
                error = -errno::EIO;
                if payload.is_empty() {
                    payload.push(0);
                }
            }
            Some(FuseMisbehave::Errno(e)) => error = e,
            Some(FuseMisbehave::Truncate(k)) => payload.truncate(payload.len().saturating_sub(k as usize)),
            Some(FuseMisbehave::Corrupt { at, value }) => {
                if let Some(b) = payload.get_mut(at as usize) {
                    *b = value;
                }
            }
            None => {}
        }
        let total = (16 + payload.len()).min(resp.len());
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&header_len.unwrap_or(16 + payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&error.to_le_bytes());
        out.extend_from_slice(&unique.to_le_bytes());
        out.extend_from_slice(&payload);
        let n = out.len().min(resp.len());
        resp[..n].copy_from_slice(&out[..n]);
        short.map_or(n as u32, |k| k.min(n as u32))
    }
}

/// A backend that answers `FUSE_INIT` properly and every later request with
/// fixed bytes (the fuzz input), optionally with the request's `unique`
/// patched in so the payload checks are reached.
#[derive(Debug)]
struct RawReplies {
    reply: Vec<u8>,
    patch_unique: bool,
}

impl Backend for RawReplies {
    fn device_id(&self) -> u32 {
        26
    }
    fn features(&self) -> u64 {
        0
    }
    fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; 40];
        c[..4].copy_from_slice(b"fuzz");
        c[36] = 1;
        c
    }
    fn handle(&mut self, queue: u16, req: &[u8], resp: &mut [u8]) -> u32 {
        if queue == 0 {
            return 0;
        }
        let unique = le64(req, 8).unwrap_or(0);
        let mut out = if le32(req, 4) == Some(26) {
            let mut o = vec![0u8; 16 + proto::INIT_OUT_LEN];
            o[0] = 16 + proto::INIT_OUT_LEN as u8;
            o[16] = 7;
            o[20] = 31;
            o[16 + 20..16 + 24].copy_from_slice(&65536u32.to_le_bytes());
            o[8..16].copy_from_slice(&unique.to_le_bytes());
            o
        } else {
            let mut o = self.reply.clone();
            if self.patch_unique && o.len() >= 16 {
                o[8..16].copy_from_slice(&unique.to_le_bytes());
                let len = o.len() as u32;
                o[..4].copy_from_slice(&len.to_le_bytes());
            }
            o
        };
        out.truncate(resp.len());
        resp[..out.len()].copy_from_slice(&out);
        out.len() as u32
    }
}

/// The body of the `virtio_fuse_reply` fuzz target (the unit tests run the
/// seed corpus through it too): `data` is fed to every reply parser
/// directly, then answers every request of a live driver (after a proper
/// `FUSE_INIT`). Every outcome must be a value or a typed error; a
/// FUSE-level error must leave the driver usable. Panics only if an
/// invariant broke.
pub fn fuzz_fuse_reply(data: &[u8]) {
    use super::device::{FsError, VirtIOFs};
    use super::proto::{
        parse_attr_out, parse_create_out, parse_write_out, DirentIter, InitOut, Kstatfs, Opcode, OpenOut,
        OutHeader,
    };
    use crate::transport::mmio::MmioTransport;

    // Part 1: the parsers on their own.
    if let Ok(h) = OutHeader::parse(data) {
        let used = data.len().min(u32::MAX as usize) as u32;
        if let Ok(proto::Status::Ok(n)) = h.check(used, h.unique) {
            assert_eq!(n as usize + 16, data.len());
        }
    }
    let payload = data.get(16..).unwrap_or(data);
    let _ = EntryOut::parse(payload);
    let _ = parse_attr_out(payload, Opcode::Getattr);
    let _ = OpenOut::parse(payload, Opcode::Open);
    let _ = parse_create_out(payload);
    if let Ok(n) = parse_write_out(payload, 100) {
        assert!(n <= 100);
    }
    let _ = Kstatfs::parse(payload);
    if let Ok(i) = InitOut::parse(payload) {
        assert!(i.major == 7 && i.minor >= proto::MIN_MINOR_VERSION);
    }
    for plus in [false, true] {
        let mut count = 0usize;
        for d in DirentIter::new(data, plus) {
            count += 1;
            assert!(count <= data.len() / 8 + 1, "dirent iteration does not advance");
            if let Ok(d) = d {
                assert!(!d.name.is_empty() && d.name.len() <= proto::NAME_MAX);
                assert!(!d.name.iter().any(|&c| c == b'/' || c == 0));
            }
        }
    }

    // Part 2: a live driver whose every reply is `data`.
    let hal = FakeHal::new();
    let patch = data.first().is_some_and(|b| b & 1 == 1);
    let dev = FakeDevice::new(&hal, Box::new(RawReplies { reply: data.to_vec(), patch_unique: patch }), 2, 8);
    let Ok(t) = MmioTransport::new(FakeMmioRegs::new(&dev)) else { return };
    let Ok(mut fs) = VirtIOFs::new(&hal, t) else { return };
    let root = proto::ROOT_ID;
    let fh = proto::FileHandle(1);
    let mut buf = vec![0u8; 4096];
    let ok = |r: Result<(), FsError>| {
        if let Err(FsError::Queue(_) | FsError::Broken) = r {
            panic!("a FUSE-level reply broke the driver: {r:?}");
        }
    };
    ok(fs.lookup(root, b"name").map(drop));
    ok(fs.getattr(root, None).map(drop));
    ok(fs.open(root, 0, true).map(drop));
    ok(fs.read(root, fh, 0, &mut buf[..100]).map(|n| assert!(n <= 100)));
    match fs.readdir(root, fh, 0, &mut buf, true) {
        Ok(n) => {
            assert!(n <= buf.len());
            for d in DirentIter::new(&buf[..n], true) {
                let _ = d;
            }
        }
        Err(e) => ok(Err(e)),
    }
    ok(fs.write(root, fh, 0, b"hello").map(|n| assert!(n <= 5)));
    ok(fs.create(root, b"f", 0, 0o644).map(drop));
    ok(fs.statfs(root).map(drop));
    ok(fs.remove(root, b"f", false));
    ok(fs.forget(NodeId(5), 1));
    assert!(!fs.is_broken());
}
