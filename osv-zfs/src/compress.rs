//! Block decompression (`zio_decompress_data`, module/zfs/zio_compress.c).
//!
//! A block is stored in `psize` bytes and expands to `lsize` bytes; the
//! function is `BP_GET_COMPRESS` of its block pointer (`enum zio_compress`,
//! include/sys/zio_compress.h). Every decoder here writes into a caller
//! buffer of exactly `lsize` bytes and checks every source and destination
//! index: malformed input is [`Error::Decompress`], never a panic.
//!
//! - `lzjb` (module/zfs/lzjb.c): a copy-map byte, then per bit a literal byte
//!   or a 2-byte back reference (6 bits length - 3, 10 bits offset);
//! - `lz4` (module/zfs/lz4_zfs.c): a 4-byte big-endian length of the LZ4
//!   block that follows, then a raw LZ4 block (no frame);
//! - `zle` (module/zfs/zle.c): zero-length encoding with `n` = 64;
//! - `zstd` (module/zstd/zfs_zstd.c, `zfs_zstdhdr_t`): a big-endian
//!   compressed length, a big-endian version/level word, then a zstd frame
//!   (decoded by `ruzstd`; needs `alloc`).
//!
//! - `gzip-1` .. `gzip-9` (module/zfs/gzip.c): a zlib stream (RFC 1950,
//!   header and Adler-32), inflated by `miniz_oxide`.

use crate::{Error, Result};

/// `enum zio_compress` values (include/sys/zio_compress.h).
pub mod func {
    /// `ZIO_COMPRESS_OFF`.
    pub const OFF: u8 = 2;
    /// `ZIO_COMPRESS_LZJB`.
    pub const LZJB: u8 = 3;
    /// `ZIO_COMPRESS_EMPTY`: the block is all zeros (never stored).
    pub const EMPTY: u8 = 4;
    /// `ZIO_COMPRESS_GZIP_1`.
    pub const GZIP_1: u8 = 5;
    /// `ZIO_COMPRESS_GZIP_9`.
    pub const GZIP_9: u8 = 13;
    /// `ZIO_COMPRESS_ZLE`.
    pub const ZLE: u8 = 14;
    /// `ZIO_COMPRESS_LZ4`.
    pub const LZ4: u8 = 15;
    /// `ZIO_COMPRESS_ZSTD`.
    pub const ZSTD: u8 = 16;
}

/// Decompresses `src` (the `psize` bytes) with function `id` into `dst`
/// (the `lsize` bytes). Bytes the stream does not reach stay as they are
/// (callers pass a zeroed buffer), as ZFS's decoders leave them.
pub fn decompress(id: u8, src: &[u8], dst: &mut [u8]) -> Result {
    match id {
        func::OFF => {
            let n = dst.len().min(src.len());
            dst[..n].copy_from_slice(&src[..n]);
            Ok(())
        }
        func::LZJB => lzjb(src, dst),
        func::ZLE => zle(src, dst, 64),
        func::LZ4 => lz4_zfs(src, dst),
        func::GZIP_1..=func::GZIP_9 => gzip(src, dst),
        #[cfg(feature = "alloc")]
        func::ZSTD => zstd_zfs(src, dst),
        other => Err(Error::UnsupportedCompression(other)),
    }
}

