//! Reading a ZPL filesystem through a [`Pool`]: the master node, the SA
//! tables, inodes, directories, file data, symlinks, and the manifest.
//!
//! The on-disk formats are described in [`crate::zpl`]; this module reads
//! the objects holding them. A filesystem is opened per dataset (heads,
//! snapshots and clones alike: a snapshot's objset is read the same way).
//! An encrypted dataset (its objset block pointer carries the crypt bit,
//! `BP_USES_CRYPT`, include/sys/spa.h) is refused with
//! [`Error::Encrypted`]: its dnode blocks, and so every bonus buffer, are
//! ciphertext without the key.

use crate::blkptr::{BlockPointer, BLKPTR_SIZE};
use crate::dnode::ost;
use crate::nvlist::{NvList, NvValue};
use crate::pool::{Dnode, ObjectError, Objset, Pool};
use crate::zpl::{
    self, attr, old_symlink_inline, AttrReg, DirEntry, FileType, SaHdr, ZnodeAttrs, ZplTime, MASTER_NODE_OBJ,
};
use crate::{BlockDevice, Error, Result};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use sha2::{Digest, Sha256};

/// Most objects visited by one walk of a filesystem.
const MAX_WALK: usize = 1 << 24;
/// Deepest directory nesting walked.
const MAX_DEPTH: usize = 1024;
/// Bytes read at once while hashing a file.
const CHUNK: usize = 128 << 10;

/// The SA tables of one objset (`SA_ATTRS`: `REGISTRY` and `LAYOUTS`).
#[derive(Debug, Clone, Default)]
pub struct SaTables {
    /// Attribute number → registered length (0: variable).
    pub lengths: BTreeMap<u16, u16>,
    /// Attribute name → number.
    pub names: BTreeMap<Vec<u8>, u16>,
    /// Layout number → attribute numbers in order.
    pub layouts: BTreeMap<u16, Vec<u16>>,
}

impl SaTables {
    fn num(&self, name: &[u8]) -> Option<u16> {
        self.names.get(name).copied()
    }
}

/// An open ZPL filesystem (one dataset's objset).
#[derive(Debug, Clone)]
pub struct Zpl {
    /// The objset.
    pub objset: Objset,
    /// The root directory (`ROOT` in the master node).
    pub root: u64,
    /// The ZPL version (`VERSION`).
    pub version: u64,
    /// The SA tables (ZPL version 5 and later).
    pub sa: Option<SaTables>,
}

/// A visitor of [`Pool::zpl_walk`]: the pool, the absolute path, the object.
pub type WalkVisitor<'f, D> =
    dyn FnMut(&mut Pool<D>, &[u8], &Inode) -> core::result::Result<(), ObjectError> + 'f;

/// One ZPL object: its dnode and attributes.
#[derive(Debug, Clone)]
pub struct Inode {
    /// The object number.
    pub object: u64,
    /// Mode, size, parent, links.
    pub attrs: ZnodeAttrs,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    /// The packed nvlist of SA-stored xattrs (`ZPL_DXATTR`), when present.
    sa_xattrs: Option<Vec<u8>>,
    dnode: Dnode,
}

impl Inode {
    /// The file type of its mode.
    pub fn file_type(&self) -> FileType {
        self.attrs.file_type()
    }

    /// The object's data block size (`dn_datablkszsec` in bytes).
    pub fn block_size(&self) -> u64 {
        self.dnode.phys().map_or(0, |p| p.data_block_size())
    }

    /// Bytes the object takes on disk (`DN_USED_BYTES`, include/sys/dnode.h:
    /// `dn_used` counts bytes with `DNODE_FLAG_USED_BYTES`, else 512-byte
    /// sectors).
    pub fn used_bytes(&self) -> u64 {
        self.dnode.phys().map_or(0, |p| {
            if p.flags() & crate::dnode::DNODE_FLAG_USED_BYTES != 0 {
                p.used()
            } else {
                p.used().saturating_mul(512)
            }
        })
    }

    /// Whether the object keeps SA-stored xattrs (`ZPL_DXATTR`).
    pub fn has_sa_xattrs(&self) -> bool {
        self.sa_xattrs.is_some()
    }
}

