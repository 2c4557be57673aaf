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

/// `fletcher_2_native`/`_byteswap` (module/zcommon/zfs_fletcher.c): two
/// interleaved running sums over the block's 64-bit words, read in the byte
/// order the block was written in (`endian`). A trailing partial 16 bytes is
/// ignored, as in the C loop.
pub fn fletcher_2(data: &[u8], endian: Endian) -> Checksum {
    let (mut a0, mut a1, mut b0, mut b1) = (0u64, 0u64, 0u64, 0u64);
    for pair in data.chunks_exact(16) {
        let mut w = [0u8; 8];
        w.copy_from_slice(&pair[..8]);
        a0 = a0.wrapping_add(endian.u64_from(w));
        w.copy_from_slice(&pair[8..]);
        a1 = a1.wrapping_add(endian.u64_from(w));
        b0 = b0.wrapping_add(a0);
        b1 = b1.wrapping_add(a1);
    }
    Checksum([a0, a1, b0, b1])
}

/// `fletcher_4_native`/`_byteswap` (module/zcommon/zfs_fletcher.c): four
/// cascaded 64-bit sums over the block's 32-bit words, read in the byte
/// order the block was written in. A trailing partial word is ignored.
pub fn fletcher_4(data: &[u8], endian: Endian) -> Checksum {
    let (mut a, mut b, mut c, mut d) = (0u64, 0u64, 0u64, 0u64);
    for word in data.chunks_exact(4) {
        let w = [word[0], word[1], word[2], word[3]];
        let v = match endian {
            Endian::Big => u32::from_be_bytes(w),
            Endian::Little => u32::from_le_bytes(w),
        };
        a = a.wrapping_add(u64::from(v));
        b = b.wrapping_add(a);
        c = c.wrapping_add(b);
        d = d.wrapping_add(c);
    }
    Checksum([a, b, c, d])
}

/// SHA-256 of `data` as four big-endian words (`zio_checksum_SHA256`,
/// module/zfs/sha2_zfs.c); independent of byte order.
pub fn sha256(data: &[u8]) -> Checksum {
    sha256_words(&[data])
}

/// `enum zio_checksum` values (include/sys/zio.h) this module computes.
pub mod func {
    /// `ZIO_CHECKSUM_OFF`: nothing to verify.
    pub const OFF: u8 = 2;
    /// `ZIO_CHECKSUM_LABEL`: embedded SHA-256, verifier = device offset.
    pub const LABEL: u8 = 3;
    /// `ZIO_CHECKSUM_GANG_HEADER`: embedded SHA-256, verifier from the DVA.
    pub const GANG_HEADER: u8 = 4;
    /// `ZIO_CHECKSUM_ZILOG`: embedded fletcher2, verifier = the bp's checksum.
    pub const ZILOG: u8 = 5;
    /// `ZIO_CHECKSUM_FLETCHER_2`.
    pub const FLETCHER_2: u8 = 6;
    /// `ZIO_CHECKSUM_FLETCHER_4`.
    pub const FLETCHER_4: u8 = 7;
    /// `ZIO_CHECKSUM_SHA256`.
    pub const SHA256: u8 = 8;
    /// `ZIO_CHECKSUM_ZILOG2`: embedded fletcher4 over the used part.
    pub const ZILOG2: u8 = 9;
    /// `ZIO_CHECKSUM_NOPARITY`: no checksum (raidz parity-less writes).
    pub const NOPARITY: u8 = 10;
}

/// Computes checksum function `id` (fletcher2, fletcher4 or SHA-256) over
/// `data` written in byte order `endian`.
pub fn compute(id: u8, data: &[u8], endian: Endian) -> Result<Checksum> {
    match id {
        func::FLETCHER_2 => Ok(fletcher_2(data, endian)),
        func::FLETCHER_4 => Ok(fletcher_4(data, endian)),
        func::SHA256 => Ok(sha256(data)),
        other => Err(Error::UnsupportedChecksum(other)),
    }
}

/// Verifies a block carrying its own checksum in a `zio_eck_t` trailer
/// (`ZCHECKSUM_FLAG_EMBEDDED` in `zio_checksum_table`): gang headers
/// (SHA-256) and ZIL blocks (fletcher2). The trailer's checksum words are
/// replaced by `verifier` (in the block's byte order) before computing
/// (`zio_checksum_error_impl`, zio_checksum.c). Returns the block's byte
/// order.
pub fn verify_embedded(block: &[u8], id: u8, verifier: Checksum) -> Result<Endian> {
    let endian = eck_endian(block)?;
    let expected = stored_checksum(block, endian)?;
    let at = block.len() - (ECK_SIZE - 8);
    let body = &block[..at];
    let mut tail = [0u8; 32];
    for (i, w) in verifier.0.iter().enumerate() {
        tail[i * 8..i * 8 + 8].copy_from_slice(&endian.u64_to(*w));
    }
    let actual = match id {
        func::GANG_HEADER | func::LABEL => sha256_words(&[body, &tail]),
        func::ZILOG => {
            // Fletcher over body and verifier: the body is a multiple of 16
            // bytes whenever the block is (the trailer is 40 bytes, 8 of them
            // the magic in the body).
            fletcher_2_parts(body, &tail, endian)
        }
        other => return Err(Error::UnsupportedChecksum(other)),
    };
    if actual == expected {
        Ok(endian)
    } else {
        Err(Error::BadChecksum)
    }
}

