//! The vdev tree and reading one copy of a block (a DVA) from it.
//!
//! The label config's `vdev_tree` nvlist (include/sys/fs/zfs.h,
//! `ZPOOL_CONFIG_*`) describes the top-level vdev holding this device:
//! `type` (`disk`, `file`, `mirror`, `raidz`, ...), `id` (its index among
//! the top-level vdevs, which a DVA names), `guid`, `ashift`, `nparity`
//! (raidz) and `children`.
//!
//! A DVA's offset is in the top-level vdev's address space:
//! - a leaf (`disk`/`file`) stores it at `offset + VDEV_LABEL_START_SIZE`
//!   (4 MiB: two labels and the boot area, include/sys/vdev_impl.h);
//! - a mirror stores the same bytes on every child (module/zfs/vdev_mirror.c):
//!   any child whose data passes the block's checksum will do;
//! - raidz splits the block into columns, parity first
//!   (`vdev_raidz_map_alloc`, module/zfs/vdev_raidz.c; see [`RaidzMap`]).
//!   One missing or corrupt data column is rebuilt from parity P (XOR) or
//!   Q (GF(2^8)), two from P and Q together (`vdev_raidz_reconstruct_*`).
//!
//! Reads take a `verify` callback (the block pointer's checksum): a mirror
//! tries its children and a raidz its reconstructions until one verifies.

use crate::device::BlockDevice;
use crate::nvlist::NvList;
use crate::{Error, Result};
use alloc::vec;
use alloc::vec::Vec;

/// `VDEV_LABEL_START_SIZE` (include/sys/vdev_impl.h): two labels and the
/// 3.5 MiB boot block before the allocatable space of a leaf vdev.
pub const VDEV_LABEL_START_SIZE: u64 = 4 << 20;

/// Deepest vdev tree accepted (root, top-level, mirror/replacing, leaf).
const MAX_TREE_DEPTH: usize = 8;

/// Largest raidz width accepted (`VDEV_RAIDZ_MAXPARITY` = 3 and a sane
/// bound on the number of children).
const MAX_RAIDZ_CHILDREN: usize = 255;

/// One vdev of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vdev {
    /// `ZPOOL_CONFIG_GUID`.
    pub guid: u64,
    /// `ZPOOL_CONFIG_ID`: index among its siblings.
    pub id: u64,
    /// `ZPOOL_CONFIG_ASHIFT` (top-level vdevs; 9 when absent).
    pub ashift: u32,
    /// What it is.
    pub kind: VdevKind,
}

/// The vdev types this reader handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VdevKind {
    /// A `disk` or `file` leaf, and which opened device holds it (`None`:
    /// not among the given files).
    Leaf(Option<usize>),
    /// `mirror` (also `replacing` and `spare`, which hold copies of the same
    /// data): any child will do.
    Mirror(Vec<Vdev>),
    /// `raidz` with `nparity` parity columns (1 when the config predates
    /// `ZPOOL_CONFIG_NPARITY`).
    Raidz {
        /// Parity columns: 1, 2 or 3.
        nparity: usize,
        /// The columns' vdevs in order.
        children: Vec<Vdev>,
    },
}

impl Vdev {
    /// Builds the vdev tree from a `vdev_tree` nvlist. Leaves start
    /// without a device; see [`Vdev::attach`].
    pub fn from_config(nv: &NvList) -> Result<Vdev> {
        Vdev::build(nv, 0, 9)
    }