/// Where an extended attribute lives (module/os/linux/zfs/zpl_xattr.c
/// reads both: SA first, then the directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrSource {
    /// In the `ZPL_DXATTR` system attribute (`xattr=sa`).
    Sa,
    /// A file of the hidden xattr directory (`ZPL_XATTR`/`zp_xattr`);
    /// `object` is that file.
    Dir {
        /// The object holding the value.
        object: u64,
    },
}

/// One extended attribute of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    /// The name, with its namespace prefix as Linux stores it
    /// (`user.`, `security.`, `trusted.`, ...).
    pub name: Vec<u8>,
    /// The value's length in bytes.
    pub size: u64,
    /// Where it is stored.
    pub source: XattrSource,
}

/// Largest xattr value [`Pool::zpl_xattr_read`] returns (a directory
/// xattr is a whole file and may be larger; reading it is refused with
/// [`Error::LimitExceeded`] rather than allocating what the disk says).
pub const MAX_XATTR_SIZE: u64 = 16 << 20;

/// A small cache for reading one object: the last indirect block of each
/// level and the last data block, so that reading a file in small chunks
/// neither walks its indirect tree again nor decompresses a block again
/// for every chunk (the pool's block cache is a shared second level).
///
/// A cache belongs to one object: use a new one (or [`ReadCache::clear`])
/// for another.
#[derive(Debug, Clone, Default)]
pub struct ReadCache {
    /// Level `i + 1`: the last indirect block read there, by its pointer.
    ind: Vec<Option<(BlockPointer, Vec<u8>)>>,
    /// The last data block: its id and logical contents.
    data: Option<(u64, Vec<u8>)>,
}

impl ReadCache {
    /// Forgets everything.
    pub fn clear(&mut self) {
        self.ind.clear();
        self.data = None;
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.ind.iter().flatten().map(|(_, b)| b.len()).sum::<usize>()
            + self.data.as_ref().map_or(0, |(_, b)| b.len())
    }
}

/// One line of the manifest (see [`Pool::manifest`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ManifestLine {
    /// The dataset (`pool/fs`, `pool/fs@snap`).
    pub dataset: String,
    /// The absolute path within the dataset (`-` for an encrypted dataset).
    pub path: String,
    /// `dir`, `file`, `symlink`, `other` or `encrypted`.
    pub kind: &'static str,
    /// Byte size of files, target length of symlinks.
    pub size: Option<u64>,
    /// Hex SHA-256 of the content or target.
    pub sha256: Option<String>,
}

