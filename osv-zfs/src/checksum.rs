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
///
/// Computed over four interleaved lanes and combined at the end, the way
/// OpenZFS's `fletcher_4_superscalar4` and SIMD variants do (see
/// [`Fletcher4`]); bit-identical to [`fletcher_4_scalar`].
pub fn fletcher_4(data: &[u8], endian: Endian) -> Checksum {
    let mut f = Fletcher4::default();
    f.update(data, endian);
    f.finish()
}

/// The plain one-word-at-a-time fletcher4 loop (the reference the lane
/// version is tested against).
pub fn fletcher_4_scalar(data: &[u8], endian: Endian) -> Checksum {
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

/// An incremental fletcher4: [`update`](Fletcher4::update) with pieces of
/// a block (each a multiple of 4 bytes, or the rest of a piece is
/// ignored), then [`finish`](Fletcher4::finish).
///
/// Each piece's whole 16-byte groups run through four independent lanes
/// (lane `i` sums words `4t + i`), which the CPU overlaps; the lanes are
/// combined into the sums a single pass would have produced. With `u` the
/// distance of a lane element from the lane's end, the weights of word
/// `4t + i` in B, C and D are `4u - i`, `C(4u - i + 1, 2)` and
/// `C(4u - i + 2, 3)`, which in the lanes' own weights (`1`, `u`,
/// `C(u + 1, 2)`, `C(u + 2, 3)`) give the coefficients below (the same as
/// `fletcher_4_superscalar4_fini`, module/zcommon/zfs_fletcher_superscalar4.c).
/// A piece is appended to the running sums by the concatenation rule:
/// after `m` more words, `B += m A`, `C += m B + C(m + 1, 2) A`,
/// `D += m C + C(m + 1, 2) B + C(m + 2, 3) A` (old values on the right).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fletcher4 {
    s: [u64; 4],
}

impl Fletcher4 {
    /// Adds `data` (in byte order `endian`).
    pub fn update(&mut self, data: &[u8], endian: Endian) {
        let bulk = data.len() / 16 * 16;
        if bulk > 0 {
            let lanes = match endian {
                Endian::Little => lanes4::<false>(&data[..bulk]),
                Endian::Big => lanes4::<true>(&data[..bulk]),
            };
            self.append(lanes, (bulk / 4) as u64);
        }
        let [mut a, mut b, mut c, mut d] = self.s;
        for word in data[bulk..].chunks_exact(4) {
            let v = endian_u32(endian, [word[0], word[1], word[2], word[3]]);
            a = a.wrapping_add(u64::from(v));
            b = b.wrapping_add(a);
            c = c.wrapping_add(b);
            d = d.wrapping_add(c);
        }
        self.s = [a, b, c, d];
    }

    /// Appends the sums `t` of `m` words that follow the words seen so far.
    fn append(&mut self, t: [u64; 4], m: u64) {
        let [a, b, c, d] = self.s;
        let m2 = (u128::from(m) * (u128::from(m) + 1) / 2) as u64;
        let m3 = (u128::from(m) * (u128::from(m) + 1) * (u128::from(m) + 2) / 6) as u64;
        self.s = [
            a.wrapping_add(t[0]),
            b.wrapping_add(m.wrapping_mul(a)).wrapping_add(t[1]),
            c.wrapping_add(m.wrapping_mul(b)).wrapping_add(m2.wrapping_mul(a)).wrapping_add(t[2]),
            d.wrapping_add(m.wrapping_mul(c))
                .wrapping_add(m2.wrapping_mul(b))
                .wrapping_add(m3.wrapping_mul(a))
                .wrapping_add(t[3]),
        ];
    }

    /// The checksum of everything added.
    pub fn finish(&self) -> Checksum {
        Checksum(self.s)
    }
}

fn endian_u32(endian: Endian, w: [u8; 4]) -> u32 {
    match endian {
        Endian::Big => u32::from_be_bytes(w),
        Endian::Little => u32::from_le_bytes(w),
    }
}

