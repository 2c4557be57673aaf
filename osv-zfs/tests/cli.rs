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
