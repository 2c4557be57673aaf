//! A read-only mount of one ZPL dataset through osv-vfs (feature `vfs`).
//!
//! osv-vfs defines the filesystem traits ([`FsOps`], OSv's `vfsops`, and
//! [`VnodeOps`], OSv's `vnops`); this module implements them over a
//! [`Pool`] for one dataset, a filesystem or a snapshot (`pool/fs@snap`,
//! as `osv-zfs datasets` names them; clones are filesystems):
//!
//! ```text
//!  ZfsPool   one open pool (behind a lock), shared by its mounts
//!   └─ ZfsFs     one dataset: FsOps (root, statfs), the vnode table
//!       └─ Node      one object: VnodeOps (lookup, readdir, read, getattr,
//!                    readlink); a directory's entries and a file's last
//!                    indirect and data blocks are cached in it
//! ```
//!
//! - **Read-only**: every operation that would change the filesystem
//!   (`create`, `mkdir`, `remove`, `rmdir`, `rename`, `link`, `symlink`,
//!   `write`, `truncate`, `setattr`, opening for writing or with
//!   `O_TRUNC`) fails with [`Errno::EROFS`], as Linux answers on a
//!   read-only mount.
//! - **Inodes are object numbers**: a vnode's [`ino`](VnodeOps::ino) is
//!   its ZPL object, so two names of one object (hard links) give the same
//!   inode, and the vnode table gives them the same vnode while it lives.
//! - **No panics on pool content**: every error of the reader is a typed
//!   [`Error`] mapped to an [`Errno`] by [`errno`] (`EIO` for damaged or
//!   unreadable structures).
//! - **Cost**: a directory's entries are read once per vnode (its ZAP,
//!   micro or fat) and looked up by binary search; a file keeps a
//!   [`ReadCache`] (the last indirect block per level and the last data
//!   block), so reading a file in 4 KiB chunks reads and decompresses each
//!   record once and walks no indirect block twice. The cache is dropped
//!   whenever an open description of the file closes, so memory follows
//!   the open files.
//!
//! # Lock order
//!
//! Following osv-vfs's rules (filesystem locks are taken inside the VFS's
//! and never call back into it), in this order and never the other way:
//!
//! 1. a vnode's cache mutex (its directory entries or its read cache);
//! 2. the pool mutex (all block I/O: the pool reader needs `&mut`, so reads
//!    of different files are serialised here);
//! 3. the vnode table mutex (a leaf: held only to look up or insert a
//!    `Weak`, never across I/O).
//!
//! # Names
//!
//! ZFS names are bytes; osv-vfs's are `str`. A name that is not UTF-8 is
//! shown with `U+FFFD` replacement characters (and found again by that
//! spelling); symlink targets likewise.
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(feature = "std")] {
//! use osv_vfs::{OpenFlags, RamFs, Vfs, ZeroClock};
//! use osv_zfs::pool::Pool;
//! use osv_zfs::vfs::ZfsPool;
//! use osv_zfs::FileDevice;
//! use std::sync::Arc;
//!
//! let pool = Pool::open(vec![FileDevice::open("vdev0").unwrap()]).unwrap();
//! let fs = ZfsPool::new(pool).mount("tank/home@monday").unwrap();
//! let vfs = Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap();
//! vfs.mkdir("/mnt", 0o755).unwrap();
//! vfs.mount("/mnt", fs).unwrap();
//! let fd = vfs.open("/mnt/notes.txt", OpenFlags::RDONLY, 0).unwrap();
//! let mut buf = [0u8; 4096];
//! let n = vfs.read(fd, &mut buf).unwrap();
//! # let _ = n;
//! # }
//! ```

use crate::dnode::ost;
use crate::fs::{Inode, ReadCache, Xattr, Zpl};
use crate::pool::Pool;
use crate::zpl::{mode, DirEntry, ZnodeAttrs, ZplTime};
use crate::{BlockDevice, Error};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::any::Any;
use osv_vfs::{
    makedev, Dirent, Errno, FsOps, OpenFlags, SetAttr, Stat, StatFs, Timespec, VType, VnodeOps, VnodeRef,
    WritePos,
};
use spin::Mutex;

/// `ZFS_SUPER_MAGIC` (include/os/linux/zfs/sys/zfs_vfsops_os.h): what
/// Linux's `statfs` reports for ZFS.
pub const ZFS_SUPER_MAGIC: u64 = 0x2fc1_2fc1;
/// `ZAP_MAXNAMELEN` - 1 (include/sys/zap.h): the longest name.
pub const ZFS_NAME_MAX: u32 = 255;
/// The block size `statfs` counts in (`SPA_MINBLOCKSIZE`).
const STATFS_BLOCK: u64 = 512;

/// The errno for a reader error: missing names `ENOENT`, wrong types
/// `ENOTDIR`/`EINVAL`, an encrypted dataset `EACCES` (no key), a pool
/// needing a feature we lack `EOPNOTSUPP`, everything else (damaged or
/// unreadable structures, failed reads, block pointers naming a checksum
/// or compression we do not know, which a damaged pointer does too) `EIO`.
pub fn errno(e: Error) -> Errno {
    match e {
        Error::NotFound | Error::NoSuchPath => Errno::ENOENT,
        Error::NotADirectory => Errno::ENOTDIR,
        Error::NotAFile => Errno::EINVAL,
        Error::Encrypted => Errno::EACCES,
        Error::UnsupportedFeature(_) => Errno::EOPNOTSUPP,
        _ => Errno::EIO,
    }
}

/// The osv-vfs type of a ZPL mode (`S_IFMT` bits); `None` for none.
fn vtype_of_mode(m: u64) -> Option<VType> {
    Some(match m & mode::S_IFMT {
        mode::S_IFREG => VType::Regular,
        mode::S_IFDIR => VType::Directory,
        mode::S_IFLNK => VType::Symlink,
        mode::S_IFCHR => VType::CharDevice,
        mode::S_IFBLK => VType::BlockDevice,
        mode::S_IFIFO => VType::Fifo,
        mode::S_IFSOCK => VType::Socket,
        _ => return None,
    })
}

fn timespec(t: ZplTime) -> Timespec {
    Timespec {
        sec: i64::try_from(t.sec).unwrap_or(i64::MAX),
        nsec: u32::try_from(t.nsec).ok().filter(|&n| n < 1_000_000_000).unwrap_or(0),
    }
}

/// One open pool, shared by the mounts of its datasets. Cloning shares it.
pub struct ZfsPool<D> {
    pool: Arc<Mutex<Pool<D>>>,
}

impl<D> Clone for ZfsPool<D> {
    fn clone(&self) -> Self {
        ZfsPool { pool: self.pool.clone() }
    }
}

impl<D> core::fmt::Debug for ZfsPool<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ZfsPool").finish_non_exhaustive()
    }
}

