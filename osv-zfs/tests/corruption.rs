//! Single-bit flips in real pools: every read returns the right data
//! (repaired from ditto copies, mirror sides or raidz parity) or an error
//! naming the block; never wrong data, never a panic, never a hang.
//!
//! Per test pool, on an in-memory (sparse) copy of its vdev files:
//! 1. a clean run: [`traverse`] lists every block pointer reached through
//!    the objset trees, each read once for its contents;
//! 2. `OSV_ZFS_FLIPS` (default 1000) seeded flips, one at a time: mostly
//!    one bit inside one copy of a random block (a random DVA, a random
//!    mirror side or raidz column, parity included), then that block is
//!    read (`read_block`: must equal the clean contents or fail) and
//!    scrubbed (`scrub_block`: the damage must be seen); a few flips hit a
//!    vdev label (config or uberblock ring), then the pool is opened again
//!    and must find the same active uberblock and MOS; every 100th block
//!    flip also re-runs the whole `verify`, which must count every block
//!    and either be clean or name the flipped block.
//!
//! Each pool's sweep runs under `catch_unwind` on its own thread with a
//! deadline. Figures (flips, repaired, errors, time) are printed.
#![cfg(feature = "std")]

#[path = "common/by_pool.rs"]
mod by_pool;
mod common;

use osv_zfs::blkptr::BlockPointer;
use osv_zfs::pool::{BlockReader, Pool};
use osv_zfs::traverse::{traverse, Bookmark, Limits, Origin};
use osv_zfs::vdev::{RaidzMap, Vdev, VdevKind, VDEV_LABEL_START_SIZE};
use osv_zfs::verify::verify;
use osv_zfs::{BlockDevice, Error};
use std::cell::Cell;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: u64 = 64 << 10;
static ZEROS: [u8; CHUNK as usize] = [0; CHUNK as usize];

/// A vdev file in memory: only its non-zero 64 KiB chunks.
struct Sparse {
    size: u64,
    chunks: HashMap<u64, Vec<u8>>,
}

impl Sparse {
    fn load(path: &PathBuf) -> Sparse {
        let f = std::fs::File::open(path).unwrap();
        let size = f.metadata().unwrap().len();
        let mut chunks = HashMap::new();
        let mut buf = vec![0u8; CHUNK as usize];
        let mut at = 0;
        while at < size {
            let n = (size - at).min(CHUNK) as usize;
            f.read_exact_at(&mut buf[..n], at).unwrap();
            if buf[..n] != ZEROS[..n] {
                chunks.insert(at / CHUNK, buf[..n].to_vec());
            }
            at += CHUNK;
        }
        Sparse { size, chunks }
    }
}

/// One flipped bit somewhere in the pool: (device, byte offset, mask).
type Flip = Rc<Cell<Option<(usize, u64, u8)>>>;

/// A device over a [`Sparse`] image with the current flip applied.
struct FlipDevice {
    index: usize,
    image: Arc<Sparse>,
    flip: Flip,
}

