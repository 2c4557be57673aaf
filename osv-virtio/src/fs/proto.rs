//! The FUSE wire protocol as virtio-fs carries it: request encoding and
//! checked reply parsing.
//!
//! Layouts, opcodes and flag values come from Linux's
//! `include/uapi/linux/fuse.h` (protocol 7.31; the structure names are
//! given at each type). All integers are little-endian on virtio-fs (the
//! device is a virtio 1.x device, virtio 1.2 §5.11.6).
//!
//! # The no-panic contract
//!
//! Reply bytes come from the device and are untrusted. Every parser here
//! takes a byte slice and returns a typed value or a [`ProtoError`]; no
//! index is used before the length is checked and no arithmetic on a
//! device value can overflow. The fuzz target `virtio_fuse_reply` feeds
//! arbitrary bytes to every parser ([`crate::fake::fuzz_fuse_reply`]).

use core::fmt;

/// The FUSE major version we speak (`FUSE_KERNEL_VERSION`).
pub const KERNEL_VERSION: u32 = 7;
/// The FUSE minor version we offer in `FUSE_INIT`
/// (`FUSE_KERNEL_MINOR_VERSION` of the 7.31 header).
pub const KERNEL_MINOR_VERSION: u32 = 31;
/// The oldest minor version we accept from a server: 7.23 fixed the sizes
/// of every structure used here (`fuse_init_out` at 64 bytes, RENAME2).
pub const MIN_MINOR_VERSION: u32 = 23;
/// The root directory's node id (`FUSE_ROOT_ID`).
pub const ROOT_ID: NodeId = NodeId(1);
/// Longest name component we send or accept (Linux `NAME_MAX`; FUSE's own
/// limit, `FUSE_NAME_MAX`, is 1024).
pub const NAME_MAX: usize = 255;

/// `struct fuse_in_header` length.
pub const IN_HEADER_LEN: usize = 40;
/// `struct fuse_out_header` length.
pub const OUT_HEADER_LEN: usize = 16;
/// `struct fuse_attr` length (7.9+; the last field is `flags` since 7.32,
/// padding before).
pub const ATTR_LEN: usize = 88;
/// `struct fuse_entry_out` length.
pub const ENTRY_OUT_LEN: usize = 40 + ATTR_LEN;
/// `struct fuse_attr_out` length.
pub const ATTR_OUT_LEN: usize = 16 + ATTR_LEN;
/// `struct fuse_open_out` length.
pub const OPEN_OUT_LEN: usize = 16;
/// `FUSE_CREATE`'s reply: `fuse_entry_out` then `fuse_open_out`.
pub const CREATE_OUT_LEN: usize = ENTRY_OUT_LEN + OPEN_OUT_LEN;
/// `struct fuse_write_out` length.
pub const WRITE_OUT_LEN: usize = 8;
/// `struct fuse_statfs_out` (a `fuse_kstatfs`) length.
pub const STATFS_OUT_LEN: usize = 80;
/// `struct fuse_init_out` length (7.23+).
pub const INIT_OUT_LEN: usize = 64;
/// `FUSE_COMPAT_22_INIT_OUT_SIZE`: the shortest `fuse_init_out` a server
/// may send.
pub const INIT_OUT_MIN_LEN: usize = 24;
/// `FUSE_NAME_OFFSET`: a `fuse_dirent`'s fixed part.
pub const DIRENT_NAME_OFFSET: usize = 24;
/// `FUSE_NAME_OFFSET_DIRENTPLUS`: a `fuse_direntplus`'s fixed part.
pub const DIRENTPLUS_NAME_OFFSET: usize = ENTRY_OUT_LEN + DIRENT_NAME_OFFSET;
/// The largest fixed-size reply (`FUSE_CREATE`'s).
pub const MAX_FIXED_REPLY: usize = CREATE_OUT_LEN;
/// The largest request without its data (`FUSE_RENAME2`: header, 16-byte
/// `fuse_rename2_in`, two names with their NULs).
pub const MAX_REQUEST_HEAD: usize = IN_HEADER_LEN + 16 + 2 * (NAME_MAX + 1);

/// `FUSE_INIT` flags (`fuse_init_in.flags` / `fuse_init_out.flags`).
pub mod init_flags {
    /// `FUSE_BIG_WRITES`: writes larger than a page.
    pub const BIG_WRITES: u32 = 1 << 5;
    /// `FUSE_DO_READDIRPLUS`: the server answers `FUSE_READDIRPLUS`.
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    /// `FUSE_PARALLEL_DIROPS`: lookups and readdirs may run in parallel.
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    /// `FUSE_MAX_PAGES`: `fuse_init_out.max_pages` is valid.
    pub const MAX_PAGES: u32 = 1 << 22;
    /// `FUSE_MAP_ALIGNMENT`: `fuse_init_out.map_alignment` is valid (DAX).
    pub const MAP_ALIGNMENT: u32 = 1 << 26;
}

/// `fuse_setattr_in.valid` bits (`FATTR_*`).
pub mod fattr {
    /// `FATTR_MODE`.
    pub const MODE: u32 = 1 << 0;
    /// `FATTR_UID`.
    pub const UID: u32 = 1 << 1;
    /// `FATTR_GID`.
    pub const GID: u32 = 1 << 2;
    /// `FATTR_SIZE`.
    pub const SIZE: u32 = 1 << 3;
    /// `FATTR_ATIME`.
    pub const ATIME: u32 = 1 << 4;
    /// `FATTR_MTIME`.
    pub const MTIME: u32 = 1 << 5;
    /// `FATTR_FH`: `fh` is valid.
    pub const FH: u32 = 1 << 6;
}

/// `fuse_getattr_in.getattr_flags`: `FUSE_GETATTR_FH`, `fh` is valid.
pub const GETATTR_FH: u32 = 1 << 0;
/// `fuse_fsync_in.fsync_flags`: `FUSE_FSYNC_FDATASYNC`.
pub const FSYNC_FDATASYNC: u32 = 1 << 0;

/// Linux open flags used in `fuse_open_in.flags` / `fuse_create_in.flags`
/// (`asm-generic/fcntl.h`).
pub mod open_flags {
    /// `O_RDONLY`.
    pub const RDONLY: u32 = 0;
    /// `O_WRONLY`.
    pub const WRONLY: u32 = 0o1;
    /// `O_RDWR`.
    pub const RDWR: u32 = 0o2;
    /// `O_CREAT`.
    pub const CREAT: u32 = 0o100;
    /// `O_EXCL`.
    pub const EXCL: u32 = 0o200;
    /// `O_DIRECTORY`.
    pub const DIRECTORY: u32 = 0o200000;
}

/// `S_IFMT` and the type bits of `fuse_attr.mode` (Linux `stat.h`).
pub mod mode {
    /// `S_IFMT`.
    pub const IFMT: u32 = 0o170000;
    /// `S_IFREG`.
    pub const IFREG: u32 = 0o100000;
    /// `S_IFDIR`.
    pub const IFDIR: u32 = 0o040000;
    /// `S_IFLNK`.
    pub const IFLNK: u32 = 0o120000;
    /// `S_IFCHR`.
    pub const IFCHR: u32 = 0o020000;
    /// `S_IFBLK`.
    pub const IFBLK: u32 = 0o060000;
    /// `S_IFIFO`.
    pub const IFIFO: u32 = 0o010000;
    /// `S_IFSOCK`.
    pub const IFSOCK: u32 = 0o140000;
}

