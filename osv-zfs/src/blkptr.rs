//! Block pointers (`blkptr_t`), decoded field by field.
//!
//! Layout (include/sys/spa.h, the diagram above `blkptr_t`), 128 bytes:
//!
//! ```text
//! 0x00  dva[0]   (2 x u64)     0x30  blk_prop      0x48  blk_phys_birth
//! 0x10  dva[1]                 0x38  blk_pad[2]    0x50  blk_birth
//! 0x20  dva[2]                                     0x58  blk_fill
//!                                                  0x60  blk_cksum (4 x u64)
//! ```
//!
//! Reading through a block pointer (DVAs, checksums, decompression, gang
//! blocks) is `pool::Pool::read_block` (with `alloc`); this module only
//! decodes, including the payload of embedded pointers (`BPE`).

use crate::bytes::{u64_at, Endian};
use crate::checksum::Checksum;
use crate::Result;
use core::fmt;

/// Size of `blkptr_t` (`SPA_BLKPTRSHIFT` = 7).
pub const BLKPTR_SIZE: usize = 128;

/// `SPA_MINBLOCKSHIFT`: sizes and offsets count 512-byte sectors.
const SECTOR_SHIFT: u32 = 9;

/// Extracts `len` bits at `low` of `word` (`BF64_DECODE`, include/sys/spa.h).
fn bits(word: u64, low: u32, len: u32) -> u64 {
    (word >> low) & ((1u64 << len) - 1)
}

/// A data virtual address, `dva_t` (include/sys/spa.h): where one copy of a
/// block lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Dva(pub [u64; 2]);

impl Dva {
    /// Top-level vdev index (`DVA_GET_VDEV`: word 0, bits 32..64).
    pub fn vdev(&self) -> u64 {
        bits(self.0[0], 32, 32)
    }

    /// Gang/raidz grid (`DVA_GET_GRID`: word 0, bits 24..32).
    pub fn grid(&self) -> u64 {
        bits(self.0[0], 24, 8)
    }

    /// Allocated size in bytes (`DVA_GET_ASIZE`: word 0, bits 0..24, sectors).
    pub fn asize(&self) -> u64 {
        bits(self.0[0], 0, 24) << SECTOR_SHIFT
    }

    /// Byte offset in the vdev's allocatable space, after the front labels
    /// and boot area (`DVA_GET_OFFSET`: word 1, bits 0..63, sectors).
    pub fn offset(&self) -> u64 {
        bits(self.0[1], 0, 63) << SECTOR_SHIFT
    }

    /// Whether this copy is a gang block header (`DVA_GET_GANG`: word 1, bit 63).
    pub fn is_gang(&self) -> bool {
        bits(self.0[1], 63, 1) != 0
    }

    /// `DVA_IS_EMPTY`: both words zero.
    pub fn is_empty(&self) -> bool {
        self.0 == [0, 0]
    }

    /// `DVA_IS_VALID`: an allocated size that is not zero.
    pub fn is_valid(&self) -> bool {
        self.asize() != 0
    }
}

/// A decoded `blkptr_t` in its normal (not embedded) form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BlockPointer {
    /// Up to three copies.
    pub dva: [Dva; 3],
    /// `blk_prop`: sizes, types, byte order (see the accessors).
    pub prop: u64,
    /// `blk_pad[2]`: unused in a normal pointer, payload in an embedded one.
    pub pad: [u64; 2],
    /// `blk_phys_birth`: txg the data was physically written (0: same as
    /// `birth`).
    pub phys_birth: u64,
    /// `blk_birth`: logical birth txg.
    pub birth: u64,
    /// `blk_fill`: number of non-hole blocks beneath.
    pub fill: u64,
    /// `blk_cksum`.
    pub cksum: Checksum,
}

impl BlockPointer {
    /// Decodes the 128 bytes at the start of `buf` in byte order `endian`
    /// (the order of the structure holding the pointer).
    pub fn parse(buf: &[u8], endian: Endian) -> Result<BlockPointer> {
        let w = |i: usize| u64_at(buf, i * 8, endian);
        Ok(BlockPointer {
            dva: [Dva([w(0)?, w(1)?]), Dva([w(2)?, w(3)?]), Dva([w(4)?, w(5)?])],
            prop: w(6)?,
            pad: [w(7)?, w(8)?],
            phys_birth: w(9)?,
            birth: w(10)?,
            fill: w(11)?,
            cksum: Checksum([w(12)?, w(13)?, w(14)?, w(15)?]),
        })
    }

    /// Logical size in bytes (`BP_GET_LSIZE`: prop bits 0..16, sectors - 1).
    pub fn lsize(&self) -> u64 {
        (bits(self.prop, 0, 16) + 1) << SECTOR_SHIFT
    }

