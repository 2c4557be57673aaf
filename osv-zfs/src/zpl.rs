//! The ZFS POSIX layer (ZPL) on disk: the master node, system attributes
//! (SA), the old `znode_phys_t` bonus, and directory entries.
//!
//! A ZPL objset (`DMU_OST_ZFS`) starts at its **master node**, object 1
//! (`MASTER_NODE_OBJ`, include/sys/zfs_znode.h), a ZAP naming `ROOT` (the
//! root directory), `VERSION` (the ZPL version), `DELETE_QUEUE` and, from
//! ZPL version 5 (`ZPL_VERSION_SA`), `SA_ATTRS`.
//!
//! Every file, directory and symlink is one object whose bonus buffer holds
//! its attributes, in one of two forms, told apart by `dn_bonustype`:
//!
//! - `DMU_OT_ZNODE` (17): the old fixed `znode_phys_t` (include/sys/zfs_znode.h
//!   before SA; its offsets are kept as `ZFS_OLD_ZNODE_PHYS_SIZE` and the
//!   legacy layout in module/zfs/zfs_sa.c): `zp_atime[2]` 0, `zp_mtime[2]` 16,
//!   `zp_ctime[2]` 32, `zp_crtime[2]` 48, `zp_gen` 64, `zp_mode` 72,
//!   `zp_size` 80, `zp_parent` 88, `zp_links` 96, `zp_xattr` 104, `zp_rdev`
//!   112, `zp_flags` 120, `zp_uid` 128, `zp_gid` 136, `zp_zap` 144, pad,
//!   `zp_acl` 176..264. A symlink's target follows at 264
//!   (`ZFS_OLD_ZNODE_PHYS_SIZE`) when it fits in the bonus buffer, otherwise
//!   it is the object's block 0 (`zfs_sa_readlink`, module/zfs/zfs_sa.c).
//! - `DMU_OT_SA` (44): a **system attribute** buffer (include/sys/sa_impl.h):
//!   `sa_hdr_phys_t` = `sa_magic` u32 (`SA_MAGIC` 0x2F505A; byte-swapped
//!   when written on the other byte order), `sa_layout_info` u16 (layout
//!   number in bits 0..10, header size in 8-byte units in bits 10..16:
//!   `SA_HDR_LAYOUT_NUM`, `SA_HDR_SIZE`), then `sa_lengths[]` u16: the
//!   lengths of the layout's variable-sized attributes, in layout order. The
//!   attributes follow the header in the order their **layout** lists them,
//!   each starting 8-byte aligned (`sa_build_layouts`, module/zfs/sa.c:
//!   `P2ROUNDUP(length, 8)`). Attributes that did not fit continue in the
//!   dnode's **spill block** (`DMU_OT_SA`, same header format).
//!
//! The attribute numbers and layouts are per objset: the `SA_ATTRS` object
//! (`DMU_OT_SA_MASTER_NODE`) names `REGISTRY` (a ZAP: attribute name such as
//! `ZPL_SIZE` → `sa_attr_reg_t` encoded as a u64, `ATTR_ENCODE`: number in
//! bits 0..16, byteswap function in 16..24, length in 24..40, 0 for
//! variable) and `LAYOUTS` (a ZAP: decimal layout number → array of u16
//! attribute numbers).
//!
//! A directory is a ZAP object (`DMU_OT_DIRECTORY_CONTENTS`) of name →
//! u64 entry: the object number in bits 0..48 (`ZFS_DIRENT_OBJ`) and the
//! file type (`IFTODT(mode)`, the mode's `S_IFMT` bits shifted down by 12)
//! in bits 60..64 (`ZFS_DIRENT_TYPE`, include/sys/zfs_znode.h).
//!
//! Everything here works on bytes already read and cannot panic; the pool
//! layer (`pool::Pool::zpl_*`) reads the objects.

use crate::bytes::{u64_at, Endian};
use crate::{Error, Result};

