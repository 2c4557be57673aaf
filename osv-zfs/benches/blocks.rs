//! Block checksums and decompression against a plain copy of the same
//! 128 KiB, in the same run (GB/s via criterion's byte throughput).
//!
//! The decompression inputs are real blocks of the test pools (the largest
//! lzjb, lz4 and zstd block of `$OSV_TESTDATA/zfs`, expanded by the tests
//! into the target's scratch directory); without them those benches are
//! skipped with a message.
//!
//! ```sh
//! cargo bench -p osv-zfs --features std --bench blocks -- --warm-up-time 1 --measurement-time 2
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use osv_zfs::checksum::{fletcher_2, fletcher_4, fletcher_4_scalar, sha256};
use osv_zfs::compress::{decompress, func};
use osv_zfs::pool::Pool;
use osv_zfs::traverse::{traverse, Limits};
use osv_zfs::{Endian, FileDevice};
use std::hint::black_box;
use std::path::PathBuf;

const SIZE: usize = 128 << 10;

fn checksums(c: &mut Criterion) {
    let data: Vec<u8> = (0..SIZE).map(|i| ((i * 2_654_435_761usize) >> 13) as u8).collect();
    let mut g = c.benchmark_group("checksum_128k");
    g.throughput(Throughput::Bytes(SIZE as u64));
    let mut dst = vec![0u8; SIZE];
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&data));
            black_box(&dst);
        })
    });
    g.bench_function("fletcher4_native", |b| b.iter(|| fletcher_4(black_box(&data), Endian::Little)));
    g.bench_function("fletcher4_byteswap", |b| b.iter(|| fletcher_4(black_box(&data), Endian::Big)));
    g.bench_function("fletcher4_scalar_loop", |b| {
        b.iter(|| fletcher_4_scalar(black_box(&data), Endian::Little))
    });
    g.bench_function("fletcher2_native", |b| b.iter(|| fletcher_2(black_box(&data), Endian::Little)));
    g.bench_function("sha256", |b| b.iter(|| sha256(black_box(&data))));
    g.finish();
}

/// The largest block of each compression function in the test pools:
/// (function, physical bytes, logical size).
fn real_blocks() -> Vec<(u8, Vec<u8>, usize)> {
    let root = PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/osv-zfs-testdata"));
    let Ok(dirs) = std::fs::read_dir(&root) else { return Vec::new() };
    let mut best: Vec<(u8, Vec<u8>, usize)> = Vec::new();
    for dir in dirs.flatten() {
        // Single-directory pools only (the mirror/raidz pools span several).
        let mut files = Vec::new();
        let mut stack = vec![dir.path()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    files.push(e.path());
                }
            }
        }
        let Ok(devs) = files.iter().map(FileDevice::open).collect::<Result<Vec<_>, _>>() else { continue };
        let Ok(mut pool) = Pool::open(devs) else { continue };
        let mut found = Vec::new();
        traverse(&mut pool, Limits::default(), &mut |reader, v| {
            let bp = v.bp;
            let f = bp.compression();
            if bp.is_embedded() || bp.is_ciphertext() || ![func::LZJB, func::LZ4, func::ZSTD].contains(&f) {
                return;
            }
            if let Ok(d) = reader.scrub_block(bp).data {
                found.push((f, d, bp.lsize() as usize));
            }
        });
        for (f, d, l) in found {
            match best.iter_mut().find(|(g, _, _)| *g == f) {
                Some(b) if b.2 >= l => {}
                Some(b) => *b = (f, d, l),
                None => best.push((f, d, l)),
            }
        }
    }
    best
}

fn decompression(c: &mut Criterion) {
    let blocks = real_blocks();
    if blocks.is_empty() {
        eprintln!("SKIP decompression benches: no test pools expanded (run cargo test -p osv-zfs --features std first)");
        return;
    }
    let mut g = c.benchmark_group("decompress");
    for (f, src, lsize) in blocks {
        let name = osv_zfs::blkptr::compression_name(f);
        g.throughput(Throughput::Bytes(lsize as u64));
        let mut out = vec![0u8; lsize];
        let mut copy = vec![0u8; lsize];
        let plain = vec![0x5au8; lsize];
        g.bench_function(BenchmarkId::new(format!("memcpy_as_{name}"), lsize), |b| {
            b.iter(|| {
                copy.copy_from_slice(black_box(&plain));
                black_box(&copy);
            })
        });
        g.bench_function(BenchmarkId::new(name, format!("{lsize}L/{}P", src.len())), |b| {
            b.iter(|| decompress(f, black_box(&src), &mut out).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, checksums, decompression);
criterion_main!(benches);