/// A FUSE node id (`fuse_in_header.nodeid`, `fuse_entry_out.nodeid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

/// A server's open-file handle (`fuse_open_out.fh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileHandle(pub u64);

/// FUSE operation codes (`enum fuse_opcode`), the ones this crate sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum Opcode {
    /// `FUSE_LOOKUP`.
    Lookup = 1,
    /// `FUSE_FORGET` (no reply).
    Forget = 2,
    /// `FUSE_GETATTR`.
    Getattr = 3,
    /// `FUSE_SETATTR`.
    Setattr = 4,
    /// `FUSE_MKDIR`.
    Mkdir = 9,
    /// `FUSE_UNLINK`.
    Unlink = 10,
    /// `FUSE_RMDIR`.
    Rmdir = 11,
    /// `FUSE_RENAME`.
    Rename = 12,
    /// `FUSE_OPEN`.
    Open = 14,
    /// `FUSE_READ`.
    Read = 15,
    /// `FUSE_WRITE`.
    Write = 16,
    /// `FUSE_STATFS`.
    Statfs = 17,
    /// `FUSE_RELEASE`.
    Release = 18,
    /// `FUSE_FSYNC`.
    Fsync = 20,
    /// `FUSE_FLUSH`.
    Flush = 25,
    /// `FUSE_INIT`.
    Init = 26,
    /// `FUSE_OPENDIR`.
    Opendir = 27,
    /// `FUSE_READDIR`.
    Readdir = 28,
    /// `FUSE_RELEASEDIR`.
    Releasedir = 29,
    /// `FUSE_FSYNCDIR`.
    Fsyncdir = 30,
    /// `FUSE_CREATE`.
    Create = 35,
    /// `FUSE_DESTROY`.
    Destroy = 38,
    /// `FUSE_READDIRPLUS`.
    Readdirplus = 44,
    /// `FUSE_RENAME2`.
    Rename2 = 45,
}

/// What went wrong building a request or checking a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoError {
    /// A name we were asked to send is empty, `.`/`..` where not allowed,
    /// longer than [`NAME_MAX`], or holds `/` or NUL.
    InvalidName,
    /// The request does not fit the buffer given to encode it.
    RequestTooLong,
    /// The device reported fewer bytes than a `fuse_out_header`.
    ShortReply {
        /// The length the device reported.
        len: u32,
    },
    /// `fuse_out_header.unique` is not the request's.
    BadUnique {
        /// The request's.
        expected: u64,
        /// The reply's.
        got: u64,
    },
    /// `fuse_out_header.len` differs from what the device reported written.
    LengthMismatch {
        /// The header's.
        header: u32,
        /// The device's (used length).
        used: u32,
    },
    /// `fuse_out_header.error` is neither 0 nor a negated errno (1..=4095).
    BadErrno(i32),
    /// An error reply that carries a payload (an error reply is the header
    /// alone).
    ErrorWithPayload {
        /// The errno the reply carried.
        errno: u32,
        /// The payload length.
        len: u32,
    },
    /// A reply payload of the wrong size for the operation.
    BadPayloadLength {
        /// The operation.
        opcode: Opcode,
        /// What arrived.
        len: u32,
    },
    /// A directory record is cut short, has a zero or oversized name
    /// length, or a name with `/` or NUL (at this byte offset).
    BadDirent {
        /// Offset of the record in the reply.
        at: u32,
    },
    /// A value inside a reply makes no sense (a write larger than sent, a
    /// node id of 0 on a positive entry, an unsupported major version, ...).
    BadValue(&'static str),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName => f.write_str("invalid name component"),
            Self::RequestTooLong => f.write_str("request does not fit its buffer"),
            Self::ShortReply { len } => write!(f, "reply of {len} bytes, shorter than fuse_out_header"),
            Self::BadUnique { expected, got } => write!(f, "reply for request {got}, expected {expected}"),
            Self::LengthMismatch { header, used } => {
                write!(f, "fuse_out_header.len {header} but the device wrote {used} bytes")
            }
            Self::BadErrno(e) => write!(f, "invalid error field {e}"),
            Self::ErrorWithPayload { errno, len } => write!(f, "error {errno} with a {len}-byte payload"),
            Self::BadPayloadLength { opcode, len } => write!(f, "{opcode:?} reply payload of {len} bytes"),
            Self::BadDirent { at } => write!(f, "malformed directory record at byte {at}"),
            Self::BadValue(what) => write!(f, "bad value in reply: {what}"),
        }
    }
}

impl core::error::Error for ProtoError {}

// ---------------------------------------------------------------------------
// Little-endian field access that cannot panic.

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off.checked_add(2)?)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