/// `MASTER_NODE_OBJ` (include/sys/zfs_znode.h): object 1 of a ZPL objset.
pub const MASTER_NODE_OBJ: u64 = 1;
/// `ZFS_ROOT_OBJ` name in the master node.
pub const ZFS_ROOT_OBJ: &[u8] = b"ROOT";
/// `ZFS_SA_ATTRS` name in the master node.
pub const ZFS_SA_ATTRS: &[u8] = b"SA_ATTRS";
/// `ZPL_VERSION_STR` name in the master node.
pub const ZPL_VERSION_STR: &[u8] = b"VERSION";
/// `SA_REGISTRY` name in the `SA_ATTRS` object (module/zfs/sa.c).
pub const SA_REGISTRY: &[u8] = b"REGISTRY";
/// `SA_LAYOUTS` name in the `SA_ATTRS` object.
pub const SA_LAYOUTS: &[u8] = b"LAYOUTS";

/// `SA_MAGIC` (include/sys/sa_impl.h).
pub const SA_MAGIC: u32 = 0x2F_505A;
/// Fixed part of `sa_hdr_phys_t`: magic and layout info.
pub const SA_HDR_FIXED: usize = 6;
/// `ZFS_OLD_ZNODE_PHYS_SIZE` (include/sys/zfs_sa.h): 264 bytes.
pub const ZFS_OLD_ZNODE_PHYS_SIZE: usize = 0x108;
/// Longest symlink target (`MAXPATHLEN`).
pub const MAXPATHLEN: u64 = 4096;

/// `dmu_object_type_t` values of the ZPL (include/sys/dmu.h).
pub mod ot {
    /// `DMU_OT_ZNODE`: the old `znode_phys_t` bonus.
    pub const ZNODE: u8 = 17;
    /// `DMU_OT_PLAIN_FILE_CONTENTS`.
    pub const PLAIN_FILE_CONTENTS: u8 = 19;
    /// `DMU_OT_DIRECTORY_CONTENTS`.
    pub const DIRECTORY_CONTENTS: u8 = 20;
    /// `DMU_OT_MASTER_NODE`.
    pub const MASTER_NODE: u8 = 21;
    /// `DMU_OT_SA`: a system-attribute bonus or spill block.
    pub const SA: u8 = 44;
}

/// ZPL attribute names in the SA registry (`zfs_attr_table`,
/// module/zfs/zfs_sa.c), those this crate reads.
pub mod attr {
    /// `ZPL_MODE`: u64 mode bits.
    pub const MODE: &[u8] = b"ZPL_MODE";
    /// `ZPL_SIZE`: u64 byte size.
    pub const SIZE: &[u8] = b"ZPL_SIZE";
    /// `ZPL_PARENT`: u64 parent directory.
    pub const PARENT: &[u8] = b"ZPL_PARENT";
    /// `ZPL_LINKS`: u64 link count.
    pub const LINKS: &[u8] = b"ZPL_LINKS";
    /// `ZPL_SYMLINK`: variable, the symlink target.
    pub const SYMLINK: &[u8] = b"ZPL_SYMLINK";
    /// `ZPL_ATIME`: two u64, seconds and nanoseconds.
    pub const ATIME: &[u8] = b"ZPL_ATIME";
    /// `ZPL_MTIME`: two u64.
    pub const MTIME: &[u8] = b"ZPL_MTIME";
    /// `ZPL_CTIME`: two u64.
    pub const CTIME: &[u8] = b"ZPL_CTIME";
    /// `ZPL_CRTIME`: two u64, the creation time.
    pub const CRTIME: &[u8] = b"ZPL_CRTIME";
    /// `ZPL_GEN`: u64 generation (the txg that created the object).
    pub const GEN: &[u8] = b"ZPL_GEN";
    /// `ZPL_UID`: u64 owner.
    pub const UID: &[u8] = b"ZPL_UID";
    /// `ZPL_GID`: u64 group.
    pub const GID: &[u8] = b"ZPL_GID";
    /// `ZPL_XATTR`: u64, the object of the hidden xattr directory (0: none).
    pub const XATTR: &[u8] = b"ZPL_XATTR";
    /// `ZPL_RDEV`: u64 device number of a device node.
    pub const RDEV: &[u8] = b"ZPL_RDEV";
    /// `ZPL_FLAGS`: u64 `ZFS_*` flags (`pflags` in zdb).
    pub const FLAGS: &[u8] = b"ZPL_FLAGS";
    /// `ZPL_DXATTR`: variable, the SA-stored xattrs as a packed XDR nvlist
    /// (`zfs_sa_set_xattr`, module/zfs/zfs_sa.c: `nvlist_pack(...,
    /// NV_ENCODE_XDR)`), each pair a name and a byte array.
    pub const DXATTR: &[u8] = b"ZPL_DXATTR";
}

