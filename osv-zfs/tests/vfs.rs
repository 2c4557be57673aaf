//! The ZPL through osv-vfs: every ZPL dataset of every test pool
//! (snapshots and clones too; encrypted ones must refuse to mount) is
//! mounted read-only at `/mnt` of a `Vfs` and walked with the descriptor
//! API only (`open`, `getdents`, `fstat`/`lstat`, `read` in odd-sized
//! chunks, `pread` at pseudo-random offsets, `readlink`). The manifest
//! built from that walk must equal the one built from OpenZFS's `zdb`
//! (`tests/common/zdb_manifest.rs`: types, sizes, and SHA-256 where
//! `zdb -r` copied the file), and each object's attributes must equal
//! zdb's: inode = object number, mode, link count, mtime, uid/gid.
//!
//! Also per dataset: every mutating call fails with `EROFS` and changes
//! nothing (the walk runs after them); `statfs` answers ZFS's magic and
//! zdb's object count; an open file keeps the mount busy; after closing
//! everything, dropping the dentry cache and unmounting, no vnode of the
//! mount is alive; hard links (same object, two names) give one inode.
#![cfg(all(feature = "std", feature = "vfs"))]

mod common;
#[path = "common/zdb_manifest.rs"]
mod zdb_manifest;

use osv_vfs::{Errno, OpenFlags, RamFs, Stat, VType, Vfs, ZeroClock};
use osv_zfs::fs::ManifestLine;
use osv_zfs::pool::Pool;
use osv_zfs::vfs::{ZfsPool, ZFS_SUPER_MAGIC};
use osv_zfs::{Error, FileDevice};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use zdb_manifest::{Line, ZdbDataset, ZdbTree};

/// Read sizes cycled through while reading a file sequentially.
const CHUNKS: [usize; 6] = [4093, 1, 65_537, 8191, 131_075, 512];
/// `pread` probes per file.
const PREADS: usize = 8;

use common::Rng;

/// What the walk saw of one path.
struct Seen {
    line: Line,
    /// `None` for an encrypted dataset's single line.
    stat: Option<Stat>,
}

struct Walker<'a> {
    vfs: &'a Vfs,
    dataset: &'a str,
    rng: Rng,
    seen: BTreeMap<String, Seen>,
    errors: Vec<String>,
    /// Bytes read and read calls made.
    bytes: u64,
    calls: u64,
}

fn mnt(rel: &str) -> String {
    if rel == "/" {
        "/mnt".into()
    } else {
        format!("/mnt{rel}")
    }
}

fn child(rel: &str, name: &str) -> String {
    if rel == "/" {
        format!("/{name}")
    } else {
        format!("{rel}/{name}")
    }
}

