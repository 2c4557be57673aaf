//! Thread-local storage blocks, x86-64 "variant II" (Ulrich Drepper, *ELF
//! Handling For Thread-Local Storage*, §3.4.6 and §4.3; System V x86-64 psABI
//! §3.4.6 / the TLS supplement): each thread's TLS block sits just below its
//! thread pointer, which the `FS` base holds; the word at `%fs:0` is the
//! thread pointer itself (the thread control block's self pointer), and a
//! local-exec access is `%fs:sym@tpoff` with a negative `tpoff` the static
//! linker computed.
//!
//! This module is the arithmetic, so it runs in host tests: from what the
//! linker placed ([`TlsImage`]) it derives a [`TlsLayout`] and fills a block
//! (the `.tdata` initialisation image, `.tbss` zeroed, the self pointer).
//! The runtime (`rt::tls`, feature `rt`) reads the linker's symbols and
//! loads the `FS` base; the kernel allocates one block per thread.
//!
//! How the block size is found: the linker rounds the TLS segment's size up
//! to an alignment of its own choosing before computing every `tpoff`
//! (for GNU ld on x86-64, `elf_x86_64_tpoff`: the size aligned to the static
//! TLS alignment). Rather than repeat that rule, the runtime asks the
//! linker: a probe variable at a known offset in `.tdata` has its `tpoff`
//! resolved into an instruction, and `offset - tpoff` is the distance from
//! the block's start to the thread pointer that all accesses assume.

/// Bytes of the thread control block above the thread pointer: the self
/// pointer at 0, and room up to `%fs:0x28` (where GCC-compiled code keeps
/// its stack-protector canary) and beyond; zeroed otherwise.
pub const TCB_SIZE: usize = 64;

/// What the linker placed: the TLS segment and the probe's placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsImage {
    /// Bytes of `.tdata` (the initialisation image, copied per thread).
    pub tdata_len: usize,
    /// Bytes of `.tbss` after it (zero-initialised per thread).
    pub tbss_len: usize,
    /// The segment's alignment (the alignment the block must have).
    pub align: usize,
    /// The probe's offset from the start of `.tdata`.
    pub probe_offset: usize,
    /// The probe's `tpoff` as the linker resolved it (negative).
    pub probe_tpoff: i64,
}

/// Why the linker's TLS placement cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsError {
    /// The alignment is not a power of two, or is above [`MAX_ALIGN`].
    BadAlign,
    /// The probe's `tpoff` does not put the whole segment below the thread
    /// pointer (a linker that is not variant II, or a wrong probe).
    BadTpoff,
    /// The sizes overflow.
    TooLarge,
}

/// The largest block (image and rounding) accepted: 1 GiB.
pub const MAX_BLOCK: usize = 1 << 30;

/// The largest segment alignment a block is allocated with.
pub const MAX_ALIGN: usize = 4096;

/// Where things go in one thread's block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsLayout {
    /// Bytes from the block's start to the thread pointer (the image,
    /// zero-filled past `.tdata`, plus the linker's rounding).
    pub static_size: usize,
    /// Bytes of `.tdata` copied to the block's start.
    pub tdata_len: usize,
    /// The block's alignment.
    pub align: usize,
}

impl TlsLayout {
    /// Checks the linker's placement and derives the layout.
    pub fn new(img: TlsImage) -> Result<Self, TlsError> {
        if !img.align.is_power_of_two() || img.align > MAX_ALIGN {
            return Err(TlsError::BadAlign);
        }
        let seg = img.tdata_len.checked_add(img.tbss_len).ok_or(TlsError::TooLarge)?;
        if img.probe_offset.checked_add(8).is_none_or(|end| end > img.tdata_len) {
            return Err(TlsError::BadTpoff);
        }
        // Variant II: tp + tpoff(sym) = block + offset(sym), so the block
        // starts `offset - tpoff` bytes below tp.
        if img.probe_tpoff >= 0 {
            return Err(TlsError::BadTpoff);
        }
        let below = i128::from(img.probe_offset as u64) - i128::from(img.probe_tpoff);
        let static_size =
            usize::try_from(below).ok().filter(|&n| n <= MAX_BLOCK).ok_or(TlsError::TooLarge)?;
        if static_size < seg {
            return Err(TlsError::BadTpoff);
        }
        // The thread pointer itself must keep the segment's alignment
        // relative to the block (`tp - static_size` is the aligned start).
        if !static_size.is_multiple_of(img.align.min(16)) {
            return Err(TlsError::BadTpoff);
        }
        static_size.checked_add(TCB_SIZE).ok_or(TlsError::TooLarge)?;
        Ok(TlsLayout { static_size, tdata_len: img.tdata_len, align: img.align.max(16) })
    }

    /// Bytes of one block (image and TCB).
    pub fn block_size(&self) -> usize {
        self.static_size + TCB_SIZE
    }

