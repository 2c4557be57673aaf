//! ZFS pools on virtio-blk disks: osv-zfs reads them through its own
//! `BlockDevice` trait, which this module implements over the block device
//! files devfs made (`/dev/vblkN`), so the pool's I/O goes descriptor API →
//! devfs → virtio-blk like any other reader's.
//!
//! The runner (`cargo xtask`) attaches the vdev files of real OpenZFS pools
//! read-only, plus a small disk holding the manifest it computed for them on
//! the host (`EXPECT_MAGIC`). The test mounts every dataset the manifest
//! names through osv-vfs (osv-zfs's `vfs` feature), walks it with the
//! descriptor API only (getdents, lstat, read, readlink), hashes every file
//! and symlink target, and compares the lines with the host's.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use osv_boot::BootInfo;
use osv_vfs::{Fd, OpenFlags, VType};
use osv_zfs::label::VdevLabels;
use osv_zfs::pool::Pool;
use osv_zfs::vfs::ZfsPool;
use sha2::{Digest, Sha256};

use crate::check;
use crate::ktest::{Outcome, Test};

pub static ALL: &[Test] = &[Test {
    name: "zfs::pools_on_virtio_blk_mount_through_vfs_and_match_the_host_manifest",
    run: pools_match,
}];

/// The first line of the runner's expectation disk (`zfs_expectation_disk`
/// in xtask/src/stages.rs); the next line is the text's length in bytes.
const EXPECT_MAGIC: &[u8] = b"osv zfs expected manifest v1\n";

/// One vdev: a block device file of the kernel's namespace.
pub struct VblkDevice {
    fd: Fd,
    size: u64,
    path: String,
}

impl osv_zfs::BlockDevice for VblkDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> osv_zfs::Result {
        let end = offset.checked_add(buf.len() as u64).ok_or(osv_zfs::Error::OutOfRange)?;
        if end > self.size {
            return Err(osv_zfs::Error::OutOfRange);
        }
        let off = i64::try_from(offset).map_err(|_| osv_zfs::Error::OutOfRange)?;
        match crate::fs::vfs().pread(self.fd, buf, off) {
            Ok(n) if n == buf.len() => Ok(()),
            _ => Err(osv_zfs::Error::Io),
        }
    }
}

impl Drop for VblkDevice {
    fn drop(&mut self) {
        let _ = crate::fs::vfs().close(self.fd);
    }
}

/// What the block devices hold, as far as this module cares.
struct Found {
    /// Vdev devices by pool GUID.
    pools: BTreeMap<u64, Vec<VblkDevice>>,
    /// The runner's expected manifest, if its disk is attached.
    expected: Option<String>,
    /// Devices that held neither (the scratch disk, for one).
    others: Vec<String>,
}

fn open_dev(path: &str) -> Option<VblkDevice> {
    let v = crate::fs::vfs();
    let size = v.stat(path).ok()?.size;
    let fd = v.open(path, OpenFlags::RDONLY, 0).ok()?;
    Some(VblkDevice { fd, size, path: String::from(path) })
}

fn read_expectation(dev: &mut VblkDevice) -> Result<Option<String>, String> {
    use osv_zfs::BlockDevice;
    let mut head = [0u8; 64];
    if dev.size < head.len() as u64 || dev.read_at(0, &mut head).is_err() || !head.starts_with(EXPECT_MAGIC) {
        return Ok(None);
    }
    let rest = &head[EXPECT_MAGIC.len()..];
    let nl = rest.iter().position(|&b| b == b'\n').ok_or("expectation disk: no length line")?;
    let len: u64 = core::str::from_utf8(&rest[..nl])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("expectation disk: bad length line")?;
    let start = (EXPECT_MAGIC.len() + nl + 1) as u64;
    if start.checked_add(len).is_none_or(|e| e > dev.size) || len > 64 << 20 {
        return Err(alloc::format!("expectation disk: length {len} does not fit the disk"));
    }
    let mut text = alloc::vec![0u8; len as usize];
    dev.read_at(start, &mut text).map_err(|e| alloc::format!("expectation disk: {e}"))?;
    String::from_utf8(text).map(Some).map_err(|_| String::from("expectation disk: not UTF-8"))
}

