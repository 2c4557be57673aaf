//! `verify` (our `zdb -bcc`) against OpenZFS's own on every test pool.
//!
//! Per pool, `zdb -e -p DIR... -bbbbbcc POOL` traverses every block,
//! checks every copy and prints one line per block pointer (its bookmark
//! and DVAs, or `[deferred free]`), the totals (`bp count`, `bp logical`,
//! `bp physical`, `bp allocated`), `No leaks` and an error line per block
//! it could not read. We require: the same verdict (clean exactly where zdb
//! is), the same four totals, and the same block pointers (the multiset of
//! objset, object, level and first DVA; deferred frees by DVA). Then two
//! damaged copies of real pools: a data block with its only copy flipped
//! (zdb and we both fail, naming the same bookmark) and one side of a
//! mirror flipped (both succeed; we list the repair).
#![cfg(feature = "std")]

#[path = "common/by_pool.rs"]
mod by_pool;
mod common;

use osv_zfs::pool::Pool;
use osv_zfs::traverse::{traverse, Limits, Origin};
use osv_zfs::verify::{verify, Problem, VerifyReport};
use osv_zfs::FileDevice;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn open(files: &[PathBuf]) -> Pool<FileDevice> {
    Pool::open(files.iter().map(|f| FileDevice::open(f).unwrap()).collect()).unwrap()
}

/// What zdb said about a pool.
#[derive(Debug, Default)]
struct Zdb {
    totals: [u64; 4],
    no_leaks: bool,
    /// Bookmarks of `zdb_blkptr_cb: Got error` lines.
    errors: Vec<String>,
    /// One key per block pointer line.
    bps: BTreeMap<String, usize>,
}

