//! Random operation sequences against a simple model filesystem (a
//! `BTreeMap` of canonical paths to nodes): the VFS over ramfs, with devfs
//! mounted on `/dev` and procfs on `/proc`, must agree on every result and
//! error code, and every vnode must be gone at the end.
//!
//! The model knows the two special filesystems as fixed subtrees: their
//! nodes cannot be created, removed or renamed (`EACCES`), their mount points
//! cannot be removed or renamed (`EBUSY`), nothing moves or links across
//! filesystems (`EXDEV`); `/dev/null` reads empty and swallows writes,
//! `/dev/zero` reads zeros, `/dev/random` reads the fake entropy source's
//! bytes; `/proc` files read their texts from a fixed `ProcSource` and cannot
//! be opened for writing.
#![cfg(feature = "alloc")]

use std::collections::BTreeMap;
use std::sync::Arc;

use osv_vfs::{
    ConsoleSink, CpuInfo, DevFs, EntropySource, Errno, Fd, MemInfo, MountList, OpenFlags, ProcFs, ProcSource,
    RamFs, VType, Vfs, Whence, ZeroClock, MAX_SYMLINKS, NAME_MAX, PATH_MAX,
};
use proptest::prelude::*;

type R<T> = Result<T, Errno>;

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Dir,
    File(u64),
    Symlink(u64),
    /// A devfs character device.
    Dev(Dev),
    /// A procfs text file (its index in [`PROC_FILES`]).
    Proc(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dev {
    Null,
    Zero,
    Console,
    Random,
}

#[derive(Clone, Copy, Debug)]
enum Target {
    File(u64),
    Dir,
    Dev(Dev),
    Proc(usize),
}

/// The byte the fake entropy source fills buffers with.
const ENTROPY: u8 = 0x5a;

/// What the fake kernel reports to procfs.
struct Kernel;

impl ProcSource for Kernel {
    fn meminfo(&self) -> MemInfo {
        MemInfo { total: 64 << 20, free: 32 << 20, available: 16 << 20 }
    }
    fn uptime_ns(&self) -> u64 {
        1_500_000_000
    }
    fn cpuinfo(&self) -> CpuInfo {
        CpuInfo { count: 1, vendor: "V".into(), model_name: "M".into(), khz: 1000 }
    }
}

struct Sink;
impl ConsoleSink for Sink {
    fn write(&self, _bytes: &[u8]) {}
}
struct Entropy;
impl EntropySource for Entropy {
    fn fill(&self, buf: &mut [u8]) -> osv_vfs::Result {
        buf.fill(ENTROPY);
        Ok(())
    }
}

/// procfs's files and the texts they must read as, for [`Kernel`] and this
/// test's mounts (Linux formats: `show_val_kb`, `uptime_proc_show`,
/// `show_cpuinfo`, `show_vfsmnt`).
const PROC_FILES: [(&str, &str); 4] = [
    (
        "/proc/meminfo",
        "MemTotal:          65536 kB\nMemFree:           32768 kB\nMemAvailable:      16384 kB\n",
    ),
    ("/proc/uptime", "1.50 0.00\n"),
    (
        "/proc/cpuinfo",
        "processor\t: 0\nvendor_id\t: V\nmodel name\t: M\ncpu MHz\t\t: 1.000\ncpu cores\t: 1\n\n",
    ),
    ("/proc/self/mounts", "ramfs / ramfs rw 0 0\ndevfs /dev devfs rw 0 0\nproc /proc proc rw 0 0\n"),
];

/// Which filesystem a canonical path is in: 0 ramfs, 1 devfs, 2 procfs.
/// Fixed, since the mount points can be neither renamed nor removed.
fn fs_of(p: &str) -> u8 {
    let under = |m: &str| p == m || p.strip_prefix(m).is_some_and(|r| r.starts_with('/'));
    if under("/dev") {
        1
    } else if under("/proc") {
        2
    } else {
        0
    }
}

fn is_mount_point(p: &str) -> bool {
    p == "/dev" || p == "/proc"
}

#[derive(Clone, Debug)]
struct MFile {
    target: Target,
    pos: u64,
    flags: OpenFlags,
}

enum Last {
    Name(String),
    Dot,
    DotDot,
    Root,
}

struct MParent {
    dir: String,
    last: Last,
    trailing: bool,
}

enum End {
    Node(String),
    Parent(MParent),
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Follow,
    NoFollow,
    Parent,
}

#[derive(Default)]
struct Model {
    tree: BTreeMap<String, Kind>,
    data: BTreeMap<u64, Vec<u8>>,
    links: BTreeMap<u64, String>,
    fds: BTreeMap<u32, usize>,
    descs: Vec<MFile>,
    cwd: String,
    next: u64,
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn parent_of(p: &str) -> String {
    match p.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => p[..i].into(),
    }
}

fn is_ancestor_or_self(a: &str, b: &str) -> bool {
    a == b || a == "/" || b.starts_with(&format!("{a}/"))
}

fn comps(path: &str) -> Vec<String> {
    path.split('/').filter(|c| !c.is_empty()).rev().map(String::from).collect()
}

impl Model {
    fn new() -> Self {
        let mut m = Model { cwd: "/".into(), next: 1, ..Default::default() };
        m.tree.insert("/".into(), Kind::Dir);
        m.tree.insert("/dev".into(), Kind::Dir);
        for (n, d) in [
            ("null", Dev::Null),
            ("zero", Dev::Zero),
            ("console", Dev::Console),
            ("random", Dev::Random),
            ("urandom", Dev::Random),
        ] {
            m.tree.insert(format!("/dev/{n}"), Kind::Dev(d));
        }
        m.tree.insert("/proc".into(), Kind::Dir);
        m.tree.insert("/proc/self".into(), Kind::Dir);
        for (i, (p, _)) in PROC_FILES.iter().enumerate() {
            m.tree.insert(p.to_string(), Kind::Proc(i));
        }
        let id = m.new_id();
        m.links.insert(id, "self/mounts".into());
        m.tree.insert("/proc/mounts".into(), Kind::Symlink(id));
        m
    }

    fn kind(&self, p: &str) -> &Kind {
        &self.tree[p]
    }

    fn walk(&self, start: &str, path: &str, mode: Mode, links: &mut u32) -> R<End> {
        if path.is_empty() {
            return Err(Errno::ENOENT);
        }
        if path.len() >= PATH_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let mut cur = if path.starts_with('/') { "/".to_string() } else { start.to_string() };
        let mut stack = comps(path);
        let mut trailing = path.ends_with('/');
        loop {
            let Some(c) = stack.pop() else {
                return Ok(match mode {
                    Mode::Parent => End::Parent(MParent { dir: cur, last: Last::Root, trailing }),
                    _ => End::Node(cur),
                });
            };
            let is_last = stack.is_empty();
            if *self.kind(&cur) != Kind::Dir {
                return Err(Errno::ENOTDIR);
            }
            if is_last && mode == Mode::Parent {
                let last = match c.as_str() {
                    "." => Last::Dot,
                    ".." => Last::DotDot,
                    _ => {
                        if c.len() > NAME_MAX {
                            return Err(Errno::ENAMETOOLONG);
                        }
                        Last::Name(c)
                    }
                };
                return Ok(End::Parent(MParent { dir: cur, last, trailing }));
            }
            let next = match c.as_str() {
                "." => cur.clone(),
                ".." => parent_of(&cur),
                name => {
                    if name.len() > NAME_MAX {
                        return Err(Errno::ENAMETOOLONG);
                    }
                    let child = join(&cur, name);
                    let Some(k) = self.tree.get(&child) else {
                        return Err(Errno::ENOENT);
                    };
                    if let Kind::Symlink(id) = k {
                        if !is_last || mode == Mode::Follow || trailing {
                            *links += 1;
                            if *links > MAX_SYMLINKS {
                                return Err(Errno::ELOOP);
                            }
                            let t = &self.links[id];
                            if t.starts_with('/') {
                                cur = "/".into();
                            }
                            if is_last && t.ends_with('/') {
                                trailing = true;
                            }
                            stack.extend(comps(t));
                            continue;
                        }
                    }
                    child
                }
            };
            cur = next;
            if is_last {
                if trailing && *self.kind(&cur) != Kind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                return Ok(End::Node(cur));
            }
        }
    }

    fn resolve(&self, path: &str, follow: bool) -> R<String> {
        let mode = if follow { Mode::Follow } else { Mode::NoFollow };
        match self.walk(&self.cwd, path, mode, &mut 0)? {
            End::Node(p) => Ok(p),
            End::Parent(_) => unreachable!(),
        }
    }

    fn parent(&self, start: &str, path: &str, links: &mut u32) -> R<MParent> {
        match self.walk(start, path, Mode::Parent, links)? {
            End::Parent(p) => Ok(p),
            End::Node(_) => unreachable!(),
        }
    }

    fn nlink(&self, k: &Kind, path: &str) -> u64 {
        match k {
            Kind::Dir => 2 + self.children(path).filter(|(_, k)| **k == Kind::Dir).count() as u64,
            Kind::File(id) | Kind::Symlink(id) => self
                .tree
                .values()
                .filter(|v| matches!(v, Kind::File(i) | Kind::Symlink(i) if i == id))
                .count() as u64,
            Kind::Dev(_) | Kind::Proc(_) => 1,
        }
    }

    fn children<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a String, &'a Kind)> + 'a {
        let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
        let plen = prefix.len();
        let p2 = prefix.clone();
        self.tree
            .range(prefix..)
            .take_while(move |(p, _)| p.starts_with(&p2))
            .filter(move |(p, _)| p.as_str() != dir && !p[plen..].contains('/'))
    }

    fn stat(&self, path: &str, follow: bool) -> R<(VType, u64, u64)> {
        let p = self.resolve(path, follow)?;
        let k = self.kind(&p);
        let (t, size) = match k {
            Kind::Dir => (VType::Directory, 0),
            Kind::File(id) => (VType::Regular, self.data[id].len() as u64),
            Kind::Symlink(id) => (VType::Symlink, self.links[id].len() as u64),
            Kind::Dev(_) => (VType::CharDevice, 0),
            Kind::Proc(_) => (VType::Regular, 0),
        };
        Ok((t, size, self.nlink(k, &p)))
    }

    fn new_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn mkdir(&mut self, path: &str) -> R<()> {
        let p = self.parent(&self.cwd.clone(), path, &mut 0)?;
        let Last::Name(n) = p.last else { return Err(Errno::EEXIST) };
        if fs_of(&p.dir) != 0 {
            return Err(Errno::EACCES);
        }
        let c = join(&p.dir, &n);
        if self.tree.contains_key(&c) {
            return Err(Errno::EEXIST);
        }
        self.tree.insert(c, Kind::Dir);
        Ok(())
    }

    fn rmdir(&mut self, path: &str) -> R<()> {
        let p = self.parent(&self.cwd.clone(), path, &mut 0)?;
        let n = match p.last {
            Last::Name(n) => n,
            Last::Dot => return Err(Errno::EINVAL),
            Last::DotDot => return Err(Errno::ENOTEMPTY),
            Last::Root => return Err(Errno::EBUSY),
        };
        let c = join(&p.dir, &n);
        match self.tree.get(&c) {
            None => return Err(Errno::ENOENT),
            Some(Kind::Dir) => {}
            Some(_) => return Err(Errno::ENOTDIR),
        }
        if is_mount_point(&c) {
            return Err(Errno::EBUSY);
        }
        if fs_of(&p.dir) != 0 {
            return Err(Errno::EACCES);
        }
        if self.children(&c).next().is_some() {
            return Err(Errno::ENOTEMPTY);
        }
        self.tree.remove(&c);
        if is_ancestor_or_self(&c, &self.cwd) {
            self.cwd = "/".into();
        }
        Ok(())
    }

    fn unlink(&mut self, path: &str) -> R<()> {
        let p = self.parent(&self.cwd.clone(), path, &mut 0)?;
        let Last::Name(n) = p.last else { return Err(Errno::EISDIR) };
        let c = join(&p.dir, &n);
        let Some(k) = self.tree.get(&c) else { return Err(Errno::ENOENT) };
        let is_dir = *k == Kind::Dir;
        if p.trailing || is_dir {
            return Err(if is_dir { Errno::EISDIR } else { Errno::ENOTDIR });
        }
        if fs_of(&p.dir) != 0 {
            return Err(Errno::EACCES);
        }
        self.tree.remove(&c);
        Ok(())
    }

    fn rename(&mut self, old: &str, new: &str) -> R<bool> {
        let cwd = self.cwd.clone();
        let po = self.parent(&cwd, old, &mut 0)?;
        let pn = self.parent(&cwd, new, &mut 0)?;
        if fs_of(&po.dir) != fs_of(&pn.dir) {
            return Err(Errno::EXDEV);
        }
        let (Last::Name(on), Last::Name(nn)) = (&po.last, &pn.last) else { return Err(Errno::EBUSY) };
        let op = join(&po.dir, on);
        let np = join(&pn.dir, nn);
        let Some(ok) = self.tree.get(&op).cloned() else { return Err(Errno::ENOENT) };
        let odir = ok == Kind::Dir;
        if !odir && (po.trailing || pn.trailing) {
            return Err(Errno::ENOTDIR);
        }
        if is_mount_point(&op) || (is_mount_point(&np) && self.tree.contains_key(&np)) {
            return Err(Errno::EBUSY);
        }
        if fs_of(&po.dir) != 0 {
            return Err(Errno::EACCES);
        }
        let same = po.dir == pn.dir;
        if !same && odir && is_ancestor_or_self(&op, &pn.dir) {
            return Err(Errno::EINVAL);
        }
        let nk = self.tree.get(&np).cloned();
        if let Some(nk) = &nk {
            let ndir = *nk == Kind::Dir;
            if !same && ndir && is_ancestor_or_self(&np, &po.dir) {
                return Err(Errno::ENOTEMPTY);
            }
            let same_node = if odir { op == np } else { *nk == ok };
            if same_node {
                return Ok(false);
            }
            match (odir, ndir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                _ => {}
            }
            if ndir && self.children(&np).next().is_some() {
                return Err(Errno::ENOTEMPTY);
            }
        }
        let reset = is_ancestor_or_self(&op, &self.cwd) || is_ancestor_or_self(&np, &self.cwd);
        self.tree.remove(&np);
        if odir {
            let moved: Vec<(String, Kind)> = self
                .tree
                .iter()
                .filter(|(p, _)| is_ancestor_or_self(&op, p))
                .map(|(p, k)| (p.clone(), k.clone()))
                .collect();
            for (p, k) in moved {
                self.tree.remove(&p);
                self.tree.insert(format!("{np}{}", &p[op.len()..]), k);
            }
        } else {
            self.tree.remove(&op);
            self.tree.insert(np, ok);
        }
        if reset {
            self.cwd = "/".into();
        }
        Ok(reset)
    }

    fn link(&mut self, old: &str, new: &str) -> R<()> {
        let src = self.resolve(old, false)?;
        let pn = self.parent(&self.cwd.clone(), new, &mut 0)?;
        let Last::Name(nn) = &pn.last else { return Err(Errno::EEXIST) };
        let np = join(&pn.dir, nn);
        if self.tree.contains_key(&np) {
            return Err(Errno::EEXIST);
        }
        if pn.trailing {
            return Err(Errno::ENOENT);
        }
        if fs_of(&src) != fs_of(&pn.dir) {
            return Err(Errno::EXDEV);
        }
        let k = self.kind(&src).clone();
        if k == Kind::Dir {
            return Err(Errno::EPERM);
        }
        if fs_of(&pn.dir) != 0 {
            return Err(Errno::EACCES);
        }
        self.tree.insert(np, k);
        Ok(())
    }

    fn symlink(&mut self, target: &str, path: &str) -> R<()> {
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        let pn = self.parent(&self.cwd.clone(), path, &mut 0)?;
        let Last::Name(nn) = &pn.last else { return Err(Errno::EEXIST) };
        let np = join(&pn.dir, nn);
        if self.tree.contains_key(&np) {
            return Err(Errno::EEXIST);
        }
        if pn.trailing {
            return Err(Errno::ENOENT);
        }
        if fs_of(&pn.dir) != 0 {
            return Err(Errno::EACCES);
        }
        let id = self.new_id();
        self.links.insert(id, target.into());
        self.tree.insert(np, Kind::Symlink(id));
        Ok(())
    }

    fn open(&mut self, path: &str, flags: OpenFlags) -> R<u32> {
        let c = |f: OpenFlags| flags.contains(f);
        if flags.bits() & 3 == 3 || c(OpenFlags::CREAT | OpenFlags::DIRECTORY) {
            return Err(Errno::EINVAL);
        }
        let node = if c(OpenFlags::CREAT) {
            let mut links = 0;
            let mut p = self.parent(&self.cwd.clone(), path, &mut links)?;
            loop {
                let Last::Name(n) = &p.last else { return Err(Errno::EISDIR) };
                if p.trailing {
                    return Err(Errno::EISDIR);
                }
                let child = join(&p.dir, n);
                match self.tree.get(&child) {
                    Some(k) => {
                        if c(OpenFlags::EXCL) {
                            return Err(Errno::EEXIST);
                        }
                        let Kind::Symlink(id) = k else { break child };
                        if c(OpenFlags::NOFOLLOW) {
                            break child;
                        }
                        links += 1;
                        if links > MAX_SYMLINKS {
                            return Err(Errno::ELOOP);
                        }
                        let t = self.links[id].clone();
                        p = self.parent(&p.dir.clone(), &t, &mut links)?;
                    }
                    None => {
                        if fs_of(&p.dir) != 0 {
                            return Err(Errno::EACCES);
                        }
                        let id = self.new_id();
                        self.data.insert(id, Vec::new());
                        self.tree.insert(child.clone(), Kind::File(id));
                        break child;
                    }
                }
            }
        } else {
            self.resolve(path, !c(OpenFlags::NOFOLLOW))?
        };
        let target = match self.kind(&node).clone() {
            Kind::Symlink(_) => return Err(Errno::ELOOP),
            Kind::File(id) => {
                if c(OpenFlags::DIRECTORY) {
                    return Err(Errno::ENOTDIR);
                }
                if c(OpenFlags::TRUNC) {
                    self.data.get_mut(&id).unwrap().clear();
                }
                Target::File(id)
            }
            Kind::Dir => {
                if flags.writable() || c(OpenFlags::TRUNC) || c(OpenFlags::CREAT) {
                    return Err(Errno::EISDIR);
                }
                Target::Dir
            }
            Kind::Dev(d) => {
                if c(OpenFlags::DIRECTORY) {
                    return Err(Errno::ENOTDIR);
                }
                Target::Dev(d)
            }
            Kind::Proc(i) => {
                if c(OpenFlags::DIRECTORY) {
                    return Err(Errno::ENOTDIR);
                }
                if flags.writable() || c(OpenFlags::TRUNC) {
                    return Err(Errno::EACCES);
                }
                Target::Proc(i)
            }
        };
        self.descs.push(MFile { target, pos: 0, flags });
        Ok(self.install(self.descs.len() - 1))
    }

    fn install(&mut self, desc: usize) -> u32 {
        let fd = (0..).find(|i| !self.fds.contains_key(i)).unwrap();
        self.fds.insert(fd, desc);
        fd
    }

    fn desc(&self, fd: u32) -> R<usize> {
        self.fds.get(&fd).copied().ok_or(Errno::EBADF)
    }

    fn dup(&mut self, fd: u32) -> R<u32> {
        let d = self.desc(fd)?;
        Ok(self.install(d))
    }

    fn dup2(&mut self, a: u32, b: u32) -> R<u32> {
        let d = self.desc(a)?;
        self.fds.insert(b, d);
        Ok(b)
    }

    fn lseek(&mut self, fd: u32, off: i64, whence: Whence) -> R<u64> {
        let d = self.desc(fd)?;
        let f = &self.descs[d];
        let new = match (whence, f.target) {
            (Whence::Set, _) => off,
            (Whence::Cur, _) => f.pos as i64 + off,
            (_, Target::Dir) => return Err(Errno::EINVAL),
            (_, Target::File(id)) => self.data[&id].len() as i64 + off,
            (_, Target::Dev(_) | Target::Proc(_)) => off,
        };
        let new = u64::try_from(new).map_err(|_| Errno::EINVAL)?;
        self.descs[d].pos = new;
        Ok(new)
    }

    fn fstat(&self, fd: u32) -> R<(VType, u64, u64)> {
        let d = self.desc(fd)?;
        Ok(match self.descs[d].target {
            Target::Dir => (VType::Directory, 0, 0),
            Target::File(id) => {
                (VType::Regular, self.data[&id].len() as u64, self.nlink(&Kind::File(id), ""))
            }
            Target::Dev(_) => (VType::CharDevice, 0, 1),
            Target::Proc(_) => (VType::Regular, 0, 1),
        })
    }

    fn ftruncate(&mut self, fd: u32, len: i64) -> R<()> {
        let len = u64::try_from(len).map_err(|_| Errno::EINVAL)?;
        let d = self.desc(fd)?;
        let f = &self.descs[d];
        match f.target {
            Target::File(id) if f.flags.writable() => {
                self.data.get_mut(&id).unwrap().resize(len as usize, 0);
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn list_dir(&self, path: &str) -> R<Vec<String>> {
        let p = self.resolve(path, true)?;
        if *self.kind(&p) != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let mut names: Vec<String> =
            self.children(&p).map(|(c, _)| c.rsplit('/').next().unwrap().to_string()).collect();
        names.sort();
        let mut out = vec![".".to_string(), "..".to_string()];
        out.extend(names);
        Ok(out)
    }

    fn write_at(&mut self, id: u64, at: Option<u64>, buf: &[u8]) -> u64 {
        let d = self.data.get_mut(&id).unwrap();
        let off = at.unwrap_or(d.len() as u64) as usize;
        if buf.is_empty() {
            return off as u64;
        }
        if d.len() < off + buf.len() {
            d.resize(off + buf.len(), 0);
        }
        d[off..off + buf.len()].copy_from_slice(buf);
        (off + buf.len()) as u64
    }

    fn write(&mut self, fd: u32, buf: &[u8]) -> R<usize> {
        let d = self.desc(fd)?;
        let f = self.descs[d].clone();
        if !f.flags.writable() {
            return Err(Errno::EBADF);
        }
        let id = match f.target {
            Target::File(id) => id,
            // Devices swallow everything; they have no end to append at, so
            // `O_APPEND` writes at 0 (as Linux).
            Target::Dev(_) => {
                let at = if f.flags.contains(OpenFlags::APPEND) { 0 } else { f.pos };
                if !buf.is_empty() {
                    self.descs[d].pos = at + buf.len() as u64;
                }
                return Ok(buf.len());
            }
            _ => return Err(Errno::EISDIR),
        };
        let at = if f.flags.contains(OpenFlags::APPEND) { None } else { Some(f.pos) };
        let end = self.write_at(id, at, buf);
        if !buf.is_empty() {
            self.descs[d].pos = end;
        }
        Ok(buf.len())
    }

    fn pwrite(&mut self, fd: u32, buf: &[u8], off: i64) -> R<usize> {
        let off = u64::try_from(off).map_err(|_| Errno::EINVAL)?;
        let f = self.descs[self.desc(fd)?].clone();
        if !f.flags.writable() {
            return Err(Errno::EBADF);
        }
        let id = match f.target {
            Target::File(id) => id,
            Target::Dev(_) => return Ok(buf.len()),
            _ => return Err(Errno::EISDIR),
        };
        let at = if f.flags.contains(OpenFlags::APPEND) { None } else { Some(off) };
        self.write_at(id, at, buf);
        Ok(buf.len())
    }

    fn read(&mut self, fd: u32, len: usize) -> R<Vec<u8>> {
        let d = self.desc(fd)?;
        let f = self.descs[d].clone();
        if !f.flags.readable() {
            return Err(Errno::EBADF);
        }
        let data = match f.target {
            Target::File(id) => &self.data[&id][..],
            Target::Dir => return Err(Errno::EISDIR),
            Target::Dev(dev) => {
                let out = match dev {
                    Dev::Null | Dev::Console => Vec::new(),
                    Dev::Zero => vec![0; len],
                    Dev::Random => vec![ENTROPY; len],
                };
                self.descs[d].pos += out.len() as u64;
                return Ok(out);
            }
            Target::Proc(i) => PROC_FILES[i].1.as_bytes(),
        };
        let start = (f.pos as usize).min(data.len());
        let end = (start + len).min(data.len());
        let out = data[start..end].to_vec();
        self.descs[d].pos += out.len() as u64;
        Ok(out)
    }

    fn truncate(&mut self, path: &str, len: i64) -> R<()> {
        let len = u64::try_from(len).map_err(|_| Errno::EINVAL)?;
        let p = self.resolve(path, true)?;
        match self.kind(&p).clone() {
            Kind::File(id) => {
                self.data.get_mut(&id).unwrap().resize(len as usize, 0);
                Ok(())
            }
            Kind::Dir => Err(Errno::EISDIR),
            Kind::Symlink(_) | Kind::Dev(_) => Err(Errno::EINVAL),
            Kind::Proc(_) => Err(Errno::EACCES),
        }
    }

    fn chdir(&mut self, path: &str) -> R<()> {
        let p = self.resolve(path, true)?;
        if *self.kind(&p) != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        self.cwd = p;
        Ok(())
    }

    /// The ramfs vnodes: its directories (including the two covered by the
    /// devfs and procfs mounts) and its files and links.
    fn live_nodes(&self) -> usize {
        let ramfs = || self.tree.iter().filter(|(p, _)| fs_of(p) == 0).map(|(_, k)| k);
        let dirs = ramfs().filter(|k| **k == Kind::Dir).count() + 2;
        let mut ids: Vec<u64> = ramfs()
            .filter_map(|k| match k {
                Kind::File(i) | Kind::Symlink(i) => Some(*i),
                _ => None,
            })
            .collect();
        ids.sort();
        ids.dedup();
        dirs + ids.len()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Mkdir(String),
    Open(String, u32),
    Write(u32, Vec<u8>),
    Read(u32, usize),
    Pwrite(u32, Vec<u8>, i64),
    Truncate(String, i64),
    Unlink(String),
    Rename(String, String),
    Rmdir(String),
    Symlink(String, String),
    Link(String, String),
    Stat(String),
    Lstat(String),
    Chdir(String),
    Getcwd,
    Close(u32),
    Dup(u32),
    Dup2(u32, u32),
    Lseek(u32, i64, u8),
    Fstat(u32),
    Ftruncate(u32, i64),
    ListDir(String),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        14 => prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from),
        1 => prop::sample::select(vec!["dev", "proc", "self", "null", "zero", "random", "mounts", "uptime"])
            .prop_map(String::from),
        1 => Just(".".to_string()),
        1 => Just("..".to_string()),
        1 => Just(String::new()),
        1 => Just("y".repeat(NAME_MAX)),
        1 => Just("z".repeat(NAME_MAX + 1)),
    ]
}

/// Paths into devfs and procfs (and just beside them).
const SPECIAL: [&str; 18] = [
    "/dev",
    "/dev/null",
    "/dev/zero",
    "/dev/random",
    "/dev/urandom",
    "/dev/console",
    "/dev/x",
    "/dev/null/",
    "/dev/..",
    "/proc",
    "/proc/self",
    "/proc/self/mounts",
    "/proc/mounts",
    "/proc/uptime",
    "/proc/meminfo",
    "/proc/cpuinfo",
    "/proc/x",
    "/proc/self/..",
];

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => ram_path(),
        1 => prop::sample::select(SPECIAL.to_vec()).prop_map(String::from),
    ]
}

fn ram_path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(name(), 1..3), prop::bool::weighted(0.15)).prop_map(
        |(abs, cs, trailing)| {
            let mut s = cs.join("/");
            if abs {
                s.insert(0, '/');
            }
            if trailing {
                s.push('/');
            }
            s
        },
    )
}