/// Fletcher4 of `data` (a multiple of 16 bytes) over four lanes, combined;
/// `BIG`: the words are big-endian. The lanes are independent, so the
/// compiler keeps them in vector registers.
fn lanes4<const BIG: bool>(data: &[u8]) -> [u64; 4] {
    if let Some(sums) = crate::fletcher_simd::fletcher_4(data, BIG) {
        return sums; // AVX2, when the CPU and the kernel allow it.
    }
    let (mut a, mut b, mut c, mut d) = ([0u64; 4], [0u64; 4], [0u64; 4], [0u64; 4]);
    for g in data.chunks_exact(16) {
        let mut w = [0u64; 4];
        for (i, x) in w.iter_mut().enumerate() {
            let bytes = [g[4 * i], g[4 * i + 1], g[4 * i + 2], g[4 * i + 3]];
            *x = u64::from(if BIG { u32::from_be_bytes(bytes) } else { u32::from_le_bytes(bytes) });
        }
        for i in 0..4 {
            a[i] = a[i].wrapping_add(w[i]);
        }
        for i in 0..4 {
            b[i] = b[i].wrapping_add(a[i]);
        }
        for i in 0..4 {
            c[i] = c[i].wrapping_add(b[i]);
        }
        for i in 0..4 {
            d[i] = d[i].wrapping_add(c[i]);
        }
    }
    // Lane i's weights expressed in the single pass's (see `Fletcher4`):
    // B: 4 b_i - i a_i; C: 16 c_i - (6 + 4i) b_i + i(i-1)/2 a_i;
    // D: 64 d_i - (48 + 16i) c_i + kb[i] b_i - ka[i] a_i.
    const KB: [u64; 4] = [4, 10, 20, 34];
    const KA: [u64; 4] = [0, 0, 0, 1];
    let mut out = [0u64; 4];
    for i in 0..4 {
        let iu = i as u64;
        out[0] = out[0].wrapping_add(a[i]);
        out[1] = out[1].wrapping_add(b[i].wrapping_mul(4)).wrapping_sub(a[i].wrapping_mul(iu));
        out[2] = out[2]
            .wrapping_add(c[i].wrapping_mul(16))
            .wrapping_sub(b[i].wrapping_mul(6 + 4 * iu))
            .wrapping_add(a[i].wrapping_mul(iu * iu.saturating_sub(1) / 2));
        out[3] = out[3]
            .wrapping_add(d[i].wrapping_mul(64))
            .wrapping_sub(c[i].wrapping_mul(48 + 16 * iu))
            .wrapping_add(b[i].wrapping_mul(KB[i]))
            .wrapping_sub(a[i].wrapping_mul(KA[i]));
    }
    out
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
/// (SHA-256) and ZIL blocks (fletcher2 for `zilog`, fletcher4 for
/// `zilog2`). The trailer's checksum words are replaced by `verifier` (in
/// the block's byte order) before computing (`zio_checksum_error_impl`,
/// zio_checksum.c). Returns the block's byte order.
pub fn verify_embedded(block: &[u8], id: u8, verifier: Checksum) -> Result<Endian> {
    let (endian, actual, expected) = embedded_checksum(block, id, verifier)?;
    if actual == expected {
        Ok(endian)
    } else {
        Err(Error::BadChecksum)
    }
}

/// `ZIL_MIN_BLKSZ` (include/sys/zil_impl.h): a `zilog2` block is
/// checksummed up to its used size rounded up to this.
pub const ZIL_MIN_BLKSZ: u64 = 4096;

/// Offset of `zc_eck` in `zil_chain_t` (include/sys/zil_impl.h:
/// `zc_pad`, `zc_next_blk`, `zc_nused`, then `zc_eck`): where a `zilog2`
/// block keeps its embedded checksum.
pub const ZIL_CHAIN_ECK_OFFSET: usize = 144;
/// Offset of `zc_nused` in `zil_chain_t`.
pub const ZIL_CHAIN_NUSED_OFFSET: usize = 136;

/// Computes an embedded checksum: the block's byte order, the checksum of
/// its contents with the verifier in place of the stored one, and the
/// stored one (`zio_checksum_error_impl`). `zilog2` blocks keep the trailer
/// at [`ZIL_CHAIN_ECK_OFFSET`] and are checksummed only up to their used
/// size (`zc_nused`) rounded up to [`ZIL_MIN_BLKSZ`]; the others keep it in
/// their last 40 bytes.
pub fn embedded_checksum(block: &[u8], id: u8, verifier: Checksum) -> Result<(Endian, Checksum, Checksum)> {
    if id == func::ZILOG2 {
        let eck = block.get(ZIL_CHAIN_ECK_OFFSET..ZIL_CHAIN_ECK_OFFSET + ECK_SIZE).ok_or(Error::Truncated)?;
        let endian = eck_endian(eck)?;
        let expected = stored_checksum(eck, endian)?;
        let nused = u64_at(block, ZIL_CHAIN_NUSED_OFFSET, endian)?;
        let size = nused.checked_next_multiple_of(ZIL_MIN_BLKSZ).ok_or(Error::BadLength)?;
        let size = usize::try_from(size).map_err(|_| Error::BadLength)?;
        let body = block.get(..size).ok_or(Error::BadLength)?;
        if size < ZIL_CHAIN_ECK_OFFSET + ECK_SIZE {
            return Err(Error::BadLength);
        }
        let mut copy = alloc_free_copy::Copy::new(body);
        copy.put_verifier(ZIL_CHAIN_ECK_OFFSET + 8, verifier, endian);
        return Ok((endian, copy.fletcher_4(endian), expected));
    }
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
    Ok((endian, actual, expected))
}

/// Fletcher4 over a block whose embedded checksum words are replaced by a
/// verifier, without a heap: the words before, the verifier, the words
/// after.
mod alloc_free_copy {
    use super::{Checksum, Endian};

    /// A block seen through a 32-byte window replaced by the verifier.
    pub struct Copy<'a> {
        body: &'a [u8],
        at: usize,
        verifier: [u8; 32],
    }

    impl<'a> Copy<'a> {
        pub fn new(body: &'a [u8]) -> Copy<'a> {
            Copy { body, at: body.len(), verifier: [0; 32] }
        }

        /// Replaces the 32 bytes at `at` (a multiple of 8) by `v`.
        pub fn put_verifier(&mut self, at: usize, v: Checksum, endian: Endian) {
            self.at = at;
            for (i, w) in v.0.iter().enumerate() {
                self.verifier[i * 8..i * 8 + 8].copy_from_slice(&endian.u64_to(*w));
            }
        }

        pub fn fletcher_4(&self, endian: Endian) -> Checksum {
            let end = (self.at + 32).min(self.body.len());
            let head = &self.body[..self.at.min(self.body.len())];
            let tail = &self.body[end..];
            let mut s = super::Fletcher4::default();
            s.update(head, endian);
            s.update(&self.verifier[..end - self.at.min(end)], endian);
            s.update(tail, endian);
            s.finish()
        }
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

    #[test]
    fn zilog2_checksum_covers_the_used_part() {
        // A 8 KiB zilog2 block: zil_chain_t at the start (nused 300), the
        // eck at 144; only the first 4 KiB count.
        for endian in [Endian::Little, Endian::Big] {
            let mut block = [0u8; 8192];
            for (i, b) in block.iter_mut().enumerate() {
                *b = (i * 7 % 251) as u8;
            }
            block[136..144].copy_from_slice(&endian.u64_to(300));
            block[144..152].copy_from_slice(&endian.u64_to(ZEC_MAGIC));
            let verifier = Checksum([1, 2, 3, 4]);
            let mut copy = block;
            for (i, w) in verifier.0.iter().enumerate() {
                copy[152 + i * 8..160 + i * 8].copy_from_slice(&endian.u64_to(*w));
            }
            let sum = fletcher_4_scalar(&copy[..4096], endian);
            for (i, w) in sum.0.iter().enumerate() {
                block[152 + i * 8..160 + i * 8].copy_from_slice(&endian.u64_to(*w));
            }
            assert_eq!(verify_embedded(&block, func::ZILOG2, verifier), Ok(endian));
            block[5000] ^= 1; // past the used part: not covered
            assert_eq!(verify_embedded(&block, func::ZILOG2, verifier), Ok(endian));
            block[200] ^= 1;
            assert_eq!(verify_embedded(&block, func::ZILOG2, verifier), Err(Error::BadChecksum));
            assert_eq!(
                verify_embedded(&block, func::ZILOG2, Checksum([1, 2, 3, 5])),
                Err(Error::BadChecksum)
            );
            block[136..144].copy_from_slice(&endian.u64_to(9000)); // nused past the block
            assert_eq!(verify_embedded(&block, func::ZILOG2, verifier), Err(Error::BadLength));
        }
    }

    proptest::proptest! {
        /// The four-lane fletcher4 equals the one-word loop, whole or in
        /// pieces, in both byte orders.
        #[test]
        fn fletcher4_lanes_equal_the_scalar_loop(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2100),
            cut in 0usize..2100,
            big in proptest::prelude::any::<bool>(),
        ) {
            let endian = if big { Endian::Big } else { Endian::Little };
            let want = fletcher_4_scalar(&data, endian);
            proptest::prop_assert_eq!(fletcher_4(&data, endian), want);
            let cut = (cut.min(data.len())) / 4 * 4;
            let mut f = Fletcher4::default();
            f.update(&data[..cut], endian);
            f.update(&data[cut..], endian);
            proptest::prop_assert_eq!(f.finish(), want);
        }

        /// All-ones words make every sum large: the wrapping arithmetic of
        /// the lane combination still agrees.
        #[test]
        fn fletcher4_lanes_wrap_like_the_scalar_loop(words in 0usize..40_000) {
            let data = std::vec![0xffu8; words * 4];
            proptest::prop_assert_eq!(fletcher_4(&data, Endian::Little), fletcher_4_scalar(&data, Endian::Little));
        }
    }
}