/// Checks one name component for sending: 1..=[`NAME_MAX`] bytes, no `/`
/// or NUL.
pub fn check_name(name: &[u8]) -> Result<(), ProtoError> {
    if name.is_empty() || name.len() > NAME_MAX || name.iter().any(|&c| c == b'/' || c == 0) {
        return Err(ProtoError::InvalidName);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Requests

/// `struct fuse_setattr_in`'s settable fields; `None` leaves one alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetattrIn {
    /// New mode (`FATTR_MODE`; permission bits).
    pub mode: Option<u32>,
    /// New size (`FATTR_SIZE`).
    pub size: Option<u64>,
    /// New access time, (seconds, nanoseconds) (`FATTR_ATIME`).
    pub atime: Option<(u64, u32)>,
    /// New modification time (`FATTR_MTIME`).
    pub mtime: Option<(u64, u32)>,
    /// The open file the change goes through (`FATTR_FH`).
    pub fh: Option<FileHandle>,
}

/// One request, with its arguments (the `*_in` structures of `fuse.h`).
/// Data written by `FUSE_WRITE` travels separately (a second readable
/// buffer); [`Request::Write::size`] is its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request<'a> {
    /// `FUSE_INIT` with `fuse_init_in` (7.31 layout, 16 bytes).
    Init {
        /// Largest readahead we would do.
        max_readahead: u32,
        /// `init_flags` we support.
        flags: u32,
    },
    /// `FUSE_LOOKUP`: `name` in directory `parent`.
    Lookup {
        /// The directory.
        parent: NodeId,
        /// The name (also `..`).
        name: &'a [u8],
    },
    /// `FUSE_FORGET` with `fuse_forget_in`: drop `nlookup` lookups.
    Forget {
        /// The node.
        node: NodeId,
        /// How many lookups to drop.
        nlookup: u64,
    },
    /// `FUSE_GETATTR` with `fuse_getattr_in`.
    Getattr {
        /// The node.
        node: NodeId,
        /// Through this open file, if given (`FUSE_GETATTR_FH`).
        fh: Option<FileHandle>,
    },
    /// `FUSE_SETATTR` with `fuse_setattr_in`.
    Setattr {
        /// The node.
        node: NodeId,
        /// What to change.
        attr: SetattrIn,
    },
    /// `FUSE_OPEN` or `FUSE_OPENDIR` with `fuse_open_in`.
    Open {
        /// The node.
        node: NodeId,
        /// Linux open flags (access mode and the like).
        flags: u32,
        /// `FUSE_OPENDIR` instead of `FUSE_OPEN`.
        dir: bool,
    },
    /// `FUSE_READ`, `FUSE_READDIR` or `FUSE_READDIRPLUS` with
    /// `fuse_read_in`.
    Read {
        /// Which of the three.
        op: ReadOp,
        /// The node.
        node: NodeId,
        /// The open file.
        fh: FileHandle,
        /// Byte offset (directories: the cookie of the previous record).
        offset: u64,
        /// Most bytes to return.
        size: u32,
    },
    /// `FUSE_WRITE` with `fuse_write_in`; `size` bytes of data follow in
    /// a separate buffer.
    Write {
        /// The node.
        node: NodeId,
        /// The open file.
        fh: FileHandle,
        /// Byte offset.
        offset: u64,
        /// Data length.
        size: u32,
    },
    /// `FUSE_CREATE` with `fuse_create_in` and the name.
    Create {
        /// The directory.
        parent: NodeId,
        /// The new name.
        name: &'a [u8],
        /// Linux open flags.
        flags: u32,
        /// Mode (type bits and permissions).
        mode: u32,
        /// The umask to apply.
        umask: u32,
    },
    /// `FUSE_MKDIR` with `fuse_mkdir_in` and the name.
    Mkdir {
        /// The directory.
        parent: NodeId,
        /// The new name.
        name: &'a [u8],
        /// Permissions.
        mode: u32,
        /// The umask to apply.
        umask: u32,
    },
    /// `FUSE_UNLINK` (`dir == false`) or `FUSE_RMDIR`, with the name.
    Remove {
        /// The directory.
        parent: NodeId,
        /// The name.
        name: &'a [u8],
        /// `FUSE_RMDIR` instead of `FUSE_UNLINK`.
        dir: bool,
    },
    /// `FUSE_RENAME` (`flags == 0`, `fuse_rename_in`) or `FUSE_RENAME2`
    /// (`fuse_rename2_in`), with the two names.
    Rename {
        /// The source directory.
        parent: NodeId,
        /// The source name.
        name: &'a [u8],
        /// The target directory.
        new_parent: NodeId,
        /// The target name.
        new_name: &'a [u8],
        /// `RENAME_NOREPLACE`/`RENAME_EXCHANGE` (Linux values) or 0.
        flags: u32,
    },
    /// `FUSE_STATFS` (no arguments).
    Statfs {
        /// Any node of the filesystem.
        node: NodeId,
    },
    /// `FUSE_RELEASE` or `FUSE_RELEASEDIR` with `fuse_release_in`.
    Release {
        /// The node.
        node: NodeId,
        /// The open file.
        fh: FileHandle,
        /// The flags it was opened with.
        flags: u32,
        /// `FUSE_RELEASEDIR` instead of `FUSE_RELEASE`.
        dir: bool,
    },
    /// `FUSE_FSYNC` or `FUSE_FSYNCDIR` with `fuse_fsync_in`.
    Fsync {
        /// The node.
        node: NodeId,
        /// The open file.
        fh: FileHandle,
        /// Data only (`FUSE_FSYNC_FDATASYNC`).
        datasync: bool,
        /// `FUSE_FSYNCDIR` instead of `FUSE_FSYNC`.
        dir: bool,
    },
    /// `FUSE_FLUSH` with `fuse_flush_in`.
    Flush {
        /// The node.
        node: NodeId,
        /// The open file.
        fh: FileHandle,
        /// The lock owner to release.
        lock_owner: u64,
    },
    /// `FUSE_DESTROY` (no arguments): the session ends.
    Destroy,
}

/// The three operations that share `fuse_read_in`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadOp {
    /// `FUSE_READ`: file data.
    Data,
    /// `FUSE_READDIR`: `fuse_dirent` records.
    Dir,
    /// `FUSE_READDIRPLUS`: `fuse_direntplus` records.
    DirPlus,
}

/// A little writer over the request buffer.
struct Put<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Put<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), ProtoError> {
        let end = self.at.checked_add(b.len()).ok_or(ProtoError::RequestTooLong)?;
        self.buf.get_mut(self.at..end).ok_or(ProtoError::RequestTooLong)?.copy_from_slice(b);
        self.at = end;
        Ok(())
    }
    fn u32(&mut self, v: u32) -> Result<(), ProtoError> {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> Result<(), ProtoError> {
        self.bytes(&v.to_le_bytes())
    }
    fn name(&mut self, n: &[u8]) -> Result<(), ProtoError> {
        check_name(n)?;
        self.bytes(n)?;
        self.bytes(&[0])
    }
}