    /// Physical (compressed) size in bytes (`BP_GET_PSIZE`: bits 16..32).
    pub fn psize(&self) -> u64 {
        (bits(self.prop, 16, 16) + 1) << SECTOR_SHIFT
    }

    /// Compression function, `enum zio_compress` (`BP_GET_COMPRESS`: bits 32..39).
    pub fn compression(&self) -> u8 {
        bits(self.prop, 32, 7) as u8
    }

    /// Whether the data sits in the pointer itself (`BP_IS_EMBEDDED`: bit 39).
    pub fn is_embedded(&self) -> bool {
        bits(self.prop, 39, 1) != 0
    }

    /// Checksum function, `enum zio_checksum` (`BP_GET_CHECKSUM`: bits 40..48).
    pub fn checksum(&self) -> u8 {
        bits(self.prop, 40, 8) as u8
    }

    /// DMU object type, `dmu_object_type_t` (`BP_GET_TYPE`: bits 48..56).
    pub fn object_type(&self) -> u8 {
        bits(self.prop, 48, 8) as u8
    }

    /// Indirection level (`BP_GET_LEVEL`: bits 56..61).
    pub fn level(&self) -> u8 {
        bits(self.prop, 56, 5) as u8
    }

    /// Encrypted (`BP_IS_ENCRYPTED` family: bit 61).
    pub fn is_encrypted(&self) -> bool {
        bits(self.prop, 61, 1) != 0
    }

    /// Deduplicated (`BP_GET_DEDUP`: bit 62).
    pub fn is_dedup(&self) -> bool {
        bits(self.prop, 62, 1) != 0
    }

    /// Byte order of the block's contents (`BP_GET_BYTEORDER`: bit 63;
    /// 1 = little-endian, as `ZFS_HOST_BYTEORDER` on x86).
    pub fn byte_order(&self) -> Endian {
        if bits(self.prop, 63, 1) != 0 {
            Endian::Little
        } else {
            Endian::Big
        }
    }

    /// Physical birth txg, falling back to the logical one
    /// (`BP_GET_PHYSICAL_BIRTH`).
    pub fn physical_birth(&self) -> u64 {
        if self.phys_birth != 0 {
            self.phys_birth
        } else {
            self.birth
        }
    }

    /// A hole: no data, first DVA empty (`BP_IS_HOLE`, not embedded).
    pub fn is_hole(&self) -> bool {
        !self.is_embedded() && self.dva[0].is_empty()
    }

    /// Number of valid DVAs (copies).
    pub fn copies(&self) -> usize {
        self.dvas().iter().filter(|d| d.is_valid()).count()
    }

    /// `BP_USES_CRYPT` (bit 61): the block belongs to an encrypted dataset,
    /// encrypted or only authenticated (the same bit as
    /// [`is_encrypted`](Self::is_encrypted)).
    pub fn uses_crypt(&self) -> bool {
        self.is_encrypted()
    }

    /// `BP_IS_ENCRYPTED` (include/sys/spa.h): the contents are ciphertext,
    /// which is so for level-0 blocks of types with `ot_encrypt`
    /// ([`type_is_encrypted`]); indirect blocks and objsets of encrypted
    /// datasets are only authenticated (plaintext with a MAC).
    pub fn is_ciphertext(&self) -> bool {
        self.uses_crypt() && !self.is_embedded() && self.level() == 0 && type_is_encrypted(self.object_type())
    }

    /// The DVAs that can hold copies: all three, or two when the block is
    /// encrypted (`BP_GET_NDVAS`: an encrypted pointer keeps its salt and IV
    /// in `dva[2]`, include/sys/spa.h; an only authenticated one has three).
    pub fn dvas(&self) -> &[Dva] {
        if self.is_ciphertext() {
            &self.dva[..2]
        } else {
            &self.dva[..]
        }
    }

    /// `BP_GET_ASIZE`: the allocated size of every copy (0 for embedded).
    pub fn asize(&self) -> u64 {
        if self.is_embedded() {
            return 0;
        }
        self.dvas().iter().map(Dva::asize).fold(0, u64::wrapping_add)
    }

    /// `BP_GET_LSIZE`: the logical size, also of an embedded pointer.
    pub fn logical_size(&self) -> u64 {
        if self.is_embedded() {
            self.embedded_lsize()
        } else {
            self.lsize()
        }
    }

    /// `BP_GET_PSIZE`: the physical size (0 for an embedded pointer).
    pub fn physical_size(&self) -> u64 {
        if self.is_embedded() {
            0
        } else {
            self.psize()
        }
    }

    /// Embedded pointer: payload type (`BPE_GET_ETYPE`: bits 40..48;
    /// `BP_EMBEDDED_TYPE_DATA` = 0).
    pub fn embedded_type(&self) -> u8 {
        bits(self.prop, 40, 8) as u8
    }