/// `lzjb_decompress` (module/zfs/lzjb.c): `NBBY` = 8, `MATCH_BITS` = 6,
/// `MATCH_MIN` = 3, `OFFSET_MASK` = 1023. Fills `dst` completely.
pub fn lzjb(src: &[u8], dst: &mut [u8]) -> Result {
    const MATCH_BITS: u32 = 6;
    const MATCH_MIN: usize = 3;
    const OFFSET_MASK: usize = (1 << (16 - MATCH_BITS)) - 1;
    let (mut s, mut d) = (0usize, 0usize);
    let mut copymap = 0u8;
    let mut copymask = 0u32; // 0 forces a new map byte first
    while d < dst.len() {
        copymask <<= 1;
        if copymask == 0 || copymask == 1 << 8 {
            copymask = 1;
            copymap = *src.get(s).ok_or(Error::Decompress)?;
            s += 1;
        }
        if u32::from(copymap) & copymask != 0 {
            let hi = *src.get(s).ok_or(Error::Decompress)? as usize;
            let lo = *src.get(s + 1).ok_or(Error::Decompress)? as usize;
            s += 2;
            let mlen = (hi >> (8 - MATCH_BITS)) + MATCH_MIN;
            let offset = ((hi << 8) | lo) & OFFSET_MASK;
            let mut from = d.checked_sub(offset).ok_or(Error::Decompress)?;
            let end = d + mlen.min(dst.len() - d);
            while d < end {
                dst[d] = dst[from];
                d += 1;
                from += 1;
            }
        } else {
            dst[d] = *src.get(s).ok_or(Error::Decompress)?;
            s += 1;
            d += 1;
        }
    }
    Ok(())
}

/// `gzip_decompress` (module/zfs/gzip.c): zlib's `uncompress` of a zlib
/// stream (header, deflate data, Adler-32 checked); the stream may end
/// before `dst` does, and padding may follow it in `src`.
pub fn gzip(src: &[u8], dst: &mut [u8]) -> Result {
    miniz_oxide::inflate::decompress_slice_iter_to_slice(dst, core::iter::once(src), true, false)
        .map(|_| ())
        .map_err(|_| Error::Decompress)
}

/// `zle_decompress` (module/zfs/zle.c): a length byte `l`; `l + 1 <= n`
/// literal bytes follow, else `l + 1 - n` zeros. Must fill `dst` exactly.
pub fn zle(src: &[u8], dst: &mut [u8], n: usize) -> Result {
    let (mut s, mut d) = (0usize, 0usize);
    while s < src.len() && d < dst.len() {
        let len = 1 + src[s] as usize;
        s += 1;
        if len <= n {
            let lit = src.get(s..s + len).ok_or(Error::Decompress)?;
            dst.get_mut(d..d + len).ok_or(Error::Decompress)?.copy_from_slice(lit);
            s += len;
            d += len;
        } else {
            let zeros = len - n;
            dst.get_mut(d..d + zeros).ok_or(Error::Decompress)?.fill(0);
            d += zeros;
        }
    }
    if d == dst.len() {
        Ok(())
    } else {
        Err(Error::Decompress)
    }
}

/// ZFS's lz4 (`lz4_decompress_zfs`, module/zfs/lz4_zfs.c): a big-endian
/// u32 length of the LZ4 block, then the block.
pub fn lz4_zfs(src: &[u8], dst: &mut [u8]) -> Result {
    let len = src.get(..4).ok_or(Error::Decompress)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let block = src.get(4..4usize.checked_add(len).ok_or(Error::Decompress)?).ok_or(Error::Decompress)?;
    lz4_block(block, dst).map(|_| ())
}

/// Decodes one raw LZ4 block (the LZ4 block format: sequences of a token,
/// literals, a 2-byte little-endian offset and a match) into `dst`; returns
/// the bytes written. Input must end after a literal run.
pub fn lz4_block(src: &[u8], dst: &mut [u8]) -> Result<usize> {
    let (mut s, mut d) = (0usize, 0usize);
    // Reads a length extension: bytes of 255 continue it.
    fn extend(src: &[u8], s: &mut usize, mut len: usize) -> Result<usize> {
        loop {
            let b = *src.get(*s).ok_or(Error::Decompress)?;
            *s += 1;
            len = len.checked_add(b as usize).ok_or(Error::Decompress)?;
            if b != 255 {
                return Ok(len);
            }
        }
    }
    if src.is_empty() {
        return Err(Error::Decompress);
    }
    loop {
        let token = *src.get(s).ok_or(Error::Decompress)?;
        s += 1;
        let mut lit = (token >> 4) as usize;
        if lit == 15 {
            lit = extend(src, &mut s, lit)?;
        }
        let lits = src.get(s..s.checked_add(lit).ok_or(Error::Decompress)?).ok_or(Error::Decompress)?;
        dst.get_mut(d..d + lit).ok_or(Error::Decompress)?.copy_from_slice(lits);
        s += lit;
        d += lit;
        if s == src.len() {
            return Ok(d);
        }
        let off = src.get(s..s + 2).ok_or(Error::Decompress)?;
        let offset = u16::from_le_bytes([off[0], off[1]]) as usize;
        s += 2;
        if offset == 0 || offset > d {
            return Err(Error::Decompress);
        }
        let mut mlen = (token & 15) as usize;
        if mlen == 15 {
            mlen = extend(src, &mut s, mlen)?;
        }
        mlen += 4;
        if mlen > dst.len() - d {
            return Err(Error::Decompress);
        }
        // Byte by byte: a match may overlap the bytes it produces.
        for from in d - offset..d - offset + mlen {
            dst[d] = dst[from];
            d += 1;
        }
    }
}

