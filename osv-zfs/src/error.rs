//! The crate's error type: one small `Copy` enum for every parse and read.

use core::fmt;

/// Everything that can go wrong while reading a pool.
///
/// Small and `Copy` on purpose (no strings, no heap): a kernel can return it
/// from an interrupt-free path, and a host tool can print it with
/// [`Display`](fmt::Display).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The input ended before the structure did.
    Truncated,
    /// The block device reported a failed read.
    Io,
    /// A read reached past the end of the block device.
    OutOfRange,
    /// The device is smaller than the four vdev labels need (1 MiB).
    DeviceTooSmall,
    /// An embedded checksum (`zio_eck_t`) did not match the block's contents.
    BadChecksum,
    /// A `zio_eck_t` trailer has no `ZEC_MAGIC` in either byte order.
    BadEckMagic,
    /// An uberblock has no `UBERBLOCK_MAGIC` in either byte order.
    BadUberblockMagic,
    /// The nvlist stream header names an encoding we do not know.
    UnknownNvEncoding(u8),
    /// The nvlist is in the native encoding, which labels never use.
    UnsupportedNvEncoding(u8),
    /// The nvlist version is not `NV_VERSION` (0).
    UnsupportedNvVersion(i32),
    /// An nvpair has a `data_type_t` that does not exist.
    UnknownDataType(i32),
    /// An nvpair's `data_type_t` exists but cannot appear in an XDR stream.
    UnsupportedDataType(i32),
    /// An nvpair's element count does not fit its type.
    BadElementCount,
    /// A size or count field is negative or larger than the input.
    BadLength,
    /// A boolean is neither 0 nor 1.
    BadBoolean,
    /// A string holds a NUL byte or is not UTF-8.
    BadString,
    /// Nvlists nest deeper than [`nvlist::MAX_DEPTH`](crate::nvlist::MAX_DEPTH).
    TooDeep,
    /// A value is too large to encode.
    TooLarge,
    /// A block pointer names a checksum function we do not implement
    /// (`enum zio_checksum`, include/sys/zio.h).
    UnsupportedChecksum(u8),
    /// A block pointer names a compression function we do not implement
    /// (`enum zio_compress`, include/sys/zio_compress.h).
    UnsupportedCompression(u8),
    /// Compressed data is malformed or does not fill the logical size.
    Decompress,
    /// An embedded block pointer has a payload type or size we cannot use.
    BadEmbedded,
    /// Gang blocks nest deeper than the reader allows.
    GangTooDeep,
    /// A DVA names a top-level vdev the pool does not have.
    NoSuchVdev(u64),
    /// Every copy of a block failed (its DVAs, mirror sides, raidz
    /// reconstructions): the last copy failed its checksum.
    NoValidCopy,
    /// The vdev tree in the label config is malformed.
    BadVdevTree,
    /// The vdev tree has a vdev type we cannot read (`indirect`, `draid`, ...).
    UnsupportedVdev,
    /// The vdev files belong to different pools.
    MixedPools,
    /// No vdev file has a valid label.
    NoLabel,
    /// No vdev file has a valid uberblock.
    NoUberblock,
    /// A dnode (`dnode_phys_t`) is malformed: sizes, levels or slots out of range.
    BadDnode,
    /// The object is not allocated (dnode type `DMU_OT_NONE`).
    NoSuchObject,
    /// An object has another type than the one needed here.
    WrongObjectType(u8),
    /// An object's bonus buffer has another type than the one needed here.
    WrongBonusType(u8),
    /// An objset (`objset_phys_t`) is malformed.
    BadObjset,
    /// A ZAP object (micro or fat) is malformed.
    BadZap,
    /// A ZAP has no entry of that name.
    NotFound,
    /// The pool needs a read feature (`features_for_read`) we do not support.
    UnsupportedFeature(crate::feature::FeatureName),
    /// A structure exceeds a limit of this reader (nesting, count, size).
    LimitExceeded,
    /// System attributes (`sa_hdr_phys_t`, registry, layouts) are malformed.
    BadSa,
    /// The dataset is encrypted and cannot be read without its key.
    Encrypted,
    /// A path component is not a directory.
    NotADirectory,
    /// The object is not a regular file.
    NotAFile,
    /// A path names nothing.
    NoSuchPath,
}

