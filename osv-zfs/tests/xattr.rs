//! Extended attributes against `zdb -dddd`: for every object of every
//! unencrypted ZPL dataset of the test pools, the xattrs osv-zfs lists
//! (`ZfsFs::listxattr`) are exactly the entries of the xattr directory zdb
//! names in the object's `xattr` line (names, and sizes from the dump of
//! each entry's object), or none when that line is absent, 0, or names an
//! object zdb does not dump (the pool `zol-znode-removed-xattr`, named
//! `tank`: `/file2` points at the removed directory 11). Values are
//! compared with the block zdb reads raw (`zdb -R POOL VDEV:OFFSET:SIZE:r`,
//! the DVA from `zdb -ddddd`); an embedded block (no DVA to read) is
//! compared by size.
//!
//! No test pool holds SA-stored xattrs (`ZPL_DXATTR`: zdb would print `SA
//! xattrs`); the test fails if one appears, so that it gets compared too.
//! The SA decoding is unit-tested in `src/fs.rs`.
#![cfg(all(feature = "std", feature = "vfs"))]

mod common;
#[path = "common/zdb_manifest.rs"]
mod zdb_manifest;

use osv_zfs::fs::XattrSource;
use osv_zfs::pool::Pool;
use osv_zfs::vfs::ZfsPool;
use osv_zfs::FileDevice;
use std::collections::BTreeMap;
use std::path::Path;

