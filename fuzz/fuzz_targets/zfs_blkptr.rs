//! Arbitrary bytes into `osv-zfs`'s block pointer decoding and the whole
//! block read path (DVA → device, checksum, decompression, embedded
//! payloads, gang headers).
//!
//! Needs `osv-zfs` with the `alloc` feature (`BlockReader`, `Vdev`).
//!
//! Input layout: the first 128 bytes are a block pointer (little-endian
//! words), the rest is the content of the data area of a single-file vdev.
//! Random checksums almost never match, so the target also rewrites the
//! pointer to address the content at data-area offset 0 with a correct
//! fletcher4 checksum, keeping its fuzzed compression, type, level and
//! flags: the decompressors and the gang path then run on fuzzed bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osv_zfs::blkptr::{BlockPointer, Dva, BPE_PAYLOAD_SIZE};
use osv_zfs::checksum::fletcher_4;
use osv_zfs::nvlist::{NvList, NvValue};
use osv_zfs::pool::BlockReader;
use osv_zfs::vdev::{Vdev, VDEV_LABEL_START_SIZE};
use osv_zfs::{Endian, MemDevice};

fuzz_target!(|data: &[u8]| {
    for endian in [Endian::Little, Endian::Big] {
        if let Ok(bp) = BlockPointer::parse(data, endian) {
            let _ = bp.to_string();
            let _ = bp.dvas();
            let mut payload = [0u8; BPE_PAYLOAD_SIZE];
            let _ = bp.embedded_payload(&mut payload);
        }
    }
    let Ok(mut bp) = BlockPointer::parse(data, Endian::Little) else {
        return;
    };
    let content = &data[128..];
    let tree = NvList::new()
        .with("type", NvValue::String("file".into()))
        .with("id", NvValue::Uint64(0))
        .with("guid", NvValue::Uint64(1))
        .with("ashift", NvValue::Uint64(9));
    let mut vdev = Vdev::from_config(&tree).expect("a leaf vdev");
    vdev.attach(1, 0);
    let mut disk = vec![0u8; VDEV_LABEL_START_SIZE as usize + 64 * 1024];
    let n = content.len().min(64 * 1024);
    let base = VDEV_LABEL_START_SIZE as usize;
    disk[base..base + n].copy_from_slice(&content[..n]);
    let mut reader = BlockReader::new(vec![MemDevice(disk)], vec![Some(vdev)]);
    // As fuzzed: usually a checksum or range error, never a panic.
    let _ = reader.read_block(&bp);
    // Rewritten to point at the content with a valid checksum.
    if !bp.is_embedded() && n >= 512 {
        let sectors = (n / 512) as u64;
        let gang = bp.dva[0].is_gang();
        bp.dva = [Dva([sectors, u64::from(gang) << 63]), Dva::default(), Dva::default()];
        bp.prop = (bp.prop & !0xffff_ffff & !(0xff << 40)) | (sectors - 1) << 16 | (bp.prop & 0xffff) | 7 << 40;
        let psize = bp.psize() as usize;
        bp.cksum = fletcher_4(&disk_copy(content, psize), bp.byte_order());
        let _ = reader.read_block(&bp);
    }
});

/// The first `len` bytes of the data area as the reader will see them.
fn disk_copy(content: &[u8], len: usize) -> Vec<u8> {
    let mut v = content[..len.min(content.len())].to_vec();
    v.resize(len, 0);
    v
}
