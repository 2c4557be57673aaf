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
        }
    }
}

impl core::error::Error for Error {}