/// `S_IFMT` and the file types of the mode (`sys/stat.h`, as the ZPL
/// stores them).
pub mod mode {
    /// `S_IFMT`.
    pub const S_IFMT: u64 = 0o170_000;
    /// `S_IFDIR`.
    pub const S_IFDIR: u64 = 0o040_000;
    /// `S_IFREG`.
    pub const S_IFREG: u64 = 0o100_000;
    /// `S_IFLNK`.
    pub const S_IFLNK: u64 = 0o120_000;
    /// `S_IFIFO`.
    pub const S_IFIFO: u64 = 0o010_000;
    /// `S_IFCHR`.
    pub const S_IFCHR: u64 = 0o020_000;
    /// `S_IFBLK`.
    pub const S_IFBLK: u64 = 0o060_000;
    /// `S_IFSOCK`.
    pub const S_IFSOCK: u64 = 0o140_000;
}

/// What a ZPL object is, from its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileType {
    /// A directory (`S_IFDIR`).
    Dir,
    /// A regular file (`S_IFREG`).
    File,
    /// A symbolic link (`S_IFLNK`).
    Symlink,
    /// Devices, FIFOs, sockets.
    Other,
}

impl FileType {
    /// The type of `mode`'s `S_IFMT` bits.
    pub fn from_mode(m: u64) -> FileType {
        match m & mode::S_IFMT {
            mode::S_IFDIR => FileType::Dir,
            mode::S_IFREG => FileType::File,
            mode::S_IFLNK => FileType::Symlink,
            _ => FileType::Other,
        }
    }

    /// The manifest's name: `dir`, `file`, `symlink`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::Dir => "dir",
            FileType::File => "file",
            FileType::Symlink => "symlink",
            FileType::Other => "other",
        }
    }
}

/// A directory entry's value (`ZFS_DIRENT_OBJ`, `ZFS_DIRENT_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry {
    /// The object (bits 0..48).
    pub object: u64,
    /// `IFTODT(mode)` (bits 60..64): 4 directory, 8 regular, 10 symlink.
    pub dtype: u8,
}

impl DirEntry {
    /// Decodes a directory ZAP value.
    pub fn decode(value: u64) -> DirEntry {
        DirEntry { object: value & ((1 << 48) - 1), dtype: (value >> 60) as u8 }
    }

    /// The file type the entry claims (`DTTOIF` of its type bits).
    pub fn file_type(&self) -> FileType {
        FileType::from_mode(u64::from(self.dtype) << 12)
    }
}

/// One registered attribute (`sa_attr_reg_t` as `ATTR_ENCODE` packs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrReg {
    /// Attribute number (bits 0..16).
    pub num: u16,
    /// Byteswap function (`sa_bswap_type_t`, bits 16..24).
    pub bswap: u8,
    /// Fixed length in bytes, 0 for variable (bits 24..40).
    pub len: u16,
}

impl AttrReg {
    /// Decodes a registry ZAP value.
    pub fn decode(value: u64) -> AttrReg {
        AttrReg { num: value as u16, bswap: (value >> 16) as u8, len: (value >> 24) as u16 }
    }
}

/// A checked view of an SA buffer (`sa_hdr_phys_t` and its attributes).
#[derive(Debug, Clone, Copy)]
pub struct SaHdr<'a> {
    buf: &'a [u8],
    endian: Endian,
    layout: u16,
    hdr_size: usize,
}

