//! Real OpenZFS pools as virtio-blk disks for the kernel's ZFS test.
//!
//! The pools come from `$OSV_TESTDATA/zfs` (default `../shared/testdata`
//! next to the workspace): `zol-0.6.2` (raidz1 over four vdev files, a
//! filesystem, a snapshot and a clone) and `testpool_zstd` (zstd and lz4
//! blocks, one dataset written big-endian on ppc64). They are expanded once
//! into `target/zfs-kernel/` and attached read-only. A last disk carries the
//! manifest the host computed for them with osv-zfs over plain files: the
//! `osv-zfs` crate's own tests prove that manifest equal to the one built
//! from OpenZFS's `zdb`, so the kernel's reading is checked against zdb's by
//! that chain.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The pools the kernel test mounts (archive names in the test data).
const POOLS: &[&str] = &["zol-0.6.2.tar.bz2", "testpool_zstd.tar.gz"];

/// The expectation disk's first line (`EXPECT_MAGIC` in
/// osv-demo-kernel/src/zfs.rs); the next line is the text's byte length.
const EXPECT_MAGIC: &[u8] = b"osv zfs expected manifest v1\n";

fn testdata() -> PathBuf {
    std::env::var_os("OSV_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("../shared/testdata"))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let st = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {st}"))
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Expands `archive` into `dir` once (through a temporary directory and a
/// rename, so a half-expanded pool is never used); returns its files.
fn expand(archive: &Path, dir: &Path) -> Result<Vec<PathBuf>, String> {
    if !dir.is_dir() {
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        run(Command::new("tar").arg("-xf").arg(archive).arg("-C").arg(&tmp))?;
        // The tarballs hold sparse files: give the holes back.
        for f in files_under(&tmp) {
            let _ = Command::new("fallocate").arg("--dig-holes").arg(&f).status();
        }
        std::fs::rename(&tmp, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(files_under(dir))
}

/// The manifest of one pool, read on the host with osv-zfs.
fn manifest(files: &[PathBuf]) -> Result<Vec<String>, String> {
    let devs = files
        .iter()
        .map(|f| osv_zfs::FileDevice::open(f).map_err(|e| format!("{}: {e}", f.display())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut pool = osv_zfs::pool::Pool::open(devs).map_err(|e| format!("{files:?}: {e}"))?;
    let lines = pool.manifest().map_err(|e| format!("{}: {e}", pool.name))?;
    Ok(lines.iter().map(|l| l.to_string()).collect())
}

/// The disks to attach (vdev files, then the expectation disk) and how many
/// manifest lines the kernel must match; `None` when the test data is absent
/// outside CI (the kernel test then skips, saying so).
pub fn kernel_pool_disks() -> Result<Option<(Vec<PathBuf>, usize)>, String> {
    let src = testdata().join("zfs");
    if !src.is_dir() {
        if std::env::var("CI").as_deref() == Ok("true") {
            return Err(format!("the ZFS test data is missing: {} (set OSV_TESTDATA)", src.display()));
        }
        println!("note: no ZFS test data at {}; the kernel's ZFS test will skip", src.display());
        return Ok(None);
    }
    let out = crate::workspace_root().join("target").join("zfs-kernel");
    let mut disks = Vec::new();
    let mut lines = Vec::new();
    for archive in POOLS {
        let stem = archive.split('.').next().unwrap_or(archive);
        let stem = if archive.starts_with("zol-0.6.2") { "zol-0.6.2" } else { stem };
        let files = expand(&src.join(archive), &out.join(stem))?;
        lines.extend(manifest(&files)?);
        disks.extend(files);
    }
    lines.sort();
    let text = lines.join("\n") + "\n";
    let mut image = EXPECT_MAGIC.to_vec();
    image.extend_from_slice(format!("{}\n", text.len()).as_bytes());
    image.extend_from_slice(text.as_bytes());
    image.resize(image.len().next_multiple_of(512), 0);
    let expect = out.join("expected-manifest.img");
    std::fs::write(&expect, &image).map_err(|e| format!("{}: {e}", expect.display()))?;
    disks.push(expect);
    Ok(Some((disks, lines.len())))
}
