//! Our pool reader against OpenZFS's own: the dataset list, every block of
//! every readable objset, and redundancy (mirror sides, raidz columns,
//! missing devices).
//!
//! For every test pool, `zdb -e -p DIR... -d POOL` prints one line per
//! dataset: `Dataset NAME [ZPL|ZVOL|META], ID n, cr_txg n, SIZE, N objects`.
//! We require the same datasets with the same objset type, ID (the DSL
//! dataset object), creation txg and object count, and the MOS object count
//! equal to the root block pointer's fill.
#![cfg(feature = "std")]

mod common;

use osv_zfs::pool::{DatasetInfo, Pool};
use osv_zfs::{BlockDevice, Error, FileDevice};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// Every pool of the test data: name -> its vdev files.
fn pools_by_name() -> Option<BTreeMap<String, Vec<PathBuf>>> {
    Some(common::pools_by_name(common::pools()?))
}

fn open(files: &[PathBuf]) -> osv_zfs::Result<Pool<FileDevice>> {
    Pool::open(files.iter().map(|f| FileDevice::open(f).unwrap()).collect())
}

/// One dataset in zdb's terms: (name, type, id, cr_txg, objects).
type Line = (String, String, u64, u64, u64);

/// One line of ours in zdb's terms.
fn ours(d: &DatasetInfo) -> Line {
    (d.name.clone(), d.os_type_name().to_string(), d.id, d.creation_txg, d.objects)
}

/// Parses zdb's `Dataset` lines; `mos` separately.
fn parse_zdb(text: &str) -> (Vec<Line>, Option<u64>) {
    let mut list = Vec::new();
    let mut mos = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("Dataset ") else { continue };
        let (name, rest) = rest.split_once(" [").unwrap();
        let (ty, rest) = rest.split_once("], ID ").unwrap();
        let (id, rest) = rest.split_once(", cr_txg ").unwrap();
        let (txg, rest) = rest.split_once(", ").unwrap();
        let objects = rest.rsplit_once(", ").unwrap().1.strip_suffix(" objects").unwrap();
        let objects: u64 = objects.parse().unwrap();
        if name == "mos" {
            mos = Some(objects);
            continue;
        }
        list.push((name.to_string(), ty.to_string(), id.parse().unwrap(), txg.parse().unwrap(), objects));
    }
    list.sort();
    (list, mos)
}

