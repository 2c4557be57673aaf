//! Our labels against OpenZFS's own reading of them.
//!
//! For every vdev file of every test pool, `zdb -llluuu FILE` prints each
//! label's status (`Bad label cksum`, `failed to unpack`), its config nvlist,
//! and every uberblock slot (valid with its fields, or `invalid`). We require:
//! - the same label status (checksum failure, unpack failure);
//! - the config nvlist, printed the way zdb prints it, identical line for line;
//! - the same valid uberblock slots in every label, with identical magic,
//!   version, txg, guid_sum, timestamp, mmp_magic, checkpoint_txg and root
//!   block pointer (every DVA, checksum and compression function, byte
//!   order, sizes, births, fill, checksum words);
//! - the same active uberblock (greatest txg, then timestamp).
//!
//! And per pool, `zdb -e -p DIR... -u POOL` (zdb imports the pool read-only
//! in user space and prints the uberblock it chose) against the greatest
//! uberblock over all the pool's vdevs, whose `guid_sum` must also equal the
//! sum of the guids in the label's vdev tree.
#![cfg(feature = "std")]

mod common;

use osv_zfs::label::VdevLabels;
use osv_zfs::nvlist::{packed_endian, NvList};
use osv_zfs::{BlockDevice, Error, FileDevice};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// What zdb printed for one label.
#[derive(Default, Debug)]
struct ZdbLabel {
    bad_cksum: bool,
    unpack_failed: bool,
    nvlist: Vec<String>,
    /// Slot -> `None` for "invalid", else the `key = value` fields.
    uberblocks: BTreeMap<usize, Option<BTreeMap<String, String>>>,
}

fn parse_zdb(text: &str) -> BTreeMap<usize, ZdbLabel> {
    let mut labels: BTreeMap<usize, ZdbLabel> = BTreeMap::new();
    let mut current: Option<usize> = None;
    let mut in_nvlist = false;
    let mut slot: Option<usize> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("failed to unpack label ") {
            let l: usize = rest.trim().parse().unwrap();
            labels.entry(l).or_default().unpack_failed = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("LABEL ") {
            let l: usize = rest.split_whitespace().next().unwrap().parse().unwrap();
            let entry = labels.entry(l).or_default();
            entry.bad_cksum |= rest.contains("Bad label cksum");
            current = Some(l);
            in_nvlist = true;
            slot = None;
            continue;
        }
        let Some(l) = current else { continue };
        let entry = labels.get_mut(&l).unwrap();
        if let Some(rest) = line.strip_prefix("    Uberblock[") {
            in_nvlist = false;
            let (n, tail) = rest.split_once(']').unwrap();
            let n: usize = n.parse().unwrap();
            let valid = !tail.contains("invalid");
            entry.uberblocks.insert(n, valid.then(BTreeMap::new));
            slot = valid.then_some(n);
            continue;
        }
        if line.starts_with("-----") {
            continue;
        }
        if line.starts_with("    labels = ") {
            in_nvlist = false;
            continue;
        }
        if in_nvlist && line.starts_with("    ") {
            entry.nvlist.push(line.to_string());
            continue;
        }
        if let (Some(n), Some(field)) = (slot, line.strip_prefix('\t')) {
            if let Some((k, v)) = field.split_once(" = ") {
                if let Some(Some(fields)) = entry.uberblocks.get_mut(&n) {
                    fields.insert(k.to_string(), v.to_string());
                }
            }
        }
    }
    labels
}

