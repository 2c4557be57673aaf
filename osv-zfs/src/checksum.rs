//! Embedded checksums (`zio_eck_t`) and the label checksum.
//!
//! Blocks that have no block pointer to hold their checksum carry it in a
//! 40-byte trailer, `zio_eck_t` (include/sys/zio.h): `zec_magic` (u64,
//! `ZEC_MAGIC`) then `zec_cksum` (four u64). Vdev labels (`vdev_phys_t`) and
//! every uberblock slot use it with SHA-256 (`ZIO_CHECKSUM_LABEL`).
//!
//! To verify (module/zfs/zio_checksum.c, `zio_checksum_error_impl`, and
//! cmd/zdb/zdb.c, `zdb_label_cksum`):
//! 1. the byte order is the writer's: `zec_magic` reads as `ZEC_MAGIC` in it;
//! 2. the expected checksum is `zec_cksum`, read in that byte order;
//! 3. `zec_cksum` is replaced by the *verifier* `{ offset, 0, 0, 0 }`
//!    (`zio_checksum_label_verifier`; `offset` is the block's byte offset on
//!    the device), written in the same byte order;
//! 4. SHA-256 runs over the whole block; its digest read as four big-endian
//!    u64 words (`zio_checksum_SHA256` stores `BE_64` of each word) must equal
//!    the expected checksum.
//!
//! The verifier ties a label to its place on the disk: a label copied to
//! another offset fails.

use crate::bytes::{u64_at, Endian};
use crate::{Error, Result};
use sha2::{Digest, Sha256};

/// `ZEC_MAGIC` (include/sys/zio.h).
pub const ZEC_MAGIC: u64 = 0x0210_da7a_b10c_7a11;

/// Size of `zio_eck_t`: the magic and four checksum words.
pub const ECK_SIZE: usize = 40;

/// A 256-bit checksum, `zio_cksum_t` (include/sys/spa.h): four u64 words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Checksum(pub [u64; 4]);

impl core::fmt::Display for Checksum {
    /// As zdb prints a block pointer's checksum: `%016llx:` four times.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a:016x}:{b:016x}:{c:016x}:{d:016x}")
    }
}

/// SHA-256 of `parts` concatenated, as ZFS words.
fn sha256_words(parts: &[&[u8]]) -> Checksum {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    let mut words = [0u64; 4];
    for (i, w) in words.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&digest[i * 8..i * 8 + 8]);
        *w = u64::from_be_bytes(b);
    }
    Checksum(words)
}

/// The byte order of a block with an embedded checksum, from its trailer's
/// `zec_magic`.
pub fn eck_endian(block: &[u8]) -> Result<Endian> {
    let at = block.len().checked_sub(ECK_SIZE).ok_or(Error::Truncated)?;
    let magic = crate::bytes::array::<8>(block, at)?;
    Endian::detect(magic, ZEC_MAGIC).ok_or(Error::BadEckMagic)
}

/// Computes the label checksum of `block` as if it sat at device byte
/// `offset` (the trailer's checksum words are replaced by the verifier).
fn label_checksum(block: &[u8], offset: u64, endian: Endian) -> Result<Checksum> {
    let body =
        block.len().checked_sub(ECK_SIZE - 8).and_then(|end| block.get(..end)).ok_or(Error::Truncated)?;
    let mut verifier = [0u8; 32];
    verifier[..8].copy_from_slice(&endian.u64_to(offset));
    Ok(sha256_words(&[body, &verifier]))
}

/// The checksum stored in `block`'s trailer, in the writer's byte order.
pub fn stored_checksum(block: &[u8], endian: Endian) -> Result<Checksum> {
    let at = block.len().checked_sub(ECK_SIZE - 8).ok_or(Error::Truncated)?;
    let mut words = [0u64; 4];
    for (i, w) in words.iter_mut().enumerate() {
        *w = u64_at(block, at + 8 * i, endian)?;
    }
    Ok(Checksum(words))
}

/// Verifies the embedded SHA-256 label checksum (`ZIO_CHECKSUM_LABEL`) of a
/// `vdev_phys_t` or an uberblock slot read from device byte `offset`, and
/// returns the writer's byte order.
pub fn verify_label_checksum(block: &[u8], offset: u64) -> Result<Endian> {
    let endian = eck_endian(block)?;
    let expected = stored_checksum(block, endian)?;
    if label_checksum(block, offset, endian)? == expected {
        Ok(endian)
    } else {
        Err(Error::BadChecksum)
    }
}

/// Writes the trailer of `block` (magic and SHA-256 label checksum) for
/// device byte `offset` in byte order `endian`, as `zio_checksum_compute`
/// does for `ZIO_CHECKSUM_LABEL`. For building test images (and, later,
/// for writing labels).
pub fn fill_label_checksum(block: &mut [u8], offset: u64, endian: Endian) -> Result {
    let at = block.len().checked_sub(ECK_SIZE).ok_or(Error::Truncated)?;
    block.get_mut(at..at + 8).ok_or(Error::Truncated)?.copy_from_slice(&endian.u64_to(ZEC_MAGIC));
    let sum = label_checksum(block, offset, endian)?;
    for (i, w) in sum.0.iter().enumerate() {
        let start = at + 8 + 8 * i;
        block.get_mut(start..start + 8).ok_or(Error::Truncated)?.copy_from_slice(&endian.u64_to(*w));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_words_are_big_endian() {
        // SHA-256("abc") = ba7816bf 8f01cfea ...
        let c = sha256_words(&[b"abc"]);
        assert_eq!(c.0[0], 0xba78_16bf_8f01_cfea);
    }

    #[test]
    fn fill_then_verify_both_orders() {
        for endian in [Endian::Little, Endian::Big] {
            let mut block = [0x5au8; 1024];
            fill_label_checksum(&mut block, 0x2_0000, endian).unwrap();
            assert_eq!(verify_label_checksum(&block, 0x2_0000), Ok(endian));
            // Another offset is another verifier.
            assert_eq!(verify_label_checksum(&block, 0x2_0400), Err(Error::BadChecksum));
            block[100] ^= 1;
            assert_eq!(verify_label_checksum(&block, 0x2_0000), Err(Error::BadChecksum));
        }
    }

    #[test]
    fn zeros_and_short_blocks() {
        assert_eq!(verify_label_checksum(&[0; 1024], 0), Err(Error::BadEckMagic));
        assert_eq!(verify_label_checksum(&[0; 39], 0), Err(Error::Truncated));
    }
}