impl Request<'_> {
    /// The operation code.
    pub fn opcode(&self) -> Opcode {
        match self {
            Self::Init { .. } => Opcode::Init,
            Self::Lookup { .. } => Opcode::Lookup,
            Self::Forget { .. } => Opcode::Forget,
            Self::Getattr { .. } => Opcode::Getattr,
            Self::Setattr { .. } => Opcode::Setattr,
            Self::Open { dir: false, .. } => Opcode::Open,
            Self::Open { dir: true, .. } => Opcode::Opendir,
            Self::Read { op: ReadOp::Data, .. } => Opcode::Read,
            Self::Read { op: ReadOp::Dir, .. } => Opcode::Readdir,
            Self::Read { op: ReadOp::DirPlus, .. } => Opcode::Readdirplus,
            Self::Write { .. } => Opcode::Write,
            Self::Create { .. } => Opcode::Create,
            Self::Mkdir { .. } => Opcode::Mkdir,
            Self::Remove { dir: false, .. } => Opcode::Unlink,
            Self::Remove { dir: true, .. } => Opcode::Rmdir,
            Self::Rename { flags: 0, .. } => Opcode::Rename,
            Self::Rename { .. } => Opcode::Rename2,
            Self::Statfs { .. } => Opcode::Statfs,
            Self::Release { dir: false, .. } => Opcode::Release,
            Self::Release { dir: true, .. } => Opcode::Releasedir,
            Self::Fsync { dir: false, .. } => Opcode::Fsync,
            Self::Fsync { dir: true, .. } => Opcode::Fsyncdir,
            Self::Flush { .. } => Opcode::Flush,
            Self::Destroy => Opcode::Destroy,
        }
    }

    /// The node the request is about (`fuse_in_header.nodeid`; 0 for
    /// session-wide requests).
    pub fn nodeid(&self) -> NodeId {
        match *self {
            Self::Init { .. } | Self::Destroy => NodeId(0),
            Self::Lookup { parent, .. }
            | Self::Create { parent, .. }
            | Self::Mkdir { parent, .. }
            | Self::Remove { parent, .. }
            | Self::Rename { parent, .. } => parent,
            Self::Forget { node, .. }
            | Self::Getattr { node, .. }
            | Self::Setattr { node, .. }
            | Self::Open { node, .. }
            | Self::Read { node, .. }
            | Self::Write { node, .. }
            | Self::Statfs { node }
            | Self::Release { node, .. }
            | Self::Fsync { node, .. }
            | Self::Flush { node, .. } => node,
        }
    }

    /// `false` for `FUSE_FORGET`, which the server never answers.
    pub fn expects_reply(&self) -> bool {
        !matches!(self, Self::Forget { .. })
    }

    /// The length of the data that follows the encoded part (`FUSE_WRITE`).
    pub fn data_len(&self) -> usize {
        match *self {
            Self::Write { size, .. } => size as usize,
            _ => 0,
        }
    }

    /// Writes `fuse_in_header` and the arguments into `buf`; returns the
    /// encoded length (the header's `len` also counts [`data_len`](Self::data_len)).
    pub fn encode(&self, unique: u64, buf: &mut [u8]) -> Result<usize, ProtoError> {
        let mut p = Put { buf, at: IN_HEADER_LEN };
        if p.buf.len() < IN_HEADER_LEN {
            return Err(ProtoError::RequestTooLong);
        }
        match *self {
            Self::Init { max_readahead, flags } => {
                // struct fuse_init_in (before 7.36's flags2).
                p.u32(KERNEL_VERSION)?;
                p.u32(KERNEL_MINOR_VERSION)?;
                p.u32(max_readahead)?;
                p.u32(flags)?;
            }
            Self::Lookup { name, .. } => {
                if name != b".." {
                    check_name(name)?;
                }
                p.bytes(name)?;
                p.bytes(&[0])?;
            }
            Self::Forget { nlookup, .. } => p.u64(nlookup)?, // struct fuse_forget_in
            Self::Getattr { fh, .. } => {
                // struct fuse_getattr_in
                p.u32(if fh.is_some() { GETATTR_FH } else { 0 })?;
                p.u32(0)?;
                p.u64(fh.map_or(0, |f| f.0))?;
            }
            Self::Setattr { attr, .. } => {
                // struct fuse_setattr_in
                let mut valid = 0;
                valid |= if attr.mode.is_some() { fattr::MODE } else { 0 };
                valid |= if attr.size.is_some() { fattr::SIZE } else { 0 };
                valid |= if attr.atime.is_some() { fattr::ATIME } else { 0 };
                valid |= if attr.mtime.is_some() { fattr::MTIME } else { 0 };
                valid |= if attr.fh.is_some() { fattr::FH } else { 0 };
                let (at, atn) = attr.atime.unwrap_or((0, 0));
                let (mt, mtn) = attr.mtime.unwrap_or((0, 0));
                p.u32(valid)?;
                p.u32(0)?; // padding
                p.u64(attr.fh.map_or(0, |f| f.0))?;
                p.u64(attr.size.unwrap_or(0))?;
                p.u64(0)?; // lock_owner
                p.u64(at)?;
                p.u64(mt)?;
                p.u64(0)?; // ctime
                p.u32(atn)?;
                p.u32(mtn)?;
                p.u32(0)?; // ctimensec
                p.u32(attr.mode.unwrap_or(0))?;
                p.u32(0)?; // unused4
                p.u32(0)?; // uid
                p.u32(0)?; // gid
                p.u32(0)?; // unused5
            }
            Self::Open { flags, .. } => {
                // struct fuse_open_in
                p.u32(flags)?;
                p.u32(0)?; // open_flags
            }
            Self::Read { fh, offset, size, .. } => {
                // struct fuse_read_in
                p.u64(fh.0)?;
                p.u64(offset)?;
                p.u32(size)?;
                p.u32(0)?; // read_flags
                p.u64(0)?; // lock_owner
                p.u32(0)?; // flags
                p.u32(0)?; // padding
            }
            Self::Write { fh, offset, size, .. } => {
                // struct fuse_write_in
                p.u64(fh.0)?;
                p.u64(offset)?;
                p.u32(size)?;
                p.u32(0)?; // write_flags
                p.u64(0)?; // lock_owner
                p.u32(0)?; // flags
                p.u32(0)?; // padding
            }
            Self::Create { name, flags, mode, umask, .. } => {
                // struct fuse_create_in
                p.u32(flags)?;
                p.u32(mode)?;
                p.u32(umask)?;
                p.u32(0)?; // open_flags
                p.name(name)?;
            }
            Self::Mkdir { name, mode, umask, .. } => {
                // struct fuse_mkdir_in
                p.u32(mode)?;
                p.u32(umask)?;
                p.name(name)?;
            }
            Self::Remove { name, .. } => p.name(name)?,
            Self::Rename { name, new_parent, new_name, flags, .. } => {
                // struct fuse_rename_in, or fuse_rename2_in with flags.
                p.u64(new_parent.0)?;
                if flags != 0 {
                    p.u32(flags)?;
                    p.u32(0)?;
                }
                p.name(name)?;
                p.name(new_name)?;
            }
            Self::Statfs { .. } | Self::Destroy => {}
            Self::Release { fh, flags, .. } => {
                // struct fuse_release_in
                p.u64(fh.0)?;
                p.u32(flags)?;
                p.u32(0)?; // release_flags
                p.u64(0)?; // lock_owner
            }
            Self::Fsync { fh, datasync, .. } => {
                // struct fuse_fsync_in
                p.u64(fh.0)?;
                p.u32(if datasync { FSYNC_FDATASYNC } else { 0 })?;
                p.u32(0)?;
            }
            Self::Flush { fh, lock_owner, .. } => {
                // struct fuse_flush_in
                p.u64(fh.0)?;
                p.u32(0)?;
                p.u32(0)?;
                p.u64(lock_owner)?;
            }
        }
        let encoded = p.at;
        let total = u32::try_from(encoded + self.data_len()).map_err(|_| ProtoError::RequestTooLong)?;
        // struct fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid,
        // total_extlen (u16, 7.36) and padding (u16).
        let mut h = Put { buf: p.buf, at: 0 };
        h.u32(total)?;
        h.u32(self.opcode() as u32)?;
        h.u64(unique)?;
        h.u64(self.nodeid().0)?;
        h.u32(0)?; // uid: root
        h.u32(0)?; // gid
        h.u32(1)?; // pid: the one process
        h.u32(0)?; // total_extlen, padding
        Ok(encoded)
    }
}

// ---------------------------------------------------------------------------
// Replies

/// `struct fuse_out_header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutHeader {
    /// Total reply length, header included.
    pub len: u32,
    /// 0, or a negated errno.
    pub error: i32,
    /// The request this answers.
    pub unique: u64,
}

/// A checked reply header: success with a payload length, or the server's
/// errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Success; this many payload bytes follow the header.
    Ok(u32),
    /// The server answered with this (positive) errno.
    Err(u32),
}

impl OutHeader {
    /// Reads the header from the first 16 bytes of `b`.
    pub fn parse(b: &[u8]) -> Result<Self, ProtoError> {
        let short = ProtoError::ShortReply { len: b.len().min(u32::MAX as usize) as u32 };
        Ok(Self {
            len: u32_at(b, 0).ok_or(short)?,
            error: u32_at(b, 4).ok_or(short)? as i32,
            unique: u64_at(b, 8).ok_or(short)?,
        })
    }