impl<'a> SaHdr<'a> {
    /// Checks the magic (either byte order: the attributes are in the
    /// order it is found in) and that the header fits in `buf`.
    pub fn new_checked(buf: &'a [u8]) -> Result<SaHdr<'a>> {
        let magic = buf.get(..4).ok_or(Error::Truncated)?;
        let magic = [magic[0], magic[1], magic[2], magic[3]];
        let endian = if u32::from_le_bytes(magic) == SA_MAGIC {
            Endian::Little
        } else if u32::from_be_bytes(magic) == SA_MAGIC {
            Endian::Big
        } else {
            return Err(Error::BadSa);
        };
        let info = u16_in(buf, 4, endian).ok_or(Error::Truncated)?;
        let hdr_size = usize::from((info >> 10) & 0x3f) * 8;
        if hdr_size < 8 || hdr_size > buf.len() {
            return Err(Error::BadSa);
        }
        Ok(SaHdr { buf, endian, layout: info & 0x3ff, hdr_size })
    }

    /// The byte order of the header and the attributes.
    pub fn endian(&self) -> Endian {
        self.endian
    }

    /// `SA_HDR_LAYOUT_NUM`.
    pub fn layout(&self) -> u16 {
        self.layout
    }

    /// `SA_HDR_SIZE`: where the attributes start.
    pub fn hdr_size(&self) -> usize {
        self.hdr_size
    }

    /// `sa_lengths[i]`, when the header holds it.
    pub fn var_len(&self, i: usize) -> Option<u16> {
        let at = SA_HDR_FIXED + 2 * i;
        if at + 2 > self.hdr_size {
            return None;
        }
        u16_in(self.buf, at, self.endian)
    }

    /// Calls `f` with every attribute of `layout` (the attribute numbers of
    /// this buffer's layout) and its bytes; `reg_len` gives each
    /// attribute's registered length (`Some(0)`: variable, its length is
    /// the next `sa_lengths` entry). An attribute that runs past the buffer
    /// or is unregistered is an error.
    pub fn attrs(
        &self,
        layout: &[u16],
        reg_len: &dyn Fn(u16) -> Option<u16>,
        f: &mut dyn FnMut(u16, &'a [u8]) -> Result,
    ) -> Result {
        let mut at = self.hdr_size;
        let mut var = 0;
        for &a in layout {
            let len = match reg_len(a).ok_or(Error::BadSa)? {
                0 => {
                    var += 1;
                    self.var_len(var - 1).ok_or(Error::BadSa)?
                }
                n => n,
            };
            let len = usize::from(len);
            let bytes = self.buf.get(at..at + len).ok_or(Error::BadSa)?;
            f(a, bytes)?;
            at = (at + len).next_multiple_of(8);
        }
        Ok(())
    }
}

fn u16_in(buf: &[u8], at: usize, endian: Endian) -> Option<u16> {
    let b = buf.get(at..at + 2)?;
    Some(match endian {
        Endian::Big => u16::from_be_bytes([b[0], b[1]]),
        Endian::Little => u16::from_le_bytes([b[0], b[1]]),
    })
}

/// Decodes a u64 attribute (8 bytes in the SA's order).
pub fn attr_u64(bytes: &[u8], endian: Endian) -> Result<u64> {
    if bytes.len() != 8 {
        return Err(Error::BadSa);
    }
    u64_at(bytes, 0, endian)
}

/// A ZPL timestamp: two u64, seconds and nanoseconds (`ZFS_TIME_DECODE`,
/// include/sys/zfs_znode.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ZplTime {
    /// Seconds since the Unix epoch.
    pub sec: u64,
    /// Nanoseconds.
    pub nsec: u64,
}

impl ZplTime {
    /// Decodes a 16-byte time attribute (or `znode_phys_t` field).
    pub fn decode(bytes: &[u8], endian: Endian) -> Result<ZplTime> {
        if bytes.len() != 16 {
            return Err(Error::BadSa);
        }
        Ok(ZplTime { sec: u64_at(bytes, 0, endian)?, nsec: u64_at(bytes, 8, endian)? })
    }
}

/// The attributes of one ZPL object this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZnodeAttrs {
    /// `mode`: type and permission bits.
    pub mode: u64,
    /// `size`: bytes (files, symlink targets) or entries (directories).
    pub size: u64,
    /// `parent`: the directory holding it (`..`).
    pub parent: u64,
    /// `links`: the link count.
    pub links: u64,
    /// `uid`: the owner.
    pub uid: u64,
    /// `gid`: the group.
    pub gid: u64,
    /// `atime`: last access.
    pub atime: ZplTime,
    /// `mtime`: last data change.
    pub mtime: ZplTime,
    /// `ctime`: last status change.
    pub ctime: ZplTime,
    /// `crtime`: creation.
    pub crtime: ZplTime,
    /// `gen`: the txg that created the object.
    pub gen: u64,
    /// `xattr`: the hidden xattr directory object, 0 when there is none.
    pub xattr: u64,
    /// `rdev`: a device node's number as the ZPL stores it (major in the
    /// high 32 bits, minor in the low 32: `NBITSMINOR64`, zfs_znode.h).
    pub rdev: u64,
    /// `flags`: `ZFS_*` flags (zdb's `pflags`).
    pub flags: u64,
}