impl Walker<'_> {
    fn err(&mut self, rel: &str, what: String) {
        self.errors.push(format!("{}: {rel}: {what}", self.dataset));
    }

    fn push(&mut self, rel: &str, kind: &str, size: Option<u64>, sha: Option<String>, stat: Stat) {
        let line = Line {
            dataset: self.dataset.to_string(),
            path: rel.to_string(),
            kind: kind.to_string(),
            size: size.map_or("-".into(), |s| s.to_string()),
            sha: Some(sha.unwrap_or_else(|| "-".into())),
        };
        self.seen.insert(rel.to_string(), Seen { line, stat: Some(stat) });
    }

    /// Walks directory `rel` (whose parent has inode `parent`).
    fn dir(&mut self, rel: &str, parent: u64, depth: usize) {
        assert!(depth < 64, "{rel}: too deep");
        let path = mnt(rel);
        let fd = match self.vfs.open(&path, OpenFlags::RDONLY | OpenFlags::DIRECTORY, 0) {
            Ok(fd) => fd,
            Err(e) => return self.err(rel, format!("open dir: {e}")),
        };
        let st = self.vfs.fstat(fd).unwrap();
        assert_eq!(st.kind, VType::Directory);
        let mut ents = Vec::new();
        loop {
            let batch = self.vfs.getdents(fd, 7).unwrap();
            if batch.is_empty() {
                break;
            }
            ents.extend(batch);
        }
        self.vfs.close(fd).unwrap();
        // `.` and `..` first, as osv-vfs expects.
        if ents.len() < 2 || ents[0].name != "." || ents[1].name != ".." {
            return self.err(rel, "no . and .. first".into());
        }
        if ents[0].ino != st.ino || ents[1].ino != parent {
            self.err(
                rel,
                format!(". {} / .. {} vs ino {} parent {parent}", ents[0].ino, ents[1].ino, st.ino),
            );
        }
        self.push(rel, "dir", None, None, st);
        for d in &ents[2..] {
            let crel = child(rel, &d.name);
            let cpath = mnt(&crel);
            let lst = match self.vfs.lstat(&cpath) {
                Ok(s) => s,
                Err(e) => {
                    self.err(&crel, format!("lstat: {e}"));
                    continue;
                }
            };
            if lst.ino != d.ino || lst.kind != d.kind {
                self.err(
                    &crel,
                    format!("dirent ({}, {:?}) vs lstat ({}, {:?})", d.ino, d.kind, lst.ino, lst.kind),
                );
            }
            match lst.kind {
                VType::Directory => self.dir(&crel, st.ino, depth + 1),
                VType::Regular => self.file(&crel, lst),
                VType::Symlink => match self.vfs.readlink(&cpath) {
                    Ok(t) => {
                        if lst.size != t.len() as u64 {
                            self.err(&crel, format!("lstat size {} vs target {t:?}", lst.size));
                        }
                        let sha = zdb_manifest::hex_sha256(t.as_bytes());
                        self.push(&crel, "symlink", Some(t.len() as u64), Some(sha), lst);
                    }
                    Err(e) => self.err(&crel, format!("readlink: {e}")),
                },
                _ => self.push(&crel, "other", None, None, lst),
            }
        }
    }

    /// Reads file `rel` in odd-sized chunks, then probes it with `pread`.
    fn file(&mut self, rel: &str, lst: Stat) {
        let path = mnt(rel);
        let fd = match self.vfs.open(&path, OpenFlags::RDONLY, 0) {
            Ok(fd) => fd,
            Err(e) => return self.err(rel, format!("open: {e}")),
        };
        let st = self.vfs.fstat(fd).unwrap();
        assert_eq!((st.ino, st.size), (lst.ino, lst.size), "{rel}: fstat vs lstat");
        let mut data = Vec::new();
        let mut buf = vec![0u8; 1 << 18];
        let mut k = 0;
        loop {
            let want = CHUNKS[k % CHUNKS.len()];
            k += 1;
            self.calls += 1;
            match self.vfs.read(fd, &mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) => {
                    self.vfs.close(fd).unwrap();
                    return self.err(rel, format!("read at {}: {e}", data.len()));
                }
            }
        }
        self.bytes += data.len() as u64;
        if data.len() as u64 != st.size {
            self.err(rel, format!("read {} bytes, size {}", data.len(), st.size));
        }
        // pread: random offsets and lengths, checked against the
        // sequential read; past the end reads nothing.
        for _ in 0..PREADS {
            let off = if data.is_empty() { 0 } else { self.rng.next() as usize % data.len() };
            let len = 1 + self.rng.next() as usize % 70_000;
            let n = self.vfs.pread(fd, &mut buf[..len], off as i64).unwrap();
            let end = (off + len).min(data.len());
            if buf[..n] != data[off..end] {
                self.err(rel, format!("pread({off}, {len}) differs"));
            }
        }
        assert_eq!(self.vfs.pread(fd, &mut buf[..10], st.size as i64 + 5).unwrap(), 0);
        self.vfs.close(fd).unwrap();
        let sha = zdb_manifest::hex_sha256(&data);
        self.push(rel, "file", Some(st.size), Some(sha), st);
    }
}

