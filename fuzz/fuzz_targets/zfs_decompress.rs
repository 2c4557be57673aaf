//! Arbitrary bytes into `osv-zfs`'s decompressors (lzjb, lz4, zle, zstd).
//!
//! Needs `osv-zfs` with the `alloc` feature for zstd.
//!
//! Input layout: byte 0 picks the function (`enum zio_compress` value),
//! bytes 1..3 the output size (little-endian u16, so up to 64 KiB), the rest
//! is the compressed block. Every decoder must fill or fail, never panic,
//! never write past the output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osv_zfs::compress::{decompress, lz4_block, lzjb, zle};

fuzz_target!(|data: &[u8]| {
    let [func, lo, hi, src @ ..] = data else {
        return;
    };
    let mut out = vec![0u8; usize::from(u16::from_le_bytes([*lo, *hi]))];
    let _ = decompress(*func, src, &mut out);
    let _ = lzjb(src, &mut out);
    let _ = zle(src, &mut out, 64);
    if let Ok(n) = lz4_block(src, &mut out) {
        assert!(n <= out.len());
    }
});
