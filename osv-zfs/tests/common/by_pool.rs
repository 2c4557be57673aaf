//! The test pools grouped by pool name (a pool can span several archives:
//! the mirror and raidz pools), and zdb command lines for them. Included
//! with `#[path]` next to `mod common;` by the tests that need it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub use super::common::pools_by_name;

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