/// Every mutating call on the mount fails with `EROFS` (or the error the
/// VFS gives before asking the filesystem).
fn check_read_only(vfs: &Vfs, seen_file: Option<&str>, seen_dir: Option<&str>) -> Vec<String> {
    let mut errs = Vec::new();
    let mut expect = |what: &str, r: osv_vfs::Result| {
        if r != Err(Errno::EROFS) {
            errs.push(format!("{what}: {r:?}, want EROFS"));
        }
    };
    let create = OpenFlags::CREAT | OpenFlags::WRONLY;
    expect("creat", vfs.open("/mnt/osv-new-file", create, 0o644).map(drop));
    expect("mkdir", vfs.mkdir("/mnt/osv-new-dir", 0o755));
    expect("symlink", vfs.symlink("target", "/mnt/osv-new-link"));
    if let Some(f) = seen_file {
        let f = mnt(f);
        expect("open O_WRONLY", vfs.open(&f, OpenFlags::WRONLY, 0).map(drop));
        expect("open O_RDWR", vfs.open(&f, OpenFlags::RDWR, 0).map(drop));
        expect("open O_TRUNC", vfs.open(&f, OpenFlags::RDONLY | OpenFlags::TRUNC, 0).map(drop));
        expect("open O_CREAT existing", vfs.open(&f, create, 0o644).map(drop));
        expect("truncate", vfs.truncate(&f, 0));
        expect("unlink", vfs.unlink(&f));
        expect("rename", vfs.rename(&f, "/mnt/osv-renamed"));
        expect("link", vfs.link(&f, "/mnt/osv-new-hardlink"));
    }
    if let Some(d) = seen_dir {
        expect("rmdir", vfs.rmdir(&mnt(d)));
    }
    errs
}

/// Mounts, checks and walks one dataset; returns our lines and stats.
fn walk_dataset(
    zpool: &ZfsPool<FileDevice>,
    d: &ZdbDataset,
    zdb: &ZdbTree,
    errors: &mut Vec<String>,
) -> (BTreeMap<String, Seen>, (u64, u64)) {
    let fs = match zpool.mount(&d.name) {
        Ok(fs) => fs,
        Err(Error::Encrypted) => {
            let line = Line {
                dataset: d.name.clone(),
                path: "-".into(),
                kind: "encrypted".into(),
                size: "-".into(),
                sha: Some("-".into()),
            };
            return (BTreeMap::from([("-".to_string(), Seen { line, stat: None })]), (0, 0));
        }
        Err(e) => {
            errors.push(format!("{}: mount: {e}", d.name));
            return (BTreeMap::new(), (0, 0));
        }
    };
    let vfs = Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap();
    vfs.mkdir("/mnt", 0o755).unwrap();
    vfs.mount("/mnt", fs.clone()).unwrap();
    let sfs = vfs.statfs("/mnt").unwrap();
    if sfs.fs_type != ZFS_SUPER_MAGIC || sfs.files != d.objects || sfs.blocks_free != 0 {
        errors.push(format!("{}: statfs {sfs:?}, zdb objects {}", d.name, d.objects));
    }
    // Writes first: the walk afterwards proves nothing changed.
    let file = zdb.lines.iter().find(|l| l.kind == "file").map(|l| l.path.as_str());
    let dir = zdb.lines.iter().find(|l| l.kind == "dir" && l.path != "/").map(|l| l.path.as_str());
    for e in check_read_only(&vfs, file, dir) {
        errors.push(format!("{}: {e}", d.name));
    }
    let root_ino = vfs.stat("/mnt").unwrap().ino;
    let mut w = Walker {
        vfs: &vfs,
        dataset: &d.name,
        rng: Rng(0x9e37_79b9_7f4a_7c15 ^ d.objects),
        seen: BTreeMap::new(),
        errors: Vec::new(),
        bytes: 0,
        calls: 0,
    };
    // The ZPL root is its own parent.
    w.dir("/", root_ino, 0);
    let (seen, io) = (std::mem::take(&mut w.seen), (w.bytes, w.calls));
    errors.append(&mut w.errors);
    // Busy while a file is open; no vnode alive once all is closed.
    if let Some(f) = file {
        let fd = vfs.open(&mnt(f), OpenFlags::RDONLY, 0).unwrap();
        assert_eq!(vfs.umount("/mnt"), Err(Errno::EBUSY), "{}: umount with an open file", d.name);
        assert!(fs.live_vnodes() >= 1, "{}: open file without a live vnode", d.name);
        vfs.close(fd).unwrap();
    }
    vfs.drop_caches();
    vfs.umount("/mnt").unwrap();
    if fs.live_vnodes() != 0 {
        errors.push(format!("{}: {} vnodes alive after umount", d.name, fs.live_vnodes()));
    }
    (seen, io)
}