/// The first level-0 block of `object` as `zdb -ddddd` prints it:
/// `Some((vdev, offset, lsize, psize))`, `None` for an embedded block.
fn l0_block(zdb: &Path, dir: &Path, pool: &str, ds: &str, object: u64) -> Option<(u64, u64, u64, u64)> {
    let arg = zdb_manifest::zdb_dataset_arg(pool, ds);
    let out =
        zdb_manifest::zdb_cmd(zdb, dir).arg("-ddddd").arg(&arg).arg(object.to_string()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .skip_while(|l| !l.starts_with("Indirect blocks:"))
        .find(|l| l.split_whitespace().nth(1) == Some("L0"))
        .unwrap_or_else(|| panic!("{ds} object {object}: no L0 block in zdb -ddddd"));
    let f: Vec<&str> = line.split_whitespace().collect();
    if f[2] == "EMBEDDED" {
        return None;
    }
    let dva: Vec<&str> = f[2].split(':').collect();
    let (l, p) = f[3].split_once("L/").unwrap();
    let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
    Some((hex(dva[0]), hex(dva[1]), hex(l), hex(p.trim_end_matches('P'))))
}

/// The logical contents of a block read by `zdb -R` (decompressed when
/// its sizes differ).
fn zdb_read_block(
    zdb: &Path,
    dir: &Path,
    pool: &str,
    (vdev, off, lsize, psize): (u64, u64, u64, u64),
) -> Vec<u8> {
    let spec = if lsize == psize {
        format!("{vdev}:{off:x}:{psize:x}:r")
    } else {
        format!("{vdev}:{off:x}:{lsize:x}/{psize:x}:dr")
    };
    let out = zdb_manifest::zdb_cmd(zdb, dir).arg("-R").arg(pool).arg(&spec).output().unwrap();
    assert!(out.status.success(), "zdb -R {pool} {spec}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn xattrs_match_zdb() {
    let Some(dirs) = zdb_manifest::pool_dirs() else { return };
    let Some(zdb) = common::zdb() else { return };
    let datasets = zdb_manifest::zpl_datasets(&zdb, &dirs);
    let mut pools: BTreeMap<String, ZfsPool<FileDevice>> = BTreeMap::new();
    let (mut objects, mut with_dir, mut values, mut by_size, mut removed) = (0, 0, 0, 0, 0);
    let mut errors = Vec::new();
    let trees = zdb_manifest::parallel(datasets.clone(), |d| {
        zdb_manifest::zdb_dataset(&zdb, &d.dir, &d.pool, &d.name).unwrap()
    });
    for (d, tree) in datasets.iter().zip(trees) {
        assert!(!tree.sa_xattrs, "{}: SA xattrs in zdb's dump: compare them here", d.name);
        if tree.lines.iter().any(|l| l.kind == "encrypted") {
            continue;
        }
        let zpool = pools.entry(d.pool.clone()).or_insert_with(|| {
            let devs =
                zdb_manifest::vdev_files(&d.dir).iter().map(|f| FileDevice::open(f).unwrap()).collect();
            ZfsPool::new(Pool::open(devs).unwrap())
        });
        let fs = zpool.mount(&d.name).unwrap();
        for (path, (obj, zo)) in &tree.objects {
            objects += 1;
            let ours = match fs.listxattr(path) {
                Ok(x) => x,
                Err(e) => {
                    errors.push(format!("{}: {path}: listxattr: {e}", d.name));
                    continue;
                }
            };
            let xdir = zo.xattr.unwrap_or(0);
            let want: Vec<(String, u64, u64)> = match tree.all.get(&(xdir as i64)) {
                Some(x) if xdir != 0 => {
                    assert_eq!(x.kind, "ZFS directory", "{}: {path}: xattr object {xdir}", d.name);
                    with_dir += 1;
                    let mut v: Vec<(String, u64, u64)> = x
                        .entries
                        .iter()
                        .map(|(n, o)| {
                            let o = o & ((1 << 48) - 1);
                            (n.clone(), tree.all[&(o as i64)].size.unwrap(), o)
                        })
                        .collect();
                    v.sort();
                    v
                }
                _ => {
                    if xdir != 0 {
                        removed += 1;
                    }
                    Vec::new()
                }
            };
            let got: Vec<(String, u64, u64)> = ours
                .iter()
                .map(|x| {
                    let XattrSource::Dir { object } = x.source else { panic!("{path}: SA xattr") };
                    (String::from_utf8(x.name.clone()).unwrap(), x.size, object)
                })
                .collect();
            if got != want {
                errors.push(format!("{}: {path} (object {obj}): ours {got:?}, zdb {want:?}", d.name));
                continue;
            }
            for (name, size, object) in &want {
                let value = fs.getxattr(path, name).unwrap();
                assert_eq!(value.len() as u64, *size, "{}: {path}: {name}", d.name);
                match l0_block(&zdb, &d.dir, &d.pool, &d.name, *object) {
                    Some(bp) => {
                        let raw = zdb_read_block(&zdb, &d.dir, &d.pool, bp);
                        assert_eq!(&raw[..*size as usize], &value[..], "{}: {path}: {name}", d.name);
                        values += 1;
                    }
                    None => by_size += 1,
                }
            }
            assert_eq!(fs.getxattr(path, "user.osv-none"), Err(osv_vfs::Errno::ENOENT));
        }
    }
    eprintln!(
        "{objects} objects: {with_dir} with an xattr directory, {removed} pointing at a removed one; \
         {values} values equal to zdb -R, {by_size} embedded compared by size"
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // What the test data holds (v5-pool's Solaris xattr, testpool_zstd's
    // security.selinux and empty root xattr directory, tank's removed one).
    assert!(with_dir >= 3 && values >= 1 && removed >= 1, "xattr cases missing from the test data");
}

/// The pool `tank` (zol-znode-removed-xattr): `/file2` names xattr
/// directory 11, which no longer exists; object 8 is the orphaned xattr
/// directory of a removed file, still holding `user.test` (object 9, one
/// byte). Listing `/file2` gives nothing and no error; the orphan reads
/// like any xattr directory.
#[test]
fn removed_xattr_directory() {
    let Some(dirs) = zdb_manifest::pool_dirs() else { return };
    let Some(zdb) = common::zdb() else { return };
    let tree = zdb_manifest::zdb_dataset(&zdb, &dirs["tank"], "tank", "tank").unwrap();
    let (_, file2) = &tree.objects["/file2"];
    assert_eq!(file2.xattr, Some(11));
    assert!(!tree.all.contains_key(&11));
    let orphan = &tree.all[&8];
    assert_eq!(orphan.entries, vec![("user.test".to_string(), 9)]);

    let devs = zdb_manifest::vdev_files(&dirs["tank"]).iter().map(|f| FileDevice::open(f).unwrap()).collect();
    let zp = ZfsPool::new(Pool::open(devs).unwrap());
    let fs = zp.mount("tank").unwrap();
    assert_eq!(fs.znode_attrs("/file2").unwrap().xattr, 11);
    assert_eq!(fs.listxattr("/file2").unwrap(), vec![]);
    assert_eq!(fs.getxattr("/file2", "user.test"), Err(osv_vfs::Errno::ENOENT));
    zp.with_pool(|pool| {
        let id = pool.datasets().unwrap().into_iter().find(|d| d.name == "tank").unwrap().id;
        let zpl = pool.zpl_open(id).unwrap();
        let dir = pool.zpl_inode(&zpl, 8).unwrap();
        let entries = pool.zpl_readdir(&dir).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].0.as_slice(), entries[0].1.object), (&b"user.test"[..], 9));
        let value = pool.zpl_inode(&zpl, 9).unwrap();
        assert_eq!(value.attrs.size, tree.all[&9].size.unwrap());
        assert_eq!(value.attrs.parent, 8);
    });
}