fn parse_zdb(text: &str) -> Zdb {
    let mut z = Zdb::default();
    for line in text.lines() {
        let t = line.trim_start();
        for (i, key) in ["bp count:", "bp logical:", "bp physical:", "bp allocated:"].iter().enumerate() {
            if let Some(rest) = t.strip_prefix(key) {
                z.totals[i] = rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        if t.starts_with("No leaks") {
            z.no_leaks = true;
        }
        if let Some(rest) = t.strip_prefix("zdb_blkptr_cb: Got error") {
            let bm = &rest[rest.find('<').unwrap()..=rest.find('>').unwrap()];
            z.errors.push(bm.to_string());
        }
        let key = if let Some(rest) = t.strip_prefix("[deferred free] ") {
            Some(format!("deferred {}", first_dva(rest)))
        } else if let Some(rest) = t.strip_prefix("objset ") {
            // objset X object Y level L offset O DVA[0]=<...> | EMBEDDED ...
            // zdb -bbbbb also prints holes born after hole_birth (before
            // its hole check): they are not counted.
            let w: Vec<&str> = rest.split_whitespace().collect();
            if w.len() > 7 && w[1] == "object" && w[3] == "level" && w[7] != "HOLE" {
                let what = if w[7] == "EMBEDDED" { "EMBEDDED".to_string() } else { first_dva(rest) };
                Some(format!("{} {} {} {what}", w[0], w[2], w[4]))
            } else {
                None
            }
        } else {
            None
        };
        if let Some(k) = key {
            *z.bps.entry(k).or_default() += 1;
        }
    }
    z
}

/// `DVA[0]=<v:off:asize>` of a zdb block pointer line (or the whole line
/// when it has none, which then matches nothing of ours).
fn first_dva(s: &str) -> String {
    match s.find("DVA[0]=") {
        Some(at) => s[at..].split_whitespace().next().unwrap().to_string(),
        None => s.to_string(),
    }
}

/// Our block pointers, keyed like [`parse_zdb`]'s.
fn our_bps(pool: &mut Pool<FileDevice>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let t = traverse(pool, Limits::default(), &mut |_, v| {
        let d = v.bp.dva[0];
        let dva = format!("DVA[0]=<{}:{:x}:{:x}>", d.vdev(), d.offset(), d.asize());
        let key = match v.origin {
            Origin::Deferred => format!("deferred {dva}"),
            _ => {
                let what = if v.bp.is_embedded() { "EMBEDDED".to_string() } else { dva };
                format!("{} {} {} {what}", v.bookmark.objset, v.bookmark.object, v.bookmark.level)
            }
        };
        *out.entry(key).or_default() += 1;
    });
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    out
}

fn totals(r: &VerifyReport) -> [u64; 4] {
    [r.total.count, r.total.logical, r.total.physical, r.total.allocated]
}

/// Runs zdb on every `(name, files)` at once (its time is mostly start-up).
fn run_zdb(
    zdb: &Path,
    jobs: Vec<(String, Vec<PathBuf>)>,
    args: &'static [&'static str],
) -> Vec<(String, Zdb, bool)> {
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|(name, files)| {
            let mut cmd = by_pool::zdb_command(zdb, &files, args);
            cmd.arg(&name);
            std::thread::spawn(move || {
                let out = cmd.output().expect("run zdb");
                (name, parse_zdb(&String::from_utf8_lossy(&out.stdout)), out.status.success())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn verify_matches_zdb_bcc_on_every_pool() {
    let Some(pools) = common::pools() else { return };
    let Some(zdb) = common::zdb() else { return };
    let by_pool = by_pool::pools_by_name(pools);
    let jobs: Vec<_> = by_pool.iter().map(|(n, f)| (n.clone(), f.clone())).collect();
    let mut errors = Vec::new();
    for (name, z, ok) in run_zdb(&zdb, jobs, &["-bbbbbcc"]) {
        let files = &by_pool[&name];
        let mut pool = open(files);
        let report = verify(&mut pool, Limits::default());
        let zdb_clean = ok && z.no_leaks && z.errors.is_empty();
        if z.totals[0] == 0 {
            errors.push(format!("{name}: no bp count from zdb"));
            continue;
        }
        if report.is_clean() != zdb_clean {
            errors.push(format!("{name}: zdb clean {zdb_clean}, ours {}:\n{report}", report.is_clean()));
        }
        if totals(&report) != z.totals {
            errors.push(format!("{name}: totals {:?}, zdb {:?}", totals(&report), z.totals));
        }
        let ours = our_bps(&mut pool);
        if ours != z.bps {
            let only_ours: Vec<_> = ours.iter().filter(|(k, n)| z.bps.get(*k) != Some(n)).collect();
            let only_zdb: Vec<_> = z.bps.iter().filter(|(k, n)| ours.get(*k) != Some(n)).collect();
            errors.push(format!(
                "{name}: block pointers differ:\n  ours only {only_ours:?}\n  zdb only {only_zdb:?}"
            ));
        }
        eprintln!(
            "{name}: {} block pointers, {} copies checked, {} repaired, clean {} (zdb: {:?}, clean {zdb_clean})",
            report.total.count,
            report.copies_checked,
            report.repaired.len(),
            report.is_clean(),
            z.totals
        );
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Copies `files` into a fresh directory under the target's scratch space
/// (sparse), flipping one byte at `(file index, offset)`.
fn damaged_copy(tag: &str, files: &[PathBuf], flips: &[(usize, u64)]) -> Vec<PathBuf> {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("osv-zfs-verify-{tag}-{}", std::process::id()));
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let dir = base.join(format!("d{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let to = dir.join(f.file_name().unwrap());
        let st = std::process::Command::new("cp").arg("--sparse=always").arg(f).arg(&to).status().unwrap();
        assert!(st.success());
        out.push(to);
    }
    for &(i, at) in flips {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&out[i]).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x10;
        f.write_all_at(&b, at).unwrap();
    }
    out
}

/// A level-0 block of a plain file with one copy on a leaf or mirror vdev:
/// its bookmark text and its device offset.
fn single_copy_file_block(files: &[PathBuf]) -> (String, u64) {
    let mut pool = open(files);
    let mut found = None;
    traverse(&mut pool, Limits::default(), &mut |_, v| {
        let bp = v.bp;
        if found.is_none()
            && v.origin == Origin::Tree
            && !bp.is_embedded()
            && bp.level() == 0
            && bp.object_type() == 19
            && bp.copies() == 1
        {
            found = Some((v.bookmark.to_string(), bp.dva[0].offset() + osv_zfs::vdev::VDEV_LABEL_START_SIZE));
        }
    });
    found.expect("a single-copy file block")
}

#[test]
fn damage_is_found_where_zdb_finds_it() {
    let Some(pools) = common::pools() else { return };
    let Some(zdb) = common::zdb() else { return };
    let by_pool = by_pool::pools_by_name(pools);
    // v5-pool: the only copy of a file block flipped. pool-v3mirror: the
    // same on one side of the mirror only.
    let v5 = &by_pool["v5-pool"];
    let (bm, at) = single_copy_file_block(v5);
    let bad = damaged_copy("v5", v5, &[(0, at + 3)]);
    let mirror = &by_pool["pool-v3mirror"];
    let (mbm, mat) = single_copy_file_block(mirror);
    let side = damaged_copy("mirror", mirror, &[(1, mat + 3)]);
    let jobs = vec![("v5-pool".to_string(), bad.clone()), ("pool-v3mirror".to_string(), side.clone())];
    let results = run_zdb(&zdb, jobs, &["-bcc"]);
    for (name, z, _) in &results {
        let files = if name == "v5-pool" { &bad } else { &side };
        let mut pool = open(files);
        let report = verify(&mut pool, Limits::default());
        eprintln!("{name} damaged: zdb errors {:?}; ours:\n{report}", z.errors);
        if name == "v5-pool" {
            assert_eq!(z.errors, vec![bm.clone()], "zdb names the flipped block");
            assert!(!report.is_clean());
            assert_eq!(report.bad.len(), 1);
            assert_eq!(report.bad[0].bookmark.to_string(), bm);
            assert!(matches!(report.bad[0].problem, Problem::Unreadable(_)));
        } else {
            assert!(z.errors.is_empty() && z.no_leaks, "zdb repairs from the other side");
            assert!(report.is_clean(), "{report}");
            assert_eq!(report.repaired.len(), 1, "{report}");
            assert_eq!(report.repaired[0].bookmark.to_string(), mbm);
            assert!(matches!(report.repaired[0].problem, Problem::Repaired(f) if f.bad_mirror_sides == 1));
        }
        assert_eq!(totals(&report), z.totals);
    }
    let _ = std::fs::remove_dir_all(bad[0].parent().unwrap().parent().unwrap());
    let _ = std::fs::remove_dir_all(side[0].parent().unwrap().parent().unwrap());
}

/// `osv-zfs verify` against `zdb -bcc` wall time on the pool with the most
/// logical bytes (run with `--ignored --nocapture`; build with
/// `--release` for our side's real speed). zdb's time is mostly its fixed
/// start-up (loading every metaslab).
#[test]
#[ignore]
fn verify_vs_zdb_wall_time() {
    let Some(pools) = common::pools() else { return };
    let Some(zdb) = common::zdb() else { return };
    let by_pool = by_pool::pools_by_name(pools);
    let mut best = None;
    for (name, files) in &by_pool {
        let mut pool = open(files);
        let r = verify(&mut pool, Limits::default());
        if best.as_ref().is_none_or(|(_, _, l)| r.total.logical > *l) {
            best = Some((name.clone(), files.clone(), r.total.logical));
        }
    }
    let (name, files, _) = best.unwrap();
    let t = std::time::Instant::now();
    let mut pool = open(&files);
    let r = verify(&mut pool, Limits::default());
    let ours = t.elapsed();
    assert!(r.is_clean());
    let t = std::time::Instant::now();
    let out = by_pool::zdb_command(&zdb, &files, &["-bcc", &name]).output().unwrap();
    let theirs = t.elapsed();
    assert!(out.status.success());
    eprintln!(
        "{name}: {} blocks, {} logical bytes: osv-zfs verify {:.3} s, zdb -bcc {:.3} s, ratio {:.1}x",
        r.total.count,
        r.total.logical,
        ours.as_secs_f64(),
        theirs.as_secs_f64(),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}