#[test]
fn every_dataset_through_the_vfs_matches_zdb() {
    let Some(dirs) = zdb_manifest::pool_dirs() else { return };
    let Some(zdb) = common::zdb() else { return };
    let datasets = zdb_manifest::zpl_datasets(&zdb, &dirs);
    assert!(datasets.len() >= 20, "only {} ZPL datasets", datasets.len());
    let trees = zdb_manifest::parallel(datasets.clone(), |d| {
        zdb_manifest::zdb_dataset(&zdb, &d.dir, &d.pool, &d.name)
    });
    let mut errors = Vec::new();
    let mut trees: Vec<(ZdbDataset, ZdbTree)> = datasets
        .into_iter()
        .zip(trees)
        .filter_map(|(d, t)| match t {
            Ok(t) => Some((d, t)),
            Err(e) => {
                errors.push(format!("{}: zdb: {e}", d.name));
                None
            }
        })
        .collect();
    errors.extend(zdb_manifest::fill_hashes(&zdb, &mut trees, zdb_manifest::copy_cap()));
    let mut pools: BTreeMap<String, ZfsPool<FileDevice>> = BTreeMap::new();
    let mut manifests: BTreeMap<String, BTreeMap<(String, String), ManifestLine>> = BTreeMap::new();
    let mut pool_checked = 0usize;
    let (mut hashed, mut files, mut objects, mut hardlinked) = (0, 0, 0, 0);
    let (mut bytes, mut calls) = (0u64, 0u64);
    for (d, zt) in &trees {
        let zpool = pools.entry(d.pool.clone()).or_insert_with(|| {
            let devs =
                zdb_manifest::vdev_files(&d.dir).iter().map(|f| FileDevice::open(f).unwrap()).collect();
            ZfsPool::new(Pool::open(devs).unwrap())
        });
        let (seen, io) = walk_dataset(zpool, d, zt, &mut errors);
        // Every file's content through the VFS (odd chunks) against the
        // pool-level reader's hash (`Pool::manifest`, which
        // tests/manifest.rs holds to zdb -r): all files, not only the ones
        // zdb copied.
        let pool_lines = manifests.entry(d.pool.clone()).or_insert_with(|| {
            zpool
                .with_pool(|p| p.manifest().unwrap())
                .into_iter()
                .map(|l| ((l.dataset.clone(), l.path.clone()), l))
                .collect()
        });
        for (path, o) in seen.iter().filter(|(_, o)| o.line.kind == "file") {
            let theirs = pool_lines.get(&(d.name.clone(), path.clone())).and_then(|l| l.sha256.clone());
            if theirs != o.line.sha {
                errors
                    .push(format!("{}: {path}: vfs sha {:?}, Pool::manifest {theirs:?}", d.name, o.line.sha));
            }
            pool_checked += 1;
        }
        bytes += io.0;
        calls += io.1;
        let mut mismatch = Vec::new();
        let ours: BTreeSet<&str> = seen.keys().map(String::as_str).collect();
        let theirs: BTreeSet<&str> = zt.lines.iter().map(|l| l.path.as_str()).collect();
        for p in ours.symmetric_difference(&theirs) {
            mismatch.push(format!("{} only: {p}", if ours.contains(p) { "ours" } else { "zdb" }));
        }
        let mut by_ino: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        for t in &zt.lines {
            let Some(o) = seen.get(&t.path) else { continue };
            let same =
                o.line.kind == t.kind && o.line.size == t.size && (t.sha.is_none() || t.sha == o.line.sha);
            if !same {
                mismatch.push(format!("ours {}\n      zdb  {t}", o.line));
            }
            if t.kind == "file" {
                files += 1;
                hashed += usize::from(t.sha.is_some());
            }
            // Attributes against zdb's object dump.
            if let Some((obj, zo)) = zt.objects.get(&t.path) {
                objects += 1;
                let st = o.stat.as_ref().expect("a path of a mounted dataset has a stat");
                let mtime = zdb_manifest::ctime_utc(st.mtime.sec);
                let want = (*obj, zo.mode, zo.links, zo.mtime.as_deref());
                let got = (st.ino, Some(u64::from(st.mode())), Some(st.nlink), Some(mtime.as_str()));
                if want != got {
                    mismatch
                        .push(format!("{}: stat (ino, mode, nlink, mtime) {got:?}, zdb {want:?}", t.path));
                }
                if t.kind != "dir" {
                    by_ino.entry(st.ino).or_default().push(&t.path);
                }
            }
        }
        // Hard links: every name of one object has the same stat.
        for names in by_ino.values().filter(|n| n.len() > 1) {
            hardlinked += names.len();
            let first = seen[names[0]].stat.as_ref().unwrap();
            for n in &names[1..] {
                let s = seen[*n].stat.as_ref().unwrap();
                if (s.ino, s.nlink, s.size) != (first.ino, first.nlink, first.size)
                    || s.nlink < names.len() as u64
                {
                    mismatch.push(format!("hard links {names:?} disagree"));
                }
            }
        }
        if mismatch.is_empty() {
            eprintln!("{}: vfs walk matches zdb ({} paths)", d.name, seen.len());
        } else {
            errors.push(format!("{}: differs from zdb:\n    {}", d.name, mismatch.join("\n    ")));
        }
    }
    eprintln!(
        "{} datasets, {objects} objects' attributes, {files} files ({hashed} hashed by zdb -r, \
         {pool_checked} against Pool::manifest), {hardlinked} hard-linked names, {bytes} bytes in \
         {calls} read calls",
        trees.len()
    );
    assert!(objects > 500, "only {objects} objects compared");
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert_eq!(pool_checked, files, "every file checked against Pool::manifest");
}