impl<D: BlockDevice + Send + 'static> ZfsPool<D> {
    /// Shares `pool` between mounts.
    pub fn new(pool: Pool<D>) -> ZfsPool<D> {
        ZfsPool { pool: Arc::new(Mutex::new(pool)) }
    }

    /// Runs `f` with the pool locked (for reads outside a mount).
    pub fn with_pool<R>(&self, f: impl FnOnce(&mut Pool<D>) -> R) -> R {
        f(&mut self.pool.lock())
    }

    /// Opens dataset `name` (`pool`, `pool/fs`, `pool/fs@snap`) for
    /// mounting: [`Error::NoSuchPath`] when the pool has no such dataset,
    /// [`Error::BadObjset`] for a volume, [`Error::Encrypted`] for an
    /// encrypted one.
    pub fn mount(&self, name: &str) -> Result<Arc<ZfsFs<D>>, Error> {
        let mut pool = self.pool.lock();
        let info = pool
            .datasets()
            .map_err(|e| e.error)?
            .into_iter()
            .find(|d| d.name == name)
            .ok_or(Error::NoSuchPath)?;
        if info.os_type != ost::ZFS {
            return Err(Error::BadObjset);
        }
        let zpl = pool.zpl_open(info.id)?;
        let ds = pool.dsl_dataset(info.id)?;
        let root = pool.zpl_inode(&zpl, zpl.root)?;
        drop(pool);
        let shared = Arc::new(Shared {
            pool: self.pool.clone(),
            root_obj: zpl.root,
            zpl,
            dataset: String::from(name),
            referenced: ds.referenced_bytes,
            objects: info.objects,
            vnodes: Mutex::new(BTreeMap::new()),
        });
        let root = Node::new(&shared, root).map_err(|_| Error::NotADirectory)?;
        if root.kind != VType::Directory {
            return Err(Error::NotADirectory);
        }
        shared.vnodes.lock().insert(root.inode.object, Arc::downgrade(&root));
        Ok(Arc::new(ZfsFs { shared, root }))
    }
}

/// What the vnodes of one mount share.
struct Shared<D> {
    pool: Arc<Mutex<Pool<D>>>,
    zpl: Zpl,
    root_obj: u64,
    dataset: String,
    referenced: u64,
    objects: u64,
    /// Object -> its live vnode (hard links share one).
    vnodes: Mutex<BTreeMap<u64, Weak<Node<D>>>>,
}

impl<D: BlockDevice + Send + 'static> Shared<D> {
    /// The vnode of `object`: the live one, or a new one read from the pool.
    fn vnode(self: &Arc<Self>, object: u64) -> osv_vfs::Result<Arc<Node<D>>> {
        if let Some(n) = self.vnodes.lock().get(&object).and_then(Weak::upgrade) {
            return Ok(n);
        }
        let inode = self.pool.lock().zpl_inode(&self.zpl, object).map_err(errno)?;
        let node = Node::new(self, inode)?;
        let mut table = self.vnodes.lock();
        if let Some(n) = table.get(&object).and_then(Weak::upgrade) {
            // Another lookup made it meanwhile: keep one vnode per object.
            return Ok(n);
        }
        // Drop the dead entries now and then: whenever the table reaches a
        // power of two from 64 on (amortised O(1) per insert).
        if table.len() >= 64 && table.len().is_power_of_two() {
            table.retain(|_, w| w.strong_count() > 0);
        }
        table.insert(object, Arc::downgrade(&node));
        Ok(node)
    }
}

/// A mounted ZPL dataset: osv-vfs's [`FsOps`].
pub struct ZfsFs<D> {
    shared: Arc<Shared<D>>,
    root: Arc<Node<D>>,
}

impl<D> core::fmt::Debug for ZfsFs<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ZfsFs").field("dataset", &self.shared.dataset).finish_non_exhaustive()
    }
}

impl<D: BlockDevice + Send + 'static> ZfsFs<D> {
    /// The dataset's name.
    pub fn dataset(&self) -> &str {
        &self.shared.dataset
    }

    /// Vnodes alive besides the root (held by the VFS's dentry cache, open
    /// files, or callers): 0 once everything is closed and the dentry
    /// cache dropped.
    pub fn live_vnodes(&self) -> usize {
        let root = self.shared.root_obj;
        self.shared.vnodes.lock().iter().filter(|(&o, w)| o != root && w.strong_count() > 0).count()
    }

    /// Resolves `path` inside the dataset (from its root, not following
    /// symbolic links).
    fn inode_at(&self, pool: &mut Pool<D>, path: &str) -> osv_vfs::Result<Inode> {
        pool.zpl_lookup(&self.shared.zpl, path.as_bytes()).map_err(errno)
    }

    /// All ZPL attributes of `path` (relative to the dataset's root, not
    /// following a final symlink), including those [`Stat`] has no field
    /// for: owner, group, creation time, generation, flags, xattr object.
    pub fn znode_attrs(&self, path: &str) -> osv_vfs::Result<ZnodeAttrs> {
        let mut pool = self.shared.pool.lock();
        Ok(self.inode_at(&mut pool, path)?.attrs)
    }

    /// The extended attributes of `path` (see [`Pool::zpl_xattrs`]).
    pub fn listxattr(&self, path: &str) -> osv_vfs::Result<Vec<Xattr>> {
        let mut pool = self.shared.pool.lock();
        let inode = self.inode_at(&mut pool, path)?;
        pool.zpl_xattrs(&self.shared.zpl, &inode).map_err(errno)
    }

    /// The value of xattr `name` of `path` (`ENOENT` for no such xattr;
    /// Linux says `ENODATA`, which osv-vfs does not have).
    pub fn getxattr(&self, path: &str, name: &str) -> osv_vfs::Result<Vec<u8>> {
        let mut pool = self.shared.pool.lock();
        let inode = self.inode_at(&mut pool, path)?;
        pool.zpl_xattr_read(&self.shared.zpl, &inode, name.as_bytes()).map_err(errno)
    }
}