fn flags() -> impl Strategy<Value = u32> {
    let bits = [0o100u32, 0o200, 0o1000, 0o2000, 0o200000, 0o400000];
    (0u32..3, prop::collection::vec(prop::bool::weighted(0.3), 6)).prop_map(move |(acc, on)| {
        let mut f = acc;
        for (b, on) in bits.iter().zip(on) {
            if on {
                f |= b;
            }
        }
        f
    })
}

fn op() -> impl Strategy<Value = Op> {
    let fd = 0u32..5;
    let data = prop::collection::vec(any::<u8>(), 0..24);
    prop_oneof![
        3 => path().prop_map(Op::Mkdir),
        4 => (path(), flags()).prop_map(|(p, f)| Op::Open(p, f)),
        3 => (fd.clone(), data.clone()).prop_map(|(f, d)| Op::Write(f, d)),
        2 => (fd.clone(), 0usize..40).prop_map(|(f, n)| Op::Read(f, n)),
        2 => (fd.clone(), data, -2i64..9000).prop_map(|(f, d, o)| Op::Pwrite(f, d, o)),
        1 => (path(), -1i64..9000).prop_map(|(p, n)| Op::Truncate(p, n)),
        2 => path().prop_map(Op::Unlink),
        2 => (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        2 => path().prop_map(Op::Rmdir),
        2 => (prop_oneof![path(), Just(String::new())], path()).prop_map(|(t, p)| Op::Symlink(t, p)),
        1 => (path(), path()).prop_map(|(a, b)| Op::Link(a, b)),
        2 => path().prop_map(Op::Stat),
        1 => path().prop_map(Op::Lstat),
        1 => path().prop_map(Op::Chdir),
        1 => Just(Op::Getcwd),
        2 => fd.clone().prop_map(Op::Close),
        1 => fd.clone().prop_map(Op::Dup),
        1 => (fd.clone(), fd.clone()).prop_map(|(a, b)| Op::Dup2(a, b)),
        1 => (fd.clone(), -5i64..5000, 0u8..3).prop_map(|(f, o, w)| Op::Lseek(f, o, w)),
        1 => fd.clone().prop_map(Op::Fstat),
        1 => (fd.clone(), -1i64..5000).prop_map(|(f, n)| Op::Ftruncate(f, n)),
        1 => path().prop_map(Op::ListDir),
    ]
}

fn stat_of(r: R<osv_vfs::Stat>) -> R<(VType, u64, u64)> {
    r.map(|s| {
        let size = if s.kind == VType::Directory { 0 } else { s.size };
        (s.kind, size, s.nlink)
    })
}

fn run(ops: &[Op]) {
    let fs = RamFs::new(Arc::new(ZeroClock));
    let live = fs.live_counter();
    let vfs = Arc::new(Vfs::new(fs).unwrap());
    vfs.mkdir("/dev", 0o755).unwrap();
    vfs.mkdir("/proc", 0o555).unwrap();
    vfs.mount("/dev", DevFs::new(Arc::new(Sink), Arc::new(Entropy))).unwrap();
    let mounts: Arc<dyn MountList> = Arc::new(Arc::downgrade(&vfs));
    vfs.mount("/proc", ProcFs::new(Arc::new(Kernel), mounts)).unwrap();
    let mut m = Model::new();
    for (i, op) in ops.iter().enumerate() {
        let ctx = format!("step {i}: {op:?}");
        match op {
            Op::Mkdir(p) => assert_eq!(vfs.mkdir(p, 0o755), m.mkdir(p), "{ctx}"),
            Op::Open(p, f) => {
                let f = OpenFlags::from_bits(*f);
                assert_eq!(vfs.open(p, f, 0o644).map(|fd| fd.raw()), m.open(p, f), "{ctx}");
            }
            Op::Write(fd, d) => assert_eq!(vfs.write(Fd::new(*fd), d), m.write(*fd, d), "{ctx}"),
            Op::Read(fd, n) => {
                let mut buf = vec![0u8; *n];
                let got = vfs.read(Fd::new(*fd), &mut buf).map(|k| buf[..k].to_vec());
                assert_eq!(got, m.read(*fd, *n), "{ctx}");
            }
            Op::Pwrite(fd, d, o) => {
                assert_eq!(vfs.pwrite(Fd::new(*fd), d, *o), m.pwrite(*fd, d, *o), "{ctx}")
            }
            Op::Truncate(p, n) => assert_eq!(vfs.truncate(p, *n), m.truncate(p, *n), "{ctx}"),
            Op::Unlink(p) => assert_eq!(vfs.unlink(p), m.unlink(p), "{ctx}"),
            Op::Rename(a, b) => {
                let want = m.rename(a, b);
                assert_eq!(vfs.rename(a, b), want.map(drop), "{ctx}");
                if want == Ok(true) {
                    vfs.chdir("/").unwrap();
                }
            }
            Op::Rmdir(p) => {
                let cwd = m.cwd.clone();
                assert_eq!(vfs.rmdir(p), m.rmdir(p), "{ctx}");
                if m.cwd != cwd {
                    vfs.chdir("/").unwrap();
                }
            }
            Op::Symlink(t, p) => assert_eq!(vfs.symlink(t, p), m.symlink(t, p), "{ctx}"),
            Op::Link(a, b) => assert_eq!(vfs.link(a, b), m.link(a, b), "{ctx}"),
            Op::Stat(p) => assert_eq!(stat_of(vfs.stat(p)), m.stat(p, true), "{ctx}"),
            Op::Lstat(p) => assert_eq!(stat_of(vfs.lstat(p)), m.stat(p, false), "{ctx}"),
            Op::Chdir(p) => assert_eq!(vfs.chdir(p), m.chdir(p), "{ctx}"),
            Op::Getcwd => assert_eq!(vfs.getcwd(), Ok(m.cwd.clone()), "{ctx}"),
            Op::Dup(fd) => assert_eq!(vfs.dup(Fd::new(*fd)).map(Fd::raw), m.dup(*fd), "{ctx}"),
            Op::Dup2(a, b) => {
                assert_eq!(vfs.dup2(Fd::new(*a), Fd::new(*b)).map(Fd::raw), m.dup2(*a, *b), "{ctx}")
            }
            Op::Lseek(fd, off, w) => {
                let w = Whence::from_raw(i32::from(*w)).unwrap();
                assert_eq!(vfs.lseek(Fd::new(*fd), *off, w), m.lseek(*fd, *off, w), "{ctx}")
            }
            Op::Fstat(fd) => {
                let got = stat_of(vfs.fstat(Fd::new(*fd))).map(|s| {
                    if s.0 == VType::Directory {
                        (s.0, 0, 0)
                    } else {
                        s
                    }
                });
                assert_eq!(got, m.fstat(*fd), "{ctx}")
            }
            Op::Ftruncate(fd, n) => {
                assert_eq!(vfs.ftruncate(Fd::new(*fd), *n), m.ftruncate(*fd, *n), "{ctx}")
            }
            Op::ListDir(p) => {
                let got = vfs.open(p, OpenFlags::RDONLY | OpenFlags::DIRECTORY, 0).map(|fd| {
                    let names: Vec<String> =
                        vfs.getdents(fd, 10_000).unwrap().into_iter().map(|d| d.name).collect();
                    vfs.close(fd).unwrap();
                    names
                });
                assert_eq!(got, m.list_dir(p), "{ctx}")
            }
            Op::Close(fd) => {
                assert_eq!(vfs.close(Fd::new(*fd)), m.fds.remove(fd).map(drop).ok_or(Errno::EBADF), "{ctx}")
            }
        }
    }
    if std::env::var("VFS_MODEL_STATS").is_ok() {
        eprintln!("STATS nodes={}", m.live_nodes());
    }
    // Every file's contents agree.
    for (p, k) in &m.tree {
        if let Kind::File(id) = k {
            let fd = vfs.open(p, OpenFlags::RDONLY, 0).unwrap();
            let mut buf = vec![0u8; m.data[id].len() + 1];
            let n = vfs.read(fd, &mut buf).unwrap();
            assert_eq!(&buf[..n], &m.data[id][..], "contents of {p}");
            vfs.close(fd).unwrap();
        }
    }
    for fd in m.fds.keys() {
        vfs.close(Fd::new(*fd)).unwrap();
    }
    vfs.chdir("/").unwrap();
    vfs.drop_caches();
    assert_eq!(live.get(), m.live_nodes(), "live vnodes after closing everything");
    // The special files still read as the model says.
    for (p, text) in PROC_FILES {
        let fd = vfs.open(p, OpenFlags::RDONLY, 0).unwrap();
        let mut buf = vec![0u8; 512];
        let n = vfs.read(fd, &mut buf).unwrap();
        assert_eq!(&buf[..n], text.as_bytes(), "{p}");
        vfs.close(fd).unwrap();
    }
    drop(vfs);
    assert_eq!(live.get(), 0, "vnodes leaked after dropping the VFS");
}

proptest! {
    // 512 cases unless `PROPTEST_CASES` asks for another number.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]
    #[test]
    fn vfs_agrees_with_model(ops in prop::collection::vec(op(), 1..100)) {
        run(&ops);
    }
}

#[test]
fn model_smoke() {
    run(&[
        Op::Mkdir("/a".into()),
        Op::Symlink("a/..".into(), "/s".into()),
        Op::Open("/s/a/../b".into(), 0o102),
        Op::Write(0, b"hi".to_vec()),
        Op::Link("/b".into(), "/a/c".into()),
        Op::Stat("/a/c".into()),
        Op::Chdir("/a".into()),
        Op::Rename("/a".into(), "/d".into()),
        Op::Getcwd,
    ]);
}
