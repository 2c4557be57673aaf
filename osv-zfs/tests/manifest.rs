//! The oracle for the ZPL: `osv-zfs manifest` against the same manifest
//! built from OpenZFS's `zdb` for every pool of the test data.
//!
//! The zdb side, per pool:
//! - `zdb -e -p DIR -d POOL` lists the datasets; every `[ZPL]` one is read;
//! - `zdb -A -e -p DIR -dddd DATASET` (`POOL/` for the root dataset, so zdb
//!   dumps its objset and not the MOS; `-A` because zdb asserts on the
//!   object counts of pools older than v15) dumps every object: its type
//!   line, `mode` and `size` (znode or SA), and for ZAP objects their
//!   entries; the master node's `ROOT` and the directories' `NAME = OBJ
//!   (type: ...)` lines give the tree, walked from the root as ours is;
//! - `zdb -A -e -p DIR -r DATASET PATH OUT` copies a file out: its SHA-256
//!   is the content oracle. This zdb (2.x) resolves a path only without its
//!   leading `/`. Each run costs about a second of zdb start-up, so by
//!   default at most `ZDB_R_CAP` files per dataset are copied (spread over
//!   the sorted list, the largest file always included); the others are
//!   compared by size. `OSV_ZFS_ZDB_R_ALL=1` copies every file. (This zdb
//!   fails with EINVAL on a zero-length file after printing `Object N is 0
//!   bytes`: that message is taken as the empty content.)
//! - zdb prints no symlink targets (and `-r` copies a symlink's empty data
//!   blocks, not its target): symlinks are compared by target length
//!   (zdb's `size`); the hash of the target is ours alone.
//! - An encrypted dataset (zdb prints `(object encrypted)` for objects whose
//!   bonus or data it cannot decrypt without the key) must give our single
//!   `encrypted` line.
#![cfg(feature = "std")]

mod common;

use osv_zfs::label::VdevLabels;
use osv_zfs::pool::Pool;
use osv_zfs::FileDevice;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Files per dataset copied out with `zdb -r` by default.
const ZDB_R_CAP: usize = 3;
/// zdb processes run at once.
const JOBS: usize = 3;

/// Every pool of the test data: name -> a directory of symlinks to all
/// its vdev files (the raidz and mirror pools span several archives).
fn pool_dirs() -> Option<BTreeMap<String, PathBuf>> {
    let pools = common::pools()?;
    let mut by_pool: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for file in pools.iter().flat_map(|p| &p.files) {
        let labels = VdevLabels::read(&mut FileDevice::open(file).unwrap()).unwrap();
        let name = labels.config().unwrap().get_str("name").unwrap().to_string();
        by_pool.entry(name).or_default().push(file.clone());
    }
    assert!(by_pool.len() >= 14, "only {} pools", by_pool.len());
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("osv-zfs-pools");
    let mut out = BTreeMap::new();
    for (name, files) in by_pool {
        let dir = base.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in &files {
            let link = dir.join(f.file_name().unwrap());
            if std::fs::symlink_metadata(&link).is_err() {
                let _ = std::os::unix::fs::symlink(f, &link);
            }
        }
        out.insert(name, dir);
    }
    Some(out)
}

/// One manifest line; `None` in `sha` means "not known to zdb".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Line {
    dataset: String,
    path: String,
    kind: String,
    size: String,
    sha: Option<String>,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sha = self.sha.as_deref().unwrap_or("?");
        write!(f, "{}\t{}\t{}\t{}\t{sha}", self.dataset, self.path, self.kind, self.size)
    }
}

fn parse_line(text: &str) -> Line {
    let f: Vec<&str> = text.split('\t').collect();
    assert_eq!(f.len(), 5, "bad manifest line {text:?}");
    Line {
        dataset: f[0].into(),
        path: f[1].into(),
        kind: f[2].into(),
        size: f[3].into(),
        sha: Some(f[4].into()),
    }
}