impl ZnodeAttrs {
    /// The file type of the mode.
    pub fn file_type(&self) -> FileType {
        FileType::from_mode(self.mode)
    }

    /// Parses an old `znode_phys_t` bonus buffer (offsets in the module
    /// doc).
    pub fn parse_znode_phys(bonus: &[u8], endian: Endian) -> Result<ZnodeAttrs> {
        if bonus.len() < ZFS_OLD_ZNODE_PHYS_SIZE {
            return Err(Error::Truncated);
        }
        let time = |at: usize| ZplTime::decode(bonus.get(at..at + 16).ok_or(Error::Truncated)?, endian);
        Ok(ZnodeAttrs {
            atime: time(0)?,
            mtime: time(16)?,
            ctime: time(32)?,
            crtime: time(48)?,
            gen: u64_at(bonus, 64, endian)?,
            mode: u64_at(bonus, 72, endian)?,
            size: u64_at(bonus, 80, endian)?,
            parent: u64_at(bonus, 88, endian)?,
            links: u64_at(bonus, 96, endian)?,
            xattr: u64_at(bonus, 104, endian)?,
            rdev: u64_at(bonus, 112, endian)?,
            flags: u64_at(bonus, 120, endian)?,
            uid: u64_at(bonus, 128, endian)?,
            gid: u64_at(bonus, 136, endian)?,
        })
    }
}