    /// Checks a reply: `used` is the length the device reported written
    /// (header included), `unique` the request's. The header's `len` must
    /// equal `used`; an error reply must be the header alone and carry an
    /// errno in 1..=4095 (Linux's `MAX_ERRNO`).
    pub fn check(&self, used: u32, unique: u64) -> Result<Status, ProtoError> {
        if (used as usize) < OUT_HEADER_LEN {
            return Err(ProtoError::ShortReply { len: used });
        }
        if self.unique != unique {
            return Err(ProtoError::BadUnique { expected: unique, got: self.unique });
        }
        if self.len != used {
            return Err(ProtoError::LengthMismatch { header: self.len, used });
        }
        let payload = used - OUT_HEADER_LEN as u32;
        match self.error {
            0 => Ok(Status::Ok(payload)),
            e if (-4095..=-1).contains(&e) => {
                let errno = e.unsigned_abs();
                if payload != 0 {
                    return Err(ProtoError::ErrorWithPayload { errno, len: payload });
                }
                Ok(Status::Err(errno))
            }
            e => Err(ProtoError::BadErrno(e)),
        }
    }
}

fn exact(b: &[u8], len: usize, opcode: Opcode) -> Result<(), ProtoError> {
    if b.len() != len {
        return Err(ProtoError::BadPayloadLength { opcode, len: b.len().min(u32::MAX as usize) as u32 });
    }
    Ok(())
}

/// A timestamp from FUSE: seconds and nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Time {
    /// Seconds since the epoch (`u64` on the wire, as `fuse_attr`).
    pub sec: u64,
    /// Nanoseconds (checked `< 1e9`).
    pub nsec: u32,
}

/// `struct fuse_attr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    /// Inode number on the server.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Last access.
    pub atime: Time,
    /// Last modification.
    pub mtime: Time,
    /// Last status change.
    pub ctime: Time,
    /// Type and permission bits.
    pub mode: u32,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (Linux `new_encode_dev` encoding).
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
    /// `FUSE_ATTR_*` flags (7.32+; padding before).
    pub flags: u32,
}

impl Attr {
    /// Parses the 88 bytes of a `fuse_attr` (`b` must be exactly that long).
    pub fn parse(b: &[u8]) -> Result<Self, ProtoError> {
        let f = |o| u32_at(b, o).ok_or(ProtoError::BadValue("fuse_attr cut short"));
        let g = |o| u64_at(b, o).ok_or(ProtoError::BadValue("fuse_attr cut short"));
        let time = |s: u64, ns: u32| {
            if ns >= 1_000_000_000 {
                return Err(ProtoError::BadValue("nanoseconds >= 1e9"));
            }
            Ok(Time { sec: s, nsec: ns })
        };
        if b.len() != ATTR_LEN {
            return Err(ProtoError::BadValue("fuse_attr length"));
        }
        let a = Self {
            ino: g(0)?,
            size: g(8)?,
            blocks: g(16)?,
            atime: time(g(24)?, f(48)?)?,
            mtime: time(g(32)?, f(52)?)?,
            ctime: time(g(40)?, f(56)?)?,
            mode: f(60)?,
            nlink: f(64)?,
            uid: f(68)?,
            gid: f(72)?,
            rdev: f(76)?,
            blksize: f(80)?,
            flags: f(84)?,
        };
        if a.file_type().is_none() {
            return Err(ProtoError::BadValue("unknown file type in mode"));
        }
        Ok(a)
    }

    /// The type bits, if they name a known type.
    pub fn file_type(&self) -> Option<FileType> {
        FileType::from_mode(self.mode)
    }

    /// Writes the 88-byte wire form (for fakes and tests).
    pub fn emit(&self, out: &mut [u8; ATTR_LEN]) {
        let mut p = Put { buf: out, at: 0 };
        let _ = (|| -> Result<(), ProtoError> {
            p.u64(self.ino)?;
            p.u64(self.size)?;
            p.u64(self.blocks)?;
            p.u64(self.atime.sec)?;
            p.u64(self.mtime.sec)?;
            p.u64(self.ctime.sec)?;
            p.u32(self.atime.nsec)?;
            p.u32(self.mtime.nsec)?;
            p.u32(self.ctime.nsec)?;
            p.u32(self.mode)?;
            p.u32(self.nlink)?;
            p.u32(self.uid)?;
            p.u32(self.gid)?;
            p.u32(self.rdev)?;
            p.u32(self.blksize)?;
            p.u32(self.flags)
        })();
    }
}

/// File types (from `S_IFMT` bits, or a dirent's `DT_*` value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    /// Regular file.
    Regular,
    /// Directory.
    Directory,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
    /// Socket.
    Socket,
}

impl FileType {
    /// From `mode`'s `S_IFMT` bits.
    pub fn from_mode(m: u32) -> Option<Self> {
        Some(match m & mode::IFMT {
            mode::IFREG => Self::Regular,
            mode::IFDIR => Self::Directory,
            mode::IFLNK => Self::Symlink,
            mode::IFCHR => Self::CharDevice,
            mode::IFBLK => Self::BlockDevice,
            mode::IFIFO => Self::Fifo,
            mode::IFSOCK => Self::Socket,
            _ => return None,
        })
    }

    /// From a `fuse_dirent.type` (`DT_*`, which is `S_IFMT >> 12`);
    /// `None` for `DT_UNKNOWN` (0) or a value that is no type.
    pub fn from_dirent(t: u32) -> Option<Self> {
        t.checked_shl(12).and_then(Self::from_mode)
    }

    /// The `S_IFMT` bits.
    pub fn mode_bits(self) -> u32 {
        match self {
            Self::Regular => mode::IFREG,
            Self::Directory => mode::IFDIR,
            Self::Symlink => mode::IFLNK,
            Self::CharDevice => mode::IFCHR,
            Self::BlockDevice => mode::IFBLK,
            Self::Fifo => mode::IFIFO,
            Self::Socket => mode::IFSOCK,
        }
    }
}

/// `struct fuse_entry_out`: the answer to LOOKUP, MKDIR, CREATE (first
/// part). A positive entry adds one to the node's lookup count on the
/// server, which `FUSE_FORGET` must give back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryOut {
    /// The node (never 0 here: a zero node id, a negative entry, is turned
    /// into `ENOENT` by the driver).
    pub nodeid: NodeId,
    /// Inode generation.
    pub generation: u64,
    /// Attributes.
    pub attr: Attr,
}

impl EntryOut {
    /// Parses a `fuse_entry_out` (exactly 128 bytes). `Ok(None)` is a
    /// negative entry (node id 0).
    pub fn parse(b: &[u8]) -> Result<Option<Self>, ProtoError> {
        exact(b, ENTRY_OUT_LEN, Opcode::Lookup)?;
        Self::parse_fixed(b)
    }

