//! Test data: the real pools of `shared/testdata/zfs`, expanded once into
//! cargo's per-target scratch directory (`CARGO_TARGET_TMPDIR`) and reused by
//! later runs. Nothing is written next to the sources.

#![allow(dead_code)]

use osv_zfs::label::VdevLabels;
use osv_zfs::FileDevice;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Whether missing test data or tools must fail the test (`CI=true`).
pub fn strict() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Skips (returns `None`) or, under `CI=true`, fails with `why`.
pub fn skip<T>(why: &str) -> Option<T> {
    assert!(!strict(), "CI=true and {why}");
    eprintln!("SKIP: {why}");
    None
}

/// `$OSV_TESTDATA/zfs`, default `<workspace>/../shared/testdata/zfs`.
pub fn source_dir() -> PathBuf {
    let base = std::env::var_os("OSV_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata")));
    base.join("zfs")
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {status}"))
    }
}

/// Expands one archive into `dir` (which does not exist yet) through a
/// scratch directory and an atomic rename, so concurrent test binaries
/// cannot see half a file.
fn expand(archive: &Path, dir: &Path) -> Result<(), String> {
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    if let Some(stem) = name.strip_suffix(".dat.bz2") {
        let out = std::fs::File::create(tmp.join(format!("{stem}.dat"))).map_err(|e| e.to_string())?;
        run(Command::new("bzip2").arg("-dc").arg(archive).stdout(out))?;
    } else {
        run(Command::new("tar").arg("-xf").arg(archive).arg("-C").arg(&tmp))?;
    }
    // The images are mostly zeros: give the holes back where we can.
    for file in vdev_files(&tmp) {
        let _ = Command::new("fallocate").arg("--dig-holes").arg(&file).status();
    }
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Every regular file under `dir`, recursively, sorted.
fn vdev_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
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

/// One expanded archive: its name and its vdev files.
pub struct Pool {
    /// The archive's name without extension (e.g. `zfs-pool-v1`).
    pub name: String,
    /// The vdev files.
    pub files: Vec<PathBuf>,
}

/// All test pools, expanded once per target directory. `None` (after
/// printing why) when the test data is absent and `CI` is not `true`.
pub fn pools() -> Option<&'static [Pool]> {
    static POOLS: OnceLock<Option<Vec<Pool>>> = OnceLock::new();
    POOLS
        .get_or_init(|| {
            let src = source_dir();
            let Ok(entries) = std::fs::read_dir(&src) else {
                return skip(&format!("no test data at {}", src.display()));
            };
            let mut archives: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.to_string_lossy();
                    n.ends_with(".dat.bz2") || n.ends_with(".tar.gz") || n.ends_with(".tar.bz2")
                })
                .collect();
            archives.sort();
            assert!(!archives.is_empty(), "no pool archives in {}", src.display());
            let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("osv-zfs-testdata");
            std::fs::create_dir_all(&cache).unwrap();
            let jobs: Vec<_> = archives
                .into_iter()
                .map(|archive| {
                    let n = archive.file_name().unwrap().to_string_lossy().into_owned();
                    let name = [".dat.bz2", ".tar.gz", ".tar.bz2"]
                        .iter()
                        .find_map(|ext| n.strip_suffix(ext))
                        .unwrap_or(&n)
                        .to_string();
                    let dir = cache.join(&name);
                    let handle = std::thread::spawn({
                        let dir = dir.clone();
                        move || {
                            if !dir.is_dir() {
                                expand(&archive, &dir).unwrap_or_else(|e| panic!("expand: {e}"));
                            }
                        }
                    });
                    (name, dir, handle)
                })
                .collect();
            let mut pools = Vec::new();
            for (name, dir, handle) in jobs {
                handle.join().expect("expanding test data failed");
                pools.push(Pool { name, files: vdev_files(&dir) });
            }
            Some(pools)
        })
        .as_deref()
}

/// The test pools grouped by pool name (read from each vdev's label: a
/// pool can span several archives, the mirror and raidz pools): name ->
/// its vdev files.
pub fn pools_by_name(pools: &[Pool]) -> BTreeMap<String, Vec<PathBuf>> {
    let mut by_pool: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for file in pools.iter().flat_map(|p| &p.files) {
        let labels = VdevLabels::read(&mut FileDevice::open(file).unwrap()).unwrap();
        let name = labels.config().unwrap().get_str("name").unwrap().to_string();
        by_pool.entry(name).or_default().push(file.clone());
    }
    assert!(by_pool.len() >= 14, "only {} pools", by_pool.len());
    by_pool
}

/// The path of `zdb`, or `None` (after printing why) when it is not
/// installed and `CI` is not `true`.
pub fn zdb() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join("zdb"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None => skip("zdb (OpenZFS, package zfsutils-linux) is not installed"),
    }
}

/// xorshift64*: a small seeded generator for repeatable test inputs.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