/// Where an old-format symlink keeps its target (`zfs_sa_readlink`): in
/// the bonus buffer after the znode when `size + ZFS_OLD_ZNODE_PHYS_SIZE`
/// fits in the bonus buffer's capacity (`max_bonus`, the dbuf's
/// `db_size`, not `dn_bonuslen`), else in block 0 of the object.
/// A target that should be inline but runs past the bonus buffer is
/// [`Error::Truncated`].
pub fn old_symlink_inline(bonus: &[u8], size: u64, max_bonus: usize) -> Result<Option<&[u8]>> {
    let end = usize::try_from(size).ok().and_then(|s| s.checked_add(ZFS_OLD_ZNODE_PHYS_SIZE));
    match end {
        Some(end) if end <= max_bonus => {
            Ok(Some(bonus.get(ZFS_OLD_ZNODE_PHYS_SIZE..end).ok_or(Error::Truncated)?))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// An SA buffer of layout `layout` with the given attributes (`None`
    /// length: variable, recorded in `sa_lengths`).
    fn sa_buf(endian: Endian, layout: u16, attrs: &[(&[u8], bool)]) -> Vec<u8> {
        let nvar = attrs.iter().filter(|(_, v)| *v).count();
        let hdr = (SA_HDR_FIXED + 2 * nvar).next_multiple_of(8);
        let mut b = Vec::new();
        let w16 = |v: u16| match endian {
            Endian::Big => v.to_be_bytes(),
            Endian::Little => v.to_le_bytes(),
        };
        b.extend_from_slice(&match endian {
            Endian::Big => SA_MAGIC.to_be_bytes(),
            Endian::Little => SA_MAGIC.to_le_bytes(),
        });
        b.extend_from_slice(&w16(layout | ((hdr / 8) as u16) << 10));
        for (data, _) in attrs.iter().filter(|(_, v)| *v) {
            b.extend_from_slice(&w16(data.len() as u16));
        }
        b.resize(hdr, 0);
        for (data, _) in attrs {
            b.extend_from_slice(data);
            b.resize(b.len().next_multiple_of(8), 0);
        }
        b
    }

    #[test]
    fn sa_header_and_attrs_both_orders() {
        for e in [Endian::Little, Endian::Big] {
            let mode = e.u64_to(0o120_777);
            let size = e.u64_to(11);
            let target = b"/etc/passwd";
            let atime = [7u8; 16];
            // Layout: MODE(5), SYMLINK(17, variable), SIZE(6), ATIME(0).
            let b = sa_buf(e, 3, &[(&mode, false), (target, true), (&size, false), (&atime, false)]);
            let h = SaHdr::new_checked(&b).unwrap();
            assert_eq!(
                (h.endian(), h.layout(), h.hdr_size(), h.var_len(0), h.var_len(1)),
                (e, 3, 8, Some(11), None)
            );
            let reg = |a: u16| match a {
                5 | 6 => Some(8),
                17 => Some(0),
                0 => Some(16),
                _ => None,
            };
            let mut got = Vec::new();
            h.attrs(&[5, 17, 6, 0], &reg, &mut |a, bytes| {
                got.push((a, bytes.to_vec()));
                Ok(())
            })
            .unwrap();
            assert_eq!(got[0], (5, mode.to_vec()));
            assert_eq!(got[1], (17, target.to_vec()));
            assert_eq!(attr_u64(&got[2].1, e), Ok(11));
            assert_eq!(got[3].1, atime);
            // An unregistered attribute, a missing length, a short buffer.
            assert_eq!(h.attrs(&[9], &reg, &mut |_, _| Ok(())), Err(Error::BadSa));
            assert_eq!(h.attrs(&[17, 17], &reg, &mut |_, _| Ok(())), Err(Error::BadSa));
            let short = SaHdr::new_checked(&b[..40]).unwrap();
            assert_eq!(short.attrs(&[5, 17, 6, 0], &reg, &mut |_, _| Ok(())), Err(Error::BadSa));
        }
        assert_eq!(SaHdr::new_checked(&[0x5a, 0x50, 0x2f, 0, 0]).unwrap_err(), Error::Truncated);
        assert_eq!(SaHdr::new_checked(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap_err(), Error::BadSa);
        // Header size 0 or past the buffer.
        assert_eq!(SaHdr::new_checked(&[0x5a, 0x50, 0x2f, 0, 2, 0, 0, 0]).unwrap_err(), Error::BadSa);
        assert_eq!(SaHdr::new_checked(&[0x5a, 0x50, 0x2f, 0, 2, 8, 0, 0]).unwrap_err(), Error::BadSa);
    }

    #[test]
    fn registry_and_dirents_decode() {
        // zdb prints ZPL_SIZE = 8000006 : [8:0:6], ZPL_DXATTR = 30014 : [0:3:20].
        assert_eq!(AttrReg::decode(0x800_0006), AttrReg { num: 6, bswap: 0, len: 8 });
        assert_eq!(AttrReg::decode(0x3_0014), AttrReg { num: 20, bswap: 3, len: 0 });
        assert_eq!(AttrReg::decode(0x5803_000f), AttrReg { num: 15, bswap: 3, len: 88 });
        // A directory entry: type 4 (directory), object 172.
        let d = DirEntry::decode(0x4000_0000_0000_00ac);
        assert_eq!((d.object, d.dtype, d.file_type()), (172, 4, FileType::Dir));
        assert_eq!(DirEntry::decode(0x8000_0000_0000_001a).file_type(), FileType::File);
        assert_eq!(DirEntry::decode(0xa000_0000_0000_0006).file_type(), FileType::Symlink);
        assert_eq!(DirEntry::decode(0x6000_0000_0000_0009).file_type(), FileType::Other);
        // Bits 48..60 are not part of the object number.
        assert_eq!(DirEntry::decode(0x8fff_0000_0000_0001).object, 1);
    }

    #[test]
    fn old_znode_and_inline_symlink() {
        for e in [Endian::Little, Endian::Big] {
            let mut b = [0u8; 267];
            b[72..80].copy_from_slice(&e.u64_to(0o120_777));
            b[80..88].copy_from_slice(&e.u64_to(3));
            b[88..96].copy_from_slice(&e.u64_to(3));
            b[96..104].copy_from_slice(&e.u64_to(1));
            b[264..267].copy_from_slice(b"dir");
            b[16..24].copy_from_slice(&e.u64_to(1_190_896_210));
            b[24..32].copy_from_slice(&e.u64_to(5));
            b[104..112].copy_from_slice(&e.u64_to(7));
            b[112..120].copy_from_slice(&e.u64_to(0x1_0000_0002));
            b[128..136].copy_from_slice(&e.u64_to(1000));
            b[136..144].copy_from_slice(&e.u64_to(100));
            let z = ZnodeAttrs::parse_znode_phys(&b, e).unwrap();
            assert_eq!((z.file_type(), z.size, z.parent, z.links), (FileType::Symlink, 3, 3, 1));
            assert_eq!((z.xattr, z.rdev, z.uid, z.gid), (7, 0x1_0000_0002, 1000, 100));
            assert_eq!(z.mtime, ZplTime { sec: 1_190_896_210, nsec: 5 });
            assert_eq!(old_symlink_inline(&b, z.size, 320), Ok(Some(&b"dir"[..])));
            assert_eq!(old_symlink_inline(&b, 57, 320), Ok(None));
            assert_eq!(old_symlink_inline(&b, 4, 320), Err(Error::Truncated));
            assert_eq!(old_symlink_inline(&b, u64::MAX, 320), Ok(None));
            assert_eq!(ZnodeAttrs::parse_znode_phys(&b[..263], e), Err(Error::Truncated));
        }
        assert_eq!(FileType::from_mode(0o40755).as_str(), "dir");
        assert_eq!(FileType::from_mode(0o100644).as_str(), "file");
        assert_eq!(FileType::from_mode(0o60644).as_str(), "other");
    }

    proptest! {
        #[test]
        fn arbitrary_sa_and_znode_bytes_never_panic(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..600),
            layout in proptest::collection::vec(0u16..24, 0..24),
            magic in any::<bool>(), big in any::<bool>(),
        ) {
            let e = if big { Endian::Big } else { Endian::Little };
            if magic && bytes.len() >= 4 {
                let m = if big { SA_MAGIC.to_be_bytes() } else { SA_MAGIC.to_le_bytes() };
                bytes[..4].copy_from_slice(&m);
            }
            if let Ok(h) = SaHdr::new_checked(&bytes) {
                let reg = |a: u16| if a < 20 { Some((a % 3) * 8) } else { None };
                let _ = h.attrs(&layout, &reg, &mut |_, b| attr_u64(b, e).map(|_| ()).or(Ok(())));
                for i in 0..40 {
                    let _ = h.var_len(i);
                }
            }
            let _ = ZnodeAttrs::parse_znode_phys(&bytes, e);
            let _ = old_symlink_inline(&bytes, bytes.len() as u64, 320);
            let _ = DirEntry::decode((bytes.len() as u64).wrapping_mul(0x0123_4567_89ab_cdef)).file_type();
        }
    }
}