    fn parse_fixed(b: &[u8]) -> Result<Option<Self>, ProtoError> {
        let nodeid = u64_at(b, 0).ok_or(ProtoError::BadValue("fuse_entry_out cut short"))?;
        let generation = u64_at(b, 8).ok_or(ProtoError::BadValue("fuse_entry_out cut short"))?;
        let attr = b.get(40..ENTRY_OUT_LEN).ok_or(ProtoError::BadValue("fuse_entry_out cut short"))?;
        if nodeid == 0 {
            return Ok(None);
        }
        Ok(Some(Self { nodeid: NodeId(nodeid), generation, attr: Attr::parse(attr)? }))
    }

    /// Writes the 128-byte wire form (for fakes and tests).
    pub fn emit(&self, out: &mut [u8; ENTRY_OUT_LEN]) {
        out[..8].copy_from_slice(&self.nodeid.0.to_le_bytes());
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..40].fill(0); // valid times: 0 (no caching)
        let mut a = [0u8; ATTR_LEN];
        self.attr.emit(&mut a);
        out[40..].copy_from_slice(&a);
    }
}

/// Parses `struct fuse_attr_out` (GETATTR, SETATTR).
pub fn parse_attr_out(b: &[u8], opcode: Opcode) -> Result<Attr, ProtoError> {
    exact(b, ATTR_OUT_LEN, opcode)?;
    Attr::parse(b.get(16..).ok_or(ProtoError::BadValue("fuse_attr_out cut short"))?)
}

/// `struct fuse_open_out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOut {
    /// The handle for later requests.
    pub fh: FileHandle,
    /// `FOPEN_*` flags.
    pub open_flags: u32,
}

impl OpenOut {
    /// Parses a `fuse_open_out` (exactly 16 bytes).
    pub fn parse(b: &[u8], opcode: Opcode) -> Result<Self, ProtoError> {
        exact(b, OPEN_OUT_LEN, opcode)?;
        let bad = ProtoError::BadValue("fuse_open_out cut short");
        Ok(Self { fh: FileHandle(u64_at(b, 0).ok_or(bad)?), open_flags: u32_at(b, 8).ok_or(bad)? })
    }
}

/// Parses `FUSE_CREATE`'s reply: `fuse_entry_out` then `fuse_open_out`.
/// A created file is always a positive entry.
pub fn parse_create_out(b: &[u8]) -> Result<(EntryOut, OpenOut), ProtoError> {
    exact(b, CREATE_OUT_LEN, Opcode::Create)?;
    let (e, o) = b.split_at(ENTRY_OUT_LEN);
    let entry = EntryOut::parse_fixed(e)?.ok_or(ProtoError::BadValue("CREATE reply with node id 0"))?;
    Ok((entry, OpenOut::parse(o, Opcode::Create)?))
}

/// Parses `struct fuse_write_out` and checks the count against what was
/// sent.
pub fn parse_write_out(b: &[u8], sent: u32) -> Result<u32, ProtoError> {
    exact(b, WRITE_OUT_LEN, Opcode::Write)?;
    let n = u32_at(b, 0).ok_or(ProtoError::BadValue("fuse_write_out cut short"))?;
    if n > sent {
        return Err(ProtoError::BadValue("wrote more than was sent"));
    }
    Ok(n)
}

/// `struct fuse_kstatfs` (in `fuse_statfs_out`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kstatfs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

impl Kstatfs {
    /// Parses a `fuse_statfs_out` (exactly 80 bytes).
    pub fn parse(b: &[u8]) -> Result<Self, ProtoError> {
        exact(b, STATFS_OUT_LEN, Opcode::Statfs)?;
        let bad = ProtoError::BadValue("fuse_kstatfs cut short");
        Ok(Self {
            blocks: u64_at(b, 0).ok_or(bad)?,
            bfree: u64_at(b, 8).ok_or(bad)?,
            bavail: u64_at(b, 16).ok_or(bad)?,
            files: u64_at(b, 24).ok_or(bad)?,
            ffree: u64_at(b, 32).ok_or(bad)?,
            bsize: u32_at(b, 40).ok_or(bad)?,
            namelen: u32_at(b, 44).ok_or(bad)?,
            frsize: u32_at(b, 48).ok_or(bad)?,
        })
    }
}

/// `struct fuse_init_out`: what the server agreed to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitOut {
    /// The server's major version.
    pub major: u32,
    /// The server's minor version.
    pub minor: u32,
    /// Readahead limit.
    pub max_readahead: u32,
    /// `init_flags` the server accepted.
    pub flags: u32,
    /// Largest `FUSE_WRITE` payload.
    pub max_write: u32,
    /// Timestamp granularity in ns.
    pub time_gran: u32,
    /// Pages per request, if `MAX_PAGES` (else 0).
    pub max_pages: u16,
    /// DAX mapping alignment (log2), if `MAP_ALIGNMENT` (else 0).
    pub map_alignment: u16,
}

impl InitOut {
    /// Parses a `fuse_init_out` and checks the version: major 7, minor ≥
    /// [`MIN_MINOR_VERSION`] (so the 64-byte form: the 24-byte 7.22 form of
    /// older servers is refused), `max_write` at least a page.
    pub fn parse(b: &[u8]) -> Result<Self, ProtoError> {
        if !(INIT_OUT_MIN_LEN..=INIT_OUT_LEN).contains(&b.len()) {
            return Err(ProtoError::BadPayloadLength { opcode: Opcode::Init, len: b.len() as u32 });
        }
        let bad = ProtoError::BadValue("fuse_init_out cut short");
        let o = Self {
            major: u32_at(b, 0).ok_or(bad)?,
            minor: u32_at(b, 4).ok_or(bad)?,
            max_readahead: u32_at(b, 8).ok_or(bad)?,
            flags: u32_at(b, 12).ok_or(bad)?,
            // max_background (u16) and congestion_threshold (u16) at 16..20.
            max_write: u32_at(b, 20).ok_or(bad)?,
            time_gran: u32_at(b, 24).unwrap_or(0),
            max_pages: u16_at(b, 28).unwrap_or(0),
            map_alignment: u16_at(b, 30).unwrap_or(0),
        };
        if o.major != KERNEL_VERSION {
            return Err(ProtoError::BadValue("unsupported FUSE major version"));
        }
        if o.minor < MIN_MINOR_VERSION || b.len() != INIT_OUT_LEN {
            return Err(ProtoError::BadValue("FUSE minor version too old"));
        }
        if o.max_write < 4096 {
            return Err(ProtoError::BadValue("max_write below one page"));
        }
        Ok(o)
    }
}

/// One record of a `FUSE_READDIR` reply (`struct fuse_dirent`), or of a
/// `FUSE_READDIRPLUS` reply (`struct fuse_direntplus`, with `entry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// Inode number on the server.
    pub ino: u64,
    /// The cookie to pass as the next request's offset to continue after
    /// this record.
    pub off: u64,
    /// The type, `None` for `DT_UNKNOWN`.
    pub kind: Option<FileType>,
    /// The name (1..=255 bytes, no `/` or NUL; may be `.` or `..`).
    pub name: &'a [u8],
    /// READDIRPLUS only: the entry, as LOOKUP would give it. A positive
    /// one (`Some`) counts as a lookup the caller must forget, unless the
    /// name is `.` or `..` (Linux `fuse_direntplus_link` does the same).
    pub entry: Option<EntryOut>,
}