    fn build(nv: &NvList, depth: usize, parent_ashift: u32) -> Result<Vdev> {
        if depth > MAX_TREE_DEPTH {
            return Err(Error::TooDeep);
        }
        let guid = nv.get_u64("guid").ok_or(Error::BadVdevTree)?;
        let id = nv.get_u64("id").unwrap_or(0);
        let ashift = match nv.get_u64("ashift") {
            Some(a @ 9..=17) => a as u32,
            Some(_) => return Err(Error::BadVdevTree),
            None => parent_ashift,
        };
        let ty = nv.get_str("type").ok_or(Error::BadVdevTree)?;
        let children = || -> Result<Vec<Vdev>> {
            let list = nv.get_nvlist_array("children").ok_or(Error::BadVdevTree)?;
            if list.is_empty() || list.len() > MAX_RAIDZ_CHILDREN {
                return Err(Error::BadVdevTree);
            }
            list.iter().map(|c| Vdev::build(c, depth + 1, ashift)).collect()
        };
        let kind = match ty {
            "disk" | "file" => VdevKind::Leaf(None),
            "mirror" | "replacing" | "spare" => VdevKind::Mirror(children()?),
            "raidz" => {
                let nparity = nv.get_u64("nparity").unwrap_or(1);
                let children = children()?;
                if !(1..=3).contains(&nparity) || children.len() <= nparity as usize {
                    return Err(Error::BadVdevTree);
                }
                VdevKind::Raidz { nparity: nparity as usize, children }
            }
            _ => return Err(Error::UnsupportedVdev),
        };
        Ok(Vdev { guid, id, ashift, kind })
    }

    /// Marks the leaf with `guid` as held by device `dev`; returns whether
    /// the leaf was found.
    pub fn attach(&mut self, guid: u64, dev: usize) -> bool {
        match &mut self.kind {
            VdevKind::Leaf(d) if self.guid == guid => {
                *d = Some(dev);
                true
            }
            VdevKind::Leaf(_) => false,
            VdevKind::Mirror(c) | VdevKind::Raidz { children: c, .. } => {
                c.iter_mut().any(|v| v.attach(guid, dev))
            }
        }
    }

    /// The sum of every guid in this subtree (for `ub_guid_sum`).
    pub fn guid_sum(&self) -> u64 {
        let kids = match &self.kind {
            VdevKind::Leaf(_) => &[][..],
            VdevKind::Mirror(c) | VdevKind::Raidz { children: c, .. } => &c[..],
        };
        kids.iter().fold(self.guid, |acc, c| acc.wrapping_add(c.guid_sum()))
    }

    /// Reads `size` bytes at `offset` of this vdev's address space and
    /// returns the first version `verify` accepts: from any mirror child,
    /// or a raidz map as read or with one or two data columns rebuilt from
    /// parity (at most [`MAX_RAIDZ_ATTEMPTS`] tries).
    /// Fails with [`Error::NoValidCopy`] when data was read but nothing
    /// verified, else with the read error.
    pub fn read<D: BlockDevice>(
        &self,
        devs: &mut [D],
        offset: u64,
        size: usize,
        verify: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<Vec<u8>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        match &self.kind {
            VdevKind::Leaf(dev) => {
                let dev = dev.and_then(|d| devs.get_mut(d)).ok_or(Error::Io)?;
                let at = offset.checked_add(VDEV_LABEL_START_SIZE).ok_or(Error::OutOfRange)?;
                let mut buf = vec![0u8; size];
                dev.read_at(at, &mut buf)?;
                if verify(&buf) {
                    Ok(buf)
                } else {
                    Err(Error::NoValidCopy)
                }
            }
            VdevKind::Mirror(children) => {
                let mut worst = Error::Io;
                for child in children {
                    match child.read(devs, offset, size, verify) {
                        Ok(buf) => return Ok(buf),
                        Err(e) => worst = most_telling(worst, e),
                    }
                }
                Err(worst)
            }
            VdevKind::Raidz { nparity, children } => {
                let map = RaidzMap::new(offset, size as u64, self.ashift, children.len(), *nparity)?;
                read_raidz(&map, children, devs, size, verify)
            }
        }
    }
}

/// Of two failures of alternative copies, the one that says more: data that
/// failed its checksum beats an unreadable or absent device.
pub fn most_telling(a: Error, b: Error) -> Error {
    let rank = |e: &Error| match e {
        Error::NoValidCopy | Error::BadChecksum => 2,
        Error::Io => 0,
        _ => 1,
    };
    if rank(&b) >= rank(&a) {
        b
    } else {
        a
    }
}

/// One column of a raidz map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaidzColumn {
    /// Child index (`rc_devidx`).
    pub child: usize,
    /// Offset in the child's address space (`rc_offset`).
    pub offset: u64,
    /// Bytes in this column (`rc_size`).
    pub size: u64,
}