impl BlockDevice for FlipDevice {
    fn size(&self) -> u64 {
        self.image.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> osv_zfs::Result {
        let end = offset.checked_add(buf.len() as u64).ok_or(Error::OutOfRange)?;
        if end > self.image.size {
            return Err(Error::OutOfRange);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let within = (pos % CHUNK) as usize;
            let n = (CHUNK as usize - within).min(buf.len() - done);
            match self.image.chunks.get(&(pos / CHUNK)) {
                Some(c) => buf[done..done + n].copy_from_slice(&c[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        if let Some((dev, at, mask)) = self.flip.get() {
            if dev == self.index && at >= offset && at < end {
                buf[(at - offset) as usize] ^= mask;
            }
        }
        Ok(())
    }
}

use common::Rng;

/// A random byte of one copy of a block at `offset` (`size` bytes) of
/// vdev `v`: its device and device offset.
fn locate(v: &Vdev, offset: u64, size: u64, rng: &mut Rng) -> Option<(usize, u64)> {
    match &v.kind {
        VdevKind::Leaf(dev) => Some(((*dev)?, VDEV_LABEL_START_SIZE + offset + rng.below(size))),
        VdevKind::Mirror(children) => {
            locate(&children[rng.below(children.len() as u64) as usize], offset, size, rng)
        }
        VdevKind::Raidz { nparity, children } => {
            let map = RaidzMap::new(offset, size, v.ashift, children.len(), *nparity).ok()?;
            let cols: Vec<_> = map.columns.iter().filter(|c| c.size > 0).collect();
            let col = cols[rng.below(cols.len() as u64) as usize];
            locate(&children[col.child], col.offset, col.size, rng)
        }
    }
}

#[derive(Debug, Default)]
struct Figures {
    flips: u64,
    block_flips: u64,
    label_flips: u64,
    repaired: u64,
    errors: u64,
    full_verifies: u64,
}

/// One block reached through the trees, with its clean contents
/// (logical: `None` for encrypted data, which needs the key) and its clean
/// physical bytes.
struct Target {
    bookmark: Bookmark,
    bp: BlockPointer,
    data: Option<Vec<u8>>,
    phys: Vec<u8>,
}

fn sweep(name: &str, images: Vec<Arc<Sparse>>, flips: u64, seed: u64) -> Figures {
    let flip: Flip = Rc::new(Cell::new(None));
    let devs: Vec<FlipDevice> = images
        .iter()
        .enumerate()
        .map(|(index, image)| FlipDevice { index, image: image.clone(), flip: flip.clone() })
        .collect();
    let mut pool = Pool::open(devs).unwrap_or_else(|e| panic!("{name}: clean open: {e}"));
    let clean_ub = pool.uberblock;
    let clean = verify(&mut pool, Limits::default());
    assert!(clean.is_clean(), "{name}: clean pool not clean:\n{clean}");
    let mut bps = Vec::new();
    traverse(&mut pool, Limits::default(), &mut |_, v| {
        if v.origin == Origin::Tree && !v.bp.is_embedded() && v.bp.dvas().iter().all(|d| !d.is_gang()) {
            bps.push((v.bookmark, *v.bp));
        }
    });
    let targets: Vec<Target> = bps
        .into_iter()
        .map(|(bookmark, bp)| {
            let data = (!bp.is_ciphertext()).then(|| {
                pool.read_block(&bp).unwrap_or_else(|e| panic!("{name}: clean read {bookmark}: {e}"))
            });
            let phys = pool
                .reader()
                .scrub_block(&bp)
                .data
                .unwrap_or_else(|e| panic!("{name}: clean scrub {bookmark}: {e}"));
            Target { bookmark, bp, data, phys }
        })
        .collect();
    assert!(!targets.is_empty());
    let tops: Vec<Option<Vdev>> = pool.reader().vdevs().to_vec();
    let mut rng = Rng(seed | 1);
    let mut f = Figures::default();
    let limits = Limits { max_visits: clean.total.count * 4 + 1000 };
    while f.flips < flips {
        f.flips += 1;
        let bit = 1u8 << rng.below(8);
        if rng.below(20) == 0 {
            // A label: vdev_phys_t or an uberblock slot of label l of a
            // random device (labels 0, 1 at the front; 2, 3 at the end).
            let dev = rng.below(images.len() as u64) as usize;
            let size = images[dev].size / (256 << 10) * (256 << 10);
            let l = rng.below(4);
            let base = if l < 2 { l * (256 << 10) } else { size - (4 - l) * (256 << 10) };
            let at = base + (16 << 10) + rng.below(240 << 10);
            flip.set(Some((dev, at, bit)));
            f.label_flips += 1;
            let devs: Vec<FlipDevice> = images
                .iter()
                .enumerate()
                .map(|(index, image)| FlipDevice { index, image: image.clone(), flip: flip.clone() })
                .collect();
            match Pool::open(devs) {
                Ok(p) => {
                    assert_eq!(
                        p.uberblock, clean_ub,
                        "{name}: label flip at {dev}:{at:#x} changed the uberblock"
                    );
                    assert_eq!(p.mos.meta, pool.mos.meta, "{name}: label flip changed the MOS");
                }
                Err(e) => {
                    panic!("{name}: one flipped label bit at {dev}:{at:#x} made the pool unreadable: {e}")
                }
            }
            continue;
        }
        let t = &targets[rng.below(targets.len() as u64) as usize];
        let dvas: Vec<_> = t.bp.dvas().iter().copied().filter(|d| d.is_valid()).collect();
        let dva = dvas[rng.below(dvas.len() as u64) as usize];
        let Some(top) = tops.get(dva.vdev() as usize).and_then(Option::as_ref) else { continue };
        let Some((dev, at)) = locate(top, dva.offset(), t.bp.psize(), &mut rng) else { continue };
        flip.set(Some((dev, at, bit)));
        f.block_flips += 1;
        let reader: &mut BlockReader<FlipDevice> = pool.reader();
        reader.clear_cache();
        if let Some(clean) = &t.data {
            // An error is fine (counted below by the scrub); other data is not.
            if let Ok(data) = reader.read_block(&t.bp) {
                assert!(&data == clean, "{name}: WRONG DATA for {} after flip at {dev}:{at:#x}", t.bookmark);
            }
            reader.clear_cache();
        }
        let scrub = reader.scrub_block(&t.bp);
        let seen = scrub.found.any() || scrub.copies.iter().any(|(_, r)| r.is_err());
        assert!(seen, "{name}: flip at {dev}:{at:#x} in {} not detected by the scrub", t.bookmark);
        match &scrub.data {
            Ok(d) => {
                assert!(
                    d == &t.phys,
                    "{name}: WRONG DATA (raw) for {} after flip at {dev}:{at:#x}",
                    t.bookmark
                );
                f.repaired += 1;
            }
            Err(_) => f.errors += 1,
        }
        if f.block_flips % 100 == 0 {
            f.full_verifies += 1;
            reader.clear_cache();
            let r = verify(&mut pool, limits);
            let names_it = r.bad.iter().any(|b| b.bookmark == t.bookmark);
            assert!(
                r.is_clean() || names_it,
                "{name}: verify after flip in {} names other blocks:\n{r}",
                t.bookmark
            );
            if r.is_clean() {
                assert_eq!(r.total, clean.total, "{name}: a repaired flip changed the counts");
            }
        }
    }
    flip.set(None);
    f
}

#[test]
fn single_bit_flips_are_repaired_or_reported() {
    let Some(pools) = common::pools() else { return };
    let by_pool = by_pool::pools_by_name(pools);
    let flips: u64 = std::env::var("OSV_ZFS_FLIPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let start = Instant::now();
    let deadline = Duration::from_secs(
        std::env::var("OSV_ZFS_FLIP_TIMEOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(600),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let mut names = Vec::new();
    // Every pool on its own thread (each holds only the non-zero chunks
    // of its images in memory, a few MiB).
    let jobs: Vec<(String, Vec<PathBuf>)> = by_pool.into_iter().collect();
    for (i, (name, files)) in jobs.into_iter().enumerate() {
        names.push(name.clone());
        let tx = tx.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let images: Vec<Arc<Sparse>> = files.iter().map(|f| Arc::new(Sparse::load(f))).collect();
            let seed = 0x05f2_2026_u64.wrapping_mul(i as u64 + 1);
            let got =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sweep(&name, images, flips, seed)));
            let _ = tx.send((
                name,
                got.map_err(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                }),
                t0.elapsed(),
            ));
        });
    }
    drop(tx);
    let mut failures = Vec::new();
    let mut total = Figures::default();
    for _ in 0..names.len() {
        let left = deadline.saturating_sub(start.elapsed());
        let (name, got, took) = rx.recv_timeout(left).expect("a pool's sweep did not finish in time (hang?)");
        match got {
            Ok(f) => {
                eprintln!(
                    "{name}: {} flips ({} in blocks, {} in labels): {} repaired, {} read errors, {} full verifies, {:.1} s",
                    f.flips, f.block_flips, f.label_flips, f.repaired, f.errors, f.full_verifies, took.as_secs_f64()
                );
                total.flips += f.flips;
                total.block_flips += f.block_flips;
                total.label_flips += f.label_flips;
                total.repaired += f.repaired;
                total.errors += f.errors;
            }
            Err(msg) => failures.push(format!("{name}: {msg}")),
        }
    }
    eprintln!(
        "all pools: {} flips ({} blocks, {} labels), {} repaired, {} errors, {:.1} s",
        total.flips,
        total.block_flips,
        total.label_flips,
        total.repaired,
        total.errors,
        start.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(total.flips >= flips * 14);
}
