//! Checked, byte-order aware reads from untrusted buffers.
//!
//! ZFS writes most structures in the byte order of the host that wrote them
//! and tells the reader which one through a magic number (uberblocks:
//! `UBERBLOCK_MAGIC`, embedded checksums: `ZEC_MAGIC`) or a flag (block
//! pointers: `BP_GET_BYTEORDER`). Every read here checks its bounds and
//! returns [`Error::Truncated`] instead of panicking.

use crate::{Error, Result};

/// The byte order a structure was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endian {
    /// Big-endian (SPARC, POWER in BE mode).
    Big,
    /// Little-endian (x86, ARM).
    Little,
}

impl Endian {
    /// Decodes a `u64` from eight bytes in this order.
    pub fn u64_from(self, bytes: [u8; 8]) -> u64 {
        match self {
            Endian::Big => u64::from_be_bytes(bytes),
            Endian::Little => u64::from_le_bytes(bytes),
        }
    }

    /// Encodes a `u64` into eight bytes in this order.
    pub fn u64_to(self, value: u64) -> [u8; 8] {
        match self {
            Endian::Big => value.to_be_bytes(),
            Endian::Little => value.to_le_bytes(),
        }
    }

    /// Finds the byte order in which `word` (eight bytes) holds `magic`.
    pub fn detect(word: [u8; 8], magic: u64) -> Option<Endian> {
        if u64::from_le_bytes(word) == magic {
            Some(Endian::Little)
        } else if u64::from_be_bytes(word) == magic {
            Some(Endian::Big)
        } else {
            None
        }
    }

    /// Short name as zdb prints it (`BE`/`LE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Endian::Big => "BE",
            Endian::Little => "LE",
        }
    }
}

/// Copies `N` bytes at `offset`, checked.
pub(crate) fn array<const N: usize>(buf: &[u8], offset: usize) -> Result<[u8; N]> {
    let end = offset.checked_add(N).ok_or(Error::Truncated)?;
    let bytes = buf.get(offset..end).ok_or(Error::Truncated)?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

/// Reads a `u64` at `offset` in byte order `endian`, checked.
pub(crate) fn u64_at(buf: &[u8], offset: usize, endian: Endian) -> Result<u64> {
    Ok(endian.u64_from(array::<8>(buf, offset)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_both_orders() {
        let magic = 0x00ba_b10c_u64;
        assert_eq!(Endian::detect(magic.to_le_bytes(), magic), Some(Endian::Little));
        assert_eq!(Endian::detect(magic.to_be_bytes(), magic), Some(Endian::Big));
        assert_eq!(Endian::detect([0; 8], magic), None);
    }

    #[test]
    fn reads_are_checked() {
        let buf = [1u8, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(u64_at(&buf, 0, Endian::Little), Ok(1));
        assert_eq!(u64_at(&buf, 2, Endian::Little), Err(Error::Truncated));
        assert_eq!(u64_at(&buf, usize::MAX, Endian::Big), Err(Error::Truncated));
    }
}
