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
    /// or a raidz map as read or with up to `nparity` columns rebuilt from
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
        self.read_impl(devs, offset, size, verify, None)
    }

    /// Like [`read`](Self::read), but as a scrub does (`ZIO_FLAG_SCRUB`):
    /// every mirror child is read and checked, and a raidz block whose data
    /// verifies also has its parity columns checked against the data.
    /// What was found damaged (and repaired in the returned data) is added
    /// to `found`.
    pub fn scrub<D: BlockDevice>(
        &self,
        devs: &mut [D],
        offset: u64,
        size: usize,
        verify: &mut dyn FnMut(&[u8]) -> bool,
        found: &mut ScrubFindings,
    ) -> Result<Vec<u8>> {
        self.read_impl(devs, offset, size, verify, Some(found))
    }

    fn read_impl<D: BlockDevice>(
        &self,
        devs: &mut [D],
        offset: u64,
        size: usize,
        verify: &mut dyn FnMut(&[u8]) -> bool,
        mut scrub: Option<&mut ScrubFindings>,
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
                let mut good = None;
                for child in children {
                    let got = match scrub.as_deref_mut() {
                        Some(found) => child.read_impl(devs, offset, size, verify, Some(found)),
                        None => child.read_impl(devs, offset, size, verify, None),
                    };
                    match got {
                        Ok(buf) if scrub.is_none() => return Ok(buf),
                        Ok(buf) => {
                            if good.is_none() {
                                good = Some(buf);
                            }
                        }
                        Err(e) => {
                            if let Some(found) = scrub.as_deref_mut() {
                                found.bad_mirror_sides += 1;
                            }
                            worst = most_telling(worst, e);
                        }
                    }
                }
                good.ok_or(worst)
            }
            VdevKind::Raidz { nparity, children } => {
                let map = RaidzMap::new(offset, size as u64, self.ashift, children.len(), *nparity)?;
                read_raidz(&map, children, devs, size, verify, scrub)
            }
        }
    }
}

/// What a scrub read ([`Vdev::scrub`]) found damaged besides the data it
/// returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubFindings {
    /// Mirror children that failed to read or returned data that did not
    /// verify (another child had it right).
    pub bad_mirror_sides: u64,
    /// raidz blocks whose data had to be rebuilt from parity.
    pub raidz_rebuilt: u64,
    /// raidz blocks whose data verified but whose parity columns did not
    /// match it (or could not be read).
    pub raidz_bad_parity: u64,
}

