//! The OpenZFS on-disk format in Rust: read real pools, `no_std` at the core.
//!
//! A ZFS pool is read from the outside in. Each layer is found through the
//! one before it:
//!
//! 1. **Labels** ([`label`]): four 256 KiB copies on every vdev, each holding
//!    the pool's config as a packed [`nvlist`] (name, guids, the vdev tree)
//!    and a ring of uberblocks. Both are protected by an embedded SHA-256
//!    ([`checksum`]).
//! 2. **Uberblock** ([`uberblock`]): the newest valid one across all labels
//!    of all vdevs is the root of the pool; its block pointer ([`blkptr`])
//!    leads to the MOS.
//! 3. **MOS** (meta-object set): the pool-wide objects: object directory,
//!    config, space maps, feature flags, the DSL.
//! 4. **Datasets** (DSL directories and datasets): filesystems, snapshots,
//!    clones, each an objset of dnodes.
//! 5. **ZPL**: files, directories, symlinks and attributes inside a
//!    filesystem objset.
//!
//! **What exists now:** layers 1 to 5, read-only, for devices in either
//! byte order:
//!
//! - labels with verified checksums (a corrupt copy is reported and the
//!   others used), the XDR [`nvlist`] decoder and encoder, the uberblock
//!   ring and the choice of the active uberblock;
//! - block pointers ([`blkptr`]: normal, embedded, holes, gang, ditto
//!   copies), block checksums ([`checksum`]: fletcher2 and fletcher4 in both
//!   byte orders, SHA-256, the embedded checksums of labels, gang headers
//!   and ZIL blocks), decompression ([`compress`]: lzjb, lz4, zle, gzip, zstd);
//! - the vdev tree (`vdev`: single disk/file, mirror, raidz1/2/3 with up to
//!   three missing or corrupt columns rebuilt from parity P, Q and R) and
//!   `pool::BlockReader` (reads, and scrub reads of every copy);
//! - objsets and dnodes ([`dnode`]: bonus buffers, large dnodes, indirect
//!   trees with holes), micro and fat [`zap`] objects, the DSL ([`dsl`]:
//!   directories, datasets, snapshots, clones), read feature flags
//!   ([`feature`]: a pool needing one we lack is refused, naming it);
//! - `pool::Pool`: open a pool from its vdev devices, list its datasets;
//! - the ZPL ([`zpl`]: the master node, system attributes (registry,
//!   layouts, bonus and spill buffers) and the old `znode_phys_t` bonus,
//!   directory entries; `fs`: inodes, directories, file data with holes,
//!   symlinks, path lookup, a walk of the tree and the manifest, for heads,
//!   snapshots and clones; encrypted datasets are refused as such;
//!   extended attributes, in the hidden xattr directory or SA-stored
//!   (`ZPL_DXATTR`));
//! - `vfs` (feature `vfs`): a read-only mount of one ZPL dataset as an
//!   osv-vfs filesystem (`FsOps`/`VnodeOps`: lookup, readdir, read,
//!   getattr, readlink, statfs; every change `EROFS`);
//! - `traverse`: every block pointer reachable from the active uberblock,
//!   with its bookmark, as zdb's traversal (objset trees, datasets after
//!   their previous snapshot, intent log chains, deferred frees); `verify`:
//!   every copy of every block checked, our `zdb -bcc`;
//! - the host tool: `osv-zfs labels`, `datasets`, `ls`, `cat`, `manifest`,
//!   `verify`.
//!
//! **Next:** the ZIL's records, the writer.
//!
//! # Design
//!
//! - Untrusted bytes in, no panics out: every structure is read through
//!   checked accessors, every count is bounded by the bytes that remain, and
//!   every failure is an [`Error`], a small `Copy` enum. Recursion is
//!   bounded: nvlist nesting, vdev tree depth, indirect levels
//!   (`dn_nlevels` checked), gang nesting; walks are bounded in count (ZAP
//!   entries, DSL directories) and never revisit a directory.
//! - Nothing is trusted without its checksum: a block is returned only when
//!   it matched its block pointer's checksum on some copy (DVA, mirror side,
//!   raidz reconstruction); otherwise the read fails.
//! - Byte order is detected per structure (uberblock magic, checksum trailer
//!   magic, block pointer bit); nvlists are XDR, always big-endian.
//! - The crate reads through its own [`BlockDevice`] trait: a kernel
//!   implements it over virtio-blk, the host tool over files. Its one osv
//!   dependency is optional: `vfs` implements osv-vfs's filesystem traits.
//! - Every on-disk fact cites the OpenZFS structure or file it comes from.
//!
//! # Features
//!
//! - (none): the checked parsers ([`checksum`], [`uberblock`], [`blkptr`],
//!   [`label::read_vdev_phys`], [`label::read_uberblock`], [`dnode`],
//!   [`zap`], [`dsl`], [`zpl`]) and the lzjb/lz4/zle/gzip decoders, no heap.
//! - `alloc`: the decoded `nvlist::NvList` and `label::VdevLabels`, the
//!   vdev tree, `pool::BlockReader` and `pool::Pool`, the filesystem reader
//!   `fs`, `traverse`, `verify`, zstd (through `ruzstd`).
//! - `std`: `FileDevice`.
//! - `cli`: the `osv-zfs` binary.
//! - `vfs` (implies `alloc`): `vfs`, the osv-vfs mount (`no_std` + `alloc`).
//!
//! # Example
//!
//! Build a small single-label image in memory, then read it back:
//!
//! ```
//! # #[cfg(feature = "alloc")] {
//! use osv_zfs::checksum::fill_label_checksum;
//! use osv_zfs::label::{label_offset, VdevLabels, VDEV_PHYS_OFFSET, VDEV_PHYS_SIZE};
//! use osv_zfs::nvlist::{NvList, NvValue};
//! use osv_zfs::{Endian, MemDevice};
//!
//! let config = NvList::new()
//!     .with("name", NvValue::String("tank".into()))
//!     .with("txg", NvValue::Uint64(4));
//! let mut disk = vec![0u8; 4 << 20];
//! let off = label_offset(disk.len() as u64, 0, VDEV_PHYS_OFFSET).unwrap() as usize;
//! let phys = &mut disk[off..off + VDEV_PHYS_SIZE];
//! let packed = config.pack(Endian::Little).unwrap();
//! phys[..packed.len()].copy_from_slice(&packed);
//! fill_label_checksum(phys, off as u64, Endian::Little).unwrap();
//!
//! let labels = VdevLabels::read(&mut MemDevice(disk)).unwrap();
//! assert!(labels.labels[0].is_valid());
//! assert!(!labels.labels[1].is_valid()); // never written: no checksum
//! let config = labels.config().unwrap();
//! assert_eq!(config.get_str("name"), Some("tank"));
//! assert_eq!(config.get_u64("txg"), Some(4));
//! assert!(labels.active_uberblock().is_none()); // no uberblock written
//! # }
//! ```
//!
//! Blocks are checked against their block pointer's checksum, then
//! decompressed (both without a heap):
//!
//! ```
//! use osv_zfs::checksum::fletcher_4;
//! use osv_zfs::compress::{decompress, func};
//! use osv_zfs::Endian;
//!
//! // ZFS's lz4: a big-endian length, then an LZ4 block (a literal 'z', a
//! // match of 7 at offset 1, a final literal '!').
//! let block = [0, 0, 0, 6, 0x13, b'z', 1, 0, 0x10, b'!'];
//! let mut out = [0u8; 9];
//! decompress(func::LZ4, &block, &mut out).unwrap();
//! assert_eq!(&out, b"zzzzzzzz!");
//! // fletcher4 over the words 1, 2: a = 3, b = 4, c = 5, d = 6.
//! assert_eq!(fletcher_4(&[1, 0, 0, 0, 2, 0, 0, 0], Endian::Little).0, [3, 4, 5, 6]);
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod blkptr;
mod bytes;
pub mod checksum;
pub mod compress;
pub mod device;
pub mod dnode;
pub mod dsl;
mod error;
pub mod feature;
mod fletcher_simd;
#[cfg(feature = "alloc")]
pub mod fs;
pub mod label;
pub mod nvlist;
#[cfg(feature = "alloc")]
pub mod pool;
#[cfg(feature = "alloc")]
pub mod traverse;
pub mod uberblock;
#[cfg(feature = "alloc")]
pub mod vdev;
#[cfg(feature = "alloc")]
pub mod verify;
#[cfg(feature = "vfs")]
pub mod vfs;
pub mod zap;
pub mod zpl;

pub use bytes::Endian;
#[cfg(feature = "std")]
pub use device::FileDevice;
pub use device::{BlockDevice, MemDevice};
pub use error::{Error, Result};