    /// Embedded pointer: logical size in bytes (`BPE_GET_LSIZE`: bits 0..25, + 1).
    pub fn embedded_lsize(&self) -> u64 {
        bits(self.prop, 0, 25) + 1
    }

    /// Embedded pointer: payload size in bytes (`BPE_GET_PSIZE`: bits 25..32, + 1).
    pub fn embedded_psize(&self) -> u64 {
        bits(self.prop, 25, 7) + 1
    }

    /// Copies an embedded pointer's payload into `out` and returns its
    /// length (`decode_embedded_bp_compressed`, module/zcommon/blkptr.c):
    /// the payload fills every word but `blk_prop` and `blk_birth`
    /// (`BPE_PAYLOAD_SIZE` = 112 bytes), each word's bytes taken from the
    /// least significant up.
    pub fn embedded_payload(&self, out: &mut [u8; BPE_PAYLOAD_SIZE]) -> Result<usize> {
        if !self.is_embedded() || self.embedded_type() != 0 {
            return Err(crate::Error::BadEmbedded);
        }
        let psize = self.embedded_psize() as usize;
        if psize > BPE_PAYLOAD_SIZE {
            return Err(crate::Error::BadEmbedded);
        }
        let words = [
            self.dva[0].0[0],
            self.dva[0].0[1],
            self.dva[1].0[0],
            self.dva[1].0[1],
            self.dva[2].0[0],
            self.dva[2].0[1],
            self.pad[0],
            self.pad[1],
            self.phys_birth,
            self.fill,
            self.cksum.0[0],
            self.cksum.0[1],
            self.cksum.0[2],
            self.cksum.0[3],
        ];
        for (i, b) in out.iter_mut().enumerate().take(psize) {
            *b = (words[i / 8] >> ((i % 8) * 8)) as u8;
        }
        Ok(psize)
    }
}

/// `DMU_OT_IS_ENCRYPTED` (include/sys/dmu.h): new-style types carry the
/// `DMU_OT_ENCRYPTED` bit (0x20 with `DMU_OT_NEWTYPE`, 0x80); the legacy
/// ones take `ot_encrypt` from the `dmu_ot` table (module/zfs/dmu.c): the
/// ZIL, dnodes, V0 ACLs, plain files, directories, the delete queue, zvol
/// data, other uint8/uint64 arrays, ACLs, SYSACLs, FUID tables, user/group
/// used and quota, system attributes and their master node, registration
/// and layouts, and dedup'd blocks.
pub fn type_is_encrypted(ty: u8) -> bool {
    if ty & 0x80 != 0 {
        return ty & 0x20 != 0;
    }
    matches!(ty, 9 | 10 | 18 | 19 | 20 | 22 | 23 | 25 | 26 | 33 | 34 | 35 | 39 | 40 | 44..=47 | 49)
}

/// `BPE_PAYLOAD_SIZE` (include/sys/spa.h): 14 words of 8 bytes.
pub const BPE_PAYLOAD_SIZE: usize = 112;

/// Name of a checksum function (`zio_checksum_table`, module/zfs/zio_checksum.c).
pub fn checksum_name(id: u8) -> &'static str {
    match id {
        0 => "inherit",
        1 => "on",
        2 => "off",
        3 => "label",
        4 => "gang_header",
        5 => "zilog",
        6 => "fletcher2",
        7 => "fletcher4",
        8 => "sha256",
        9 => "zilog2",
        10 => "noparity",
        11 => "sha512",
        12 => "skein",
        13 => "edonr",
        14 => "blake3",
        _ => "UNKNOWN",
    }
}

/// Name of a compression function as zdb prints it (`zio_compress_table`,
/// module/zfs/zio_compress.c; `off` prints as `uncompressed`).
pub fn compression_name(id: u8) -> &'static str {
    match id {
        0 => "inherit",
        1 => "on",
        2 => "uncompressed",
        3 => "lzjb",
        4 => "empty",
        5 => "gzip-1",
        6 => "gzip-2",
        7 => "gzip-3",
        8 => "gzip-4",
        9 => "gzip-5",
        10 => "gzip-6",
        11 => "gzip-7",
        12 => "gzip-8",
        13 => "gzip-9",
        14 => "zle",
        15 => "lz4",
        16 => "zstd",
        _ => "UNKNOWN",
    }
}