impl ScrubFindings {
    /// Whether anything was found.
    pub fn any(&self) -> bool {
        *self != ScrubFindings::default()
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
/// data as read, then every set of suspect columns (holding the unreadable
/// ones, smallest sets first, at most `nparity` columns, parity or data)
/// with the data columns among them rebuilt from the remaining parity
/// (`vdev_raidz_combrec`, module/zfs/vdev_raidz.c). With `scrub`, verified
/// data also has its parity checked.
fn read_raidz<D: BlockDevice>(
    map: &RaidzMap,
    children: &[Vdev],
    devs: &mut [D],
    size: usize,
    verify: &mut dyn FnMut(&[u8]) -> bool,
    scrub: Option<&mut ScrubFindings>,
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
    let np = map.nparity;
    let assemble = |cols: &[Option<Vec<u8>>]| -> Vec<u8> {
        let mut out = Vec::with_capacity(size);
        for c in cols[np..].iter().flatten() {
            out.extend_from_slice(c);
        }
        out.resize(size, 0);
        out
    };
    let missing: Vec<usize> = (0..cols.len()).filter(|&c| cols[c].is_none()).collect();
    if missing.len() > np {
        return Err(last_err);
    }
    let mut assembled = false;
    if missing.iter().all(|&c| c < np) {
        let data = assemble(&cols);
        assembled = true;
        if verify(&data) {
            if let Some(found) = scrub {
                if !missing.is_empty() || !parity_matches(map, &cols) {
                    found.raidz_bad_parity += 1;
                }
            }
            return Ok(data);
        }
    }
    // Suspect sets: the missing columns plus `extra` more, of any kind but
    // the empty columns of a short row (known zeros: letting them be
    // unknown would give the solver room to absorb damage).
    let others: Vec<usize> =
        (0..cols.len()).filter(|&c| !missing.contains(&c) && map.columns[c].size > 0).collect();
    let mut attempts = 0;
    for extra in 0..=np - missing.len() {
        let mut found_data = None;
        let mut too_many = false;
        for_each_subset(&others, extra, &mut |pick| {
            let mut bad = missing.clone();
            bad.extend_from_slice(pick);
            if bad.iter().all(|&c| c < np) {
                return false;
            }
            attempts += 1;
            if attempts > MAX_RAIDZ_ATTEMPTS {
                too_many = true;
                return true;
            }
            let Some(rebuilt) = reconstruct(map, &cols, &bad) else { return false };
            let mut trial = cols.clone();
            for (c, data) in rebuilt {
                trial[c] = Some(data);
            }
            let data = assemble(&trial);
            assembled = true;
            if verify(&data) {
                found_data = Some(data);
                return true;
            }
            false
        });
        if let Some(data) = found_data {
            if let Some(found) = scrub {
                found.raidz_rebuilt += 1;
            }
            return Ok(data);
        }
        if too_many {
            return Err(Error::NoValidCopy);
        }
    }
    // Data was assembled and failed its checksum: say so; when nothing could
    // be assembled, the read error says more.
    Err(if missing.is_empty() || assembled { Error::NoValidCopy } else { last_err })
}

/// Calls `f` with every `k`-element subset of `items` (in lexicographic
/// order of positions) until it returns `true`.
fn for_each_subset(items: &[usize], k: usize, f: &mut dyn FnMut(&[usize]) -> bool) {
    fn go(
        items: &[usize],
        k: usize,
        start: usize,
        cur: &mut Vec<usize>,
        f: &mut dyn FnMut(&[usize]) -> bool,
    ) -> bool {
        if cur.len() == k {
            return f(cur);
        }
        for i in start..items.len() {
            if items.len() - i < k - cur.len() {
                break;
            }
            cur.push(items[i]);
            if go(items, k, i + 1, cur, f) {
                return true;
            }
            cur.pop();
        }
        false
    }
    go(items, k, 0, &mut Vec::with_capacity(k), f);
}

/// Most reconstructions tried for one block.
pub const MAX_RAIDZ_ATTEMPTS: usize = 4096;

/// GF(2^8) arithmetic of raidz's Q and R (vdev_raidz.c: the field with
/// polynomial x^8 + x^4 + x^3 + x^2 + 1, generator 2; `vdev_raidz_pow2`,
/// `vdev_raidz_log2`).
pub mod gf {
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

    /// The 256-entry table of `x -> c * x`, for multiplying whole columns.
    pub fn mul_table(c: u8) -> [u8; 256] {
        let mut t = [0u8; 256];
        for (x, v) in t.iter_mut().enumerate() {
            *v = mul(c, x as u8);
        }
        t
    }
}

/// The coefficient of data column `j` (of `n`) in parity row `k` (0 = P,
/// 1 = Q, 2 = R): `(2^k)^(n-1-j)` (`vdev_raidz_generate_parity_pqr`
/// evaluates the rows by Horner's rule with multipliers 1, 2 and 4).
fn coefficient(k: usize, n: usize, j: usize) -> u8 {
    gf::pow2(k * (n - 1 - j) % 255)
}

/// Parity row `k` (0 = P, 1 = Q, 2 = R) of `data` columns, `len` bytes long
/// (shorter columns count as zero-padded), by Horner's rule as
/// `vdev_raidz_generate_parity_p/pq/pqr` (vdev_raidz.c).
pub fn generate_parity(k: usize, data: &[&[u8]], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let step = gf::mul_table(gf::pow2(k));
    for col in data {
        for (i, o) in out.iter_mut().enumerate() {
            let d = col.get(i).copied().unwrap_or(0);
            *o = step[usize::from(*o)] ^ d;
        }
    }
    out
}

/// Whether the parity columns read match the data columns.
fn parity_matches(map: &RaidzMap, cols: &[Option<Vec<u8>>]) -> bool {
    let np = map.nparity;
    let Some(len) = map.columns.first().and_then(|c| usize::try_from(c.size).ok()) else { return false };
    let data: Vec<&[u8]> = cols[np..].iter().map(|c| c.as_deref().unwrap_or(&[])).collect();
    (0..np).all(|k| cols[k].as_deref() == Some(&generate_parity(k, &data, len)[..]))
}

/// Rebuilds the data columns among `bad` (column indices, parity first)
/// from parity columns not in `bad` (`vdev_raidz_reconstruct_general`,
/// vdev_raidz.c): with `X` the bad data columns and rows `K` (as many
/// readable parity columns as `X` has members), the syndromes
/// `S_k = parity_k + sum over good data columns j of coef(k, j) D_j` equal
/// `sum over x in X of coef(k, x) D_x`; the square matrix `coef(K, X)` is
/// inverted over GF(2^8) and applied to the syndromes byte by byte. Every
/// column counts as zero-padded to the parity length. `None` when too few
/// parity columns are readable or the matrix is singular.
pub fn reconstruct(map: &RaidzMap, cols: &[Option<Vec<u8>>], bad: &[usize]) -> Option<Vec<(usize, Vec<u8>)>> {
    let np = map.nparity;
    if cols.len() != map.columns.len() || cols.len() <= np {
        return None;
    }
    let n = cols.len() - np;
    let len = usize::try_from(map.columns[0].size).ok()?;
    let xs: Vec<usize> = bad.iter().copied().filter(|&c| c >= np && c < cols.len()).collect();
    if xs.is_empty() {
        return Some(Vec::new());
    }
    let rows: Vec<usize> =
        (0..np).filter(|k| !bad.contains(k) && cols[*k].is_some()).take(xs.len()).collect();
    if rows.len() < xs.len() {
        return None;
    }
    let m = xs.len();
    // Syndromes.
    let mut syn: Vec<Vec<u8>> = Vec::with_capacity(m);
    for &k in &rows {
        let mut s = cols[k].clone()?;
        s.resize(len, 0);
        for j in (np..cols.len()).filter(|c| !xs.contains(c)) {
            let col = cols[j].as_ref()?;
            let t = gf::mul_table(coefficient(k, n, j - np));
            for (o, &d) in s.iter_mut().zip(col.iter()) {
                *o ^= t[usize::from(d)];
            }
        }
        syn.push(s);
    }
    // Invert coef(rows, xs) by Gauss-Jordan elimination.
    let mut a: Vec<Vec<u8>> =
        rows.iter().map(|&k| xs.iter().map(|&x| coefficient(k, n, x - np)).collect()).collect();
    let mut inv: Vec<Vec<u8>> = (0..m).map(|r| (0..m).map(|c| u8::from(r == c)).collect()).collect();
    for col in 0..m {
        let pivot = (col..m).find(|&r| a[r][col] != 0)?;
        a.swap(col, pivot);
        inv.swap(col, pivot);
        let p = gf::inv(a[col][col]);
        for c in 0..m {
            a[col][c] = gf::mul(a[col][c], p);
            inv[col][c] = gf::mul(inv[col][c], p);
        }
        for r in 0..m {
            if r != col && a[r][col] != 0 {
                let f = a[r][col];
                for c in 0..m {
                    let (ac, ic) = (a[col][c], inv[col][c]);
                    a[r][c] ^= gf::mul(f, ac);
                    inv[r][c] ^= gf::mul(f, ic);
                }
            }
        }
    }
    let mut out = Vec::with_capacity(m);
    for (i, &x) in xs.iter().enumerate() {
        let mut d = vec![0u8; len];
        for (r, s) in syn.iter().enumerate() {
            let t = gf::mul_table(inv[i][r]);
            for (o, &b) in d.iter_mut().zip(s.iter()) {
                *o ^= t[usize::from(b)];
            }
        }
        d.truncate(usize::try_from(map.columns[x].size).ok()?);
        out.push((x, d));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;
    use crate::nvlist::NvValue;
    use std::string::String;

    /// A raidz vdev of `width` leaves (guids 100.., device i for leaf i), ashift 9.
    fn raidz_vdev(width: usize, nparity: usize) -> Vdev {
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
        vdev
    }

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
        let vdev = raidz_vdev(width, nparity);
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

    /// The test's own parity: P = xor, Q = sum of 2^(n-1-j) D_j, R = sum of
    /// 4^(n-1-j) D_j, each product computed by repeated doubling (no
    /// tables, no Horner), columns zero-padded to `len`.
    fn slow_parity(k: usize, data: &[Vec<u8>], len: usize) -> Vec<u8> {
        let n = data.len();
        let double = |x: u8| -> u8 {
            let y = u16::from(x) << 1;
            (if y & 0x100 != 0 { y ^ 0x11d } else { y }) as u8
        };
        let mut out = vec![0u8; len];
        for (j, col) in data.iter().enumerate() {
            for (i, o) in out.iter_mut().enumerate() {
                let mut v = col.get(i).copied().unwrap_or(0);
                for _ in 0..k * (n - 1 - j) {
                    v = double(v);
                }
                *o ^= v;
            }
        }
        out
    }

    /// A raidz vdev (`nparity`, `width` memory disks) holding `data` at
    /// `offset`, laid out by [`RaidzMap`] with parity from [`slow_parity`].
    fn raidz_stripe(
        nparity: usize,
        width: usize,
        offset: u64,
        data: &[u8],
    ) -> (Vdev, Vec<Vec<u8>>, RaidzMap) {
        let base = VDEV_LABEL_START_SIZE as usize;
        let map = RaidzMap::new(offset, data.len() as u64, 9, width, nparity).unwrap();
        let mut disks = vec![vec![0u8; base + (1 << 20)]; width];
        let mut at = 0;
        let mut cols = Vec::new();
        for c in &map.columns[nparity..] {
            let end = (at + c.size as usize).min(data.len());
            let mut col = data[at.min(data.len())..end].to_vec();
            col.resize(c.size as usize, 0);
            at += c.size as usize;
            cols.push(col);
        }
        let plen = map.columns[0].size as usize;
        for k in 0..nparity {
            let p = slow_parity(k, &cols, plen);
            let c = map.columns[k];
            disks[c.child][base + c.offset as usize..][..plen].copy_from_slice(&p);
        }
        for (j, c) in map.columns[nparity..].iter().enumerate() {
            disks[c.child][base + c.offset as usize..][..c.size as usize].copy_from_slice(&cols[j]);
        }
        let vdev = raidz_vdev(width, nparity);
        (vdev, disks, map)
    }

    /// Damages column `c` of `map`: `missing` takes its disk away, else a
    /// byte of it is flipped.
    fn damage(vdev: &mut Vdev, disks: &mut [Vec<u8>], map: &RaidzMap, c: usize, missing: bool, byte: usize) {
        let col = map.columns[c];
        if missing {
            if let VdevKind::Raidz { children, .. } = &mut vdev.kind {
                children[col.child].kind = VdevKind::Leaf(None);
            }
        } else if col.size > 0 {
            let at = VDEV_LABEL_START_SIZE as usize + col.offset as usize + byte % col.size as usize;
            disks[col.child][at] ^= 0x5a;
        }
    }

    #[test]
    fn parity_generation_matches_the_slow_definition() {
        let cols: Vec<Vec<u8>> =
            (0..5).map(|j| (0..600).map(|i| (i * 13 + j * 71) as u8).collect()).collect();
        let refs: Vec<&[u8]> = cols.iter().map(|c| &c[..400]).collect();
        let trimmed: Vec<Vec<u8>> = refs.iter().map(|c| c.to_vec()).collect();
        for k in 0..3 {
            assert_eq!(generate_parity(k, &refs, 512), slow_parity(k, &trimmed, 512), "row {k}");
        }
    }

    #[test]
    fn raidz3_rebuilds_any_three_columns_and_refuses_four() {
        let data: Vec<u8> = (0..5 * 1024).map(|i| (i * 131 % 251) as u8).collect();
        let (vdev, disks, map) = raidz_stripe(3, 8, 0, &data);
        let size = data.len();
        let want = data.clone();
        let sum = crate::checksum::fletcher_4(&want, crate::Endian::Little);
        let mut verify = |b: &[u8]| crate::checksum::fletcher_4(b, crate::Endian::Little) == sum;
        let width = map.columns.len();
        let mut tried = 0;
        for a in 0..width {
            for b in a..width {
                for c in b..width {
                    for missing in [false, true] {
                        let (mut v, mut d) = (vdev.clone(), disks.clone());
                        let set: std::collections::BTreeSet<usize> = [a, b, c].into_iter().collect();
                        for (i, &col) in set.iter().enumerate() {
                            // Mix missing disks and rotten ones.
                            damage(&mut v, &mut d, &map, col, missing && i == 0, 7 + col * 3);
                        }
                        let mut devs: Vec<_> = d.into_iter().map(MemDevice).collect();
                        let mut found = ScrubFindings::default();
                        let got = v.scrub(&mut devs, 0, size, &mut verify, &mut found);
                        assert_eq!(got.as_ref(), Ok(&data), "columns {set:?} missing {missing}");
                        assert!(found.any(), "columns {set:?}: damage seen");
                        tried += 1;
                    }
                }
            }
        }
        assert!(tried > 200);
        // Four rotten data columns: beyond raidz3, an error, never wrong data.
        let mut d = disks.clone();
        let mut v = vdev.clone();
        for c in 3..7 {
            damage(&mut v, &mut d, &map, c, false, 11);
        }
        let mut devs: Vec<_> = d.into_iter().map(MemDevice).collect();
        assert_eq!(v.read(&mut devs, 0, size, &mut verify), Err(Error::NoValidCopy));
        // Four missing disks: the read error.
        let mut v = vdev.clone();
        for c in 0..4 {
            damage(&mut v, &mut disks.clone(), &map, c, true, 0);
        }
        let mut devs: Vec<_> = disks.iter().cloned().map(MemDevice).collect();
        assert_eq!(v.read(&mut devs, 0, size, &mut verify), Err(Error::Io));
    }

    #[test]
    fn reconstruct_solves_every_parity_choice() {
        // Two missing data columns of raidz3 from (P,Q), (P,R) and (Q,R).
        let data: Vec<u8> = (0..4 * 512).map(|i| (i * 7 + 3) as u8).collect();
        let (_, disks, map) = raidz_stripe(3, 7, 0, &data);
        let read = |c: usize| {
            let col = map.columns[c];
            let at = VDEV_LABEL_START_SIZE as usize + col.offset as usize;
            Some(disks[col.child][at..at + col.size as usize].to_vec())
        };
        let cols: Vec<Option<Vec<u8>>> = (0..map.columns.len()).map(read).collect();
        for lost_parity in 0..3 {
            let bad = [lost_parity, 3, 5];
            let mut holed = cols.clone();
            for &b in &bad {
                holed[b] = None;
            }
            let rebuilt = reconstruct(&map, &holed, &bad).unwrap();
            assert_eq!(rebuilt.len(), 2);
            for (c, d) in rebuilt {
                assert_eq!(Some(d), cols[c], "column {c} without parity {lost_parity}");
            }
        }
        // Three data columns need three parity columns.
        let mut holed = cols.clone();
        holed[0] = None;
        assert!(reconstruct(&map, &holed, &[0, 3, 4, 5]).is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Synthetic raidz1/2/3 stripes (any width, offset and length):
        /// up to `nparity` columns missing or rotten are rebuilt; one more
        /// rotten column gives an error, never wrong data.
        #[test]
        fn raidz_stripes_survive_up_to_nparity_bad_columns(
            nparity in 1usize..=3,
            extra in 1usize..=5,
            sector in 0u64..64,
            sectors in 1usize..24,
            bad in proptest::collection::vec((0usize..64, proptest::prelude::any::<bool>(), 0usize..4096), 0..=4),
            seed in proptest::prelude::any::<u8>(),
        ) {
            let width = nparity + extra;
            let data: Vec<u8> = (0..sectors * 512).map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(i as u8 >> 3)).collect();
            let offset = sector << 9;
            let (vdev, disks, map) = raidz_stripe(nparity, width, offset, &data);
            let sum = crate::checksum::fletcher_4(&data, crate::Endian::Little);
            let mut verify = |b: &[u8]| crate::checksum::fletcher_4(b, crate::Endian::Little) == sum;
            let (mut v, mut d) = (vdev.clone(), disks.clone());
            let mut cols = std::collections::BTreeSet::new();
            for &(c, missing, byte) in &bad {
                let c = c % map.columns.len();
                if map.columns[c].size == 0 || !cols.insert(c) {
                    continue;
                }
                damage(&mut v, &mut d, &map, c, missing, byte);
            }
            let mut devs: Vec<_> = d.into_iter().map(MemDevice).collect();
            let got = v.read(&mut devs, offset, data.len(), &mut verify);
            if cols.len() <= nparity {
                proptest::prop_assert_eq!(got.as_ref(), Ok(&data), "bad columns {:?}", cols);
            } else {
                proptest::prop_assert!(got.is_err() || got.as_ref() == Ok(&data));
            }
            // nparity + 1 rotten columns (when there are that many): an error.
            let real: Vec<usize> = (0..map.columns.len()).filter(|&c| map.columns[c].size > 0).collect();
            if real.len() > nparity + 1 {
                let mut d = disks.clone();
                let mut v = vdev.clone();
                for &c in real.iter().take(nparity + 1) {
                    damage(&mut v, &mut d, &map, c, false, 5);
                }
                let mut devs: Vec<_> = d.into_iter().map(MemDevice).collect();
                let got = v.read(&mut devs, offset, data.len(), &mut verify);
                proptest::prop_assert_eq!(got, Err(Error::NoValidCopy));
            }
        }
    }
}