/// Iterates over the records of a READDIR (`plus == false`) or
/// READDIRPLUS reply. Each record is checked: the fixed part fits, the
/// name length is 1..=255, the padded record (8-byte aligned,
/// `FUSE_DIRENT_ALIGN`) fits, the name has no `/` or NUL, the type is a
/// `DT_*` value. The first bad record yields an error and ends the
/// iteration.
#[derive(Clone, Debug)]
pub struct DirentIter<'a> {
    buf: &'a [u8],
    at: usize,
    plus: bool,
    done: bool,
}

impl<'a> DirentIter<'a> {
    /// Records in `buf` (the reply payload).
    pub fn new(buf: &'a [u8], plus: bool) -> Self {
        Self { buf, at: 0, plus, done: false }
    }

    fn record(&self) -> Result<(DirEntry<'a>, usize), ProtoError> {
        let bad = ProtoError::BadDirent { at: self.at.min(u32::MAX as usize) as u32 };
        let rest = self.buf.get(self.at..).ok_or(bad)?;
        let (entry, d) = if self.plus {
            let e = rest.get(..ENTRY_OUT_LEN).ok_or(bad)?;
            (EntryOut::parse_fixed(e).map_err(|_| bad)?, rest.get(ENTRY_OUT_LEN..).ok_or(bad)?)
        } else {
            (None, rest)
        };
        // struct fuse_dirent: ino, off, namelen, type, name[].
        let ino = u64_at(d, 0).ok_or(bad)?;
        let off = u64_at(d, 8).ok_or(bad)?;
        let namelen = u32_at(d, 16).ok_or(bad)? as usize;
        let typ = u32_at(d, 20).ok_or(bad)?;
        if namelen == 0 || namelen > NAME_MAX {
            return Err(bad);
        }
        let name = d.get(DIRENT_NAME_OFFSET..DIRENT_NAME_OFFSET + namelen).ok_or(bad)?;
        if name.iter().any(|&c| c == b'/' || c == 0) {
            return Err(bad);
        }
        let kind = match typ {
            0 => None,
            t => Some(FileType::from_dirent(t).ok_or(bad)?),
        };
        let fixed = if self.plus { DIRENTPLUS_NAME_OFFSET } else { DIRENT_NAME_OFFSET };
        let reclen = (fixed + namelen).next_multiple_of(8);
        if reclen > rest.len() {
            return Err(bad);
        }
        Ok((DirEntry { ino, off, kind, name, entry }, reclen))
    }
}