/// Compares one vdev file; returns the mismatches found and a summary.
fn compare_file(zdb: &Path, pool: &str, file: &Path) -> (Vec<String>, String) {
    let name = format!("{pool}/{}", file.file_name().unwrap().to_string_lossy());
    let mut errors = Vec::new();
    let out = Command::new(zdb).arg("-llluuu").arg(file).output().expect("run zdb");
    let text = String::from_utf8_lossy(&out.stdout);
    let theirs = parse_zdb(&text);

    let mut dev = FileDevice::open(file).unwrap();
    let ours = VdevLabels::read(&mut dev).unwrap();
    let mut compared_ubs = 0;
    let mut err = |msg: String| errors.push(format!("{name}: {msg}"));

    for label in &ours.labels {
        let l = label.index;
        let Some(z) = theirs.get(&l) else {
            err(format!("zdb printed nothing for label {l}"));
            continue;
        };
        let our_bad_cksum = matches!(label.config, Err(Error::BadChecksum | Error::BadEckMagic));
        if our_bad_cksum != z.bad_cksum {
            err(format!(
                "label {l}: checksum ours {:?}, zdb bad={}",
                label.config.as_ref().err(),
                z.bad_cksum
            ));
        }
        match &label.config {
            Ok(config) => {
                if z.unpack_failed {
                    err(format!("label {l}: we decoded it, zdb failed to unpack"));
                }
                let mut mine = String::new();
                config.write_zdb(&mut mine, 4).unwrap();
                let mine: Vec<&str> = mine.lines().collect();
                if mine != z.nvlist {
                    err(format!(
                        "label {l}: nvlist differs\n--- ours\n{}\n--- zdb\n{}",
                        mine.join("\n"),
                        z.nvlist.join("\n")
                    ));
                }
            }
            Err(e) => {
                if !z.unpack_failed && !z.bad_cksum {
                    err(format!("label {l}: ours {e}, zdb read it"));
                }
            }
        }
        for (n, slot) in label.uberblocks.iter().enumerate() {
            let zslot = z.uberblocks.get(&n);
            match (slot, zslot) {
                (Err(_), Some(None)) => {}
                (Ok(ub), Some(Some(f))) => {
                    compared_ubs += 1;
                    let bp = &ub.rootbp;
                    let expect = [
                        ("magic", format!("{:016x}", osv_zfs::uberblock::UBERBLOCK_MAGIC)),
                        ("version", ub.version.to_string()),
                        ("txg", ub.txg.to_string()),
                        ("guid_sum", ub.guid_sum.to_string()),
                        ("mmp_magic", format!("{:016x}", ub.mmp_magic)),
                        ("checkpoint_txg", ub.checkpoint_txg.to_string()),
                    ];
                    for (k, v) in expect {
                        if f.get(k) != Some(&v) {
                            err(format!("label {l} ub {n}: {k} ours {v}, zdb {:?}", f.get(k)));
                        }
                    }
                    let ts = f.get("timestamp").and_then(|t| t.split_whitespace().next());
                    if ts != Some(ub.timestamp.to_string().as_str()) {
                        err(format!("label {l} ub {n}: timestamp ours {}, zdb {ts:?}", ub.timestamp));
                    }
                    let zbp: Vec<&str> =
                        f.get("bp").map(|s| s.split_whitespace().collect()).unwrap_or_default();
                    let mut tokens: Vec<String> = bp
                        .dva
                        .iter()
                        .enumerate()
                        .filter(|(_, d)| d.is_valid())
                        .map(|(i, d)| format!("DVA[{i}]=<{}:{:x}:{:x}>", d.vdev(), d.offset(), d.asize()))
                        .collect();
                    let zdvas = zbp.iter().filter(|t| t.starts_with("DVA[")).count();
                    if zdvas != tokens.len() {
                        err(format!("label {l} ub {n}: {} DVAs, zdb {zdvas}", tokens.len()));
                    }
                    tokens.extend([
                        osv_zfs::blkptr::checksum_name(bp.checksum()).to_string(),
                        osv_zfs::blkptr::compression_name(bp.compression()).to_string(),
                        bp.byte_order().as_str().to_string(),
                        format!("size={:x}L/{:x}P", bp.lsize(), bp.psize()),
                        format!("birth={}L/{}P", bp.birth, bp.physical_birth()),
                        format!("fill={}", bp.fill),
                        format!("cksum={}", bp.cksum),
                        format!("[L{}", bp.level()),
                    ]);
                    for t in tokens {
                        if !zbp.contains(&t.as_str()) {
                            err(format!("label {l} ub {n}: rootbp token {t} not in zdb's {zbp:?}"));
                        }
                    }
                }
                (ours, theirs) => err(format!(
                    "label {l} uberblock {n}: ours {:?}, zdb {}",
                    ours.as_ref().map(|u| u.txg),
                    match theirs {
                        None => "nothing",
                        Some(None) => "invalid",
                        Some(Some(_)) => "valid",
                    }
                )),
            }
        }
    }

    // The active uberblock: zdb's greatest (txg, timestamp) over all labels.
    let zbest = theirs
        .values()
        .flat_map(|z| z.uberblocks.values().flatten())
        .filter_map(|f| {
            let txg: u64 = f.get("txg")?.parse().ok()?;
            let ts: u64 = f.get("timestamp")?.split_whitespace().next()?.parse().ok()?;
            Some((txg, ts))
        })
        .max();
    let ours_best = ours.active_uberblock().map(|a| (a.uberblock.txg.0, a.uberblock.timestamp));
    if zbest != ours_best {
        err(format!("active uberblock ours {ours_best:?}, zdb {zbest:?}"));
    }
    let valid = ours.labels.iter().filter(|l| l.is_valid()).count();
    let summary = format!(
        "{name}: {valid}/4 labels valid, {compared_ubs} uberblocks compared, active txg {:?}",
        ours_best.map(|b| b.0)
    );
    (errors, summary)
}

