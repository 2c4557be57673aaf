//! The test pools grouped by pool name (a pool can span several archives:
//! the mirror and raidz pools), and zdb command lines for them. Included
//! with `#[path]` next to `mod common;` by the tests that need it.

#![allow(dead_code)]

use osv_zfs::label::VdevLabels;
use osv_zfs::FileDevice;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every pool of the test data: name -> its vdev files.
pub fn pools_by_name(pools: &[super::common::Pool]) -> BTreeMap<String, Vec<PathBuf>> {
    let mut by_pool: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for file in pools.iter().flat_map(|p| &p.files) {
        let labels = VdevLabels::read(&mut FileDevice::open(file).unwrap()).unwrap();
        let name = labels.config().unwrap().get_str("name").unwrap().to_string();
        by_pool.entry(name).or_default().push(file.clone());
    }
    assert!(by_pool.len() >= 14, "only {} pools", by_pool.len());
    by_pool
}

/// `zdb -e -p DIR...` for the directories holding `files`, then `args`.
pub fn zdb_command(zdb: &Path, files: &[PathBuf], args: &[&str]) -> Command {
    let mut cmd = Command::new(zdb);
    cmd.arg("-e");
    let mut dirs: Vec<&Path> = files.iter().map(|f| f.parent().unwrap()).collect();
    dirs.dedup();
    for d in dirs {
        cmd.arg("-p").arg(d);
    }
    cmd.args(args);
    cmd
}