impl<'a> Iterator for DirentIter<'a> {
    type Item = Result<DirEntry<'a>, ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.at >= self.buf.len() {
            return None;
        }
        match self.record() {
            Ok((d, len)) => {
                self.at += len;
                Some(Ok(d))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Appends one `fuse_dirent` (or `fuse_direntplus` with `entry`) record to
/// `out` if it fits in `room` bytes; returns whether it did (for fakes and
/// tests: the server side of [`DirentIter`]).
#[cfg(any(test, feature = "std"))]
pub fn emit_dirent(
    out: &mut std::vec::Vec<u8>,
    room: usize,
    entry: Option<&EntryOut>,
    ino: u64,
    off: u64,
    typ: u32,
    name: &[u8],
) -> bool {
    let fixed = if entry.is_some() { DIRENTPLUS_NAME_OFFSET } else { DIRENT_NAME_OFFSET };
    let reclen = (fixed + name.len()).next_multiple_of(8);
    if out.len() + reclen > room {
        return false;
    }
    if let Some(e) = entry {
        let mut b = [0u8; ENTRY_OUT_LEN];
        e.emit(&mut b);
        out.extend_from_slice(&b);
    }
    out.extend_from_slice(&ino.to_le_bytes());
    out.extend_from_slice(&off.to_le_bytes());
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(&typ.to_le_bytes());
    out.extend_from_slice(name);
    let pad = reclen - fixed - name.len();
    out.extend(core::iter::repeat_n(0u8, pad));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn attr(mode: u32) -> Attr {
        Attr { ino: 7, size: 3, mode, nlink: 1, blksize: 4096, ..Attr::default() }
    }

    #[test]
    fn header_layouts() {
        let mut b = [0u8; 128];
        let n = Request::Lookup { parent: NodeId(5), name: b"abc" }.encode(0x1234, &mut b).unwrap();
        assert_eq!(n, IN_HEADER_LEN + 4);
        assert_eq!(u32_at(&b, 0), Some(44));
        assert_eq!(u32_at(&b, 4), Some(1));
        assert_eq!(u64_at(&b, 8), Some(0x1234));
        assert_eq!(u64_at(&b, 16), Some(5));
        assert_eq!(&b[40..44], b"abc\0");
        // Write: the header's len counts the data that follows separately.
        let w = Request::Write { node: NodeId(9), fh: FileHandle(3), offset: 10, size: 100 };
        assert_eq!(w.encode(1, &mut b).unwrap(), 80);
        assert_eq!(u32_at(&b, 0), Some(180));
        assert_eq!(u64_at(&b, 40), Some(3));
        assert_eq!(u64_at(&b, 48), Some(10));
        assert_eq!(u32_at(&b, 56), Some(100));
        // Setattr is 88 bytes of arguments.
        let s = Request::Setattr { node: NodeId(2), attr: SetattrIn { size: Some(5), ..Default::default() } };
        assert_eq!(s.encode(1, &mut b).unwrap(), IN_HEADER_LEN + 88);
        assert_eq!(u32_at(&b, 40), Some(fattr::SIZE));
        assert_eq!(u64_at(&b, 56), Some(5));
        // RENAME vs RENAME2.
        let r = Request::Rename {
            parent: NodeId(1),
            name: b"a",
            new_parent: NodeId(2),
            new_name: b"b",
            flags: 0,
        };
        assert_eq!(r.opcode(), Opcode::Rename);
        assert_eq!(r.encode(1, &mut b).unwrap(), IN_HEADER_LEN + 8 + 4);
        let r2 = Request::Rename {
            parent: NodeId(1),
            name: b"a",
            new_parent: NodeId(2),
            new_name: b"b",
            flags: 1,
        };
        assert_eq!(r2.opcode(), Opcode::Rename2);
        assert_eq!(r2.encode(1, &mut b).unwrap(), IN_HEADER_LEN + 16 + 4);
        assert_eq!(&b[56..60], b"a\0b\0");
        assert!(!Request::Forget { node: NodeId(3), nlookup: 2 }.expects_reply());
    }

    #[test]
    fn names_are_checked_when_sending() {
        let mut b = [0u8; 1024];
        for bad in [&b""[..], b"a/b", b"a\0", &[b'x'; 256]] {
            let r = Request::Mkdir { parent: NodeId(1), name: bad, mode: 0o755, umask: 0 };
            assert_eq!(r.encode(1, &mut b), Err(ProtoError::InvalidName));
        }
        let long = [b'x'; 255];
        let r = Request::Rename {
            parent: NodeId(1),
            name: &long,
            new_parent: NodeId(1),
            new_name: &long,
            flags: 1,
        };
        assert_eq!(r.encode(1, &mut b).unwrap(), MAX_REQUEST_HEAD);
        assert_eq!(r.encode(1, &mut b[..MAX_REQUEST_HEAD - 1]), Err(ProtoError::RequestTooLong));
        let up = Request::Lookup { parent: NodeId(4), name: b".." };
        assert!(up.encode(1, &mut b).is_ok());
    }

    fn hdr(len: u32, error: i32, unique: u64) -> OutHeader {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&len.to_le_bytes());
        b[4..8].copy_from_slice(&error.to_le_bytes());
        b[8..].copy_from_slice(&unique.to_le_bytes());
        OutHeader::parse(&b).unwrap()
    }

    #[test]
    fn out_header_checks() {
        assert_eq!(hdr(16, 0, 5).check(16, 5), Ok(Status::Ok(0)));
        assert_eq!(hdr(24, 0, 5).check(24, 5), Ok(Status::Ok(8)));
        assert_eq!(hdr(16, -2, 5).check(16, 5), Ok(Status::Err(2)));
        assert_eq!(hdr(16, 0, 5).check(15, 5), Err(ProtoError::ShortReply { len: 15 }));
        assert_eq!(hdr(16, 0, 6).check(16, 5), Err(ProtoError::BadUnique { expected: 5, got: 6 }));
        assert_eq!(hdr(20, 0, 5).check(16, 5), Err(ProtoError::LengthMismatch { header: 20, used: 16 }));
        assert_eq!(hdr(24, -5, 5).check(24, 5), Err(ProtoError::ErrorWithPayload { errno: 5, len: 8 }));
        assert_eq!(hdr(16, 5, 5).check(16, 5), Err(ProtoError::BadErrno(5)));
        assert_eq!(hdr(16, -4096, 5).check(16, 5), Err(ProtoError::BadErrno(-4096)));
        assert_eq!(hdr(16, i32::MIN, 5).check(16, 5), Err(ProtoError::BadErrno(i32::MIN)));
        assert!(OutHeader::parse(&[0u8; 15]).is_err());
    }

    #[test]
    fn entry_attr_round_trip() {
        let e = EntryOut { nodeid: NodeId(42), generation: 3, attr: attr(mode::IFDIR | 0o755) };
        let mut b = [0u8; ENTRY_OUT_LEN];
        e.emit(&mut b);
        assert_eq!(EntryOut::parse(&b), Ok(Some(e)));
        assert_eq!(e.attr.file_type(), Some(FileType::Directory));
        assert!(EntryOut::parse(&b[..127]).is_err());
        b[..8].fill(0);
        assert_eq!(EntryOut::parse(&b), Ok(None));
        // Bad mode type and bad nanoseconds.
        let mut a = [0u8; ATTR_LEN];
        attr(0o7_0000 | 0o644).emit(&mut a);
        assert!(Attr::parse(&a).is_err());
        let mut t = attr(mode::IFREG);
        t.mtime.nsec = 1_000_000_000;
        t.emit(&mut a);
        assert!(Attr::parse(&a).is_err());
    }

    #[test]
    fn fixed_replies() {
        assert_eq!(parse_write_out(&[5, 0, 0, 0, 0, 0, 0, 0], 5), Ok(5));
        assert!(parse_write_out(&[6, 0, 0, 0, 0, 0, 0, 0], 5).is_err());
        assert!(parse_write_out(&[5, 0, 0, 0], 5).is_err());
        let mut o = [0u8; 16];
        o[0] = 9;
        assert_eq!(OpenOut::parse(&o, Opcode::Open).map(|x| x.fh), Ok(FileHandle(9)));
        assert!(OpenOut::parse(&o[..8], Opcode::Open).is_err());
        let mut s = [0u8; 80];
        s[40] = 0x10; // bsize 4096
        s[41] = 0;
        s[0] = 100;
        let k = Kstatfs::parse(&s).unwrap();
        assert_eq!((k.blocks, k.bsize), (100, 16));
        let mut init = [0u8; 64];
        init[0] = 7;
        init[4] = 31;
        init[20..24].copy_from_slice(&(128u32 * 1024).to_le_bytes());
        assert_eq!(InitOut::parse(&init).map(|i| i.max_write), Ok(128 * 1024));
        init[0] = 8;
        assert!(InitOut::parse(&init).is_err());
        init[0] = 7;
        init[4] = 22;
        assert!(InitOut::parse(&init).is_err());
        assert!(InitOut::parse(&init[..20]).is_err());
    }

    #[test]
    fn dirents() {
        let mut buf = Vec::new();
        assert!(emit_dirent(&mut buf, 4096, None, 1, 1, 4, b"."));
        assert!(emit_dirent(&mut buf, 4096, None, 2, 2, 8, b"file.txt"));
        assert!(emit_dirent(&mut buf, 4096, None, 3, 3, 0, b"x"));
        let room = buf.len() + 8;
        assert!(!emit_dirent(&mut buf, room, None, 4, 4, 8, b"no room"));
        let got: Vec<_> = DirentIter::new(&buf, false).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].name, b"file.txt");
        assert_eq!(got[1].kind, Some(FileType::Regular));
        assert_eq!(got[2].kind, None);
        assert_eq!(got[2].off, 3);
        // Each corruption gives exactly one error, then the end.
        let corrupt = |at: usize, v: &[u8]| {
            let mut b = buf.clone();
            b[at..at + v.len()].copy_from_slice(v);
            let r: Vec<_> = DirentIter::new(&b, false).collect();
            assert!(matches!(r.last(), Some(Err(ProtoError::BadDirent { .. }))), "{r:?}");
        };
        corrupt(16, &1000u32.to_le_bytes()); // namelen past the end
        corrupt(16, &0u32.to_le_bytes()); // empty name
        corrupt(32 + 24 + 2, b"/"); // slash in "file.txt"
        corrupt(32 + 24 + 2, b"\0");
        corrupt(32 + 20, &3u32.to_le_bytes()); // DT 3 is no type
        let r: Vec<_> = DirentIter::new(&buf[..buf.len() - 1], false).collect();
        assert!(matches!(r.last(), Some(Err(_))));
        // READDIRPLUS records.
        let e = EntryOut { nodeid: NodeId(8), generation: 0, attr: attr(mode::IFREG | 0o600) };
        let mut plus = Vec::new();
        assert!(emit_dirent(&mut plus, 4096, Some(&e), 7, 1, 8, b"f"));
        assert_eq!(plus.len(), 160);
        let got: Vec<_> = DirentIter::new(&plus, true).collect::<Result<_, _>>().unwrap();
        assert_eq!(got[0].entry, Some(e));
        assert_eq!(got[0].name, b"f");
        let seven = vec![0u8; 7];
        let none: Vec<_> = DirentIter::new(&seven, false).collect();
        assert_eq!(none.len(), 1);
        assert!(none[0].is_err());
    }
}