/// ZFS's zstd (`zfs_zstd_decompress_level`, module/zstd/zfs_zstd.c): the
/// 8-byte `zfs_zstdhdr_t` (big-endian `c_len`, then version and level),
/// then `c_len` bytes of a zstd frame. OpenZFS writes the frame without its
/// 4-byte magic (`ZSTD_f_zstd1_magicless`); a frame that has it is accepted
/// too.
#[cfg(feature = "alloc")]
pub fn zstd_zfs(src: &[u8], dst: &mut [u8]) -> Result {
    const MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();
    let hdr = src.get(..8).ok_or(Error::Decompress)?;
    let c_len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
    let frame = src.get(8..8usize.checked_add(c_len).ok_or(Error::Decompress)?).ok_or(Error::Decompress)?;
    let body = frame.strip_prefix(&MAGIC[..]).unwrap_or(frame);
    // Refuse a frame asking for a window larger than any ZFS block before
    // the decoder allocates it.
    if zstd_window(body).is_none_or(|w| w > ZSTD_MAX_WINDOW) {
        return Err(Error::Decompress);
    }
    let mut input = alloc::vec::Vec::with_capacity(frame.len() + 4);
    if !frame.starts_with(&MAGIC) {
        input.extend_from_slice(&MAGIC);
    }
    input.extend_from_slice(frame);
    let mut decoder = ruzstd::decoding::FrameDecoder::new();
    decoder.decode_all(&input, dst).map(|_| ()).map_err(|_| Error::Decompress)
}

/// Largest zstd window accepted: `SPA_MAXBLOCKSIZE` (16 MiB).
#[cfg(feature = "alloc")]
const ZSTD_MAX_WINDOW: u64 = 16 << 20;