/// Where the columns of one raidz block live (`vdev_raidz_map_alloc`,
/// module/zfs/vdev_raidz.c, the non-expanded layout). The first `nparity`
/// columns are parity; the data follows column after column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaidzMap {
    /// Parity columns first, then data columns.
    pub columns: Vec<RaidzColumn>,
    /// `rm_firstdatacol`.
    pub nparity: usize,
}

impl RaidzMap {
    /// Computes the map of a `size`-byte read at `offset` on a raidz vdev of
    /// `dcols` children with `nparity` parity columns and sector shift
    /// `ashift`.
    pub fn new(offset: u64, size: u64, ashift: u32, dcols: usize, nparity: usize) -> Result<RaidzMap> {
        if dcols <= nparity || nparity == 0 || dcols > MAX_RAIDZ_CHILDREN || ashift > 17 {
            return Err(Error::BadVdevTree);
        }
        if size == 0 {
            return Err(Error::BadLength);
        }
        let dc = dcols as u64;
        let np = nparity as u64;
        // b: the starting sector; s: sectors of data; f: first column;
        // o: offset of the row in every child.
        let b = offset >> ashift;
        let s = size.div_ceil(1 << ashift);
        let f = b % dc;
        let o = (b / dc) << ashift;
        // q: full rows; r: sectors of the last, partial row; bc: columns
        // that get one more sector ("big" columns).
        let q = s / (dc - np);
        let r = s - q * (dc - np);
        let bc = if r == 0 { 0 } else { r + np };
        let (acols, scols) = if q == 0 { (bc, dc.min(bc.div_ceil(np + 1) * (np + 1))) } else { (dc, dc) };
        let mut columns = Vec::with_capacity(scols as usize);
        for c in 0..scols {
            let mut col = f + c;
            let mut coff = o;
            if col >= dc {
                col -= dc;
                coff += 1 << ashift;
            }
            let size = if c >= acols {
                0
            } else if c < bc {
                (q + 1) << ashift
            } else {
                q << ashift
            };
            columns.push(RaidzColumn { child: col as usize, offset: coff, size });
        }
        // raidz1 alternates parity between the first two columns every
        // 1 MiB of offset, so no disk holds all the parity.
        if nparity == 1 && offset & (1 << 20) != 0 && columns.len() >= 2 {
            let (a, b) = (columns[0], columns[1]);
            columns[0].child = b.child;
            columns[0].offset = b.offset;
            columns[1].child = a.child;
            columns[1].offset = a.offset;
        }
        Ok(RaidzMap { columns, nparity })
    }
}

