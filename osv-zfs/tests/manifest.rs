//! The oracle for the ZPL: `osv-zfs manifest` against the same manifest
//! built from OpenZFS's `zdb` for every pool of the test data.
//!
//! The zdb side (`tests/common/zdb_manifest.rs`, shared with the tests of
//! the VFS mount), per pool:
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
//!   default at most `ZDB_R_CAP` (3) files per dataset are copied (spread over
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
#[path = "common/zdb_manifest.rs"]
mod zdb_manifest;

use osv_zfs::pool::Pool;
use osv_zfs::FileDevice;
use std::collections::{BTreeMap, BTreeSet};
use zdb_manifest::{Line, ZdbDataset, ZdbTree};

/// One line of our manifest in the zdb side's terms.
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

#[test]
fn manifest_matches_zdb() {
    let Some(dirs) = zdb_manifest::pool_dirs() else { return };
    let Some(zdb) = common::zdb() else { return };
    let cap = zdb_manifest::copy_cap();
    // The list of ZPL datasets zdb sees, and ours.
    let datasets = zdb_manifest::zpl_datasets(&zdb, &dirs);
    let mut errors = Vec::new();
    let mut ours_by_pool = BTreeMap::new();
    for (pool, dir) in &dirs {
        let files = zdb_manifest::vdev_files(dir);
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
    let dumps = zdb_manifest::parallel(datasets.clone(), |d| {
        zdb_manifest::zdb_dataset(&zdb, &d.dir, &d.pool, &d.name)
    });
    let mut trees: Vec<(ZdbDataset, ZdbTree)> = Vec::new();
    for (d, dump) in datasets.into_iter().zip(dumps) {
        match dump {
            Ok(tree) => trees.push((d, tree)),
            Err(e) => errors.push(format!("{}: {}: {e}", d.pool, d.name)),
        }
    }
    // Contents through zdb -r.
    let n_copies = zdb_manifest::copy_list(&trees, cap).len();
    errors.extend(zdb_manifest::fill_hashes(&zdb, &mut trees, cap));
    let mut theirs_by_pool: BTreeMap<String, Vec<Line>> = BTreeMap::new();
    for (d, tree) in trees {
        theirs_by_pool.entry(d.pool).or_default().extend(tree.lines);
    }
    // Compare, per pool.
    for pool in dirs.keys() {
        let (Some(ours), Some(theirs)) = (ours_by_pool.get(pool), theirs_by_pool.get_mut(pool)) else {
            errors.push(format!("{pool}: no manifest to compare"));
            continue;
        };
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