    /// Fills `block` (which lives at address `block_addr`, aligned to
    /// [`align`](Self::align)): `tdata` at the start, zeros up to the thread
    /// pointer, the TCB with its self pointer. Returns the thread pointer.
    ///
    /// `None` if `block` is not [`block_size`](Self::block_size) bytes,
    /// `tdata` is not `tdata_len` bytes, or `block_addr` is misaligned.
    pub fn fill(&self, block: &mut [u8], block_addr: u64, tdata: &[u8]) -> Option<u64> {
        if block.len() != self.block_size()
            || tdata.len() != self.tdata_len
            || !block_addr.is_multiple_of(self.align as u64)
        {
            return None;
        }
        let tp = block_addr.checked_add(self.static_size as u64)?;
        let (image, tcb) = block.split_at_mut(self.static_size);
        image[..tdata.len()].copy_from_slice(tdata);
        image[tdata.len()..].fill(0);
        tcb.fill(0);
        tcb[..8].copy_from_slice(&tp.to_le_bytes());
        Some(tp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn img(tdata_len: usize, tbss_len: usize, align: usize, probe_offset: usize, tpoff: i64) -> TlsImage {
        TlsImage { tdata_len, tbss_len, align, probe_offset, probe_tpoff: tpoff }
    }

    #[test]
    fn probe_at_start_of_a_16_byte_segment() {
        // GNU ld: size 16 rounded to 16, probe at offset 0: tpoff -16.
        let l = TlsLayout::new(img(8, 8, 8, 0, -16)).unwrap();
        assert_eq!(l.static_size, 16);
        assert_eq!(l.block_size(), 16 + TCB_SIZE);
        let mut b = vec![0xAAu8; l.block_size()];
        let tp = l.fill(&mut b, 0x1000, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(tp, 0x1010);
        assert_eq!(&b[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[8..16], &[0; 8], ".tbss zeroed");
        assert_eq!(&b[16..24], &0x1010u64.to_le_bytes(), "self pointer");
        assert!(b[24..].iter().all(|&x| x == 0));
    }

    #[test]
    fn rejects_what_is_not_variant_ii() {
        assert_eq!(TlsLayout::new(img(8, 0, 8, 0, 8)), Err(TlsError::BadTpoff), "positive tpoff");
        assert_eq!(TlsLayout::new(img(8, 64, 8, 0, -16)), Err(TlsError::BadTpoff), "segment above tp");
        assert_eq!(TlsLayout::new(img(8, 0, 8, 4, -16)), Err(TlsError::BadTpoff), "probe past .tdata");
        assert_eq!(TlsLayout::new(img(8, 0, 24, 0, -32)), Err(TlsError::BadAlign));
        assert_eq!(TlsLayout::new(img(8, 0, 8192, 0, -8192)), Err(TlsError::BadAlign));
        assert_eq!(TlsLayout::new(img(8, 0, 16, 0, -24)), Err(TlsError::BadTpoff), "tp misaligned");
        assert_eq!(TlsLayout::new(img(8, 0, 16, 0, i64::MIN)), Err(TlsError::TooLarge));
    }

    #[test]
    fn fill_checks_its_arguments() {
        let l = TlsLayout::new(img(8, 8, 16, 0, -16)).unwrap();
        let mut b = vec![0u8; l.block_size()];
        assert_eq!(l.fill(&mut b, 0x1008, &[0; 8]), None, "misaligned block");
        assert_eq!(l.fill(&mut b, 0x1000, &[0; 4]), None, "short image");
        assert_eq!(l.fill(&mut b[1..], 0x1000, &[0; 8]), None, "short block");
    }

    proptest! {
        /// Against a model of the access rule: for any placement a variant-II
        /// linker could make, every byte of the segment is found at
        /// `tp + tpoff(byte)` in the filled block, with `.tdata`'s value or 0.
        #[test]
        fn every_segment_byte_is_at_tp_plus_tpoff(
            tdata_words in 1usize..16, tbss in 0usize..200, align_log in 3u32..7,
            round_log in 3u32..7, probe_word in 0usize..16, seed in any::<u8>(),
        ) {
            let align = 1usize << align_log;
            let tdata_len = tdata_words * 8;
            let probe_offset = (probe_word % tdata_words) * 8;
            // The linker's rounding: some power of two at least the alignment's.
            let round = (1usize << round_log).max(align);
            let size = (tdata_len + tbss).next_multiple_of(round);
            let tpoff_of = |off: usize| off as i64 - size as i64;
            let l = TlsLayout::new(img(tdata_len, tbss, align, probe_offset, tpoff_of(probe_offset))).unwrap();
            prop_assert_eq!(l.static_size, size);
            let tdata: Vec<u8> = (0..tdata_len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
            let base = 0x10_0000u64;
            let mut b = vec![0x55u8; l.block_size()];
            let tp = l.fill(&mut b, base, &tdata).unwrap();
            let model = tdata.iter().copied().chain(core::iter::repeat_n(0, tbss));
            for (off, want) in model.enumerate() {
                let addr = (tp as i64 + tpoff_of(off)) as u64;
                prop_assert_eq!(b[(addr - base) as usize], want);
            }
            prop_assert_eq!(&b[(tp - base) as usize..][..8], &tp.to_le_bytes()[..]);
            prop_assert!(tp.is_multiple_of(align.min(16) as u64));
        }
    }
}