/// Reads a raidz map's columns, assembles the data and tries, in order: the
/// data as read, then every set of one or two data columns (holding the
/// unreadable ones) rebuilt from P, Q, or P and Q.
fn read_raidz<D: BlockDevice>(
    map: &RaidzMap,
    children: &[Vdev],
    devs: &mut [D],
    size: usize,
    verify: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<Vec<u8>> {
    let mut cols: Vec<Option<Vec<u8>>> = Vec::with_capacity(map.columns.len());
    let mut last_err = Error::NoValidCopy;
    for col in &map.columns {
        let child = children.get(col.child).ok_or(Error::BadVdevTree)?;
        let len = usize::try_from(col.size).map_err(|_| Error::TooLarge)?;
        if len == 0 {
            cols.push(Some(Vec::new()));
            continue;
        }
        match child.read(devs, col.offset, len, &mut |_| true) {
            Ok(b) => cols.push(Some(b)),
            Err(e) => {
                last_err = e;
                cols.push(None);
            }
        }
    }
    let data_cols = map.nparity..map.columns.len();
    let assemble = |cols: &[Option<Vec<u8>>]| -> Vec<u8> {
        let mut out = Vec::with_capacity(size);
        for c in cols[data_cols.clone()].iter().flatten() {
            out.extend_from_slice(c);
        }
        out.resize(size, 0);
        out
    };
    let missing: Vec<usize> = data_cols.clone().filter(|&c| cols[c].is_none()).collect();
    if missing.is_empty() {
        let data = assemble(&cols);
        if verify(&data) {
            return Ok(data);
        }
    }
    // Which data columns to rebuild: every set holding the missing ones,
    // smallest first, up to what P and Q can rebuild (two columns).
    let can = map.nparity.min(2);
    if missing.len() > can {
        return Err(last_err);
    }
    let mut sets: Vec<Vec<usize>> = Vec::new();
    match missing.len() {
        2 => sets.push(missing.clone()),
        1 => {
            sets.push(missing.clone());
            if can == 2 {
                sets.extend(data_cols.clone().filter(|&c| c != missing[0]).map(|c| vec![missing[0], c]));
            }
        }
        _ => {
            sets.extend(data_cols.clone().map(|c| vec![c]));
            if can == 2 {
                for a in data_cols.clone() {
                    sets.extend((a + 1..data_cols.end).map(|b| vec![a, b]));
                }
            }
        }
    }
    let mut attempts = 0;
    let mut verified = false;
    for set in sets {
        for method in [Parity::P, Parity::Q, Parity::PQ] {
            let fits = match method {
                Parity::P | Parity::Q => set.len() == 1,
                Parity::PQ => set.len() == 2,
            };
            if !fits {
                continue;
            }
            attempts += 1;
            if attempts > MAX_RAIDZ_ATTEMPTS {
                return Err(Error::NoValidCopy);
            }
            let Some(rebuilt) = rebuild(map, &cols, &set, method) else { continue };
            let mut trial = cols.clone();
            for (c, data) in rebuilt {
                trial[c] = Some(data);
            }
            let data = assemble(&trial);
            verified = true;
            if verify(&data) {
                return Ok(data);
            }
        }
    }
    // Data was assembled and failed its checksum: say so; when nothing could
    // be assembled, the read error says more.
    Err(if missing.is_empty() || verified { Error::NoValidCopy } else { last_err })
}

/// Most reconstructions tried for one block.
pub const MAX_RAIDZ_ATTEMPTS: usize = 4096;

/// Which parity rebuilds which columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parity {
    /// One data column from P (XOR).
    P,
    /// One data column from Q.
    Q,
    /// Two data columns from P and Q.
    PQ,
}

/// GF(2^8) arithmetic of raidz's Q and R (vdev_raidz.c: the field with
/// polynomial x^8 + x^4 + x^3 + x^2 + 1, generator 2; `vdev_raidz_pow2`,
/// `vdev_raidz_log2`).
mod gf {
    const fn tables() -> ([u8; 256], [u8; 256]) {
        let mut exp = [0u8; 256];
        let mut log = [0u8; 256];
        let mut x: u16 = 1;
        let mut i = 0;
        while i < 255 {
            exp[i] = x as u8;
            log[x as usize] = i as u8;
            x <<= 1;
            if x & 0x100 != 0 {
                x ^= 0x11d;
            }
            i += 1;
        }
        (exp, log)
    }
    const TABLES: ([u8; 256], [u8; 256]) = tables();

    /// `2^n`.
    pub fn pow2(n: usize) -> u8 {
        TABLES.0[n % 255]
    }

    /// `a * b`.
    pub fn mul(a: u8, b: u8) -> u8 {
        if a == 0 || b == 0 {
            return 0;
        }
        let (exp, log) = (&TABLES.0, &TABLES.1);
        exp[(usize::from(log[usize::from(a)]) + usize::from(log[usize::from(b)])) % 255]
    }

    /// `1 / a` (`a` not 0).
    pub fn inv(a: u8) -> u8 {
        let (exp, log) = (&TABLES.0, &TABLES.1);
        exp[(255 - usize::from(log[usize::from(a)])) % 255]
    }
}