impl fmt::Display for BlockPointer {
    /// A one-line summary in zdb's vocabulary: `DVA[i]=<vdev:offset:asize>`
    /// (hex), level and type, checksum, compression, byte order, sizes,
    /// births, fill and checksum words.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_embedded() {
            return write!(
                f,
                "EMBEDDED [L{} type {}] birth={}L",
                self.level(),
                self.object_type(),
                self.birth
            );
        }
        if self.is_hole() {
            return write!(
                f,
                "HOLE [L{} type {}] size={:x}L birth={}L",
                self.level(),
                self.object_type(),
                self.lsize(),
                self.birth
            );
        }
        for (i, d) in self.dva.iter().enumerate() {
            if d.is_valid() {
                write!(f, "DVA[{i}]=<{}:{:x}:{:x}> ", d.vdev(), d.offset(), d.asize())?;
            }
        }
        write!(
            f,
            "[L{} type {}] {} {} {} size={:x}L/{:x}P birth={}L/{}P fill={} cksum={}",
            self.level(),
            self.object_type(),
            checksum_name(self.checksum()),
            compression_name(self.compression()),
            self.byte_order().as_str(),
            self.lsize(),
            self.psize(),
            self.birth,
            self.physical_birth(),
            self.fill,
            self.cksum
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_fields() {
        // DVA[0]=<0:1000:400>, L0 objset (11), fletcher4 (7), off (2), BE,
        // 400L/400P, birth 4, fill 15: the v1 pool's first uberblock.
        let mut buf = [0u8; BLKPTR_SIZE];
        let put = |buf: &mut [u8], i: usize, v: u64| buf[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
        put(&mut buf, 0, 2); // asize 2 sectors
        put(&mut buf, 1, 0x1000 >> 9);
        let prop = 1 | 1 << 16 | 2 << 32 | 7 << 40 | 11 << 48;
        put(&mut buf, 6, prop);
        put(&mut buf, 10, 4);
        put(&mut buf, 11, 15);
        put(&mut buf, 12, 0xabc);
        let bp = BlockPointer::parse(&buf, Endian::Big).unwrap();
        assert_eq!(bp.dva[0].offset(), 0x1000);
        assert_eq!(bp.dva[0].asize(), 0x400);
        assert_eq!((bp.lsize(), bp.psize()), (0x400, 0x400));
        assert_eq!(bp.checksum(), 7);
        assert_eq!(bp.object_type(), 11);
        assert_eq!(bp.byte_order(), Endian::Big);
        assert_eq!(bp.copies(), 1);
        let s = alloc_free_display(&bp);
        assert!(s.starts_with("DVA[0]=<0:1000:400> [L0 type 11] fletcher4 uncompressed BE size=400L/400P birth=4L/4P fill=15 cksum=0000000000000abc:"));
        assert!(BlockPointer::parse(&buf[..127], Endian::Big).is_err());
    }

    #[test]
    fn embedded_payload_skips_prop_and_birth() {
        // Embedded, etype 0, lsize 20, psize 10, compression off.
        let prop = 19 | 9 << 25 | 2 << 32 | 1 << 39 | 1 << 63;
        let mut words = [0u64; 16];
        words[6] = prop;
        words[0] = u64::from_le_bytes(*b"abcdefgh");
        words[1] = u64::from_le_bytes(*b"ij\0\0\0\0\0\0");
        words[10] = 77;
        let mut buf = [0u8; BLKPTR_SIZE];
        for (i, w) in words.iter().enumerate() {
            buf[i * 8..i * 8 + 8].copy_from_slice(&w.to_be_bytes());
        }
        let bp = BlockPointer::parse(&buf, Endian::Big).unwrap();
        assert!(bp.is_embedded() && !bp.is_hole());
        assert_eq!((bp.embedded_lsize(), bp.embedded_psize()), (20, 10));
        let mut out = [0u8; BPE_PAYLOAD_SIZE];
        assert_eq!(bp.embedded_payload(&mut out), Ok(10));
        assert_eq!(&out[..10], b"abcdefghij");
        let mut other = bp;
        other.prop |= 3 << 40; // another payload type
        assert_eq!(other.embedded_payload(&mut out), Err(crate::Error::BadEmbedded));
        // Encrypted level-0 data has two DVAs; an authenticated indirect
        // block or objset of an encrypted dataset three.
        let enc = BlockPointer { prop: 1 << 61 | 19 << 48, ..Default::default() };
        assert_eq!(enc.dvas().len(), 2);
        assert!(enc.is_ciphertext());
        let ind = BlockPointer { prop: 1 << 61 | 19 << 48 | 1 << 56, ..Default::default() };
        assert_eq!(ind.dvas().len(), 3);
        let os = BlockPointer { prop: 1 << 61 | 11 << 48, ..Default::default() };
        assert!(os.uses_crypt() && !os.is_ciphertext());
        assert!(type_is_encrypted(0x80 | 0x20 | 0x40) && !type_is_encrypted(0x80 | 0x40));
    }

    fn alloc_free_display(bp: &BlockPointer) -> std::string::String {
        std::format!("{bp}")
    }
}