/// The crate's result type.
pub type Result<T = ()> = core::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated => f.write_str("input truncated"),
            Error::Io => f.write_str("device read failed"),
            Error::OutOfRange => f.write_str("read past the end of the device"),
            Error::DeviceTooSmall => f.write_str("device too small to hold vdev labels"),
            Error::BadChecksum => f.write_str("embedded checksum mismatch"),
            Error::BadEckMagic => f.write_str("no embedded checksum trailer (bad zec_magic)"),
            Error::BadUberblockMagic => f.write_str("bad uberblock magic"),
            Error::UnknownNvEncoding(e) => write!(f, "unknown nvlist encoding {e}"),
            Error::UnsupportedNvEncoding(e) => write!(f, "unsupported nvlist encoding {e}"),
            Error::UnsupportedNvVersion(v) => write!(f, "unsupported nvlist version {v}"),
            Error::UnknownDataType(t) => write!(f, "unknown nvpair data type {t}"),
            Error::UnsupportedDataType(t) => write!(f, "unsupported nvpair data type {t}"),
            Error::BadElementCount => f.write_str("nvpair element count does not fit its type"),
            Error::BadLength => f.write_str("size or count out of bounds"),
            Error::BadBoolean => f.write_str("boolean value neither 0 nor 1"),
            Error::BadString => f.write_str("string with NUL byte or invalid UTF-8"),
            Error::TooDeep => f.write_str("nvlists nested too deeply"),
            Error::TooLarge => f.write_str("value too large to encode"),
            Error::UnsupportedChecksum(c) => {
                write!(f, "unsupported checksum function {} ({c})", crate::blkptr::checksum_name(c))
            }
            Error::UnsupportedCompression(c) => {
                write!(f, "unsupported compression function {} ({c})", crate::blkptr::compression_name(c))
            }
            Error::Decompress => f.write_str("corrupt compressed data"),
            Error::BadEmbedded => f.write_str("bad embedded block pointer"),
            Error::GangTooDeep => f.write_str("gang blocks nested too deeply"),
            Error::NoSuchVdev(v) => write!(f, "no top-level vdev {v}"),
            Error::NoValidCopy => f.write_str("checksum mismatch on every copy"),
            Error::BadVdevTree => f.write_str("malformed vdev tree in the label config"),
            Error::UnsupportedVdev => f.write_str("unsupported vdev type"),
            Error::MixedPools => f.write_str("vdev files of different pools"),
            Error::NoLabel => f.write_str("no valid vdev label"),
            Error::NoUberblock => f.write_str("no valid uberblock"),
            Error::BadDnode => f.write_str("malformed dnode"),
            Error::NoSuchObject => f.write_str("object not allocated"),
            Error::WrongObjectType(t) => write!(f, "unexpected object type {t}"),
            Error::WrongBonusType(t) => write!(f, "unexpected bonus buffer type {t}"),
            Error::BadObjset => f.write_str("malformed objset"),
            Error::BadZap => f.write_str("malformed ZAP"),
            Error::NotFound => f.write_str("no such ZAP entry"),
            Error::UnsupportedFeature(ref n) => write!(f, "pool needs unsupported read feature {n}"),
            Error::LimitExceeded => f.write_str("structure exceeds a reader limit"),
            Error::BadSa => f.write_str("malformed system attributes"),
            Error::Encrypted => f.write_str("dataset is encrypted"),
            Error::NotADirectory => f.write_str("not a directory"),
            Error::NotAFile => f.write_str("not a regular file"),
            Error::NoSuchPath => f.write_str("no such file or directory"),
        }
    }
}

impl core::error::Error for Error {}