#[test]
fn datasets_match_zdb() {
    let Some(by_pool) = pools_by_name() else { return };
    let Some(zdb) = common::zdb() else { return };
    // zdb spends its second mostly waiting: run them all at once.
    let jobs: Vec<_> = by_pool
        .iter()
        .map(|(name, files)| {
            let mut cmd = Command::new(&zdb);
            cmd.arg("-e");
            for f in files {
                cmd.arg("-p").arg(f.parent().unwrap());
            }
            cmd.arg("-d").arg(name);
            let name = name.clone();
            std::thread::spawn(move || (name, cmd.output().expect("run zdb")))
        })
        .collect();
    let mut errors = Vec::new();
    for job in jobs {
        let (name, out) = job.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (theirs, mos_objects) = parse_zdb(&text);
        if !out.status.success() || theirs.is_empty() {
            errors.push(format!("{name}: zdb failed: {}", String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        let mut pool = match open(&by_pool[&name]) {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("{name}: cannot open: {e}"));
                continue;
            }
        };
        let list = match pool.datasets() {
            Ok(l) => l,
            Err(e) => {
                errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut mine: Vec<_> = list.iter().map(ours).collect();
        mine.sort();
        if mine != theirs {
            errors.push(format!("{name}: datasets differ:\n  ours {mine:?}\n  zdb  {theirs:?}"));
        }
        if mos_objects != Some(pool.uberblock.rootbp.fill) {
            errors.push(format!("{name}: MOS objects {} vs zdb {mos_objects:?}", pool.uberblock.rootbp.fill));
        }
        eprintln!("{name}: {} dataset(s) match zdb", mine.len());
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn clones_name_their_origin() {
    let Some(by_pool) = pools_by_name() else { return };
    let mut pool = open(&by_pool["zol-0.6.2"]).unwrap();
    let list = pool.datasets().unwrap();
    let clone = list.iter().find(|d| d.name == "zol-0.6.2/clone").unwrap();
    assert_eq!(clone.origin.as_deref(), Some("zol-0.6.2/fs@snap"));
    assert!(list.iter().filter(|d| d.name != "zol-0.6.2/clone").all(|d| d.origin.is_none()));
    // Volumes and their snapshots are marked.
    let mut pool = open(&by_pool["missing_ivset"]).unwrap();
    let vols: Vec<_> = pool.datasets().unwrap().into_iter().filter(|d| d.os_type_name() == "ZVOL").collect();
    assert_eq!(vols.len(), 4);
}

/// Per compression function, how many blocks were read.
type Census = BTreeMap<&'static str, usize>;

/// Reads every level-0 block of every object of `pool`'s MOS and of every
/// dataset that is not encrypted; every block must verify and decompress.
fn read_everything(pool: &mut Pool<impl BlockDevice>) -> Result<Census, String> {
    let mut census = Census::new();
    let mut objsets = vec![pool.mos.clone()];
    for d in pool.datasets().map_err(|e| e.to_string())? {
        let ds = pool.dsl_dataset(d.id).map_err(|e| format!("{}: {e}", d.name))?;
        if ds.bp.is_encrypted() {
            continue;
        }
        objsets.push(pool.dataset_objset(d.id).map_err(|e| format!("{}: {e}", d.name))?);
    }
    for os in objsets {
        let meta = os.meta.phys().map_err(|e| e.to_string())?;
        let count = (meta.max_blkid() + 1) * (meta.data_block_size() / 512);
        let mut object = 1;
        while object < count {
            let dn = match pool.dnode(&os, object) {
                Ok(dn) => dn,
                Err(Error::NoSuchObject) => {
                    object += 1;
                    continue;
                }
                Err(e) => return Err(format!("objset {} object {object}: {e}", os.id)),
            };
            let phys = dn.phys().map_err(|e| e.to_string())?;
            for blkid in 0..=phys.max_blkid().min(1 << 12) {
                let bp = pool
                    .block_pointer(&dn, blkid)
                    .map_err(|e| format!("objset {} object {object}: {e}", os.id))?;
                let Some(bp) = bp else { continue };
                pool.read_block(&bp)
                    .map_err(|e| format!("objset {} object {object} block {blkid}: {e} ({bp})", os.id))?;
                let kind = if bp.is_embedded() {
                    "embedded"
                } else {
                    osv_zfs::blkptr::compression_name(bp.compression())
                };
                *census.entry(kind).or_default() += 1;
            }
            object += phys.slots() as u64;
        }
    }
    Ok(census)
}

#[test]
fn every_block_of_every_readable_objset_verifies() {
    let Some(by_pool) = pools_by_name() else { return };
    let mut errors = Vec::new();
    let mut total = Census::new();
    for (name, files) in &by_pool {
        let mut pool = open(files).unwrap();
        match read_everything(&mut pool) {
            Ok(census) => {
                eprintln!("{name}: {census:?}");
                if name == "testpool_zstd" && !census.contains_key("zstd") {
                    errors.push(format!("{name}: no zstd block read"));
                }
                for (k, v) in census {
                    *total.entry(k).or_default() += v;
                }
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    for kind in ["lzjb", "lz4", "zstd", "uncompressed", "embedded"] {
        assert!(total.contains_key(kind), "no {kind} block in the whole test data: {total:?}");
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// A device that returns garbage for every sector of its data area (past
/// the front labels and before the back ones) whose index is `phase` modulo
/// `stride`: a disk gone bad, labels intact.
struct Rotten {
    inner: FileDevice,
    stride: u64,
    phase: u64,
}

impl BlockDevice for Rotten {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> osv_zfs::Result {
        self.inner.read_at(offset, buf)?;
        let (lo, hi) = (4 << 20, self.size() - (512 << 10));
        let end = offset + buf.len() as u64;
        // Spoil one byte of every bad sector the read touches.
        for sector in offset.max(lo) >> 9..=(end.min(hi).saturating_sub(1)) >> 9 {
            let p = (sector << 9).max(offset);
            if sector % self.stride == self.phase && p >= lo && p < end.min(hi) {
                buf[(p - offset) as usize] ^= 0xa5;
            }
        }
        Ok(())
    }
}

/// Opens `files` with device `bad` rotten (every sector when `stride` is
/// 1) and lists its datasets.
fn list_with_rot(files: &[PathBuf], bad: &[usize], stride: u64) -> Result<Vec<DatasetInfo>, String> {
    let devs = files
        .iter()
        .enumerate()
        .map(|(i, f)| Rotten {
            inner: FileDevice::open(f).unwrap(),
            stride: if bad.contains(&i) { stride } else { u64::MAX },
            phase: i as u64 % stride,
        })
        .collect();
    let mut pool = Pool::open(devs).map_err(|e| e.to_string())?;
    read_everything(&mut pool)?;
    pool.datasets().map_err(|e| e.to_string())
}

#[test]
fn mirror_and_raidz_survive_a_bad_or_missing_device() {
    let Some(by_pool) = pools_by_name() else { return };
    // The broken mirror's first file holds no data (zdb cannot import it
    // alone either): only its second side can stand alone.
    let cases: [(&str, &[usize]); 5] = [
        ("pool-v3mirror", &[0, 1, 2]),
        ("pool-v3raidz", &[0, 1, 2]),
        ("pool-v3raidz2", &[0, 1, 2]),
        ("zol-0.6.2", &[0, 1, 2, 3]),
        ("zfs-broken-mirror", &[0]),
    ];
    for (name, bad_ones) in cases {
        let t0 = std::time::Instant::now();
        let files = &by_pool[name];
        let clean = open(files).unwrap().datasets().unwrap();
        for &bad in bad_ones {
            // One device rotten through and through.
            assert_eq!(list_with_rot(files, &[bad], 1).as_ref(), Ok(&clean), "{name}: device {bad} rotten");
            // One device missing.
            let rest: Vec<_> =
                files.iter().enumerate().filter(|(i, _)| *i != bad).map(|(_, f)| f.clone()).collect();
            let mut pool = open(&rest).unwrap();
            read_everything(&mut pool).unwrap_or_else(|e| panic!("{name}: without device {bad}: {e}"));
            assert_eq!(pool.datasets().as_ref(), Ok(&clean), "{name}: without device {bad}");
        }
        eprintln!("{name}: every single bad or missing device survived ({:?})", t0.elapsed());
    }
    // raidz2 survives any two devices rotten or missing (rebuilt from P, Q
    // or both).
    let files = &by_pool["pool-v3raidz2"];
    let clean = open(files).unwrap().datasets().unwrap();
    for keep in 0..files.len() {
        let bad: Vec<usize> = (0..files.len()).filter(|&i| i != keep).collect();
        assert_eq!(list_with_rot(files, &bad, 1).as_ref(), Ok(&clean), "raidz2: devices {bad:?} rotten");
        let mut pool = open(&files[keep..keep + 1]).unwrap();
        read_everything(&mut pool).unwrap_or_else(|e| panic!("raidz2 with only device {keep}: {e}"));
        assert_eq!(pool.datasets().as_ref(), Ok(&clean), "raidz2 with only device {keep}");
    }
    // A three-way mirror survives two rotten sides.
    let files = &by_pool["pool-v3mirror"];
    let clean = open(files).unwrap().datasets().unwrap();
    assert_eq!(list_with_rot(files, &[0, 1], 1), Ok(clean.clone()));
    // Every sector bad on exactly one side of three: blocks of one sector
    // survive, larger ones are bad everywhere and must fail with a checksum
    // error naming no wrong data.
    match list_with_rot(files, &[0, 1, 2], 3) {
        Ok(list) => assert_eq!(list, clean),
        Err(e) => assert!(e.contains(&Error::NoValidCopy.to_string()), "{e}"),
    }
    // The broken mirror's empty side alone: a checksum failure, not a
    // device error.
    let broken = &by_pool["zfs-broken-mirror"];
    assert_eq!(open(&broken[..1]).unwrap_err(), Error::NoValidCopy);
}
