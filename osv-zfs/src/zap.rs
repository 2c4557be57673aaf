//! ZAP objects: ZFS's name → value maps (include/sys/zap_impl.h,
//! include/sys/zap_leaf.h, module/zfs/zap_micro.c, zap.c, zap_leaf.c).
//!
//! The first u64 of block 0 says which form an object has:
//!
//! - **micro ZAP** (`ZBT_MICRO`): one block, `mzap_phys_t`: a 64-byte header
//!   (`mz_block_type`, `mz_salt`, `mz_normflags`, pad) then 64-byte
//!   `mzap_ent_phys_t` chunks: `mze_value` u64, `mze_cd` u32, pad u16,
//!   `mze_name[50]` (NUL-terminated; an empty name is a free chunk). Values
//!   are single u64s in the block's byte order.
//! - **fat ZAP** (`ZBT_HEADER`): block 0 is `zap_phys_t` (`zap_magic`,
//!   the pointer table descriptor `zap_ptrtbl`, counts, salt); the pointer
//!   table maps hash prefixes to leaf blocks and is either embedded in the
//!   second half of block 0 (`zt_numblks` = 0, `ZAP_EMBEDDED_PTRTBL_ENT`) or
//!   in `zt_numblks` blocks from `zt_blk`. Each leaf (`zap_leaf_phys_t`,
//!   `ZBT_LEAF`) has a 48-byte header, a hash table of
//!   `1 << (blockshift - 5)` u16 chunk indices, then 24-byte chunks: entries
//!   (`zap_leaf_entry`), name/value arrays (`zap_leaf_array`, 21 bytes each,
//!   chained through `la_next`) and free chunks. Array bytes (names and
//!   values) are big-endian regardless of the block's byte order
//!   (`zap_leaf_array_read`); the structural fields are in the block's order.
//!
//! The functions here work on block bytes already read; the pool layer
//! (`pool::Pool::zap_entries`) reads the blocks. Iteration visits every
//! entry chunk of every leaf named by the pointer table; lookup iterates
//! (no hash needed).

use crate::bytes::{u64_at, Endian};
use crate::{Error, Result};

/// `ZBT_LEAF` (include/sys/zap_impl.h).
pub const ZBT_LEAF: u64 = 1 << 63;
/// `ZBT_HEADER`.
pub const ZBT_HEADER: u64 = (1 << 63) | 1;
/// `ZBT_MICRO`.
pub const ZBT_MICRO: u64 = (1 << 63) | 3;
/// `ZAP_MAGIC`.
pub const ZAP_MAGIC: u64 = 0x0002_F52A_B2AB;
/// `ZAP_LEAF_MAGIC` (include/sys/zap_leaf.h).
pub const ZAP_LEAF_MAGIC: u32 = 0x02AB_1EAF;
/// `MZAP_ENT_LEN`: a micro ZAP chunk.
pub const MZAP_ENT_LEN: usize = 64;
/// `MZAP_NAME_LEN`: 50 bytes of name in a micro ZAP chunk.
pub const MZAP_NAME_LEN: usize = 50;
/// `ZAP_LEAF_CHUNKSIZE`.
pub const ZAP_LEAF_CHUNKSIZE: usize = 24;
/// `ZAP_LEAF_ARRAY_BYTES`: payload of one array chunk.
pub const ZAP_LEAF_ARRAY_BYTES: usize = ZAP_LEAF_CHUNKSIZE - 3;
/// `ZAP_CHUNK_ENTRY` (`zap_chunk_type_t`).
const ZAP_CHUNK_ENTRY: u8 = 252;
/// `ZAP_CHUNK_ARRAY`.
const ZAP_CHUNK_ARRAY: u8 = 251;
/// `ZAP_MAXNAMELEN_NEW` (longname feature): longest name accepted.
pub const ZAP_MAX_NAME: usize = 1024;
/// Longest value [`Leaf::entries_with_values`] returns (SA layouts are
/// arrays of a few dozen u16s).
pub const ZAP_MAX_VALUE: usize = 1024;

/// The value of one ZAP entry: `num_ints` integers of `int_len` bytes; the
/// first is decoded (ZAPs that this crate reads hold single u64s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZapValue {
    /// Bytes per integer: 1, 2, 4 or 8.
    pub int_len: u8,
    /// How many integers.
    pub num_ints: u64,
    /// The first integer (0 when there is none).
    pub first: u64,
}

/// A visitor of ZAP entries with their value bytes: name, value, bytes.
pub type EntryVisitor<'f> = dyn FnMut(&[u8], ZapValue, &[u8]) -> Result + 'f;