/// One object of zdb's `-dddd` dump.
#[derive(Debug, Default)]
struct ZdbObject {
    kind: String,
    mode: Option<u64>,
    size: Option<u64>,
    /// ZAP entries: name -> value (directories: the object number).
    entries: Vec<(String, u64)>,
    encrypted: bool,
}

fn parse_dump(text: &str) -> BTreeMap<i64, ZdbObject> {
    let mut objects = BTreeMap::new();
    let mut lines = text.lines().peekable();
    let mut cur: Option<i64> = None;
    while let Some(line) = lines.next() {
        if line.starts_with("    Object  lvl") {
            let Some(head) = lines.next() else { break };
            let t: Vec<&str> = head.split_whitespace().collect();
            let id: i64 = t[0].parse().unwrap();
            objects.insert(id, ZdbObject { kind: t[8..].join(" "), ..Default::default() });
            cur = Some(id);
            continue;
        }
        let Some(o) = cur.and_then(|id| objects.get_mut(&id)) else { continue };
        if let Some(v) = line.strip_prefix("\tmode\t") {
            o.mode = Some(u64::from_str_radix(v.trim(), 8).unwrap());
        } else if let Some(v) = line.strip_prefix("\tsize\t") {
            o.size = Some(v.trim().parse().unwrap());
        } else if line.contains("(object encrypted)") {
            o.encrypted = true;
        } else if let Some(e) = line.strip_prefix("\t\t") {
            let e = match e.strip_suffix(')').and_then(|e| e.rsplit_once(" (type: ")) {
                Some((e, _)) => e,
                None => e.trim_end(),
            };
            if let Some((name, v)) = e.rsplit_once(" = ") {
                if let Ok(v) = v.trim().parse() {
                    o.entries.push((name.to_string(), v));
                }
            }
        }
    }
    objects
}

fn zdb_cmd(zdb: &Path, dir: &Path) -> Command {
    let mut c = Command::new(zdb);
    c.arg("-A").arg("-e").arg("-p").arg(dir);
    c
}

/// Runs `jobs` on `JOBS` threads, in order of the results.
fn parallel<T: Send, R: Send>(jobs: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let jobs: Vec<Mutex<Option<T>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    let results: Vec<Mutex<Option<R>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..JOBS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(job) = jobs.get(i) else { break };
                let r = f(job.lock().unwrap().take().unwrap());
                *results[i].lock().unwrap() = Some(r);
            });
        }
    });
    results.into_iter().map(|r| r.into_inner().unwrap().unwrap()).collect()
}