/// The window size a zstd frame header (after the magic) asks for (RFC 8878
/// 3.1.1.1: `Frame_Header_Descriptor`, `Window_Descriptor`,
/// `Frame_Content_Size`); `None` when the header is cut short.
#[cfg(feature = "alloc")]
fn zstd_window(frame: &[u8]) -> Option<u64> {
    let fhd = *frame.first()?;
    if fhd & 0x20 == 0 {
        // Window_Descriptor: exponent (5 bits) and mantissa (3 bits).
        let wd = *frame.get(1)?;
        let base = 1u64 << (10 + u32::from(wd >> 3));
        return Some(base + base / 8 * u64::from(wd & 7));
    }
    // Single segment: the window is the content size.
    let dict_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = [1usize, 2, 4, 8][usize::from(fhd >> 6)];
    let at = 1 + dict_len;
    let bytes = frame.get(at..at + fcs_len)?;
    let value = bytes.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    Some(if fcs_len == 2 { value + 256 } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    /// A tiny lzjb compressor for round trips: greedy matches found by
    /// scanning the last 1023 bytes (slow, obviously correct).
    fn lzjb_compress(src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < src.len() {
            let map_at = out.len();
            out.push(0u8);
            for bit in 0..8 {
                if i >= src.len() {
                    break;
                }
                let mut best = (0usize, 0usize);
                for off in 1..=i.min(1023) {
                    let mut l = 0;
                    while l < 66 && i + l < src.len() && src[i + l] == src[i + l - off] {
                        l += 1;
                    }
                    if l > best.0 {
                        best = (l, off);
                    }
                }
                if best.0 >= 3 {
                    let (l, off) = best;
                    out[map_at] |= 1 << bit;
                    out.push((((l - 3) << 2) | (off >> 8)) as u8);
                    out.push(off as u8);
                    i += l;
                } else {
                    out.push(src[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// A tiny LZ4 block compressor: greedy matches at the previous
    /// occurrence of 4 bytes; last 5 bytes always literals (LZ4 rule).
    fn lz4_compress(src: &[u8]) -> Vec<u8> {
        fn len_ext(out: &mut Vec<u8>, mut n: usize) {
            while n >= 255 {
                out.push(255);
                n -= 255;
            }
            out.push(n as u8);
        }
        let mut out = Vec::new();
        let (mut i, mut anchor) = (0usize, 0usize);
        let limit = src.len().saturating_sub(5);
        while i < limit {
            let found = (1..=i.min(65535))
                .find(|&off| src[i..].len() >= 4 && src[i..i + 4] == src[i - off..i - off + 4]);
            let Some(off) = found else {
                i += 1;
                continue;
            };
            let mut m = 4;
            while i + m < limit && src[i + m] == src[i + m - off] {
                m += 1;
            }
            let lit = i - anchor;
            let tok_lit = lit.min(15) as u8;
            let tok_m = (m - 4).min(15) as u8;
            out.push(tok_lit << 4 | tok_m);
            if lit >= 15 {
                len_ext(&mut out, lit - 15);
            }
            out.extend_from_slice(&src[anchor..i]);
            out.extend_from_slice(&(off as u16).to_le_bytes());
            if m - 4 >= 15 {
                len_ext(&mut out, m - 4 - 15);
            }
            i += m;
            anchor = i;
        }
        let lit = src.len() - anchor;
        out.push((lit.min(15) as u8) << 4);
        if lit >= 15 {
            len_ext(&mut out, lit - 15);
        }
        out.extend_from_slice(&src[anchor..]);
        out
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| if i % 97 < 40 { 0 } else { (i * 7 % 13) as u8 + b'a' }).collect()
    }

    #[test]
    fn lzjb_round_trip_and_known_vector() {
        // Map byte 0b10 : literal 'a', then match len 3+1=4 offset 1.
        let mut out = [0u8; 5];
        lzjb(&[0b10, b'a', 1 << 2, 1], &mut out).unwrap();
        assert_eq!(&out, b"aaaaa");
        for n in [0, 1, 7, 100, 4096] {
            let src = sample(n);
            let c = lzjb_compress(&src);
            let mut d = vec![0u8; n];
            lzjb(&c, &mut d).unwrap();
            assert_eq!(d, src);
        }
        // An offset before the start is an error.
        assert_eq!(lzjb(&[1, 0, 5], &mut [0u8; 4]), Err(Error::Decompress));
        assert_eq!(lzjb(&[0], &mut [0u8; 4]), Err(Error::Decompress));
    }

    #[test]
    fn lz4_round_trip_and_known_vector() {
        // Token 0x13: 1 literal 'x', match len 3+4=7 at offset 1; then a
        // final literal run 'y'.
        let block = [0x13, b'x', 1, 0, 0x10, b'y'];
        let mut out = [0u8; 9];
        assert_eq!(lz4_block(&block, &mut out), Ok(9));
        assert_eq!(&out, b"xxxxxxxxy");
        for n in [1, 20, 300, 4096] {
            let src = sample(n);
            let c = lz4_compress(&src);
            let mut framed = (c.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&c);
            framed.resize(framed.len() + 11, 0); // psize padding after the block
            let mut d = vec![0u8; n];
            lz4_zfs(&framed, &mut d).unwrap();
            assert_eq!(d, src);
            assert_eq!(decompress(func::LZ4, &framed, &mut d), Ok(()));
        }
        assert_eq!(lz4_zfs(&[0, 0, 1, 0, 0x10], &mut [0u8; 4]), Err(Error::Decompress));
        assert_eq!(lz4_block(&[0x0f, 1, 0], &mut [0u8; 64]), Err(Error::Decompress));
    }

    #[test]
    fn zle_vectors() {
        // 2 literals, then 70 - 64 = 6 zeros... length byte 69 -> 70 - 64.
        let mut out = [9u8; 8];
        zle(&[1, b'a', b'b', 69], &mut out, 64).unwrap();
        assert_eq!(&out, b"ab\0\0\0\0\0\0");
        assert_eq!(zle(&[1, b'a'], &mut out, 64), Err(Error::Decompress));
        assert_eq!(zle(&[], &mut out, 64), Err(Error::Decompress));
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn zstd_frames_with_and_without_magic() {
        // A raw-block zstd frame: magic, FHD (single segment, 1-byte size),
        // size 5, one last raw block of 5 bytes.
        let frame = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 5, 0x29, 0, 0, b'h', b'e', b'l', b'l', b'o'];
        for body in [&frame[..], &frame[4..]] {
            let mut src = (body.len() as u32).to_be_bytes().to_vec();
            src.extend_from_slice(&[0, 0, 0x10, 3]);
            src.extend_from_slice(body);
            src.resize(64, 0);
            let mut out = [0u8; 5];
            zstd_zfs(&src, &mut out).unwrap();
            assert_eq!(&out, b"hello");
        }
        assert_eq!(zstd_zfs(&[0, 0, 0, 9, 0, 0, 0, 0, 1], &mut [0u8; 4]), Err(Error::Decompress));
        // A window of 2 GiB (exponent 21) is refused before decoding.
        assert_eq!(zstd_window(&[0x00, 21 << 3]), Some(1 << 31));
        assert_eq!(zstd_zfs(&[0, 0, 0, 2, 0, 0, 0, 0, 0x00, 21 << 3], &mut [0u8; 4]), Err(Error::Decompress));
        assert_eq!(zstd_window(&[0x20, 5]), Some(5));
        assert_eq!(zstd_window(&[0x60, 1, 0]), Some(257));
    }

    #[test]
    fn gzip_round_trip() {
        for level in [1u8, 6, 9] {
            let src = sample(5000);
            let mut c = miniz_oxide::deflate::compress_to_vec_zlib(&src, level);
            let stream = c.len();
            c.resize(c.len().next_multiple_of(512), 0); // psize padding
            let mut d = vec![0u8; src.len()];
            decompress(func::GZIP_1 + level - 1, &c, &mut d).unwrap();
            assert_eq!(d, src);
            // A flipped byte breaks the stream or its Adler-32.
            c[stream / 2] ^= 0x10;
            assert_eq!(gzip(&c, &mut d), Err(Error::Decompress));
        }
    }

    #[test]
    fn unsupported_functions_are_named() {
        assert_eq!(decompress(17, &[0; 8], &mut [0; 8]), Err(Error::UnsupportedCompression(17)));
        let mut d = [0u8; 4];
        decompress(func::OFF, &[1, 2, 3, 4, 5], &mut d).unwrap();
        assert_eq!(d, [1, 2, 3, 4]);
    }

    proptest! {
        #[test]
        fn decompressors_never_panic(src in proptest::collection::vec(any::<u8>(), 0..600), out in 0usize..2000, id in 0u8..20) {
            let mut dst = vec![0u8; out];
            let _ = decompress(id, &src, &mut dst);
            let _ = lzjb(&src, &mut dst);
            let _ = lz4_block(&src, &mut dst);
            let _ = zle(&src, &mut dst, 64);
            let _ = gzip(&src, &mut dst);
            #[cfg(feature = "alloc")]
            let _ = zstd_zfs(&src, &mut dst);
        }

        #[test]
        fn round_trips(src in proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), any::<u8>()], 0..700)) {
            let mut d = vec![0u8; src.len()];
            lzjb(&lzjb_compress(&src), &mut d).unwrap();
            prop_assert_eq!(&d, &src);
            if !src.is_empty() {
                let mut d = vec![0u8; src.len()];
                prop_assert_eq!(lz4_block(&lz4_compress(&src), &mut d), Ok(src.len()));
                prop_assert_eq!(&d, &src);
            }
        }
    }
}