/// The block type word of a ZAP block (`zap_block_type`/`mz_block_type`).
pub fn block_type(block: &[u8], endian: Endian) -> Result<u64> {
    u64_at(block, 0, endian)
}

/// Calls `f` with every name and value of a micro ZAP block.
pub fn micro_entries(block: &[u8], endian: Endian, f: &mut dyn FnMut(&[u8], ZapValue) -> Result) -> Result {
    if block_type(block, endian)? != ZBT_MICRO {
        return Err(Error::BadZap);
    }
    for chunk in block.chunks_exact(MZAP_ENT_LEN).skip(1) {
        let name = &chunk[14..14 + MZAP_NAME_LEN];
        let len = name.iter().position(|&b| b == 0).unwrap_or(MZAP_NAME_LEN);
        if len == 0 {
            continue;
        }
        let value = u64_at(chunk, 0, endian)?;
        f(&name[..len], ZapValue { int_len: 8, num_ints: 1, first: value })?;
    }
    Ok(())
}

/// The fat ZAP header (`zap_phys_t`, include/sys/zap_impl.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatHeader {
    /// `zt_blk`: first block of an external pointer table.
    pub ptrtbl_blk: u64,
    /// `zt_numblks`: 0 when the table is embedded in block 0.
    pub ptrtbl_numblks: u64,
    /// `zt_shift`: the table has `1 << zt_shift` entries.
    pub ptrtbl_shift: u64,
    /// `zap_freeblk`: first never-used block.
    pub freeblk: u64,
    /// `zap_num_leafs`.
    pub num_leafs: u64,
    /// `zap_num_entries`.
    pub num_entries: u64,
}

impl FatHeader {
    /// Parses block 0 of a fat ZAP: block type, magic and table fields
    /// (offsets: block type 0, magic 8, `zap_ptrtbl` 16..56, freeblk 56,
    /// num_leafs 64, num_entries 72).
    pub fn parse(block: &[u8], endian: Endian) -> Result<FatHeader> {
        if block_type(block, endian)? != ZBT_HEADER || u64_at(block, 8, endian)? != ZAP_MAGIC {
            return Err(Error::BadZap);
        }
        let h = FatHeader {
            ptrtbl_blk: u64_at(block, 16, endian)?,
            ptrtbl_numblks: u64_at(block, 24, endian)?,
            ptrtbl_shift: u64_at(block, 32, endian)?,
            freeblk: u64_at(block, 56, endian)?,
            num_leafs: u64_at(block, 64, endian)?,
            num_entries: u64_at(block, 72, endian)?,
        };
        if h.ptrtbl_shift > 40 {
            return Err(Error::BadZap);
        }
        Ok(h)
    }

    /// Entries of the embedded pointer table (`ZAP_EMBEDDED_PTRTBL_ENT`:
    /// the u64s of block 0's second half), checked against its size.
    pub fn embedded_table(&self, block: &[u8], endian: Endian, f: &mut dyn FnMut(u64) -> Result) -> Result {
        if self.ptrtbl_numblks != 0 {
            return Err(Error::BadZap);
        }
        let half = block.len() / 2;
        let n = 1u64 << self.ptrtbl_shift;
        if n > (half / 8) as u64 {
            return Err(Error::BadZap);
        }
        for i in 0..n as usize {
            f(u64_at(block, half + i * 8, endian)?)?;
        }
        Ok(())
    }
}

/// A checked view of one fat ZAP leaf block.
#[derive(Debug, Clone, Copy)]
pub struct Leaf<'a> {
    block: &'a [u8],
    endian: Endian,
    chunks_at: usize,
    nchunks: usize,
}

impl<'a> Leaf<'a> {
    /// Checks the block type, magic and size (a power of two, at least
    /// 512 bytes) of a leaf block.
    pub fn new_checked(block: &'a [u8], endian: Endian) -> Result<Leaf<'a>> {
        let len = block.len();
        if !len.is_power_of_two() || len < 512 {
            return Err(Error::BadZap);
        }
        if block_type(block, endian)? != ZBT_LEAF {
            return Err(Error::BadZap);
        }
        let magic = crate::bytes::array::<4>(block, 24)?;
        let magic = match endian {
            Endian::Big => u32::from_be_bytes(magic),
            Endian::Little => u32::from_le_bytes(magic),
        };
        if magic != ZAP_LEAF_MAGIC {
            return Err(Error::BadZap);
        }
        // ZAP_LEAF_HASH_NUMENTRIES = 1 << (blockshift - 5);
        // ZAP_LEAF_NUMCHUNKS = (size - 2 * hash entries) / 24 - 2.
        let hash_entries = len >> 5;
        let chunks_at = 48 + 2 * hash_entries;
        let nchunks = (len - 2 * hash_entries) / ZAP_LEAF_CHUNKSIZE - 2;
        Ok(Leaf { block, endian, chunks_at, nchunks })
    }

    fn chunk(&self, i: usize) -> Result<&'a [u8]> {
        if i >= self.nchunks {
            return Err(Error::BadZap);
        }
        let at = self.chunks_at + i * ZAP_LEAF_CHUNKSIZE;
        self.block.get(at..at + ZAP_LEAF_CHUNKSIZE).ok_or(Error::BadZap)
    }