/// zdb's manifest of one dataset (files' `sha` filled in later).
fn zdb_dataset(zdb: &Path, dir: &Path, pool: &str, name: &str) -> Result<Vec<Line>, String> {
    let arg = if name == pool { format!("{pool}/") } else { name.to_string() };
    let out = zdb_cmd(zdb, dir).arg("-dddd").arg(&arg).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("zdb -dddd {arg}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let objects = parse_dump(&text);
    let line = |path: &str, kind: &str, size: String, sha: Option<String>| Line {
        dataset: name.to_string(),
        path: path.to_string(),
        kind: kind.to_string(),
        size,
        sha,
    };
    if objects.values().any(|o| o.encrypted) {
        return Ok(vec![line("-", "encrypted", "-".into(), Some("-".into()))]);
    }
    let master = objects.get(&1).filter(|o| o.kind == "ZFS master node").ok_or("no master node")?;
    let root = master.entries.iter().find(|(n, _)| n == "ROOT").ok_or("no ROOT")?.1;
    let mut lines = Vec::new();
    let mut stack = vec![(String::from("/"), root)];
    let mut seen = BTreeSet::new();
    while let Some((path, obj)) = stack.pop() {
        let o = objects.get(&(obj as i64)).ok_or_else(|| format!("{path}: object {obj} not dumped"))?;
        let mode = o.mode.ok_or_else(|| format!("{path}: object {obj} has no mode"))?;
        let size = o.size.ok_or_else(|| format!("{path}: object {obj} has no size"))?;
        match mode & 0o170000 {
            0o040000 => {
                lines.push(line(&path, "dir", "-".into(), Some("-".into())));
                if seen.insert(obj) {
                    for (n, child) in &o.entries {
                        let p = if path == "/" { format!("/{n}") } else { format!("{path}/{n}") };
                        stack.push((p, *child & ((1 << 48) - 1)));
                    }
                }
            }
            0o100000 => lines.push(line(&path, "file", size.to_string(), None)),
            0o120000 => lines.push(line(&path, "symlink", size.to_string(), None)),
            _ => lines.push(line(&path, "other", "-".into(), Some("-".into()))),
        }
    }
    Ok(lines)
}

/// The SHA-256 of `path` of dataset `name` as `zdb -r` copies it out.
fn zdb_copy(zdb: &Path, dir: &Path, pool: &str, name: &str, path: &str, n: usize) -> Result<String, String> {
    let out_file =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("osv-zfs-zdbr-{}-{n}", std::process::id()));
    let ds = if name == pool { format!("{pool}/") } else { name.to_string() };
    let rel = path.trim_start_matches('/');
    let out =
        zdb_cmd(zdb, dir).arg("-r").arg(&ds).arg(rel).arg(&out_file).output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // This zdb copies a zero-length file by failing with EINVAL after
    // saying so: "Object N is 0 bytes".
    let data = if !out.status.success() && stdout.contains(" is 0 bytes") {
        Vec::new()
    } else if !out.status.success() {
        return Err(format!("zdb -r {ds} {rel}: {stdout}{}", String::from_utf8_lossy(&out.stderr)));
    } else {
        std::fs::read(&out_file).map_err(|e| e.to_string())?
    };
    let _ = std::fs::remove_file(&out_file);
    Ok(Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect())
}

/// The files of one dataset to copy out: all, or `cap` spread over the
/// sorted list with the largest included.
fn pick(files: &[&Line], cap: usize) -> Vec<usize> {
    if files.len() <= cap {
        return (0..files.len()).collect();
    }
    let largest = (0..files.len()).max_by_key(|&i| files[i].size.parse::<u64>().unwrap_or(0)).unwrap_or(0);
    let mut out: BTreeSet<usize> = (0..cap - 1).map(|k| k * files.len() / (cap - 1)).collect();
    out.insert(largest);
    out.into_iter().collect()
}