/// Rebuilds the data columns `set` from parity (`vdev_raidz_reconstruct_p`,
/// `_q`, `_pq`, vdev_raidz.c): every column counts as zero-padded to the
/// parity length; data column `j` of `n` enters Q with coefficient
/// `2^(n-1-j)`. `None` when a needed parity column is unreadable.
fn rebuild(
    map: &RaidzMap,
    cols: &[Option<Vec<u8>>],
    set: &[usize],
    method: Parity,
) -> Option<Vec<(usize, Vec<u8>)>> {
    let np = map.nparity;
    let n = cols.len() - np;
    let len = usize::try_from(map.columns.first()?.size).ok()?;
    let coef = |c: usize| gf::pow2(n - 1 - (c - np));
    // P and Q with the known data columns taken out.
    let mut p = match method {
        Parity::P | Parity::PQ => cols[0].clone()?,
        Parity::Q => Vec::new(),
    };
    let mut q = match method {
        Parity::Q | Parity::PQ => cols.get(1)?.clone()?,
        Parity::P => Vec::new(),
    };
    p.resize(if p.is_empty() { 0 } else { len }, 0);
    q.resize(if q.is_empty() { 0 } else { len }, 0);
    for c in (np..cols.len()).filter(|c| !set.contains(c)) {
        let col = cols[c].as_ref()?;
        let k = coef(c);
        for (i, &b) in col.iter().enumerate().take(len) {
            if let Some(x) = p.get_mut(i) {
                *x ^= b;
            }
            if let Some(x) = q.get_mut(i) {
                *x ^= gf::mul(k, b);
            }
        }
    }
    let size = |c: usize| map.columns[c].size as usize;
    match method {
        Parity::P => {
            p.truncate(size(set[0]));
            Some(vec![(set[0], p)])
        }
        Parity::Q => {
            let k = gf::inv(coef(set[0]));
            let mut d: Vec<u8> = q.iter().map(|&b| gf::mul(k, b)).collect();
            d.truncate(size(set[0]));
            Some(vec![(set[0], d)])
        }
        Parity::PQ => {
            let (x, y) = (set[0], set[1]);
            let (a, b) = (coef(x), coef(y));
            let k = gf::inv(a ^ b);
            let mut dx: Vec<u8> =
                p.iter().zip(&q).map(|(&pb, &qb)| gf::mul(k, qb ^ gf::mul(b, pb))).collect();
            let mut dy: Vec<u8> = p.iter().zip(&dx).map(|(&pb, &xb)| pb ^ xb).collect();
            dx.truncate(size(x));
            dy.truncate(size(y));
            Some(vec![(x, dx), (y, dy)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;
    use crate::nvlist::NvValue;
    use std::string::String;

    fn leaf(guid: u64, id: u64) -> NvList {
        NvList::new()
            .with("type", NvValue::String(String::from("file")))
            .with("id", NvValue::Uint64(id))
            .with("guid", NvValue::Uint64(guid))
    }

    #[test]
    fn raidz_map_matches_vdev_raidz_map_alloc() {
        // 3 children, raidz1, 2 KiB (4 sectors) at sector 0: q = 2, r = 0.
        let m = RaidzMap::new(0, 2048, 9, 3, 1).unwrap();
        let cols: Vec<_> = m.columns.iter().map(|c| (c.child, c.offset, c.size)).collect();
        assert_eq!(cols, [(0, 0, 1024), (1, 0, 1024), (2, 0, 1024)]);
        // 1 sector at sector 4: f = 1, o = 512, q = 0, r = 1, bc = 2.
        let m = RaidzMap::new(4 << 9, 512, 9, 3, 1).unwrap();
        let cols: Vec<_> = m.columns.iter().map(|c| (c.child, c.offset, c.size)).collect();
        assert_eq!(cols, [(1, 512, 512), (2, 512, 512)]);
        // Wrapping columns move one row down.
        let m = RaidzMap::new(5 << 9, 1024, 9, 3, 1).unwrap();
        let cols: Vec<_> = m.columns.iter().map(|c| (c.child, c.offset, c.size)).collect();
        assert_eq!(cols, [(2, 512, 512), (0, 1024, 512), (1, 1024, 512)]);
        // Past 1 MiB, raidz1 swaps the first two columns' places.
        let m = RaidzMap::new(1 << 20, 1024, 9, 3, 1).unwrap();
        assert_eq!((m.columns[0].child, m.columns[1].child), (0, 2));
        assert!(RaidzMap::new(0, 512, 9, 2, 2).is_err());
    }

    #[test]
    fn raidz_reads_and_rebuilds_from_parity() {
        // Three 8 MiB children; a 1 KiB block at offset 0: P on child 0,
        // data sector 0 on child 1, sector 1 on child 2.
        let base = VDEV_LABEL_START_SIZE as usize;
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut disks = vec![vec![0u8; 8 << 20]; 3];
        disks[1][base..base + 512].copy_from_slice(&data[..512]);
        disks[2][base..base + 512].copy_from_slice(&data[512..]);
        for i in 0..512 {
            disks[0][base + i] = data[i] ^ data[512 + i];
        }
        let tree = NvList::new()
            .with("type", NvValue::String(String::from("raidz")))
            .with("guid", NvValue::Uint64(1))
            .with("nparity", NvValue::Uint64(1))
            .with("ashift", NvValue::Uint64(9))
            .with("children", NvValue::NvListArray(vec![leaf(10, 0), leaf(11, 1), leaf(12, 2)]));
        let mut vdev = Vdev::from_config(&tree).unwrap();
        for (i, g) in [10, 11, 12].into_iter().enumerate() {
            assert!(vdev.attach(g, i));
        }
        assert_eq!(vdev.guid_sum(), 34);
        let want = data.clone();
        let mut verify = |b: &[u8]| b == &want[..];
        let mut devs: Vec<_> = disks.iter().cloned().map(MemDevice).collect();
        assert_eq!(vdev.read(&mut devs, 0, 1024, &mut verify).unwrap(), data);
        // Corrupt a data column: rebuilt from P.
        disks[2][base + 7] ^= 0xff;
        let mut devs: Vec<_> = disks.iter().cloned().map(MemDevice).collect();
        assert_eq!(vdev.read(&mut devs, 0, 1024, &mut verify).unwrap(), data);
        // A missing device: rebuilt too.
        disks[2][base + 7] ^= 0xff;
        let mut devs: Vec<_> = disks.iter().cloned().map(MemDevice).collect();
        let mut partial = vdev.clone();
        if let VdevKind::Raidz { children, .. } = &mut partial.kind {
            children[1].kind = VdevKind::Leaf(None);
        }
        assert_eq!(partial.read(&mut devs, 0, 1024, &mut verify).unwrap(), data);
        // Two bad columns on raidz1: no valid copy.
        disks[1][base] ^= 1;
        disks[2][base] ^= 1;
        let mut devs: Vec<_> = disks.iter().cloned().map(MemDevice).collect();
        assert_eq!(vdev.read(&mut devs, 0, 1024, &mut verify), Err(Error::NoValidCopy));
    }

    /// Builds a raidz vdev of `nparity` over `data_cols + nparity` memory
    /// disks holding one block of `data_cols` sectors at offset 0, with P
    /// and Q computed the slow way (Horner, as `vdev_raidz_generate_parity_pq`).
    fn raidz_fixture(nparity: usize, data_cols: usize) -> (Vdev, Vec<Vec<u8>>, Vec<u8>) {
        let base = VDEV_LABEL_START_SIZE as usize;
        let width = nparity + data_cols;
        let data: Vec<u8> = (0..data_cols * 512).map(|i| (i * 131 % 257) as u8).collect();
        let mut disks = vec![vec![0u8; 5 << 20]; width];
        let (mut p, mut q) = (vec![0u8; 512], vec![0u8; 512]);
        for j in 0..data_cols {
            let col = &data[j * 512..(j + 1) * 512];
            disks[nparity + j][base..base + 512].copy_from_slice(col);
            for i in 0..512 {
                p[i] ^= col[i];
                q[i] = gf::mul(q[i], 2) ^ col[i];
            }
        }
        disks[0][base..base + 512].copy_from_slice(&p);
        if nparity > 1 {
            disks[1][base..base + 512].copy_from_slice(&q);
        }
        let children: Vec<NvList> = (0..width).map(|i| leaf(100 + i as u64, i as u64)).collect();
        let tree = NvList::new()
            .with("type", NvValue::String(String::from("raidz")))
            .with("guid", NvValue::Uint64(1))
            .with("nparity", NvValue::Uint64(nparity as u64))
            .with("ashift", NvValue::Uint64(9))
            .with("children", NvValue::NvListArray(children));
        let mut vdev = Vdev::from_config(&tree).unwrap();
        for i in 0..width {
            vdev.attach(100 + i as u64, i);
        }
        (vdev, disks, data)
    }

    #[test]
    fn raidz2_rebuilds_two_columns_from_p_and_q() {
        let (vdev, disks, data) = raidz_fixture(2, 3);
        let base = VDEV_LABEL_START_SIZE as usize;
        let size = data.len();
        let want = data.clone();
        let mut verify = |b: &[u8]| b == &want[..];
        // Every pair of rotten disks (parity or data): rebuilt.
        for x in 0..5 {
            for y in x + 1..5 {
                let mut bad = disks.clone();
                bad[x][base + 3] ^= 0x11;
                bad[y][base + 300] ^= 0x22;
                let mut devs: Vec<_> = bad.into_iter().map(MemDevice).collect();
                assert_eq!(
                    vdev.read(&mut devs, 0, size, &mut verify).as_ref(),
                    Ok(&data),
                    "disks {x} and {y}"
                );
            }
        }
        // Only Q left beside the data columns... and P gone: Q alone rebuilds.
        let mut no_p = vdev.clone();
        if let VdevKind::Raidz { children, .. } = &mut no_p.kind {
            children[0].kind = VdevKind::Leaf(None);
            children[3].kind = VdevKind::Leaf(None);
        }
        let mut devs: Vec<_> = disks.iter().cloned().map(MemDevice).collect();
        assert_eq!(no_p.read(&mut devs, 0, size, &mut verify).as_ref(), Ok(&data));
        // Two disks missing, one rotten: beyond raidz2.
        let mut partial = vdev.clone();
        if let VdevKind::Raidz { children, .. } = &mut partial.kind {
            children[2].kind = VdevKind::Leaf(None);
            children[3].kind = VdevKind::Leaf(None);
        }
        let mut devs: Vec<_> = disks.iter().cloned().map(MemDevice).collect();
        assert_eq!(partial.read(&mut devs, 0, size, &mut verify).as_ref(), Ok(&data));
        devs[4].0[base] ^= 1;
        assert_eq!(partial.read(&mut devs, 0, size, &mut verify), Err(Error::NoValidCopy));
        // raidz1 with P missing and a data column bad: no valid copy.
        let (vdev, mut disks, data) = raidz_fixture(1, 2);
        disks[1][base] ^= 1;
        let mut partial = vdev.clone();
        if let VdevKind::Raidz { children, .. } = &mut partial.kind {
            children[0].kind = VdevKind::Leaf(None);
        }
        let mut devs: Vec<_> = disks.into_iter().map(MemDevice).collect();
        let want = data.clone();
        assert_eq!(partial.read(&mut devs, 0, data.len(), &mut |b| b == &want[..]), Err(Error::NoValidCopy));
    }

    #[test]
    fn mirror_survives_a_bad_side_and_trees_are_checked() {
        let base = VDEV_LABEL_START_SIZE as usize;
        let mut good = vec![0u8; 5 << 20];
        good[base..base + 4].copy_from_slice(b"good");
        let mut bad = good.clone();
        bad[base] = b'X';
        let tree = NvList::new()
            .with("type", NvValue::String(String::from("mirror")))
            .with("guid", NvValue::Uint64(1))
            .with("children", NvValue::NvListArray(vec![leaf(2, 0), leaf(3, 1)]));
        let mut vdev = Vdev::from_config(&tree).unwrap();
        vdev.attach(2, 0);
        vdev.attach(3, 1);
        let mut devs = vec![MemDevice(bad), MemDevice(good)];
        let got = vdev.read(&mut devs, 0, 4, &mut |b| b == b"good").unwrap();
        assert_eq!(got, b"good");
        let weird = NvList::new()
            .with("type", NvValue::String(String::from("draid")))
            .with("guid", NvValue::Uint64(1));
        assert_eq!(Vdev::from_config(&weird), Err(Error::UnsupportedVdev));
        assert_eq!(Vdev::from_config(&NvList::new()), Err(Error::BadVdevTree));
    }
}