    fn u16_at(&self, chunk: &[u8], at: usize) -> u16 {
        let b = [chunk[at], chunk[at + 1]];
        match self.endian {
            Endian::Big => u16::from_be_bytes(b),
            Endian::Little => u16::from_le_bytes(b),
        }
    }

    /// Copies `out.len()` bytes of the array starting at chunk `first`,
    /// following `la_next`; the chain may not be longer than the leaf.
    fn read_array(&self, first: usize, out: &mut [u8]) -> Result {
        let mut idx = first;
        let mut done = 0;
        let mut hops = 0;
        while done < out.len() {
            let c = self.chunk(idx)?;
            if c[0] != ZAP_CHUNK_ARRAY {
                return Err(Error::BadZap);
            }
            let n = (out.len() - done).min(ZAP_LEAF_ARRAY_BYTES);
            out[done..done + n].copy_from_slice(&c[1..1 + n]);
            done += n;
            idx = usize::from(self.u16_at(c, 22));
            hops += 1;
            if hops > self.nchunks {
                return Err(Error::BadZap);
            }
        }
        Ok(())
    }

    /// Calls `f` with every entry's name (without its NUL) and value.
    pub fn entries(&self, f: &mut dyn FnMut(&[u8], ZapValue) -> Result) -> Result {
        self.walk(false, &mut |n, v, _| f(n, v))
    }

    /// Calls `f` with every entry's name, value and value bytes (the
    /// integers big-endian, as `zap_leaf_array_read` keeps them); a value
    /// longer than [`ZAP_MAX_VALUE`] bytes is an error.
    pub fn entries_with_values(&self, f: &mut EntryVisitor<'_>) -> Result {
        self.walk(true, f)
    }