#[test]
fn manifest_matches_zdb() {
    let Some(dirs) = pool_dirs() else { return };
    let Some(zdb) = common::zdb() else { return };
    let all = std::env::var("OSV_ZFS_ZDB_R_ALL").is_ok_and(|v| v == "1");
    let cap = if all { usize::MAX } else { ZDB_R_CAP };
    // Ours, and the list of ZPL datasets zdb sees.
    let lists = parallel(dirs.iter().collect(), |(pool, dir)| {
        let out = zdb_cmd(&zdb, dir).arg("-d").arg(pool).output().expect("run zdb");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let zpl: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("Dataset "))
            .filter_map(|l| l.split_once(" [ZPL]").map(|(n, _)| n.to_string()))
            .collect();
        (pool.clone(), dir.clone(), zpl)
    });
    let mut errors = Vec::new();
    let mut ours_by_pool = BTreeMap::new();
    for (pool, dir, _) in &lists {
        let files = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>();
        let ours = Pool::open(files.iter().map(|f| FileDevice::open(f).unwrap()).collect())
            .map_err(|e| e.to_string())
            .and_then(|mut p| p.manifest().map_err(|e| e.to_string()));
        match ours {
            Ok(lines) => {
                let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                let mut sorted = text.clone();
                sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                assert_eq!(text, sorted, "{pool}: manifest not sorted bytewise");
                ours_by_pool.insert(pool.clone(), text.iter().map(|t| parse_line(t)).collect::<Vec<_>>());
            }
            Err(e) => errors.push(format!("{pool}: our manifest failed: {e}")),
        }
    }
    // zdb's dumps.
    let jobs: Vec<(String, PathBuf, String)> = lists
        .iter()
        .flat_map(|(pool, dir, zpl)| zpl.iter().map(move |n| (pool.clone(), dir.clone(), n.clone())))
        .collect();
    let dumps = parallel(jobs.clone(), |(pool, dir, name)| zdb_dataset(&zdb, &dir, &pool, &name));
    let mut theirs_by_pool: BTreeMap<String, Vec<Line>> = BTreeMap::new();
    for ((pool, _, name), dump) in jobs.iter().zip(dumps) {
        match dump {
            Ok(lines) => theirs_by_pool.entry(pool.clone()).or_default().extend(lines),
            Err(e) => errors.push(format!("{pool}: {name}: {e}")),
        }
    }
    // Contents through zdb -r.
    let mut copies = Vec::new();
    for (pool, lines) in &theirs_by_pool {
        let dir = &dirs[pool];
        let mut by_ds: BTreeMap<&str, Vec<&Line>> = BTreeMap::new();
        for l in lines.iter().filter(|l| l.kind == "file") {
            by_ds.entry(&l.dataset).or_default().push(l);
        }
        for files in by_ds.values_mut() {
            files.sort();
            for i in pick(files, cap) {
                let l = files[i];
                copies.push((pool.clone(), dir.clone(), l.dataset.clone(), l.path.clone()));
            }
        }
    }
    let n_copies = copies.len();
    let sums = parallel(copies.iter().cloned().enumerate().collect(), |(n, (pool, dir, ds, path))| {
        zdb_copy(&zdb, &dir, &pool, &ds, &path, n)
    });
    let mut known: BTreeMap<(String, String), String> = BTreeMap::new();
    for ((_, _, ds, path), sum) in copies.into_iter().zip(sums) {
        match sum {
            Ok(s) => {
                known.insert((ds, path), s);
            }
            Err(e) => errors.push(e),
        }
    }
    // Compare, per pool.
    for pool in dirs.keys() {
        let (Some(ours), Some(theirs)) = (ours_by_pool.get(pool), theirs_by_pool.get_mut(pool)) else {
            errors.push(format!("{pool}: no manifest to compare"));
            continue;
        };
        for l in theirs.iter_mut() {
            if let Some(s) = known.get(&(l.dataset.clone(), l.path.clone())) {
                l.sha = Some(s.clone());
            }
        }
        theirs.sort_by(|a, b| a.to_string().as_bytes().cmp(b.to_string().as_bytes()));
        let mut mismatch = Vec::new();
        if ours.len() != theirs.len() {
            mismatch.push(format!("{} lines vs zdb {}", ours.len(), theirs.len()));
        }
        let ours_set: BTreeMap<(&str, &str), &Line> =
            ours.iter().map(|l| ((l.dataset.as_str(), l.path.as_str()), l)).collect();
        for t in theirs.iter() {
            match ours_set.get(&(t.dataset.as_str(), t.path.as_str())) {
                None => mismatch.push(format!("missing: {t}")),
                Some(o) => {
                    let same = o.kind == t.kind && o.size == t.size && (t.sha.is_none() || t.sha == o.sha);
                    if !same {
                        mismatch.push(format!("ours {o}\n      zdb  {t}"));
                    }
                }
            }
        }
        let theirs_set: BTreeSet<(&str, &str)> =
            theirs.iter().map(|l| (l.dataset.as_str(), l.path.as_str())).collect();
        for o in ours.iter().filter(|o| !theirs_set.contains(&(o.dataset.as_str(), o.path.as_str()))) {
            mismatch.push(format!("extra: {o}"));
        }
        let hashed = theirs.iter().filter(|l| l.kind == "file" && l.sha.is_some()).count();
        let files = theirs.iter().filter(|l| l.kind == "file").count();
        if mismatch.is_empty() {
            eprintln!(
                "{pool}: manifest matches zdb ({} lines, {hashed}/{files} files hashed by zdb -r)",
                ours.len()
            );
        } else {
            errors.push(format!("{pool}: manifest differs from zdb:\n    {}", mismatch.join("\n    ")));
        }
    }
    eprintln!("zdb -r copies: {n_copies}");
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
