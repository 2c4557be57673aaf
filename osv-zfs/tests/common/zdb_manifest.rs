//! The zdb side of the manifest (see `tests/manifest.rs` for the method),
//! shared by the tests that compare a reading of the pools with it
//! (`tests/vfs.rs`, `tests/xattr.rs`). Included with
//! `#[path = "common/zdb_manifest.rs"] mod zdb_manifest;` after `mod common;`.
//!
//! Per pool: `zdb -d` lists the ZPL datasets; `zdb -A -e -p DIR -dddd
//! DATASET` dumps every object (type, attributes, ZAP entries), walked from
//! the master node's `ROOT`; `zdb -r` copies files out for their SHA-256
//! (capped per dataset unless `OSV_ZFS_ZDB_R_ALL=1`). zdb runs with
//! `TZ=UTC` so the times it prints are UTC.

#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Files per dataset copied out with `zdb -r` by default.
pub const ZDB_R_CAP: usize = 3;
/// zdb processes run at once.
const JOBS: usize = 3;

/// Every pool of the test data: name -> a directory of symlinks to all
/// its vdev files (the raidz and mirror pools span several archives).
pub fn pool_dirs() -> Option<BTreeMap<String, PathBuf>> {
    let by_pool = crate::common::pools_by_name(crate::common::pools()?);
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

/// The vdev files of a pool directory made by [`pool_dirs`].
pub fn vdev_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// One manifest line; `None` in `sha` means "not known to zdb".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Line {
    pub dataset: String,
    pub path: String,
    pub kind: String,
    pub size: String,
    pub sha: Option<String>,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sha = self.sha.as_deref().unwrap_or("?");
        write!(f, "{}\t{}\t{}\t{}\t{sha}", self.dataset, self.path, self.kind, self.size)
    }
}

/// One object of zdb's `-dddd` dump.
#[derive(Debug, Default, Clone)]
pub struct ZdbObject {
    pub kind: String,
    pub mode: Option<u64>,
    pub size: Option<u64>,
    pub links: Option<u64>,
    pub uid: Option<u64>,
    pub gid: Option<u64>,
    /// `mtime` as zdb prints it (`ctime(3)` format, UTC).
    pub mtime: Option<String>,
    /// The xattr directory object (`xattr` line).
    pub xattr: Option<u64>,
    /// ZAP entries: name -> value (directories: the object number).
    pub entries: Vec<(String, u64)>,
    pub encrypted: bool,
}