fn scan() -> Result<Found, String> {
    let mut found = Found { pools: BTreeMap::new(), expected: None, others: Vec::new() };
    for (name, _) in &crate::fs::mounted().block_devices {
        let path = alloc::format!("/dev/{name}");
        let Some(mut dev) = open_dev(&path) else {
            found.others.push(path);
            continue;
        };
        if let Some(text) = read_expectation(&mut dev)? {
            found.expected = Some(text);
            continue;
        }
        // A vdev has valid labels whose config names the pool.
        match VdevLabels::read(&mut dev).ok().and_then(|l| l.config().and_then(|c| c.get_u64("pool_guid"))) {
            Some(guid) => found.pools.entry(guid).or_default().push(dev),
            None => found.others.push(path),
        }
    }
    Ok(found)
}

fn pools_match(boot: &'static BootInfo) -> Outcome {
    let found = scan()?;
    let expected = match found.expected {
        Some(e) => e,
        None => return Err(crate::tests::missing(boot, "zfs-pool")),
    };
    check!(!found.pools.is_empty(), "the expectation disk is attached but no ZFS vdev was found");
    let mut expected: Vec<&str> = expected.lines().filter(|l| !l.is_empty()).collect();
    expected.sort_unstable();
    let v = crate::fs::vfs();
    v.mkdir("/zfs", 0o755).map_err(|e| alloc::format!("mkdir /zfs: {e}"))?;
    let mut got: Vec<String> = Vec::new();
    let mut mounts = 0usize;
    for (guid, devs) in found.pools {
        let paths: Vec<String> = devs.iter().map(|d| d.path.clone()).collect();
        let pool = Pool::open(devs).map_err(|e| alloc::format!("pool {guid:#x} on {paths:?}: {e}"))?;
        let name = pool.name.clone();
        let shared = ZfsPool::new(pool);
        // The datasets the host listed for this pool (the first column).
        let mut datasets: Vec<&str> = expected
            .iter()
            .filter_map(|l| l.split('\t').next())
            .filter(|d| {
                *d == name || d.strip_prefix(name.as_str()).is_some_and(|r| r.starts_with(['/', '@']))
            })
            .collect();
        datasets.dedup();
        check!(!datasets.is_empty(), "pool {name}: the host's manifest names none of its datasets");
        let start = osv_boot::rt::now_ns();
        let before = got.len();
        let mut bytes = 0u64;
        for ds in &datasets {
            let fs = shared.mount(ds).map_err(|e| alloc::format!("mounting {ds}: {e}"))?;
            let at = alloc::format!("/zfs/{mounts}");
            mounts += 1;
            v.mkdir(&at, 0o755).map_err(|e| alloc::format!("mkdir {at}: {e}"))?;
            v.mount(&at, fs.clone()).map_err(|e| alloc::format!("mount {ds} on {at}: {e}"))?;
            let mut w = Walk { dataset: ds, mount: &at, out: &mut got, bytes: 0 };
            w.dir("/")?;
            bytes += w.bytes;
            v.umount(&at).map_err(|e| alloc::format!("umount {at}: {e}"))?;
            check!(fs.live_vnodes() == 0, "{ds}: {} vnodes still alive after umount", fs.live_vnodes());
        }
        let ms = (osv_boot::rt::now_ns() - start) / 1_000_000;
        osv_boot::println!(
            "  pool {name} on {} ({} vdev disks): {} datasets mounted through osv-vfs, {} objects, {bytes} bytes read and hashed in {ms} ms",
            paths.join(","),
            paths.len(),
            datasets.len(),
            got.len() - before,
        );
    }
    got.sort_unstable();
    let missing: Vec<&&str> =
        expected.iter().filter(|e| got.binary_search_by(|g| g.as_str().cmp(e)).is_err()).collect();
    let extra: Vec<&String> = got.iter().filter(|g| expected.binary_search(&g.as_str()).is_err()).collect();
    check!(
        missing.is_empty() && extra.is_empty(),
        "{} expected lines not read (first: {:?}), {} lines read but not expected (first: {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
    check!(got.len() == expected.len(), "{} lines read, {} expected", got.len(), expected.len());
    Ok(())
}

/// One dataset's manifest lines, built through the descriptor API only
/// (the format of `osv-zfs manifest`).
struct Walk<'a> {
    dataset: &'a str,
    mount: &'a str,
    out: &'a mut Vec<String>,
    bytes: u64,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| alloc::format!("{b:02x}")).collect()
}