/// Fletcher2 over `a` then `b` as if concatenated (both multiples of 16
/// bytes in practice; a partial tail is dropped as in [`fletcher_2`]).
fn fletcher_2_parts(a: &[u8], b: &[u8], endian: Endian) -> Checksum {
    let (mut a0, mut a1, mut b0, mut b1) = (0u64, 0u64, 0u64, 0u64);
    let split = a.len() - a.len() % 16;
    let mut step = |pair: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&pair[..8]);
        a0 = a0.wrapping_add(endian.u64_from(w));
        w.copy_from_slice(&pair[8..16]);
        a1 = a1.wrapping_add(endian.u64_from(w));
        b0 = b0.wrapping_add(a0);
        b1 = b1.wrapping_add(a1);
    };
    for pair in a[..split].chunks_exact(16) {
        step(pair);
    }
    // A body that is not a multiple of 16 continues into the verifier.
    let mut joined = [0u8; 48];
    let rest = &a[split..];
    joined[..rest.len()].copy_from_slice(rest);
    let n = (rest.len() + b.len()).min(48);
    joined[rest.len()..n].copy_from_slice(&b[..n - rest.len()]);
    for pair in joined[..n].chunks_exact(16) {
        step(pair);
    }
    Checksum([a0, a1, b0, b1])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent, obviously-correct fletcher4: sums over a `Vec<u32>`.
    fn slow_fletcher4(words: &[u32]) -> [u64; 4] {
        let mut s = [0u64; 4];
        for &w in words {
            s[0] = s[0].wrapping_add(w as u64);
            s[1] = s[1].wrapping_add(s[0]);
            s[2] = s[2].wrapping_add(s[1]);
            s[3] = s[3].wrapping_add(s[2]);
        }
        s
    }

    #[test]
    fn fletcher4_known_vectors_both_orders() {
        let words: std::vec::Vec<u32> =
            (0..256u32).map(|i| i.wrapping_mul(0x9e37_79b9) ^ 0xdead_beef).collect();
        let le: std::vec::Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let be: std::vec::Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let want = slow_fletcher4(&words);
        assert_eq!(fletcher_4(&le, Endian::Little).0, want);
        assert_eq!(fletcher_4(&be, Endian::Big).0, want);
        // Small hand-computed vector: words 1, 2 -> a=3, b=1+3=4, c=1+4=5, d=1+5=6.
        let v = [1u8, 0, 0, 0, 2, 0, 0, 0];
        assert_eq!(fletcher_4(&v, Endian::Little).0, [3, 4, 5, 6]);
        assert_eq!(fletcher_4(&[], Endian::Little).0, [0; 4]);
    }

    #[test]
    fn fletcher2_known_vectors_both_orders() {
        // Words 1,2,3,4: a0=1+3=4, a1=2+4=6, b0=1+4=5, b1=2+6=8.
        let words = [1u64, 2, 3, 4];
        let le: std::vec::Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let be: std::vec::Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        assert_eq!(fletcher_2(&le, Endian::Little).0, [4, 6, 5, 8]);
        assert_eq!(fletcher_2(&be, Endian::Big).0, [4, 6, 5, 8]);
        assert_eq!(compute(func::FLETCHER_2, &le, Endian::Little).unwrap().0, [4, 6, 5, 8]);
        assert_eq!(compute(12, &le, Endian::Little), Err(Error::UnsupportedChecksum(12)));
    }

    #[test]
    fn embedded_gang_and_zilog_checksums() {
        for endian in [Endian::Little, Endian::Big] {
            let verifier = Checksum([1, 0x2000, 7, 0]);
            let mut block = [0x33u8; 512];
            let at = 512 - ECK_SIZE;
            block[at..at + 8].copy_from_slice(&endian.u64_to(ZEC_MAGIC));
            let mut tail = [0u8; 32];
            for (i, w) in verifier.0.iter().enumerate() {
                tail[i * 8..i * 8 + 8].copy_from_slice(&endian.u64_to(*w));
            }
            let sum = sha256_words(&[&block[..at + 8], &tail]);
            for (i, w) in sum.0.iter().enumerate() {
                block[at + 8 + i * 8..at + 16 + i * 8].copy_from_slice(&endian.u64_to(*w));
            }
            assert_eq!(verify_embedded(&block, func::GANG_HEADER, verifier), Ok(endian));
            assert_eq!(
                verify_embedded(&block, func::GANG_HEADER, Checksum::default()),
                Err(Error::BadChecksum)
            );
            // zilog: fletcher2 over body + verifier.
            let mut whole = std::vec::Vec::from(&block[..at + 8]);
            whole.extend_from_slice(&tail);
            let sum = fletcher_2(&whole, endian);
            for (i, w) in sum.0.iter().enumerate() {
                block[at + 8 + i * 8..at + 16 + i * 8].copy_from_slice(&endian.u64_to(*w));
            }
            assert_eq!(verify_embedded(&block, func::ZILOG, verifier), Ok(endian));
        }
    }

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
