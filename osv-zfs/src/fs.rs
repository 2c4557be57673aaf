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

use crate::dnode::ost;
use crate::pool::{Dnode, ObjectError, Objset, Pool};
use crate::zpl::{
    self, attr, old_symlink_inline, AttrReg, DirEntry, FileType, SaHdr, ZnodeAttrs, MASTER_NODE_OBJ,
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
    dnode: Dnode,
}

impl Inode {
    /// The file type of its mode.
    pub fn file_type(&self) -> FileType {
        self.attrs.file_type()
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
                let mut found: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
                let mut ends = Vec::new();
                ends.push((Vec::from(bonus), endian));
                if let Some(spill) = phys.spill() {
                    let data = self.read_block(&spill)?;
                    ends.push((data, spill.byte_order()));
                }
                let mut sa_endian = endian;
                for (buf, _) in &ends {
                    let hdr = SaHdr::new_checked(buf)?;
                    sa_endian = hdr.endian();
                    let layout = sa.layouts.get(&hdr.layout()).ok_or(Error::BadSa)?;
                    hdr.attrs(layout, &|a| sa.lengths.get(&a).copied(), &mut |a, bytes| {
                        found.entry(a).or_insert_with(|| Vec::from(bytes));
                        Ok(())
                    })?;
                }
                let get = |name: &[u8]| -> Result<u64> {
                    let n = sa.num(name).ok_or(Error::BadSa)?;
                    zpl::attr_u64(found.get(&n).ok_or(Error::BadSa)?, sa_endian)
                };
                let a = ZnodeAttrs {
                    mode: get(attr::MODE)?,
                    size: get(attr::SIZE)?,
                    parent: get(attr::PARENT)?,
                    links: get(attr::LINKS)?,
                };
                let mut target = None;
                if a.file_type() == FileType::Symlink {
                    let t = sa.num(attr::SYMLINK).and_then(|n| found.get(&n)).cloned();
                    target = match t {
                        Some(t) => Some(t),
                        None => Some(self.read_target(&dnode, a.size)?),
                    };
                }
                (a, target)
            }
            other => return Err(Error::WrongBonusType(other)),
        };
        Ok(Inode { object, attrs, target, dnode })
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
        if file.file_type() != FileType::File {
            return Err(Error::NotAFile);
        }
        let left = file.attrs.size.saturating_sub(offset);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        self.read_object(&file.dnode, offset, &mut buf[..n])?;
        Ok(n)
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
        let mut off = 0u64;
        while off < file.attrs.size {
            let n = self.zpl_read(file, off, &mut buf)?;
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