/// Parses a `zdb -dddd` dump: object number -> object.
pub fn parse_dump(text: &str) -> BTreeMap<i64, ZdbObject> {
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
        let num = |v: &str| v.trim().parse::<u64>().ok();
        if let Some(v) = line.strip_prefix("\tmode\t") {
            o.mode = Some(u64::from_str_radix(v.trim(), 8).unwrap());
        } else if let Some(v) = line.strip_prefix("\tsize\t") {
            o.size = Some(v.trim().parse().unwrap());
        } else if let Some(v) = line.strip_prefix("\tlinks\t") {
            o.links = num(v);
        } else if let Some(v) = line.strip_prefix("\tuid ") {
            o.uid = num(v);
        } else if let Some(v) = line.strip_prefix("\tgid ") {
            o.gid = num(v);
        } else if let Some(v) = line.strip_prefix("\tmtime\t") {
            o.mtime = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("\txattr\t") {
            o.xattr = num(v);
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

/// `zdb -A -e -p DIR` with `TZ=UTC`.
pub fn zdb_cmd(zdb: &Path, dir: &Path) -> Command {
    let mut c = Command::new(zdb);
    c.env("TZ", "UTC").arg("-A").arg("-e").arg("-p").arg(dir);
    c
}

/// The dataset argument zdb needs: `POOL/` for the root dataset (so zdb
/// dumps its objset and not the MOS).
pub fn zdb_dataset_arg(pool: &str, name: &str) -> String {
    if name == pool {
        format!("{pool}/")
    } else {
        name.to_string()
    }
}

/// Runs `jobs` on `JOBS` threads, in order of the results.
pub fn parallel<T: Send, R: Send>(jobs: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
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

/// One ZPL dataset as `zdb -d` lists it.
#[derive(Debug, Clone)]
pub struct ZdbDataset {
    pub pool: String,
    pub dir: PathBuf,
    pub name: String,
    /// The objset's object count (`N objects`).
    pub objects: u64,
}

/// The ZPL datasets of every pool (`zdb -d`).
pub fn zpl_datasets(zdb: &Path, dirs: &BTreeMap<String, PathBuf>) -> Vec<ZdbDataset> {
    let lists = parallel(dirs.iter().collect(), |(pool, dir)| {
        let out = zdb_cmd(zdb, dir).arg("-d").arg(pool).output().expect("run zdb");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter_map(|l| l.strip_prefix("Dataset "))
            .filter_map(|l| {
                let (name, rest) = l.split_once(" [ZPL]")?;
                // A ZPL dataset is never skipped: a line without its
                // object count is an error, not a dataset less.
                let objects = rest
                    .split(", ")
                    .find_map(|f| f.strip_suffix(" objects")?.parse().ok())
                    .unwrap_or_else(|| panic!("{pool}: no object count in zdb -d line {l:?}"));
                Some(ZdbDataset { pool: pool.clone(), dir: dir.clone(), name: name.to_string(), objects })
            })
            .collect::<Vec<_>>()
    });
    lists.into_iter().flatten().collect()
}

/// zdb's view of one dataset: the manifest lines (files' `sha` filled in
/// later) with the object behind each path.
#[derive(Debug, Default)]
pub struct ZdbTree {
    pub lines: Vec<Line>,
    /// Path -> (object number, its dump).
    pub objects: BTreeMap<String, (u64, ZdbObject)>,
    /// Every object of the dump (xattr directories are not in the tree).
    pub all: BTreeMap<i64, ZdbObject>,
    /// Whether zdb printed SA-stored xattrs (`SA xattrs`).
    pub sa_xattrs: bool,
}

/// zdb's manifest of one dataset.
pub fn zdb_dataset(zdb: &Path, dir: &Path, pool: &str, name: &str) -> Result<ZdbTree, String> {
    let arg = zdb_dataset_arg(pool, name);
    let out = zdb_cmd(zdb, dir).arg("-dddd").arg(&arg).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("zdb -dddd {arg}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let all = parse_dump(&text);
    let line = |path: &str, kind: &str, size: String, sha: Option<String>| Line {
        dataset: name.to_string(),
        path: path.to_string(),
        kind: kind.to_string(),
        size,
        sha,
    };
    let mut tree = ZdbTree { sa_xattrs: text.contains("SA xattrs"), ..ZdbTree::default() };
    if all.values().any(|o| o.encrypted) {
        tree.lines.push(line("-", "encrypted", "-".into(), Some("-".into())));
        return Ok(tree);
    }
    let master = all.get(&1).filter(|o| o.kind == "ZFS master node").ok_or("no master node")?;
    let root = master.entries.iter().find(|(n, _)| n == "ROOT").ok_or("no ROOT")?.1;
    let mut stack = vec![(String::from("/"), root)];
    let mut seen = BTreeSet::new();
    while let Some((path, obj)) = stack.pop() {
        let o = all.get(&(obj as i64)).ok_or_else(|| format!("{path}: object {obj} not dumped"))?;
        let mode = o.mode.ok_or_else(|| format!("{path}: object {obj} has no mode"))?;
        let size = o.size.ok_or_else(|| format!("{path}: object {obj} has no size"))?;
        match mode & 0o170000 {
            0o040000 => {
                tree.lines.push(line(&path, "dir", "-".into(), Some("-".into())));
                if seen.insert(obj) {
                    for (n, child) in &o.entries {
                        let p = if path == "/" { format!("/{n}") } else { format!("{path}/{n}") };
                        stack.push((p, *child & ((1 << 48) - 1)));
                    }
                }
            }
            0o100000 => tree.lines.push(line(&path, "file", size.to_string(), None)),
            0o120000 => tree.lines.push(line(&path, "symlink", size.to_string(), None)),
            _ => tree.lines.push(line(&path, "other", "-".into(), Some("-".into()))),
        }
        tree.objects.insert(path, (obj, o.clone()));
    }
    tree.all = all;
    Ok(tree)
}

/// The SHA-256 of `path` of dataset `name` as `zdb -r` copies it out.
pub fn zdb_copy(
    zdb: &Path,
    dir: &Path,
    pool: &str,
    name: &str,
    path: &str,
    n: usize,
) -> Result<String, String> {
    let out_file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "osv-zfs-zdbr-{}-{n}-{}",
        std::process::id(),
        name.replace('/', "_")
    ));
    let ds = zdb_dataset_arg(pool, name);
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
    Ok(hex_sha256(&data))
}

/// Lower-case hex SHA-256.
pub fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The files of one dataset to copy out: all, or `cap` spread over the
/// sorted list with the largest included.
pub fn pick(files: &[&Line], cap: usize) -> Vec<usize> {
    if files.len() <= cap {
        return (0..files.len()).collect();
    }
    let largest = (0..files.len()).max_by_key(|&i| files[i].size.parse::<u64>().unwrap_or(0)).unwrap_or(0);
    let mut out: BTreeSet<usize> = (0..cap - 1).map(|k| k * files.len() / (cap - 1)).collect();
    out.insert(largest);
    out.into_iter().collect()
}

/// The copy cap: [`ZDB_R_CAP`], or unlimited with `OSV_ZFS_ZDB_R_ALL=1`.
pub fn copy_cap() -> usize {
    if std::env::var("OSV_ZFS_ZDB_R_ALL").is_ok_and(|v| v == "1") {
        usize::MAX
    } else {
        ZDB_R_CAP
    }
}

/// The `zdb -r` copies [`fill_hashes`] makes: (index into `trees`, file
/// path), at most `cap` per dataset chosen by [`pick`].
pub fn copy_list(trees: &[(ZdbDataset, ZdbTree)], cap: usize) -> Vec<(usize, String)> {
    let mut copies = Vec::new();
    for (i, (_, t)) in trees.iter().enumerate() {
        let mut files: Vec<&Line> = t.lines.iter().filter(|l| l.kind == "file").collect();
        files.sort();
        for k in pick(&files, cap) {
            copies.push((i, files[k].path.clone()));
        }
    }
    copies
}

/// Fills the `sha` of the file lines of `trees` with `zdb -r` copies (at
/// most `cap` per dataset); errors are returned, not fatal.
pub fn fill_hashes(zdb: &Path, trees: &mut [(ZdbDataset, ZdbTree)], cap: usize) -> Vec<String> {
    let copies = copy_list(trees, cap);
    let datasets: &[(ZdbDataset, ZdbTree)] = trees;
    let sums = parallel(copies.iter().enumerate().collect(), |(n, (i, path))| {
        let d = &datasets[*i].0;
        zdb_copy(zdb, &d.dir, &d.pool, &d.name, path, n)
    });
    let mut errors = Vec::new();
    for ((i, path), sum) in copies.into_iter().zip(sums) {
        match sum {
            Ok(s) => {
                if let Some(l) = trees[i].1.lines.iter_mut().find(|l| l.path == path) {
                    l.sha = Some(s);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    errors
}

/// `ctime(3)`'s format of a UTC time (`Wed Oct 26 18:06:05 2016`), as zdb
/// prints times with `TZ=UTC`.
pub fn ctime_utc(sec: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = sec.div_euclid(86_400);
    let secs = sec.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        d,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        y
    )
}