    fn walk(&self, full: bool, f: &mut EntryVisitor<'_>) -> Result {
        let mut name = [0u8; ZAP_MAX_NAME];
        let mut value = [0u8; ZAP_MAX_VALUE];
        for i in 0..self.nchunks {
            let c = self.chunk(i)?;
            if c[0] != ZAP_CHUNK_ENTRY {
                continue;
            }
            let int_len = c[1];
            let name_chunk = usize::from(self.u16_at(c, 4));
            let name_len = usize::from(self.u16_at(c, 6));
            let value_chunk = usize::from(self.u16_at(c, 8));
            let num_ints = u64::from(self.u16_at(c, 10));
            if !matches!(int_len, 1 | 2 | 4 | 8) || name_len == 0 || name_len > ZAP_MAX_NAME {
                return Err(Error::BadZap);
            }
            let name = &mut name[..name_len];
            self.read_array(name_chunk, name)?;
            let text = match name.iter().position(|&b| b == 0) {
                Some(end) => &name[..end],
                None => &name[..],
            };
            let value_len = if full {
                let n = num_ints as usize * usize::from(int_len);
                if n > ZAP_MAX_VALUE {
                    return Err(Error::LimitExceeded);
                }
                n
            } else if num_ints == 0 {
                0
            } else {
                usize::from(int_len)
            };
            let bytes = &mut value[..value_len];
            self.read_array(value_chunk, bytes)?;
            let first_len = if num_ints == 0 { 0 } else { usize::from(int_len) };
            let first = bytes[..first_len].iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            f(text, ZapValue { int_len, num_ints, first }, bytes)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::String;
    use std::vec;
    use std::vec::Vec;

    /// A micro ZAP block of `size` bytes holding `entries`.
    pub(crate) fn micro(size: usize, endian: Endian, entries: &[(&str, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; size];
        b[..8].copy_from_slice(&endian.u64_to(ZBT_MICRO));
        for (i, (name, value)) in entries.iter().enumerate() {
            let at = (i + 1) * MZAP_ENT_LEN;
            b[at..at + 8].copy_from_slice(&endian.u64_to(*value));
            b[at + 14..at + 14 + name.len()].copy_from_slice(name.as_bytes());
        }
        b
    }

    fn w16(endian: Endian, v: u16) -> [u8; 2] {
        match endian {
            Endian::Big => v.to_be_bytes(),
            Endian::Little => v.to_le_bytes(),
        }
    }

    /// A fat ZAP leaf of `size` bytes holding `entries` (names longer than
    /// one array chunk span several).
    pub(crate) fn leaf(size: usize, endian: Endian, entries: &[(&str, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; size];
        b[..8].copy_from_slice(&endian.u64_to(ZBT_LEAF));
        let magic = match endian {
            Endian::Big => ZAP_LEAF_MAGIC.to_be_bytes(),
            Endian::Little => ZAP_LEAF_MAGIC.to_le_bytes(),
        };
        b[24..28].copy_from_slice(&magic);
        let chunks_at = 48 + 2 * (size >> 5);
        let mut next = 0usize;
        let mut put_array = |b: &mut Vec<u8>, bytes: &[u8]| -> usize {
            let first = next;
            let pieces: Vec<&[u8]> = bytes.chunks(ZAP_LEAF_ARRAY_BYTES).collect();
            for (k, piece) in pieces.iter().enumerate() {
                let at = chunks_at + next * ZAP_LEAF_CHUNKSIZE;
                b[at] = ZAP_CHUNK_ARRAY;
                b[at + 1..at + 1 + piece.len()].copy_from_slice(piece);
                let link = if k + 1 == pieces.len() { 0xffff } else { (next + 1) as u16 };
                b[at + 22..at + 24].copy_from_slice(&w16(endian, link));
                next += 1;
            }
            first
        };
        let mut entry_chunks = Vec::new();
        for (name, value) in entries {
            let mut n = name.as_bytes().to_vec();
            n.push(0);
            let nc = put_array(&mut b, &n);
            let vc = put_array(&mut b, &value.to_be_bytes());
            entry_chunks.push((nc, n.len(), vc));
        }
        for (nc, nlen, vc) in entry_chunks {
            let at = chunks_at + next * ZAP_LEAF_CHUNKSIZE;
            b[at] = ZAP_CHUNK_ENTRY;
            b[at + 1] = 8;
            b[at + 4..at + 6].copy_from_slice(&w16(endian, nc as u16));
            b[at + 6..at + 8].copy_from_slice(&w16(endian, nlen as u16));
            b[at + 8..at + 10].copy_from_slice(&w16(endian, vc as u16));
            b[at + 10..at + 12].copy_from_slice(&w16(endian, 1));
            next += 1;
        }
        b
    }

    fn collect_micro(b: &[u8], e: Endian) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        micro_entries(b, e, &mut |n, v| {
            out.push((String::from_utf8_lossy(n).into_owned(), v.first));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn micro_zap_both_orders() {
        for e in [Endian::Big, Endian::Little] {
            let b = micro(512, e, &[("root_dataset", 2), ("config", 61), ("", 9)]);
            let got = collect_micro(&b, e).unwrap();
            assert_eq!(got, [("root_dataset".into(), 2), ("config".into(), 61)]);
        }
        let b = micro(512, Endian::Little, &[]);
        assert_eq!(collect_micro(&b, Endian::Big), Err(Error::BadZap));
    }

    #[test]
    fn fat_zap_leaf_and_header() {
        for e in [Endian::Big, Endian::Little] {
            let long = "a-name-that-spans-more-than-one-array-chunk";
            let b = leaf(4096, e, &[("features_for_read", 77), (long, 1 << 40)]);
            let leaf = Leaf::new_checked(&b, e).unwrap();
            let mut got = Vec::new();
            leaf.entries(&mut |n, v| {
                got.push((String::from_utf8_lossy(n).into_owned(), v.first, v.int_len));
                Ok(())
            })
            .unwrap();
            assert_eq!(got, [("features_for_read".into(), 77, 8), (long.into(), 1 << 40, 8)]);
            // Header with an embedded pointer table of 2^3 entries.
            let mut h = vec![0u8; 4096];
            h[..8].copy_from_slice(&e.u64_to(ZBT_HEADER));
            h[8..16].copy_from_slice(&e.u64_to(ZAP_MAGIC));
            h[32..40].copy_from_slice(&e.u64_to(3));
            for i in 0..8 {
                h[2048 + i * 8..2056 + i * 8].copy_from_slice(&e.u64_to(1 + (i as u64 & 1)));
            }
            let hdr = FatHeader::parse(&h, e).unwrap();
            let mut tbl = Vec::new();
            hdr.embedded_table(&h, e, &mut |b| {
                tbl.push(b);
                Ok(())
            })
            .unwrap();
            assert_eq!(tbl, [1, 2, 1, 2, 1, 2, 1, 2]);
            h[32..40].copy_from_slice(&e.u64_to(9)); // 512 entries do not fit in 2 KiB
            let hdr = FatHeader::parse(&h, e).unwrap();
            assert_eq!(hdr.embedded_table(&h, e, &mut |_| Ok(())), Err(Error::BadZap));
        }
    }

    #[test]
    fn fat_zap_arrays_are_returned_whole() {
        for e in [Endian::Big, Endian::Little] {
            // One entry; then make its 8-byte value four u16s (an SA layout).
            let mut b = leaf(1024, e, &[("2", 0x0005_0006_0004_000c)]);
            let chunks_at = 48 + 2 * (1024 >> 5);
            let entry = chunks_at + 2 * ZAP_LEAF_CHUNKSIZE;
            b[entry + 1] = 2;
            b[entry + 10..entry + 12].copy_from_slice(&w16(e, 4));
            let leaf = Leaf::new_checked(&b, e).unwrap();
            let mut got = Vec::new();
            leaf.entries_with_values(&mut |n, v, bytes| {
                got.push((n.to_vec(), v.int_len, v.num_ints, v.first, bytes.to_vec()));
                Ok(())
            })
            .unwrap();
            assert_eq!(got, [(b"2".to_vec(), 2, 4, 5, vec![0, 5, 0, 6, 0, 4, 0, 12])]);
            // A value longer than ZAP_MAX_VALUE is refused, not truncated.
            b[entry + 10..entry + 12].copy_from_slice(&w16(e, 600));
            let leaf = Leaf::new_checked(&b, e).unwrap();
            assert_eq!(leaf.entries_with_values(&mut |_, _, _| Ok(())), Err(Error::LimitExceeded));
        }
    }

    #[test]
    fn broken_leaves_are_errors() {
        let e = Endian::Little;
        let mut b = leaf(1024, e, &[("x", 1)]);
        // Point the name of the entry at itself: not an array chunk.
        let chunks_at = 48 + 2 * (1024 >> 5);
        let entry = chunks_at + 2 * ZAP_LEAF_CHUNKSIZE;
        b[entry + 4..entry + 6].copy_from_slice(&2u16.to_le_bytes());
        let leaf = Leaf::new_checked(&b, e).unwrap();
        assert_eq!(leaf.entries(&mut |_, _| Ok(())), Err(Error::BadZap));
        // A cycle of array chunks with a huge name: bounded.
        let mut b = super::tests::leaf(1024, e, &[("x", 1)]);
        b[chunks_at + 22..chunks_at + 24].copy_from_slice(&0u16.to_le_bytes());
        b[entry + 6..entry + 8].copy_from_slice(&1000u16.to_le_bytes());
        let leaf = Leaf::new_checked(&b, e).unwrap();
        assert_eq!(leaf.entries(&mut |_, _| Ok(())), Err(Error::BadZap));
        assert_eq!(Leaf::new_checked(&b[..1000], e).unwrap_err(), Error::BadZap);
    }

    proptest! {
        #[test]
        fn arbitrary_zap_blocks_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..4096), kind in 0u8..3, big in any::<bool>()) {
            let e = if big { Endian::Big } else { Endian::Little };
            let ty = [ZBT_MICRO, ZBT_HEADER, ZBT_LEAF][kind as usize];
            if bytes.len() >= 28 {
                bytes[..8].copy_from_slice(&e.u64_to(ty));
                if kind == 2 {
                    let m = match e { Endian::Big => ZAP_LEAF_MAGIC.to_be_bytes(), Endian::Little => ZAP_LEAF_MAGIC.to_le_bytes() };
                    bytes[24..28].copy_from_slice(&m);
                }
            }
            let n = bytes.len().next_power_of_two().min(4096);
            bytes.resize(n, 0);
            let _ = micro_entries(&bytes, e, &mut |_, _| Ok(()));
            if let Ok(h) = FatHeader::parse(&bytes, e) {
                let _ = h.embedded_table(&bytes, e, &mut |_| Ok(()));
            }
            if let Ok(l) = Leaf::new_checked(&bytes, e) {
                let _ = l.entries(&mut |_, _| Ok(()));
                let _ = l.entries_with_values(&mut |_, v, b| {
                    assert!(b.len() <= ZAP_MAX_VALUE && b.len() as u64 <= v.num_ints * 8);
                    Ok(())
                });
            }
        }
    }
}