impl Walk<'_> {
    fn full(&self, rel: &str) -> String {
        if rel == "/" {
            String::from(self.mount)
        } else {
            alloc::format!("{}{rel}", self.mount)
        }
    }

    fn dir(&mut self, rel: &str) -> Result<(), String> {
        let v = crate::fs::vfs();
        let path = self.full(rel);
        self.out.push(alloc::format!("{}\t{rel}\tdir\t-\t-", self.dataset));
        let fd = v
            .open(&path, OpenFlags::RDONLY | OpenFlags::DIRECTORY, 0)
            .map_err(|e| alloc::format!("opendir {path}: {e}"))?;
        let mut names = Vec::new();
        loop {
            let batch = v.getdents(fd, 16).map_err(|e| alloc::format!("getdents {path}: {e}"))?;
            if batch.is_empty() {
                break;
            }
            names.extend(batch.into_iter().map(|d| d.name).filter(|n| n != "." && n != ".."));
        }
        v.close(fd).map_err(|e| alloc::format!("close {path}: {e}"))?;
        for n in names {
            let crel = if rel == "/" { alloc::format!("/{n}") } else { alloc::format!("{rel}/{n}") };
            let cpath = self.full(&crel);
            let st = v.lstat(&cpath).map_err(|e| alloc::format!("lstat {cpath}: {e}"))?;
            match st.kind {
                VType::Directory => self.dir(&crel)?,
                VType::Regular => {
                    let fd = v
                        .open(&cpath, OpenFlags::RDONLY, 0)
                        .map_err(|e| alloc::format!("open {cpath}: {e}"))?;
                    let mut h = Sha256::new();
                    let mut buf = alloc::vec![0u8; 32 << 10];
                    let mut n = 0u64;
                    loop {
                        let k = v.read(fd, &mut buf).map_err(|e| alloc::format!("read {cpath}: {e}"))?;
                        if k == 0 {
                            break;
                        }
                        h.update(&buf[..k]);
                        n += k as u64;
                    }
                    v.close(fd).map_err(|e| alloc::format!("close {cpath}: {e}"))?;
                    if n != st.size {
                        return Err(alloc::format!("{cpath}: read {n} bytes, stat says {}", st.size));
                    }
                    self.bytes += n;
                    self.out.push(alloc::format!(
                        "{}\t{crel}\tfile\t{n}\t{}",
                        self.dataset,
                        hex(&h.finalize())
                    ));
                }
                VType::Symlink => {
                    let t = v.readlink(&cpath).map_err(|e| alloc::format!("readlink {cpath}: {e}"))?;
                    let d = Sha256::digest(t.as_bytes());
                    self.out.push(alloc::format!(
                        "{}\t{crel}\tsymlink\t{}\t{}",
                        self.dataset,
                        t.len(),
                        hex(&d)
                    ));
                }
                _ => self.out.push(alloc::format!("{}\t{crel}\tother\t-\t-", self.dataset)),
            }
        }
        Ok(())
    }
}