/// uid/gid (which `Stat` has no field for) through `ZfsFs::znode_attrs`,
/// against zdb, for every object of one SA pool and one old-znode pool.
#[test]
fn owners_match_zdb() {
    let Some(dirs) = zdb_manifest::pool_dirs() else { return };
    let Some(zdb) = common::zdb() else { return };
    let mut checked = 0;
    for (pool, ds) in
        [("zol-0.6.2", "zol-0.6.2/fs"), ("v5-pool", "v5-pool"), ("testpool_zstd", "testpool_zstd/x86_64")]
    {
        let dir = &dirs[pool];
        let tree = zdb_manifest::zdb_dataset(&zdb, dir, pool, ds).unwrap();
        let devs = zdb_manifest::vdev_files(dir).iter().map(|f| FileDevice::open(f).unwrap()).collect();
        let fs = ZfsPool::new(Pool::open(devs).unwrap()).mount(ds).unwrap();
        for (path, (obj, zo)) in &tree.objects {
            let a = fs.znode_attrs(path).unwrap();
            assert_eq!((Some(a.uid), Some(a.gid)), (zo.uid, zo.gid), "{ds}: {path} (object {obj})");
            assert_eq!(Some(a.xattr), zo.xattr.or(Some(0)), "{ds}: {path} xattr object");
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} objects");
}

/// Mounting refuses what is not a mountable ZPL dataset.
#[test]
fn mount_errors() {
    let Some(dirs) = zdb_manifest::pool_dirs() else { return };
    let devs = zdb_manifest::vdev_files(&dirs["missing_ivset"])
        .iter()
        .map(|f| FileDevice::open(f).unwrap())
        .collect();
    let zp = ZfsPool::new(Pool::open(devs).unwrap());
    assert_eq!(zp.mount("missing_ivset/testfs").unwrap_err(), Error::Encrypted);
    assert_eq!(zp.mount("missing_ivset/nonexistent").unwrap_err(), Error::NoSuchPath);
    assert_eq!(osv_zfs::vfs::errno(Error::Encrypted), Errno::EACCES);
    assert_eq!(osv_zfs::vfs::errno(Error::NoValidCopy), Errno::EIO);
    // The unencrypted root dataset of the same pool mounts.
    let fs = zp.mount("missing_ivset").unwrap();
    assert_eq!(fs.dataset(), "missing_ivset");
    let vfs = Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap();
    vfs.mkdir("/mnt", 0o755).unwrap();
    vfs.mount("/mnt", fs).unwrap();
    let st = vfs.stat("/mnt").unwrap();
    assert_eq!((st.kind, st.perm & 0o777 != 0), (VType::Directory, true));
}
