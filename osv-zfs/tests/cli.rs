//! The `osv-zfs` host tool, run as a user would.
#![cfg(feature = "cli")]

mod common;

use std::process::{Command, Output};

fn osv_zfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_osv-zfs")).args(args).output().expect("run osv-zfs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn usage_errors_exit_non_zero() {
    let out = osv_zfs(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("usage: osv-zfs labels FILE..."));
    assert_eq!(osv_zfs(&["labels"]).status.code(), Some(2));
    assert_eq!(osv_zfs(&["frobnicate", "x"]).status.code(), Some(2));
    assert!(osv_zfs(&["--help"]).status.success());
}

#[test]
fn bad_files_are_named_and_fail_without_panic() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let small = dir.join("osv-zfs-cli-small.img");
    std::fs::write(&small, [0u8; 4096]).unwrap();
    let zeros = dir.join("osv-zfs-cli-zeros.img");
    std::fs::File::create(&zeros).unwrap().set_len(4 << 20).unwrap();
    let missing = dir.join("osv-zfs-cli-missing.img");
    let _ = std::fs::remove_file(&missing);

    let out = osv_zfs(&["labels", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("osv-zfs-cli-missing.img: cannot open"));

    let out = osv_zfs(&["labels", small.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("device too small"), "{}", text(&out.stderr));

    let out = osv_zfs(&["labels", zeros.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no valid label"));
    assert!(text(&out.stdout).contains("LABEL 3 at 0x3c0000: CORRUPT"));
}

#[test]
fn prints_labels_and_active_uberblock_of_real_pools() {
    let Some(pools) = common::pools() else { return };
    let file = |name: &str| {
        pools.iter().flat_map(|p| &p.files).find(|f| f.ends_with(name)).unwrap().to_str().unwrap().to_string()
    };
    let v1 = file("zfs-pool-v1.dat");
    let out = osv_zfs(&["labels", &v1]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("LABEL 0 at 0x0: valid\n    version: 1\n    name: 'v1-pool'\n"));
    assert!(stdout.contains("ACTIVE UBERBLOCK: label 0 slot 14\n    byte order = BE\n"));
    assert!(stdout.contains("    txg = 14\n"));
    assert!(stdout.contains("    rootbp = DVA[0]=<0:208000:400> [L0 type 11] fletcher4 uncompressed BE size=400L/400P birth=14L/14P fill=19 "));

    // One corrupt copy is reported; the file is still readable.
    let broken = file("zfs-broken-mirror1.dat");
    let out = osv_zfs(&["labels", &broken, &v1]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("LABEL 2 at 0x3f40000: CORRUPT (no embedded checksum trailer (bad zec_magic))"));
    assert!(stdout.contains("name: 'zfs-broken-mirror'"));
    assert!(stdout.contains("name: 'v1-pool'"));
}

#[test]
fn datasets_lists_real_pools_and_fails_cleanly() {
    assert_eq!(osv_zfs(&["datasets"]).status.code(), Some(2));
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let zeros = dir.join("osv-zfs-cli-ds-zeros.img");
    std::fs::File::create(&zeros).unwrap().set_len(4 << 20).unwrap();
    let out = osv_zfs(&["datasets", zeros.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot open pool: no valid vdev label"), "{}", text(&out.stderr));
    let empty = dir.join("osv-zfs-cli-ds-empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = osv_zfs(&["datasets", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no vdev file with a valid label"));

    let Some(pools) = common::pools() else { return };
    // A directory holding the vdev files of one pool (raidz1 over 4).
    let zol = pools.iter().find(|p| p.name == "zol-0.6.2").unwrap();
    let parent = zol.files[0].parent().unwrap().to_str().unwrap().to_string();
    let out = osv_zfs(&["datasets", &parent]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "zol-0.6.2\tfilesystem\tZPL\t21\t1\t8\t-\n\
         zol-0.6.2/clone\tfilesystem\tZPL\t49\t111\t247\tzol-0.6.2/fs@snap\n\
         zol-0.6.2/fs\tfilesystem\tZPL\t40\t48\t247\t-\n\
         zol-0.6.2/fs@snap\tsnapshot\tZPL\t44\t107\t170\t-\n"
    );
    // Separate files of a mirror, one of them with a corrupt label.
    let files: Vec<String> = pools
        .iter()
        .filter(|p| p.name.starts_with("zfs-broken-mirror"))
        .flat_map(|p| &p.files)
        .map(|f| f.to_str().unwrap().to_string())
        .collect();
    let mut args = vec!["datasets"];
    args.extend(files.iter().map(String::as_str));
    let out = osv_zfs(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "zfs-broken-mirror\tfilesystem\tZPL\t5\t4\t4\t-\n");
}

#[test]
fn ls_cat_and_manifest_read_real_filesystems() {
    let Some(pools) = common::pools() else { return };
    let dir = |name: &str| {
        let p = pools.iter().find(|p| p.name == name).unwrap();
        p.files[0].parent().unwrap().to_str().unwrap().to_string()
    };
    let v5 = dir("zfs-pool-v5");
    let out = osv_zfs(&["ls", &v5, "v5-pool"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "other\t-\t/cdev\nother\t-\t/dev\ndir\t-\t/dir\nsymlink\t3\t/link -> dir\nfile\t26\t/v5-pool.txt\n"
    );
    let out = osv_zfs(&["cat", &v5, "v5-pool", "/v5-pool.txt"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "This is a version 5 pool.\n");
    let out = osv_zfs(&["cat", &v5, "v5-pool", "/dir"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/dir: not a regular file"), "{}", text(&out.stderr));
    let out = osv_zfs(&["cat", &v5, "v5-pool", "/nope"]);
    assert!(text(&out.stderr).contains("/nope: no such file or directory"), "{}", text(&out.stderr));
    let out = osv_zfs(&["ls", &v5, "v5-pool/nope"]);
    assert!(text(&out.stderr).contains("no dataset v5-pool/nope"));

    // SA-based: a snapshot, recursively.
    let zol = dir("zol-0.6.2");
    let out = osv_zfs(&["ls", "-R", &zol, "zol-0.6.2/fs@snap", "/L3D1/L2D1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("dir\t-\t/L3D1/L2D1/\n"), "{stdout}");
    assert!(stdout.contains("file\t4096\t/L3D1/L2D1/L1D1/L0F1\n"), "{stdout}");

    // The encrypted datasets print one line each.
    let out = osv_zfs(&["manifest", &dir("missing_ivset")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("missing_ivset/testfs\t-\tencrypted\t-\t-\n"), "{stdout}");
    assert!(stdout.contains("missing_ivset/testfs@snap1\t-\tencrypted\t-\t-\n"), "{stdout}");
    let out = osv_zfs(&["ls", &dir("missing_ivset"), "missing_ivset/testfs"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("dataset is encrypted"), "{}", text(&out.stderr));
}
