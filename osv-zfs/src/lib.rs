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
//! **What exists now:** layers 1 and 2, for devices in either byte order:
//! labels with verified checksums (a corrupt copy is reported and the others
//! used), the XDR nvlist decoder (every `data_type_t`) and an encoder, the
//! uberblock ring and the choice of the active uberblock, block pointer
//! decoding, and the `osv-zfs labels` host tool. **Next:** reading blocks
//! through block pointers (DVAs, fletcher checksums, decompression, mirror
//! and raidz), then the MOS, datasets and the ZPL.
//!
//! # Design
//!
//! - Untrusted bytes in, no panics out: every structure is read through
//!   checked accessors, every count is bounded by the bytes that remain, and
//!   every failure is an [`Error`], a small `Copy` enum.
//! - Byte order is detected per structure (uberblock magic, checksum trailer
//!   magic, block pointer bit); nvlists are XDR, always big-endian.
//! - The crate reads through its own [`BlockDevice`] trait and depends on no
//!   other osv crate: a kernel implements it over virtio-blk, the host tool
//!   over files.
//! - Every on-disk fact cites the OpenZFS structure or file it comes from.
//!
//! # Features
//!
//! - (none): the checked parsers ([`checksum`], [`uberblock`], [`blkptr`],
//!   [`label::read_vdev_phys`], [`label::read_uberblock`]), no heap.
//! - `alloc`: the decoded `nvlist::NvList` and `label::VdevLabels`.
//! - `std`: `FileDevice`.
//! - `cli`: the `osv-zfs` binary.
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
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod blkptr;
mod bytes;
pub mod checksum;
pub mod device;
mod error;
pub mod label;
pub mod nvlist;
pub mod uberblock;

pub use bytes::Endian;
#[cfg(feature = "std")]
pub use device::FileDevice;
pub use device::{BlockDevice, MemDevice};
pub use error::{Error, Result};