impl core::fmt::Display for ManifestLine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}\t{}\t{}\t", self.dataset, self.path, self.kind)?;
        match self.size {
            Some(s) => write!(f, "{s}\t")?,
            None => f.write_str("-\t")?,
        }
        f.write_str(self.sha256.as_deref().unwrap_or("-"))
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl<D: BlockDevice> Pool<D> {
    /// Opens the ZPL filesystem of DSL dataset `id` (head or snapshot):
    /// refuses encrypted datasets and non-ZPL objsets, reads the master
    /// node and, when present, the SA registry and layouts.
    pub fn zpl_open(&mut self, id: u64) -> Result<Zpl> {
        let ds = self.dsl_dataset(id)?;
        if ds.bp.is_encrypted() {
            return Err(Error::Encrypted);
        }
        let objset = self.dataset_objset(id)?;
        if objset.os_type != ost::ZFS {
            return Err(Error::BadObjset);
        }
        if objset.meta.phys()?.blkptr(0)?.is_encrypted() {
            return Err(Error::Encrypted);
        }
        let master = self.dnode(&objset, MASTER_NODE_OBJ)?;
        let mut root = None;
        let mut version = 0;
        let mut sa_obj = None;
        for (name, v) in self.zap_entries(&master)? {
            match name.as_slice() {
                zpl::ZFS_ROOT_OBJ => root = Some(v.first),
                zpl::ZPL_VERSION_STR => version = v.first,
                zpl::ZFS_SA_ATTRS => sa_obj = Some(v.first),
                _ => {}
            }
        }
        let root = root.ok_or(Error::NotFound)?;
        let sa = match sa_obj {
            Some(obj) => Some(self.sa_tables(&objset, obj)?),
            None => None,
        };
        Ok(Zpl { objset, root, version, sa })
    }

    /// Reads the SA registry and layouts named by the `SA_ATTRS` object.
    fn sa_tables(&mut self, os: &Objset, obj: u64) -> Result<SaTables> {
        let master = self.dnode(os, obj)?;
        let mut t = SaTables::default();
        for (name, v) in self.zap_entries(&master)? {
            match name.as_slice() {
                zpl::SA_REGISTRY => {
                    let reg = self.dnode(os, v.first)?;
                    for (name, v) in self.zap_entries(&reg)? {
                        let r = AttrReg::decode(v.first);
                        t.lengths.insert(r.num, r.len);
                        t.names.insert(name, r.num);
                    }
                }
                zpl::SA_LAYOUTS => {
                    let lay = self.dnode(os, v.first)?;
                    for (name, ints) in self.zap_arrays(&lay)? {
                        let num = core::str::from_utf8(&name)
                            .ok()
                            .and_then(|s| s.parse::<u16>().ok())
                            .ok_or(Error::BadSa)?;
                        let attrs: Result<Vec<u16>> =
                            ints.iter().map(|&a| u16::try_from(a).map_err(|_| Error::BadSa)).collect();
                        t.layouts.insert(num, attrs?);
                    }
                }
                _ => {}
            }
        }
        Ok(t)
    }

    /// Reads object `object` of `fs` and its attributes (SA bonus and spill
    /// block, or the old `znode_phys_t`), and a symlink's target.
    pub fn zpl_inode(&mut self, fs: &Zpl, object: u64) -> Result<Inode> {
        let dnode = self.dnode(&fs.objset, object)?;
        let phys = dnode.phys()?;
        let bonus = phys.bonus();
        let endian = dnode.endian();
        let mut sa_xattrs = None;
        let (attrs, target) = match phys.bonus_type() {
            zpl::ot::ZNODE => {
                let a = ZnodeAttrs::parse_znode_phys(bonus, endian)?;
                let mut target = None;
                if a.file_type() == FileType::Symlink {
                    // The bonus dbuf's capacity (`db_size`, dbuf.c): the
                    // dnode's bonus area after its block pointers.
                    let max_bonus = phys.slots() * crate::dnode::DNODE_SIZE
                        - crate::dnode::DNODE_CORE_SIZE
                        - usize::from(phys.nblkptr()) * crate::blkptr::BLKPTR_SIZE;
                    target = match old_symlink_inline(bonus, a.size, max_bonus)? {
                        Some(t) => Some(Vec::from(t)),
                        None => Some(self.read_target(&dnode, a.size)?),
                    };
                }
                (a, target)
            }
            zpl::ot::SA => {
                let sa = fs.sa.as_ref().ok_or(Error::BadSa)?;
                // Attribute number -> its bytes and the byte order of the
                // buffer (bonus or spill) that held it.
                let mut found: BTreeMap<u16, (Vec<u8>, crate::Endian)> = BTreeMap::new();
                let mut ends = Vec::new();
                ends.push(Vec::from(bonus));
                if let Some(spill) = phys.spill() {
                    ends.push(self.read_block(&spill)?);
                }
                for buf in &ends {
                    let hdr = SaHdr::new_checked(buf)?;
                    let e = hdr.endian();
                    let layout = sa.layouts.get(&hdr.layout()).ok_or(Error::BadSa)?;
                    hdr.attrs(layout, &|a| sa.lengths.get(&a).copied(), &mut |a, bytes| {
                        found.entry(a).or_insert_with(|| (Vec::from(bytes), e));
                        Ok(())
                    })?;
                }
                let raw = |name: &[u8]| sa.num(name).and_then(|n| found.get(&n));
                let get = |name: &[u8]| -> Result<u64> {
                    let (b, e) = raw(name).ok_or(Error::BadSa)?;
                    zpl::attr_u64(b, *e)
                };
                // Attributes a layout may leave out read as 0 (zdb prints
                // no line for them either).
                let opt =
                    |name: &[u8]| -> Result<u64> { raw(name).map_or(Ok(0), |(b, e)| zpl::attr_u64(b, *e)) };
                let time = |name: &[u8]| -> Result<ZplTime> {
                    raw(name).map_or(Ok(ZplTime::default()), |(b, e)| ZplTime::decode(b, *e))
                };
                let a = ZnodeAttrs {
                    mode: get(attr::MODE)?,
                    size: get(attr::SIZE)?,
                    parent: get(attr::PARENT)?,
                    links: get(attr::LINKS)?,
                    uid: opt(attr::UID)?,
                    gid: opt(attr::GID)?,
                    atime: time(attr::ATIME)?,
                    mtime: time(attr::MTIME)?,
                    ctime: time(attr::CTIME)?,
                    crtime: time(attr::CRTIME)?,
                    gen: opt(attr::GEN)?,
                    xattr: opt(attr::XATTR)?,
                    rdev: opt(attr::RDEV)?,
                    flags: opt(attr::FLAGS)?,
                };
                sa_xattrs = raw(attr::DXATTR).map(|(b, _)| b.clone());
                let mut target = None;
                if a.file_type() == FileType::Symlink {
                    let t = raw(attr::SYMLINK).map(|(b, _)| b.clone());
                    target = match t {
                        Some(t) => Some(t),
                        None => Some(self.read_target(&dnode, a.size)?),
                    };
                }
                (a, target)
            }
            other => return Err(Error::WrongBonusType(other)),
        };
        Ok(Inode { object, attrs, target, sa_xattrs, dnode })
    }

    /// A symlink target kept in the object's data.
    fn read_target(&mut self, dn: &Dnode, size: u64) -> Result<Vec<u8>> {
        if size > zpl::MAXPATHLEN {
            return Err(Error::BadLength);
        }
        let mut t = vec![0u8; size as usize];
        self.read_object(dn, 0, &mut t)?;
        Ok(t)
    }

    /// The entries of directory `dir`: name → entry, sorted by name.
    pub fn zpl_readdir(&mut self, dir: &Inode) -> Result<Vec<(Vec<u8>, DirEntry)>> {
        if dir.file_type() != FileType::Dir {
            return Err(Error::NotADirectory);
        }
        let mut out: Vec<(Vec<u8>, DirEntry)> =
            self.zap_entries(&dir.dnode)?.into_iter().map(|(n, v)| (n, DirEntry::decode(v.first))).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Reads file data at `offset` into `buf`, clipped to the file size;
    /// returns the bytes read. Holes read as zeros.
    pub fn zpl_read(&mut self, file: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.zpl_read_cached(file, &mut ReadCache::default(), offset, buf)
    }

    /// [`zpl_read`](Self::zpl_read) through `cache` (which must belong to
    /// `file`): consecutive small reads reuse the indirect blocks and the
    /// data block of the previous one.
    pub fn zpl_read_cached(
        &mut self,
        file: &Inode,
        cache: &mut ReadCache,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        if file.file_type() != FileType::File {
            return Err(Error::NotAFile);
        }
        let left = file.attrs.size.saturating_sub(offset);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let bs = file.dnode.phys()?.data_block_size();
        if bs == 0 {
            return Err(Error::BadDnode);
        }
        let mut done = 0usize;
        while done < n {
            let pos = offset.checked_add(done as u64).ok_or(Error::OutOfRange)?;
            let blkid = pos / bs;
            let within = (pos % bs) as usize;
            let take = usize::try_from(bs - within as u64).unwrap_or(usize::MAX).min(n - done);
            let out = &mut buf[done..done + take];
            if !matches!(&cache.data, Some((id, _)) if *id == blkid) {
                cache.data = match self.cached_block_pointer(&file.dnode, cache, blkid)? {
                    Some(bp) => Some((blkid, self.read_block(&bp)?)),
                    None => None,
                };
            }
            match &cache.data {
                Some((_, data)) => {
                    out.copy_from_slice(data.get(within..within + take).ok_or(Error::BadDnode)?)
                }
                // A hole (at any level, or past `dn_maxblkid`).
                None => out.fill(0),
            }
            done += take;
        }
        Ok(n)
    }

    /// The level-0 block pointer of block `blkid` (`None`: a hole), as
    /// [`Pool::block_pointer`] finds it (`dbuf_findbp`, module/zfs/dbuf.c),
    /// with the indirect blocks on the way kept in `cache`.
    pub(crate) fn cached_block_pointer(
        &mut self,
        dn: &Dnode,
        cache: &mut ReadCache,
        blkid: u64,
    ) -> Result<Option<BlockPointer>> {
        let p = dn.phys()?;
        if blkid > p.max_blkid() {
            return Ok(None);
        }
        let nlevels = u32::from(p.nlevels());
        if nlevels == 0 {
            return Err(Error::BadDnode);
        }
        // Checked by `DnodePhys::new_checked`: 7 <= indblkshift <= 17 when
        // there are indirect levels.
        let epbs = if nlevels > 1 { u32::from(p.indblkshift()).saturating_sub(7) } else { 0 };
        let top_shift = epbs * (nlevels - 1);
        let top = if top_shift >= 64 { 0 } else { blkid >> top_shift };
        if top >= u64::from(p.nblkptr()) {
            return Ok(None);
        }
        if cache.ind.len() < nlevels as usize {
            cache.ind.resize(nlevels as usize, None);
        }
        let mut bp = p.blkptr(top as usize)?;
        for level in (1..nlevels).rev() {
            if bp.is_hole() {
                return Ok(None);
            }
            if !bp.is_embedded() && (u32::from(bp.level()) != level || bp.lsize() != 1 << p.indblkshift()) {
                return Err(Error::BadDnode);
            }
            let slot = &mut cache.ind[level as usize - 1];
            if !matches!(slot, Some((k, _)) if *k == bp) {
                *slot = Some((bp, self.read_block(&bp)?));
            }
            let ind = slot.as_ref().map(|(_, d)| d.as_slice()).unwrap_or(&[]);
            let shift = epbs * (level - 1);
            let idx = if shift >= 64 { 0 } else { (blkid >> shift) & ((1 << epbs) - 1) } as usize;
            let at = idx * BLKPTR_SIZE;
            bp = BlockPointer::parse(ind.get(at..).ok_or(Error::BadDnode)?, bp.byte_order())?;
        }
        Ok(if bp.is_hole() { None } else { Some(bp) })
    }

    /// The extended attributes of `inode`: the SA-stored ones
    /// (`ZPL_DXATTR`, in nvlist order) first, then the files of its xattr
    /// directory (`ZPL_XATTR`/`zp_xattr`, by name), as `zpl_xattr_list`
    /// (module/os/linux/zfs/zpl_xattr.c) lists them; a directory entry
    /// whose name the SA already gave is left out (the SA copy is the one
    /// `zpl_xattr_get` returns). An xattr directory object that no longer
    /// exists (a znode whose xattr directory was removed, the pool
    /// `zol-znode-removed-xattr`) means no directory xattrs, as
    /// `zfs_get_xattrdir` failing with `ENOENT` does in OpenZFS.
    pub fn zpl_xattrs(&mut self, fs: &Zpl, inode: &Inode) -> Result<Vec<Xattr>> {
        let mut out = Vec::new();
        if let Some(packed) = &inode.sa_xattrs {
            for (name, value) in sa_xattr_pairs(packed)? {
                out.push(Xattr { name, size: value.len() as u64, source: XattrSource::Sa });
            }
        }
        let Some(dir) = self.xattr_dir(fs, inode)? else { return Ok(out) };
        let sa_count = out.len();
        for (name, e) in self.zpl_readdir(&dir)? {
            if out[..sa_count].iter().any(|x| x.name == name) {
                continue;
            }
            let file = self.zpl_inode(fs, e.object)?;
            let size = if file.file_type() == FileType::File { file.attrs.size } else { 0 };
            out.push(Xattr { name, size, source: XattrSource::Dir { object: e.object } });
        }
        Ok(out)
    }

    /// The value of xattr `name` of `inode` (SA first, then the xattr
    /// directory); [`Error::NotFound`] when it has none of that name.
    pub fn zpl_xattr_read(&mut self, fs: &Zpl, inode: &Inode, name: &[u8]) -> Result<Vec<u8>> {
        if let Some(packed) = &inode.sa_xattrs {
            if let Some((_, v)) = sa_xattr_pairs(packed)?.into_iter().find(|(n, _)| n == name) {
                return Ok(v);
            }
        }
        let dir = self.xattr_dir(fs, inode)?.ok_or(Error::NotFound)?;
        let e = self.zpl_readdir(&dir)?.into_iter().find(|(n, _)| n == name).ok_or(Error::NotFound)?.1;
        let file = self.zpl_inode(fs, e.object)?;
        if file.file_type() != FileType::File {
            return Err(Error::NotAFile);
        }
        if file.attrs.size > MAX_XATTR_SIZE {
            return Err(Error::LimitExceeded);
        }
        let mut v = vec![0u8; file.attrs.size as usize];
        let n = self.zpl_read(&file, 0, &mut v)?;
        v.truncate(n);
        Ok(v)
    }

    /// The hidden xattr directory of `inode` (`zfs_get_xattrdir`,
    /// module/os/linux/zfs/zfs_dir.c), `None` when it has none or the
    /// object is gone.
    fn xattr_dir(&mut self, fs: &Zpl, inode: &Inode) -> Result<Option<Inode>> {
        if inode.attrs.xattr == 0 {
            return Ok(None);
        }
        match self.zpl_inode(fs, inode.attrs.xattr) {
            Ok(d) if d.file_type() == FileType::Dir => Ok(Some(d)),
            Ok(_) => Err(Error::NotADirectory),
            Err(Error::NoSuchObject) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Resolves `path` (`/`-separated, from the root; `.`, `..` and empty
    /// components allowed) without following symlinks.
    pub fn zpl_lookup(&mut self, fs: &Zpl, path: &[u8]) -> Result<Inode> {
        let mut chain = vec![self.zpl_inode(fs, fs.root)?];
        for comp in path.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => continue,
                b".." => {
                    if chain.len() > 1 {
                        chain.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let cur = chain.last().ok_or(Error::NoSuchPath)?;
            let entries = self.zpl_readdir(cur)?;
            let e = entries.iter().find(|(n, _)| n == comp).ok_or(Error::NoSuchPath)?.1;
            let next = self.zpl_inode(fs, e.object)?;
            if chain.len() > MAX_DEPTH {
                return Err(Error::LimitExceeded);
            }
            chain.push(next);
        }
        chain.pop().ok_or(Error::NoSuchPath)
    }

    /// Visits every object reachable from the root (depth first, entries
    /// by name), with its absolute path; a directory is entered once.
    pub fn zpl_walk(
        &mut self,
        fs: &Zpl,
        f: &mut WalkVisitor<'_, D>,
    ) -> core::result::Result<(), ObjectError> {
        let err = |object: u64, what: &'static str| {
            let objset = fs.objset.id;
            move |error| ObjectError { objset, object, what, error }
        };
        let root = self.zpl_inode(fs, fs.root).map_err(err(fs.root, "root directory"))?;
        let mut seen = BTreeSet::new();
        let mut stack = vec![(Vec::from(&b"/"[..]), root, 0usize)];
        let mut visited = 0usize;
        while let Some((path, inode, depth)) = stack.pop() {
            visited += 1;
            if visited > MAX_WALK || depth > MAX_DEPTH {
                return Err(err(inode.object, "directory tree")(Error::LimitExceeded));
            }
            f(self, &path, &inode)?;
            if inode.file_type() != FileType::Dir || !seen.insert(inode.object) {
                continue;
            }
            let entries = self.zpl_readdir(&inode).map_err(err(inode.object, "directory"))?;
            for (name, e) in entries.into_iter().rev() {
                let child = self.zpl_inode(fs, e.object).map_err(err(e.object, "znode"))?;
                let mut p = path.clone();
                if p.len() > 1 {
                    p.push(b'/');
                }
                p.extend_from_slice(&name);
                stack.push((p, child, depth + 1));
            }
        }
        Ok(())
    }

    /// SHA-256 of a file's content.
    pub fn zpl_sha256(&mut self, file: &Inode) -> Result<[u8; 32]> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut cache = ReadCache::default();
        let mut off = 0u64;
        while off < file.attrs.size {
            let n = self.zpl_read_cached(file, &mut cache, off, &mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            off += n as u64;
        }
        Ok(h.finalize().into())
    }

    /// The manifest lines of one filesystem (`dataset` is its name).
    pub fn zpl_manifest(
        &mut self,
        fs: &Zpl,
        dataset: &str,
        out: &mut Vec<ManifestLine>,
    ) -> core::result::Result<(), ObjectError> {
        let objset = fs.objset.id;
        self.zpl_walk(fs, &mut |pool, path, inode| {
            let (size, sha) = match inode.file_type() {
                FileType::File => {
                    let sum = pool.zpl_sha256(inode).map_err(|error| ObjectError {
                        objset,
                        object: inode.object,
                        what: "file data",
                        error,
                    })?;
                    (Some(inode.attrs.size), Some(hex(&sum)))
                }
                FileType::Symlink => {
                    let t = inode.target.as_deref().unwrap_or(&[]);
                    (Some(t.len() as u64), Some(hex(&Sha256::digest(t))))
                }
                FileType::Dir | FileType::Other => (None, None),
            };
            out.push(ManifestLine {
                dataset: String::from(dataset),
                path: String::from_utf8_lossy(path).into_owned(),
                kind: inode.file_type().as_str(),
                size,
                sha256: sha,
            });
            Ok(())
        })
    }

    /// The manifest of the pool: every object of every ZPL dataset
    /// (snapshots included, volumes skipped), sorted bytewise by its
    /// printed line; an encrypted dataset gives one `encrypted` line.
    pub fn manifest(&mut self) -> core::result::Result<Vec<ManifestLine>, ObjectError> {
        let mut out = Vec::new();
        for d in self.datasets()? {
            // Volumes (and their snapshots) and other objsets are skipped.
            if d.os_type != ost::ZFS {
                continue;
            }
            let fs = match self.zpl_open(d.id) {
                Ok(fs) => fs,
                Err(Error::Encrypted) => {
                    out.push(ManifestLine {
                        dataset: d.name.clone(),
                        path: String::from("-"),
                        kind: "encrypted",
                        size: None,
                        sha256: None,
                    });
                    continue;
                }
                Err(error) => {
                    return Err(ObjectError { objset: 0, object: d.id, what: "ZPL dataset", error })
                }
            };
            self.zpl_manifest(&fs, &d.name, &mut out)?;
        }
        let mut keyed: Vec<(String, ManifestLine)> = out.into_iter().map(|l| (format!("{l}"), l)).collect();
        keyed.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok(keyed.into_iter().map(|(_, l)| l).collect())
    }
}

/// The pairs of a packed `ZPL_DXATTR` nvlist: name -> value, each value a
/// `DATA_TYPE_BYTE_ARRAY` (`zpl_xattr_set_sa`,
/// module/os/linux/zfs/zpl_xattr.c: `nvlist_add_byte_array`).
pub fn sa_xattr_pairs(packed: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let list = NvList::unpack(packed)?;
    list.pairs
        .into_iter()
        .map(|(name, value)| match value {
            NvValue::ByteArray(v) => Ok((name.into_bytes(), v)),
            _ => Err(Error::BadSa),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Endian;
    use proptest::prelude::*;

    /// A `ZPL_DXATTR` value as `zfs_sa_set_xattr` packs it: an XDR nvlist
    /// of byte arrays (the header records the packing host's byte order;
    /// XDR itself is big-endian either way).
    #[test]
    fn sa_xattrs_decode_in_order() {
        for host in [Endian::Little, Endian::Big] {
            let list = NvList::new()
                .with("user.comment", NvValue::ByteArray(b"hello".to_vec()))
                .with("security.selinux", NvValue::ByteArray(b"system_u:object_r:etc_t:s0\0".to_vec()))
                .with("user.empty", NvValue::ByteArray(Vec::new()));
            let packed = list.pack(host).unwrap();
            let pairs = sa_xattr_pairs(&packed).unwrap();
            assert_eq!(
                pairs,
                vec![
                    (b"user.comment".to_vec(), b"hello".to_vec()),
                    (b"security.selinux".to_vec(), b"system_u:object_r:etc_t:s0\0".to_vec()),
                    (b"user.empty".to_vec(), Vec::new()),
                ]
            );
        }
        // A value of another type is not an xattr.
        let bad = NvList::new().with("user.n", NvValue::Uint64(7)).pack(Endian::Little).unwrap();
        assert_eq!(sa_xattr_pairs(&bad), Err(Error::BadSa));
        // Cut short anywhere: an error, never a panic.
        let good = NvList::new().with("user.a", NvValue::ByteArray(vec![1; 40])).pack(Endian::Big).unwrap();
        for n in 0..good.len() {
            assert!(sa_xattr_pairs(&good[..n]).is_err(), "accepted {n} of {} bytes", good.len());
        }
    }

    #[test]
    fn read_cache_forgets() {
        let mut c = ReadCache { ind: vec![None], data: Some((3, vec![0; 512])) };
        assert_eq!(c.bytes(), 512);
        c.clear();
        assert_eq!((c.bytes(), c.ind.len(), c.data.is_none()), (0, 0, true));
    }

    proptest! {
        #[test]
        fn arbitrary_sa_xattr_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = sa_xattr_pairs(&bytes);
        }
    }
}