impl<D: BlockDevice + Send + 'static> FsOps for ZfsFs<D> {
    fn name(&self) -> &str {
        "zfs"
    }

    fn root(&self) -> VnodeRef {
        self.root.clone()
    }

    fn sync(&self) -> osv_vfs::Result {
        Ok(())
    }

    /// Blocks of 512 bytes: the dataset's referenced bytes; nothing free
    /// (read-only); files: the objset's object count (`ds_bp.blk_fill`).
    fn statfs(&self) -> osv_vfs::Result<StatFs> {
        Ok(StatFs {
            fs_type: ZFS_SUPER_MAGIC,
            block_size: STATFS_BLOCK as u32,
            blocks: self.shared.referenced.div_ceil(STATFS_BLOCK),
            blocks_free: 0,
            files: self.shared.objects,
            files_free: 0,
            name_max: ZFS_NAME_MAX,
        })
    }
}

/// A directory's entries: name (lossy UTF-8) -> entry, sorted by name.
type Entries = Arc<Vec<(String, DirEntry)>>;

/// What a vnode caches.
#[derive(Default)]
struct NodeCache {
    entries: Option<Entries>,
    blocks: ReadCache,
}

/// One ZPL object: osv-vfs's [`VnodeOps`].
struct Node<D> {
    fs: Arc<Shared<D>>,
    inode: Inode,
    kind: VType,
    cache: Mutex<NodeCache>,
}

impl<D: BlockDevice + Send + 'static> Node<D> {
    fn new(fs: &Arc<Shared<D>>, inode: Inode) -> osv_vfs::Result<Arc<Node<D>>> {
        let kind = vtype_of_mode(inode.attrs.mode).ok_or(Errno::EIO)?;
        Ok(Arc::new(Node { fs: fs.clone(), inode, kind, cache: Mutex::new(NodeCache::default()) }))
    }

    /// The directory's entries, read once.
    fn entries(&self) -> osv_vfs::Result<Entries> {
        if self.kind != VType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let mut cache = self.cache.lock();
        if let Some(e) = &cache.entries {
            return Ok(e.clone());
        }
        let raw = self.fs.pool.lock().zpl_readdir(&self.inode).map_err(errno)?;
        let mut list: Vec<(String, DirEntry)> =
            raw.into_iter().map(|(n, e)| (String::from_utf8_lossy(&n).into_owned(), e)).collect();
        // Sorted by the bytes already; lossy names may reorder.
        list.sort_by(|a, b| a.0.cmp(&b.0));
        let list = Arc::new(list);
        cache.entries = Some(list.clone());
        Ok(list)
    }

    fn parent(&self) -> u64 {
        if self.inode.object == self.fs.root_obj {
            self.fs.root_obj
        } else {
            self.inode.attrs.parent
        }
    }
}