#[test]
fn labels_and_uberblocks_match_zdb() {
    let Some(pools) = common::pools() else { return };
    let Some(zdb) = common::zdb() else { return };
    let mut errors = Vec::new();
    let mut files = 0;
    for pool in pools {
        for file in &pool.files {
            let (errs, summary) = compare_file(&zdb, &pool.name, file);
            eprintln!("{summary}");
            errors.extend(errs);
            files += 1;
        }
    }
    assert!(files >= 20, "only {files} vdev files found");
    assert!(errors.is_empty(), "{} mismatches:\n{}", errors.len(), errors.join("\n"));
}

#[test]
fn broken_mirror_label_2_is_detected() {
    let Some(pools) = common::pools() else { return };
    let file = pools
        .iter()
        .flat_map(|p| &p.files)
        .find(|f| f.ends_with("zfs-broken-mirror1.dat"))
        .expect("zfs-broken-mirror1.dat in the test data");
    let labels = VdevLabels::read(&mut FileDevice::open(file).unwrap()).unwrap();
    let valid: Vec<bool> = labels.labels.iter().map(|l| l.is_valid()).collect();
    assert_eq!(valid, [true, true, false, true]);
    assert!(matches!(labels.labels[2].config, Err(Error::BadChecksum | Error::BadEckMagic)));
    // The other copies carry the pool.
    let config = labels.config().unwrap();
    assert_eq!(config.get_str("name"), Some("zfs-broken-mirror"));
    assert_eq!(config.get_u64("version"), Some(2));
    let children = config.get_nvlist("vdev_tree").unwrap().get_nvlist_array("children").unwrap();
    assert_eq!(children.len(), 2);
    assert!(labels.active_uberblock().is_some());
}

/// Our XDR encoder reproduces every real label byte for byte: a strong
/// check of the decoder (nothing dropped) and of the size fields.
#[test]
fn real_labels_repack_byte_identical() {
    use osv_zfs::label::{VDEV_PHYS_OFFSET, VDEV_PHYS_SIZE};
    let Some(pools) = common::pools() else { return };
    let mut checked = 0;
    for file in pools.iter().flat_map(|p| &p.files) {
        let mut dev = FileDevice::open(file).unwrap();
        let labels = VdevLabels::read(&mut dev).unwrap();
        for label in &labels.labels {
            let Ok(config) = &label.config else { continue };
            let mut phys = vec![0u8; VDEV_PHYS_SIZE];
            dev.read_at(label.offset + VDEV_PHYS_OFFSET, &mut phys).unwrap();
            let packed = config.pack(packed_endian(&phys).unwrap()).unwrap();
            assert_eq!(&phys[..packed.len()], &packed[..], "{} label {}", file.display(), label.index);
            assert_eq!(&NvList::unpack(&packed).unwrap(), config);
            checked += 1;
        }
    }
    assert!(checked >= 80, "only {checked} labels checked");
}