impl<D: BlockDevice + Send + 'static> VnodeOps for Node<D> {
    fn ino(&self) -> u64 {
        self.inode.object
    }

    fn vtype(&self) -> VType {
        self.kind
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn open(&self, flags: OpenFlags) -> osv_vfs::Result {
        if flags.writable() || flags.contains(OpenFlags::TRUNC) {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    fn close(&self) -> osv_vfs::Result {
        // Keep memory bounded by the open files: a closed file's blocks go.
        self.cache.lock().blocks.clear();
        Ok(())
    }

    fn read(&self, off: u64, iov: &mut [&mut [u8]]) -> osv_vfs::Result<usize> {
        match self.kind {
            VType::Regular => {}
            VType::Directory => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        }
        let mut cache = self.cache.lock();
        let mut pool = self.fs.pool.lock();
        let mut done = 0usize;
        for buf in iov.iter_mut() {
            let at = off.checked_add(done as u64).ok_or(Errno::EOVERFLOW)?;
            let n = pool.zpl_read_cached(&self.inode, &mut cache.blocks, at, buf).map_err(errno)?;
            done += n;
            if n < buf.len() {
                break;
            }
        }
        Ok(done)
    }

    fn write(&self, _pos: WritePos, _iov: &[&[u8]]) -> osv_vfs::Result<(usize, u64)> {
        Err(Errno::EROFS)
    }

    fn readdir(&self, cookie: u64) -> osv_vfs::Result<Option<Dirent>> {
        let entries = self.entries()?;
        let dot = |name: &str, ino: u64| Dirent { ino, kind: VType::Directory, name: String::from(name) };
        Ok(match cookie {
            0 => Some(dot(".", self.inode.object)),
            1 => Some(dot("..", self.parent())),
            c => {
                let Some((name, e)) = usize::try_from(c - 2).ok().and_then(|i| entries.get(i)) else {
                    return Ok(None);
                };
                // `ZFS_DIRENT_TYPE` is `IFTODT(mode)`; an entry without it
                // (0) or with a bad one is typed by its object.
                let kind = match vtype_of_mode(u64::from(e.dtype) << 12) {
                    Some(k) => k,
                    None => self.fs.vnode(e.object)?.kind,
                };
                Some(Dirent { ino: e.object, kind, name: name.clone() })
            }
        })
    }

    fn lookup(&self, name: &str) -> osv_vfs::Result<VnodeRef> {
        if self.kind != VType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let object = if name == ".." {
            self.parent()
        } else {
            let entries = self.entries()?;
            let i = entries.binary_search_by(|(n, _)| n.as_str().cmp(name)).map_err(|_| Errno::ENOENT)?;
            entries[i].1.object
        };
        Ok(self.fs.vnode(object)?)
    }

    fn create(&self, _name: &str, _perm: u32) -> osv_vfs::Result<VnodeRef> {
        Err(Errno::EROFS)
    }

    fn remove(&self, _name: &str) -> osv_vfs::Result {
        Err(Errno::EROFS)
    }

    fn rename(&self, _name: &str, _new_dir: &dyn VnodeOps, _new_name: &str) -> osv_vfs::Result {
        Err(Errno::EROFS)
    }

    fn mkdir(&self, _name: &str, _perm: u32) -> osv_vfs::Result<VnodeRef> {
        Err(Errno::EROFS)
    }

    fn rmdir(&self, _name: &str) -> osv_vfs::Result {
        Err(Errno::EROFS)
    }

    fn getattr(&self) -> osv_vfs::Result<Stat> {
        let a = &self.inode.attrs;
        let rdev = match self.kind {
            // Major in the high 32 bits, minor in the low 32 (`zfs_expldev`
            // with `NBITSMINOR64` = 32, include/sys/zfs_znode.h).
            VType::CharDevice | VType::BlockDevice => makedev((a.rdev >> 32) as u32, a.rdev as u32),
            _ => 0,
        };
        Ok(Stat {
            dev: 0,
            ino: self.inode.object,
            kind: self.kind,
            perm: (a.mode & 0o7777) as u32,
            nlink: a.links,
            size: a.size,
            blocks: self.inode.used_bytes().div_ceil(512),
            blksize: u32::try_from(self.inode.block_size()).unwrap_or(u32::MAX),
            rdev,
            atime: timespec(a.atime),
            mtime: timespec(a.mtime),
            ctime: timespec(a.ctime),
        })
    }

    fn setattr(&self, _attr: &SetAttr) -> osv_vfs::Result {
        Err(Errno::EROFS)
    }

    fn truncate(&self, _len: u64) -> osv_vfs::Result {
        Err(Errno::EROFS)
    }

    fn link(&self, _name: &str, _target: &dyn VnodeOps) -> osv_vfs::Result {
        Err(Errno::EROFS)
    }

    fn symlink(&self, _name: &str, _target: &str) -> osv_vfs::Result<VnodeRef> {
        Err(Errno::EROFS)
    }

    fn readlink(&self) -> osv_vfs::Result<String> {
        match (&self.inode.target, self.kind) {
            (Some(t), VType::Symlink) => Ok(String::from_utf8_lossy(t).into_owned()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn fsync(&self) -> osv_vfs::Result {
        Ok(())
    }

    /// Private read-only mappings of regular files (filled through `read`).
    fn mmap(&self, _off: u64, _len: u64, shared: bool) -> osv_vfs::Result {
        match (self.kind, shared) {
            (VType::Regular, false) => Ok(()),
            (VType::Regular, true) => Err(Errno::EROFS),
            _ => Err(Errno::ENODEV),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::fletcher_4;
    use crate::nvlist::{NvList, NvValue};
    use crate::vdev::VDEV_LABEL_START_SIZE;
    use crate::zap::tests::micro;
    use crate::zap::{
        ZAP_LEAF_ARRAY_BYTES, ZAP_LEAF_CHUNKSIZE, ZAP_LEAF_MAGIC, ZAP_MAGIC, ZBT_HEADER, ZBT_LEAF,
    };
    use crate::{Endian, MemDevice};
    use osv_vfs::{Errno, RamFs, Vfs, ZeroClock};
    use proptest::prelude::*;
    use std::vec;

    #[test]
    fn modes_and_errors_map() {
        assert_eq!(vtype_of_mode(0o100_644), Some(VType::Regular));
        assert_eq!(vtype_of_mode(0o040_755), Some(VType::Directory));
        assert_eq!(vtype_of_mode(0o120_777), Some(VType::Symlink));
        assert_eq!(vtype_of_mode(0o020_644), Some(VType::CharDevice));
        assert_eq!(vtype_of_mode(0o060_644), Some(VType::BlockDevice));
        assert_eq!(vtype_of_mode(0o010_644), Some(VType::Fifo));
        assert_eq!(vtype_of_mode(0o140_644), Some(VType::Socket));
        assert_eq!(vtype_of_mode(0o000_644), None);
        assert_eq!(vtype_of_mode(0o170_000), None);
        assert_eq!(errno(Error::NoSuchPath), Errno::ENOENT);
        assert_eq!(errno(Error::NotADirectory), Errno::ENOTDIR);
        assert_eq!(errno(Error::BadChecksum), Errno::EIO);
        assert_eq!(errno(Error::UnsupportedCompression(99)), Errno::EIO);
        assert_eq!(
            timespec(ZplTime { sec: 1_477_505_165, nsec: 5 }),
            Timespec { sec: 1_477_505_165, nsec: 5 }
        );
        // Out-of-range values from disk are clamped, not trusted.
        assert_eq!(
            timespec(ZplTime { sec: u64::MAX, nsec: 2_000_000_000 }),
            Timespec { sec: i64::MAX, nsec: 0 }
        );
    }

    // ----- a synthetic ZPL pool -----
    //
    // No test pool has large dnodes, spill blocks, SA-stored xattrs or hard
    // links (zdb shows none), so this builds one in memory, little-endian,
    // uncompressed, fletcher4, one 8 MiB file vdev:
    //
    //   /file      object 6, 5020 bytes in 512-byte blocks under two
    //              indirect levels (1 KiB indirect blocks), block 3 a hole;
    //              SA layout with ZPL_DXATTR {user.greeting: "hello"};
    //              two links
    //   /hardlink  object 6 again
    //   /big       object 8, a large dnode (4 slots, dn_extra_slots 3)
    //              whose bonus holds a 1000-byte SA xattr
    //   /spilled   object 12, a symlink whose bonus holds only mode, size,
    //              parent and links; owner, times, target and an xattr are
    //              in its spill block (DNODE_FLAG_SPILL_BLKPTR)

    const LE: Endian = Endian::Little;
    /// `DMU_OT_SA` etc. (include/sys/dmu.h).
    const OT_SA: u8 = 44;
    const OT_SA_MASTER: u8 = 45;
    const OT_SA_REGISTRY: u8 = 46;
    const OT_SA_LAYOUTS: u8 = 47;
    const OT_PLAIN_FILE: u8 = 19;
    const OT_DIRECTORY: u8 = 20;
    const OT_MASTER_NODE: u8 = 21;
    const FILE_SIZE: usize = 5020;
    const BIG_XATTR: usize = 1000;

    /// The registry: attribute numbers and lengths as OpenZFS registers
    /// them (`zfs_attr_table`, module/zfs/zfs_sa.c; values as zdb prints
    /// them for a real pool).
    const REGISTRY: [(&str, u64); 13] = [
        ("ZPL_ATIME", 0x1000_0000),
        ("ZPL_MTIME", 0x1000_0001),
        ("ZPL_CTIME", 0x1000_0002),
        ("ZPL_CRTIME", 0x1000_0003),
        ("ZPL_GEN", 0x800_0004),
        ("ZPL_MODE", 0x800_0005),
        ("ZPL_SIZE", 0x800_0006),
        ("ZPL_PARENT", 0x800_0007),
        ("ZPL_LINKS", 0x800_0008),
        ("ZPL_UID", 0x800_000c),
        ("ZPL_GID", 0x800_000d),
        ("ZPL_SYMLINK", 0x3_0011),
        ("ZPL_DXATTR", 0x3_0014),
    ];
    /// Layouts: 2 everything fixed plus DXATTR; 5 the bonus of a spilled
    /// znode; 6 its spill block (SYMLINK then DXATTR, both variable).
    const LAYOUTS: [(&str, &[u16]); 3] = [
        ("2", &[5, 6, 4, 12, 13, 7, 0, 1, 2, 3, 8, 20]),
        ("5", &[5, 6, 7, 8]),
        ("6", &[12, 13, 4, 0, 1, 2, 3, 17, 20]),
    ];

    struct Disk {
        bytes: Vec<u8>,
        next: u64,
    }

    impl Disk {
        /// Stores `data` (a multiple of 512 bytes) and returns its block
        /// pointer (`blkptr_t`: DVA words 0..1, `blk_prop` 6, birth 10,
        /// fill 11, checksum 12..15).
        fn put(&mut self, data: &[u8], ty: u8, level: u8, fill: u64) -> [u8; 128] {
            assert!(data.len().is_multiple_of(512));
            let off = self.next;
            self.next += data.len() as u64;
            let base = VDEV_LABEL_START_SIZE as usize + off as usize;
            self.bytes[base..base + data.len()].copy_from_slice(data);
            let sectors = data.len() as u64 >> 9;
            let mut w = [0u64; 16];
            w[0] = sectors;
            w[1] = off >> 9;
            w[6] = (sectors - 1)
                | (sectors - 1) << 16
                | 2 << 32
                | 7 << 40
                | u64::from(ty) << 48
                | u64::from(level) << 56
                | 1 << 63;
            w[10] = 4;
            w[11] = fill;
            w[12..16].copy_from_slice(&fletcher_4(data, LE).0);
            let mut b = [0u8; 128];
            for (i, v) in w.iter().enumerate() {
                b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
            b
        }
    }

    /// A dnode of `slots` slots: type, levels, indirect shift, data block
    /// sectors, block pointers, bonus (type, bytes), flags, spill.
    #[allow(clippy::too_many_arguments)]
    fn dnode(
        ty: u8,
        slots: usize,
        nlevels: u8,
        sectors: u16,
        maxblkid: u64,
        bps: &[[u8; 128]],
        bonus: (u8, &[u8]),
        spill: Option<[u8; 128]>,
    ) -> Vec<u8> {
        let mut d = vec![0u8; slots * 512];
        d[0] = ty;
        d[1] = 10;
        d[2] = nlevels;
        d[3] = bps.len() as u8;
        d[4] = bonus.0;
        d[7] = 1 | if spill.is_some() { 4 } else { 0 };
        d[8..10].copy_from_slice(&sectors.to_le_bytes());
        d[10..12].copy_from_slice(&(bonus.1.len() as u16).to_le_bytes());
        d[12] = (slots - 1) as u8;
        d[16..24].copy_from_slice(&maxblkid.to_le_bytes());
        d[24..32].copy_from_slice(&((bps.len() as u64) << 9).to_le_bytes());
        for (i, bp) in bps.iter().enumerate() {
            d[64 + i * 128..192 + i * 128].copy_from_slice(bp);
        }
        let at = 64 + bps.len() * 128;
        d[at..at + bonus.1.len()].copy_from_slice(bonus.1);
        if let Some(s) = spill {
            let n = d.len();
            d[n - 128..].copy_from_slice(&s);
        }
        d
    }

    /// A fat ZAP leaf whose values are arrays of `int_len`-byte integers
    /// (`zap_leaf_phys_t`, include/sys/zap_leaf.h: 48-byte header, hash
    /// table, 24-byte chunks; arrays big-endian).
    fn fat_leaf(size: usize, entries: &[(&str, u8, Vec<u64>)]) -> Vec<u8> {
        let mut b = vec![0u8; size];
        b[..8].copy_from_slice(&ZBT_LEAF.to_le_bytes());
        b[24..28].copy_from_slice(&ZAP_LEAF_MAGIC.to_le_bytes());
        let chunks_at = 48 + 2 * (size >> 5);
        let mut next = 0usize;
        let mut array = |b: &mut Vec<u8>, bytes: &[u8]| -> usize {
            let first = next;
            let pieces: Vec<&[u8]> = bytes.chunks(ZAP_LEAF_ARRAY_BYTES).collect();
            for (k, piece) in pieces.iter().enumerate() {
                let at = chunks_at + next * ZAP_LEAF_CHUNKSIZE;
                b[at] = 251;
                b[at + 1..at + 1 + piece.len()].copy_from_slice(piece);
                let link = if k + 1 == pieces.len() { 0xffff } else { (next + 1) as u16 };
                b[at + 22..at + 24].copy_from_slice(&link.to_le_bytes());
                next += 1;
            }
            first
        };
        let mut ents = Vec::new();
        for (name, int_len, ints) in entries {
            let mut n = name.as_bytes().to_vec();
            n.push(0);
            let nc = array(&mut b, &n);
            let mut v = Vec::new();
            for x in ints {
                v.extend_from_slice(&x.to_be_bytes()[8 - usize::from(*int_len)..]);
            }
            let vc = array(&mut b, &v);
            ents.push((nc, n.len(), vc, *int_len, ints.len()));
        }
        for (nc, nlen, vc, int_len, nints) in ents {
            let at = chunks_at + next * ZAP_LEAF_CHUNKSIZE;
            b[at] = 252;
            b[at + 1] = int_len;
            b[at + 4..at + 6].copy_from_slice(&(nc as u16).to_le_bytes());
            b[at + 6..at + 8].copy_from_slice(&(nlen as u16).to_le_bytes());
            b[at + 8..at + 10].copy_from_slice(&(vc as u16).to_le_bytes());
            b[at + 10..at + 12].copy_from_slice(&(nints as u16).to_le_bytes());
            next += 1;
        }
        b
    }

    /// An SA buffer (`sa_hdr_phys_t` then the attributes, 8-byte aligned)
    /// of `layout` with `attrs` in layout order; `var` marks variable ones.
    fn sa(layout: u16, attrs: &[(&[u8], bool)]) -> Vec<u8> {
        let nvar = attrs.iter().filter(|a| a.1).count();
        let hdr = (6 + 2 * nvar).next_multiple_of(8);
        let mut b = Vec::new();
        b.extend_from_slice(&0x2F_505Au32.to_le_bytes());
        b.extend_from_slice(&(layout | ((hdr / 8) as u16) << 10).to_le_bytes());
        for (data, _) in attrs.iter().filter(|a| a.1) {
            b.extend_from_slice(&(data.len() as u16).to_le_bytes());
        }
        b.resize(hdr, 0);
        for (data, _) in attrs {
            b.extend_from_slice(data);
            b.resize(b.len().next_multiple_of(8), 0);
        }
        b
    }

    fn u(v: u64) -> [u8; 8] {
        v.to_le_bytes()
    }

    fn time(sec: u64) -> [u8; 16] {
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&sec.to_le_bytes());
        t[8..].copy_from_slice(&7u64.to_le_bytes());
        t
    }

    /// Attributes of layout 2 for an object.
    fn znode(mode: u64, size: u64, parent: u64, links: u64, dxattr: &[u8]) -> Vec<u8> {
        let (m, s, g, uid, gid, p, l) = (u(mode), u(size), u(9), u(1000), u(100), u(parent), u(links));
        let t = time(1_700_000_000);
        sa(
            2,
            &[
                (&m, false),
                (&s, false),
                (&g, false),
                (&uid, false),
                (&gid, false),
                (&p, false),
                (&t, false),
                (&t, false),
                (&t, false),
                (&t, false),
                (&l, false),
                (dxattr, true),
            ],
        )
    }

    fn file_data() -> Vec<u8> {
        let mut d: Vec<u8> = (0..FILE_SIZE).map(|i| (i * 7 % 251) as u8).collect();
        d[3 * 512..4 * 512].fill(0);
        d
    }

    fn xattrs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut l = NvList::new();
        for (n, v) in pairs {
            l = l.with(n, NvValue::ByteArray(v.to_vec()));
        }
        l.pack(LE).unwrap()
    }

    /// The synthetic pool image; `tweak` may change blocks before they are
    /// checksummed: 0 the file's first level-1 indirect block, 1 the ZPL
    /// dnode block, 2 the root directory's ZAP, 3 the spill block, 4 the
    /// SA layouts' leaf.
    fn synth_pool(tweak: &mut dyn FnMut(u8, &mut Vec<u8>)) -> Vec<u8> {
        let mut disk = Disk { bytes: vec![0u8; 8 << 20], next: 0 };
        let zap = |disk: &mut Disk, e: &[(&str, u64)]| {
            let size = (64 * (e.len() + 1)).next_multiple_of(512);
            disk.put(&micro(size, LE, e), 0, 0, 1)
        };
        // /file: blocks 0..9 of 512 bytes, 8 block pointers per 1 KiB
        // indirect block, three levels.
        let data = file_data();
        let mut l1 = [vec![0u8; 1024], vec![0u8; 1024]];
        for blk in 0..10usize {
            if blk == 3 {
                continue; // a hole
            }
            let mut b = data[blk * 512..((blk + 1) * 512).min(FILE_SIZE)].to_vec();
            b.resize(512, 0);
            let bp = disk.put(&b, OT_PLAIN_FILE, 0, 1);
            l1[blk / 8][(blk % 8) * 128..(blk % 8 + 1) * 128].copy_from_slice(&bp);
        }
        tweak(0, &mut l1[0]);
        let mut l2 = vec![0u8; 1024];
        let bp0 = disk.put(&l1[0], OT_PLAIN_FILE, 1, 7);
        let bp1 = disk.put(&l1[1], OT_PLAIN_FILE, 1, 2);
        l2[..128].copy_from_slice(&bp0);
        l2[128..256].copy_from_slice(&bp1);
        let file_top = disk.put(&l2, OT_PLAIN_FILE, 2, 9);
        let big_data = {
            let mut b = b"large dnode data\n".to_vec();
            b.resize(512, 0);
            b
        };
        let big_bp = disk.put(&big_data, OT_PLAIN_FILE, 0, 1);
        // The SA tables.
        let reg = zap(&mut disk, &REGISTRY);
        let mut layouts_zap = vec![0u8; 512];
        layouts_zap[..8].copy_from_slice(&ZBT_HEADER.to_le_bytes());
        layouts_zap[8..16].copy_from_slice(&ZAP_MAGIC.to_le_bytes());
        // The embedded pointer table (block 0's second half): 1 << 0
        // entries, all pointing at leaf block 1.
        layouts_zap[256..264].copy_from_slice(&1u64.to_le_bytes());
        let leaf = fat_leaf(
            512,
            &LAYOUTS
                .iter()
                .map(|(n, a)| (*n, 2u8, a.iter().map(|&x| u64::from(x)).collect()))
                .collect::<Vec<_>>(),
        );
        let mut leaf = leaf;
        tweak(4, &mut leaf);
        let lay_hdr = disk.put(&layouts_zap, OT_SA_LAYOUTS, 0, 1);
        let lay_leaf = disk.put(&leaf, OT_SA_LAYOUTS, 0, 1);
        let master = zap(&mut disk, &[("ROOT", 2), ("VERSION", 5), ("SA_ATTRS", 3)]);
        let sa_master = zap(&mut disk, &[("REGISTRY", 4), ("LAYOUTS", 5)]);
        let (reg_f, lnk) = (8u64 << 60, 10u64 << 60);
        let mut root_zap = micro(
            512,
            LE,
            &[("file", 6 | reg_f), ("hardlink", 6 | reg_f), ("big", 8 | reg_f), ("spilled", 12 | lnk)],
        );
        tweak(2, &mut root_zap);
        let root = disk.put(&root_zap, 0, 0, 1);
        // The spilled symlink's spill block.
        let target = b"file";
        let sx = xattrs(&[("user.where", b"spill")]);
        let (uid, gid, g, t) = (u(4321), u(99), u(3), time(1_600_000_000));
        let mut spill = sa(
            6,
            &[
                (&uid, false),
                (&gid, false),
                (&g, false),
                (&t, false),
                (&t, false),
                (&t, false),
                (&t, false),
                (target, true),
                (&sx, true),
            ],
        );
        spill.resize(512, 0);
        tweak(3, &mut spill);
        let spill_bp = disk.put(&spill, OT_SA, 0, 1);
        // The ZPL dnode block: 32 slots.
        let hole = [0u8; 128];
        let mut block = vec![0u8; 16384];
        let mut place = |obj: usize, d: Vec<u8>| block[obj * 512..obj * 512 + d.len()].copy_from_slice(&d);
        place(1, dnode(OT_MASTER_NODE, 1, 1, 1, 0, &[master], (0, &[]), None));
        let root_sa = znode(0o40755, 6, 2, 2, &xattrs(&[]));
        place(2, dnode(OT_DIRECTORY, 1, 1, 1, 0, &[root], (OT_SA, &root_sa), None));
        place(3, dnode(OT_SA_MASTER, 1, 1, 1, 0, &[sa_master], (0, &[]), None));
        place(4, dnode(OT_SA_REGISTRY, 1, 1, 2, 0, &[reg], (0, &[]), None));
        place(5, dnode(OT_SA_LAYOUTS, 1, 1, 1, 1, &[lay_hdr, lay_leaf], (0, &[]), None));
        let file_sa = znode(0o100644, FILE_SIZE as u64, 2, 2, &xattrs(&[("user.greeting", b"hello")]));
        place(6, dnode(OT_PLAIN_FILE, 1, 3, 1, 9, &[file_top], (OT_SA, &file_sa), None));
        let big_sa = znode(0o100600, 17, 2, 1, &xattrs(&[("user.big", &[0xa5; BIG_XATTR])]));
        place(8, dnode(OT_PLAIN_FILE, 4, 1, 1, 0, &[big_bp], (OT_SA, &big_sa), None));
        let (m, s, p, l) = (u(0o120777), u(target.len() as u64), u(2), u(1));
        let spilled = sa(5, &[(&m, false), (&s, false), (&p, false), (&l, false)]);
        place(12, dnode(OT_PLAIN_FILE, 1, 1, 1, 0, &[hole], (OT_SA, &spilled), Some(spill_bp)));
        tweak(1, &mut block);
        let dnodes = disk.put(&block, 10, 0, 8);
        // The ZPL objset.
        let mut os = vec![0u8; 1024];
        os[..512].copy_from_slice(&dnode(10, 1, 1, 32, 0, &[dnodes], (0, &[]), None));
        os[0x2c0..0x2c8].copy_from_slice(&2u64.to_le_bytes());
        let zpl_os = disk.put(&os, 11, 0, 9);
        // The MOS: object directory (1), DSL dir (2), DSL dataset (3).
        let objdir = zap(&mut disk, &[("root_dataset", 2)]);
        let mut dir_bonus = [0u8; 256];
        dir_bonus[8..16].copy_from_slice(&3u64.to_le_bytes());
        let mut ds_bonus = [0u8; 320];
        ds_bonus[..8].copy_from_slice(&2u64.to_le_bytes());
        ds_bonus[56..64].copy_from_slice(&1u64.to_le_bytes());
        ds_bonus[72..80].copy_from_slice(&65_536u64.to_le_bytes());
        ds_bonus[128..256].copy_from_slice(&zpl_os);
        let mut mos_block = vec![0u8; 16384];
        mos_block[512..1024].copy_from_slice(&dnode(1, 1, 1, 1, 0, &[objdir], (0, &[]), None));
        mos_block[1024..1536].copy_from_slice(&dnode(12, 1, 1, 1, 0, &[hole], (12, &dir_bonus), None));
        mos_block[1536..2048].copy_from_slice(&dnode(16, 1, 1, 1, 0, &[hole], (16, &ds_bonus), None));
        let mos_dnodes = disk.put(&mos_block, 10, 0, 3);
        let mut mos = vec![0u8; 1024];
        mos[..512].copy_from_slice(&dnode(10, 1, 1, 32, 0, &[mos_dnodes], (0, &[]), None));
        mos[0x2c0..0x2c8].copy_from_slice(&1u64.to_le_bytes());
        let mos_bp = disk.put(&mos, 11, 0, 3);
        let mut bytes = disk.bytes;
        crate::pool::tests::write_synthetic_label(&mut bytes, &mos_bp);
        bytes
    }

    fn mount(image: Vec<u8>) -> (Vfs, Arc<ZfsFs<MemDevice<Vec<u8>>>>) {
        let pool = Pool::open(vec![MemDevice(image)]).unwrap();
        let fs = ZfsPool::new(pool).mount("synth").unwrap();
        let vfs = Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap();
        vfs.mkdir("/mnt", 0o755).unwrap();
        vfs.mount("/mnt", fs.clone()).unwrap();
        (vfs, fs)
    }

    #[test]
    fn synthetic_pool_reads_through_the_vfs() {
        let (vfs, fs) = mount(synth_pool(&mut |_, _| {}));
        let fd = vfs.open("/mnt", OpenFlags::RDONLY | OpenFlags::DIRECTORY, 0).unwrap();
        let names: Vec<(String, u64, VType)> =
            vfs.getdents(fd, 100).unwrap().into_iter().map(|d| (d.name, d.ino, d.kind)).collect();
        vfs.close(fd).unwrap();
        let want = [
            (".", 2, VType::Directory),
            ("..", 2, VType::Directory),
            ("big", 8, VType::Regular),
            ("file", 6, VType::Regular),
            ("hardlink", 6, VType::Regular),
            ("spilled", 12, VType::Symlink),
        ];
        assert_eq!(names, want.map(|(n, i, k)| (String::from(n), i, k)));

        // Hard links: one object, one inode, one vnode.
        let (a, b) = (vfs.stat("/mnt/file").unwrap(), vfs.stat("/mnt/hardlink").unwrap());
        assert_eq!((a.ino, a.nlink, a.size), (6, 2, FILE_SIZE as u64));
        assert_eq!(a, b);
        assert_eq!(fs.live_vnodes(), 1, "both names share one vnode");
        assert_eq!((a.mtime, a.perm, a.blksize), (Timespec { sec: 1_700_000_000, nsec: 7 }, 0o644, 512));
        assert_eq!(fs.znode_attrs("/file").unwrap().uid, 1000);

        // Three levels of indirection, a hole, odd chunks and preads.
        let want = file_data();
        let fd = vfs.open("/mnt/hardlink", OpenFlags::RDONLY, 0).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 333];
        loop {
            let n = vfs.read(fd, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, want);
        for off in [0, 511, 1500, 1536, 2047, 4095, 4096, 5019] {
            let n = vfs.pread(fd, &mut buf, off as i64).unwrap();
            assert_eq!(&buf[..n], &want[off..(off + 333).min(FILE_SIZE)], "pread at {off}");
        }
        vfs.close(fd).unwrap();

        // SA xattrs: in the bonus, in a large dnode's bonus, in a spill block.
        let x = fs.listxattr("/file").unwrap();
        assert_eq!(
            x,
            [Xattr { name: b"user.greeting".to_vec(), size: 5, source: crate::fs::XattrSource::Sa }]
        );
        assert_eq!(fs.getxattr("/hardlink", "user.greeting").unwrap(), b"hello");
        assert_eq!(fs.getxattr("/file", "user.none"), Err(Errno::ENOENT));
        assert_eq!(fs.getxattr("/big", "user.big").unwrap(), [0xa5; BIG_XATTR]);
        assert_eq!(vfs.stat("/mnt/big").unwrap().size, 17);
        let fd = vfs.open("/mnt/big", OpenFlags::RDONLY, 0).unwrap();
        assert_eq!(vfs.read(fd, &mut buf).unwrap(), 17);
        assert_eq!(&buf[..17], b"large dnode data\n");
        vfs.close(fd).unwrap();
        assert_eq!(vfs.readlink("/mnt/spilled").unwrap(), "file");
        let attrs = fs.znode_attrs("/spilled").unwrap();
        assert_eq!((attrs.uid, attrs.gid, attrs.mtime.sec), (4321, 99, 1_600_000_000));
        assert_eq!(fs.getxattr("/spilled", "user.where").unwrap(), b"spill");
        // Following the symlink reaches the file.
        assert_eq!(vfs.stat("/mnt/spilled").unwrap().ino, 6);

        // Read-only.
        assert_eq!(vfs.open("/mnt/file", OpenFlags::RDWR, 0), Err(Errno::EROFS));
        assert_eq!(vfs.unlink("/mnt/hardlink"), Err(Errno::EROFS));
        assert_eq!(vfs.mkdir("/mnt/x", 0o755), Err(Errno::EROFS));
        assert_eq!(vfs.link("/mnt/file", "/mnt/third"), Err(Errno::EROFS));
        assert_eq!(vfs.stat("/mnt/file").unwrap().nlink, 2);
        let st = vfs.statfs("/mnt").unwrap();
        assert_eq!((st.fs_type, st.files, st.blocks), (ZFS_SUPER_MAGIC, 9, 128));
        vfs.drop_caches();
        vfs.umount("/mnt").unwrap();
        assert_eq!(fs.live_vnodes(), 0);
    }

    #[test]
    fn damaged_indirect_block_is_eio() {
        // In the file's first L1 block: block 1's pointer is garbage, block
        // 2's checksum is wrong.
        let (vfs, _fs) = mount(synth_pool(&mut |which, l1| {
            if which == 0 {
                l1[128..256].fill(0x5a);
                l1[256 + 96] ^= 1;
            }
        }));
        let fd = vfs.open("/mnt/file", OpenFlags::RDONLY, 0).unwrap();
        let mut buf = [0u8; 512];
        assert_eq!(vfs.pread(fd, &mut buf, 0).unwrap(), 512, "block 0 is intact");
        assert_eq!(vfs.pread(fd, &mut buf, 512), Err(Errno::EIO));
        assert_eq!(vfs.pread(fd, &mut buf, 1024), Err(Errno::EIO));
        assert_eq!(vfs.pread(fd, &mut buf, 1536).unwrap(), 512, "block 3 is a hole");
        assert_eq!(buf, [0u8; 512]);
    }

    /// Bytes the walk reads from the start of each file. A damaged size
    /// field can make a file a legal sparse file of hundreds of GiB (holes
    /// read as zeros), so reading every file to its end is unbounded work;
    /// the walk reads this much from the start and the last bytes before
    /// the size it reports.
    const WALK_READ: usize = 1 << 20;

    /// Walks everything reachable and reads every file (its first
    /// [`WALK_READ`] bytes and its end); errors are fine, panics are not.
    fn walk(vfs: &Vfs, fs: &ZfsFs<MemDevice<Vec<u8>>>, dir: &str, depth: usize) {
        let Ok(fd) = vfs.open(dir, OpenFlags::RDONLY | OpenFlags::DIRECTORY, 0) else { return };
        let ents = vfs.getdents(fd, 64).unwrap_or_default();
        let _ = vfs.close(fd);
        for d in ents.iter().filter(|d| d.name != "." && d.name != "..") {
            let p = std::format!("{dir}/{}", d.name);
            let _ = vfs.lstat(&p);
            let _ = vfs.readlink(&p);
            let _ = fs.listxattr(&p[4..]);
            if let Ok(fd) = vfs.open(&p, OpenFlags::RDONLY, 0) {
                let mut buf = [0u8; 700];
                let mut done = 0;
                while done < WALK_READ {
                    match vfs.read(fd, &mut buf) {
                        Ok(n) if n > 0 => done += n,
                        _ => break,
                    }
                }
                if let Ok(st) = vfs.fstat(fd) {
                    let _ = vfs.pread(fd, &mut buf, st.size.saturating_sub(700) as i64);
                }
                let _ = vfs.close(fd);
            }
            if d.kind == VType::Directory && depth < 4 {
                walk(vfs, fs, &p, depth + 1);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Bytes changed anywhere in the ZPL's structures (dnodes, ZAPs,
        /// SA buffers, indirect blocks) never panic the mount or a walk.
        /// Checksums are recomputed after the change, so the damage
        /// reaches the parsers instead of failing verification.
        #[test]
        fn mutated_zpl_never_panics(
            which in 0u8..5, at in 0usize..16384, val in any::<u8>(), n in 1usize..8,
        ) {
            let image = synth_pool(&mut |w, b| {
                if w == which {
                    for k in 0..n {
                        let i = (at + k * 131) % b.len();
                        b[i] = val.wrapping_add(k as u8);
                    }
                }
            });
            let Ok(pool) = Pool::open(vec![MemDevice(image)]) else { return Ok(()) };
            let Ok(fs) = ZfsPool::new(pool).mount("synth") else { return Ok(()) };
            let vfs = Vfs::new(RamFs::new(Arc::new(ZeroClock))).unwrap();
            vfs.mkdir("/mnt", 0o755).unwrap();
            vfs.mount("/mnt", fs.clone()).unwrap();
            walk(&vfs, &fs, "/mnt", 0);
        }
    }
}