/// Every pool in the test data, by name, in the byte order the README
/// documents (big-endian pools from SPARC).
#[test]
fn byte_orders_as_documented() {
    let Some(pools) = common::pools() else { return };
    let order = |name: &str| {
        let pool = pools.iter().find(|p| p.name == name).unwrap();
        let labels = VdevLabels::read(&mut FileDevice::open(&pool.files[0]).unwrap()).unwrap();
        labels.active_uberblock().unwrap().uberblock.endian
    };
    assert_eq!(order("zfs-pool-v1"), osv_zfs::Endian::Big);
    assert_eq!(order("zfs-pool-v15"), osv_zfs::Endian::Big);
    assert_eq!(order("zfs-broken-mirror1"), osv_zfs::Endian::Big);
    assert_eq!(order("unclean_export"), osv_zfs::Endian::Little);
}

/// Sum of `pool_guid` and every `guid` in the vdev tree: what `ub_guid_sum`
/// holds for a pool with one top-level vdev (`vdev_guid_sum`, vdev.c, summed
/// from the root vdev, whose guid is the pool guid).
fn guid_sum(config: &NvList) -> u64 {
    fn tree(nv: &NvList) -> u64 {
        let own = nv.get_u64("guid").unwrap_or(0);
        let children = nv.get_nvlist_array("children").unwrap_or(&[]);
        children.iter().fold(own, |acc, c| acc.wrapping_add(tree(c)))
    }
    let root = config.get_u64("pool_guid").unwrap();
    root.wrapping_add(tree(config.get_nvlist("vdev_tree").unwrap()))
}

#[test]
fn active_uberblock_matches_zdb_import() {
    let Some(pools) = common::pools() else { return };
    let Some(zdb) = common::zdb() else { return };
    // Group the vdev files by pool name, as read from their labels.
    let mut by_pool: BTreeMap<String, Vec<(std::path::PathBuf, VdevLabels)>> = BTreeMap::new();
    for file in pools.iter().flat_map(|p| &p.files) {
        let labels = VdevLabels::read(&mut FileDevice::open(file).unwrap()).unwrap();
        let name = labels.config().unwrap().get_str("name").unwrap().to_string();
        by_pool.entry(name).or_default().push((file.clone(), labels));
    }
    assert!(by_pool.len() >= 14, "only {} pools", by_pool.len());
    let mut errors = Vec::new();
    for (name, devs) in &by_pool {
        let mut cmd = Command::new(&zdb);
        cmd.arg("-e");
        for (file, _) in devs {
            cmd.arg("-p").arg(file.parent().unwrap());
        }
        let out = cmd.arg("-u").arg(name).output().expect("run zdb");
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: BTreeMap<&str, &str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Uberblock:"))
            .filter_map(|l| l.strip_prefix('\t')?.split_once(" = "))
            .collect();
        let best = devs
            .iter()
            .filter_map(|(_, l)| l.active_uberblock())
            .max_by(|a, b| a.uberblock.cmp_active(&b.uberblock))
            .expect("an active uberblock")
            .uberblock;
        let ts = best.timestamp.to_string();
        let theirs_ts = fields.get("timestamp").and_then(|t| t.split_whitespace().next());
        let bp = best.rootbp.to_string();
        let theirs_bp = fields.get("bp").copied().unwrap_or("");
        let checks = [
            ("txg", fields.get("txg").copied() == Some(best.txg.to_string().as_str())),
            ("guid_sum", fields.get("guid_sum").copied() == Some(best.guid_sum.to_string().as_str())),
            ("version", fields.get("version").copied() == Some(best.version.to_string().as_str())),
            ("timestamp", theirs_ts == Some(ts.as_str())),
            // Same DVAs, sizes, births, fill and checksum words.
            (
                "bp",
                bp.split_whitespace()
                    .filter(|t| !t.starts_with('[') && !t.starts_with("type") && !t.ends_with(']'))
                    .all(|t| theirs_bp.split_whitespace().any(|z| z == t)),
            ),
            ("guid_sum of the vdev tree", guid_sum(devs[0].1.config().unwrap()) == best.guid_sum),
        ];
        for (what, ok) in checks {
            if !ok {
                errors.push(format!(
                    "{name}: {what} differs: ours txg {} {bp}; zdb {fields:?}; stderr {}",
                    best.txg,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        eprintln!("{name}: {} vdev(s), active txg {} matches zdb", devs.len(), best.txg);
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
