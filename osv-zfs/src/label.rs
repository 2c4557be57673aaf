//! Vdev labels: where a pool starts.
//!
//! Every leaf vdev carries four copies of a 256 KiB label, `vdev_label_t`
//! (include/sys/vdev_impl.h): two at the front, two at the end, so a write
//! torn at either end leaves good copies (module/zfs/vdev_label.c, the big
//! comment at the top). One label:
//!
//! ```text
//! 0       8 KiB   vl_pad1        (blank, for VTOC/EFI labels)
//! 8 KiB   8 KiB   vl_be          (boot environment block)
//! 16 KiB  112 KiB vl_vdev_phys   packed XDR nvlist + zio_eck_t (SHA-256)
//! 128 KiB 128 KiB vl_uberblock   ring of uberblock slots, each with zio_eck_t
//! ```
//!
//! Label `l` of a device of `psize` bytes (rounded down to a multiple of
//! 256 KiB) starts at `l * 256 KiB`, plus `psize - 4 * 256 KiB` for labels 2
//! and 3 (`vdev_label_offset`, vdev_label.c). Checksums are verified with
//! the device byte offset of the checked region as verifier
//! ([`crate::checksum`]).
//!
//! Without `alloc` this module offers the checked building blocks
//! ([`read_vdev_phys`], [`read_uberblock`]); with it, `VdevLabels::read`
//! reads and decodes all four labels of a device.

use crate::checksum::verify_label_checksum;
use crate::device::BlockDevice;
use crate::uberblock::Uberblock;
use crate::{Error, Result};

/// `sizeof (vdev_label_t)`: 256 KiB.
pub const VDEV_LABEL_SIZE: u64 = 256 << 10;
/// `VDEV_LABELS`: four copies.
pub const VDEV_LABELS: usize = 4;
/// `offsetof(vdev_label_t, vl_vdev_phys)`: after `vl_pad1` and `vl_be`
/// (`VDEV_SKIP_SIZE` = 2 * `VDEV_PAD_SIZE`).
pub const VDEV_PHYS_OFFSET: u64 = 16 << 10;
/// `VDEV_PHYS_SIZE`: the nvlist area including its `zio_eck_t`.
pub const VDEV_PHYS_SIZE: usize = 112 << 10;
/// `offsetof(vdev_label_t, vl_uberblock)`.
pub const VDEV_UBERBLOCK_RING_OFFSET: u64 = 128 << 10;
/// `VDEV_UBERBLOCK_RING`: size of the ring.
pub const VDEV_UBERBLOCK_RING: u64 = 128 << 10;
/// `SPA_MINBLOCKSHIFT`: the ashift zdb assumes when a label has none.
pub const SPA_MINBLOCKSHIFT: u64 = 9;

/// The device size labels are placed against: `size` rounded down to a
/// multiple of the label size (`vdev_open` aligns `vdev_psize` so; zdb does
/// the same with `P2ALIGN`).
pub fn label_psize(size: u64) -> u64 {
    size & !(VDEV_LABEL_SIZE - 1)
}

/// Device byte offset of byte `offset` within label `l`
/// (`vdev_label_offset`, module/zfs/vdev_label.c). `None` when `l` is not a
/// label, `offset` is outside it, or `psize` cannot hold four labels.
pub fn label_offset(psize: u64, l: usize, offset: u64) -> Option<u64> {
    if l >= VDEV_LABELS || offset >= VDEV_LABEL_SIZE || psize < VDEV_LABELS as u64 * VDEV_LABEL_SIZE {
        return None;
    }
    let base = l as u64 * VDEV_LABEL_SIZE;
    let tail = if l < VDEV_LABELS / 2 { 0 } else { psize - VDEV_LABELS as u64 * VDEV_LABEL_SIZE };
    Some(offset + base + tail)
}

/// Number of uberblock slots in a ring for slot size shift `shift`
/// (`VDEV_UBERBLOCK_COUNT`).
pub fn uberblock_count(shift: u32) -> usize {
    (VDEV_UBERBLOCK_RING >> shift) as usize
}

/// Reads label `l`'s `vdev_phys_t` into `buf` and verifies its checksum.
/// On success `buf` holds the packed nvlist (and the trailer).
pub fn read_vdev_phys<D: BlockDevice + ?Sized>(
    dev: &mut D,
    l: usize,
    buf: &mut [u8; VDEV_PHYS_SIZE],
) -> Result {
    let psize = label_psize(dev.size());
    let off = label_offset(psize, l, VDEV_PHYS_OFFSET).ok_or(Error::DeviceTooSmall)?;
    dev.read_at(off, buf)?;
    verify_label_checksum(buf, off).map(|_| ())
}

/// Reads uberblock slot `n` of label `l` (slot size `1 << shift`, see
/// [`crate::uberblock::slot_shift`]) into `buf`, verifies its checksum and
/// decodes it. `buf` must be exactly one slot long.
pub fn read_uberblock<D: BlockDevice + ?Sized>(
    dev: &mut D,
    l: usize,
    n: usize,
    buf: &mut [u8],
) -> Result<Uberblock> {
    let shift = buf.len().trailing_zeros();
    if !buf.len().is_power_of_two() || n >= uberblock_count(shift) {
        return Err(Error::BadLength);
    }
    let psize = label_psize(dev.size());
    let within = VDEV_UBERBLOCK_RING_OFFSET + ((n as u64) << shift);
    let off = label_offset(psize, l, within).ok_or(Error::DeviceTooSmall)?;
    dev.read_at(off, buf)?;
    parse_uberblock_slot(buf, off)
}

/// Verifies and decodes one uberblock slot read from device byte `offset`.
pub fn parse_uberblock_slot(slot: &[u8], offset: u64) -> Result<Uberblock> {
    verify_label_checksum(slot, offset)?;
    Uberblock::parse(slot)
}

#[cfg(feature = "alloc")]
pub use self::heap::*;

#[cfg(feature = "alloc")]
mod heap {
    use super::*;
    use crate::nvlist::NvList;
    use crate::uberblock::slot_shift;
    use alloc::vec;
    use alloc::vec::Vec;

    /// One of the four labels of a device, decoded.
    #[derive(Debug, Clone)]
    pub struct Label {
        /// Which copy (0..4).
        pub index: usize,
        /// Device byte offset of the label.
        pub offset: u64,
        /// The config nvlist, or why it is unusable: a read error,
        /// [`Error::BadChecksum`]/[`Error::BadEckMagic`] for a corrupt
        /// `vdev_phys_t`, or the nvlist decode error.
        pub config: Result<NvList>,
        /// The uberblock slot size shift used for this label's ring.
        pub uberblock_shift: u32,
        /// Every slot of the ring: the uberblock, or why it is not valid
        /// (an empty slot fails with [`Error::BadEckMagic`]).
        pub uberblocks: Vec<Result<Uberblock>>,
    }

    impl Label {
        /// Whether the label's config was read, verified and decoded.
        pub fn is_valid(&self) -> bool {
            self.config.is_ok()
        }

        /// The slots holding a verified uberblock, with their index.
        pub fn valid_uberblocks(&self) -> impl Iterator<Item = (usize, &Uberblock)> {
            self.uberblocks.iter().enumerate().filter_map(|(i, u)| u.as_ref().ok().map(|u| (i, u)))
        }
    }

    /// Where the active uberblock was found.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ActiveUberblock {
        /// Label index.
        pub label: usize,
        /// Slot in that label's ring.
        pub slot: usize,
        /// The uberblock.
        pub uberblock: Uberblock,
    }

    /// The four labels of one device.
    #[derive(Debug, Clone)]
    pub struct VdevLabels {
        /// Device size in bytes.
        pub size: u64,
        /// The size labels are placed against ([`label_psize`]).
        pub psize: u64,
        /// Labels 0 to 3.
        pub labels: Vec<Label>,
    }

    fn ashift_of(config: &NvList) -> Option<u64> {
        // ZPOOL_CONFIG_VDEV_TREE / ZPOOL_CONFIG_ASHIFT (include/sys/fs/zfs.h):
        // the top-level vdev's ashift, as dump_label in cmd/zdb/zdb.c reads it.
        config.get_nvlist("vdev_tree")?.get_u64("ashift")
    }

    impl VdevLabels {
        /// Reads and checks all four labels of `dev`. Fails only when the
        /// device cannot hold labels at all; a corrupt or unreadable label
        /// is recorded in its [`Label`] and the others are still read.
        pub fn read<D: BlockDevice + ?Sized>(dev: &mut D) -> Result<VdevLabels> {
            let size = dev.size();
            let psize = label_psize(size);
            if label_offset(psize, VDEV_LABELS - 1, 0).is_none() {
                return Err(Error::DeviceTooSmall);
            }
            let mut raw: Vec<Result<Vec<u8>>> = Vec::with_capacity(VDEV_LABELS);
            let mut configs: Vec<Result<NvList>> = Vec::with_capacity(VDEV_LABELS);
            for l in 0..VDEV_LABELS {
                let off = label_offset(psize, l, 0).ok_or(Error::DeviceTooSmall)?;
                let mut buf = vec![0u8; VDEV_LABEL_SIZE as usize];
                let read = dev.read_at(off, &mut buf).map(|_| buf);
                configs.push(match &read {
                    Ok(buf) => decode_config(buf, off),
                    Err(e) => Err(*e),
                });
                raw.push(read);
            }
            // A label without a usable config still has a ring; size its
            // slots from the device's other labels (zdb falls back to
            // SPA_MINBLOCKSHIFT there; every pool at hand agrees).
            let fallback = configs
                .iter()
                .filter_map(|c| c.as_ref().ok().and_then(ashift_of))
                .next()
                .unwrap_or(SPA_MINBLOCKSHIFT);
            let mut labels = Vec::with_capacity(VDEV_LABELS);
            for (l, (read, config)) in raw.into_iter().zip(configs).enumerate() {
                let off = label_offset(psize, l, 0).ok_or(Error::DeviceTooSmall)?;
                let ashift = config.as_ref().ok().and_then(ashift_of).unwrap_or(fallback);
                let shift = slot_shift(ashift);
                let uberblocks = match &read {
                    Ok(buf) => ring(buf, off, shift),
                    Err(e) => vec![Err(*e); uberblock_count(shift)],
                };
                labels.push(Label { index: l, offset: off, config, uberblock_shift: shift, uberblocks });
            }
            Ok(VdevLabels { size, psize, labels })
        }

        /// The config of the first valid label.
        pub fn config(&self) -> Option<&NvList> {
            self.labels.iter().find_map(|l| l.config.as_ref().ok())
        }

        /// The most recent verified uberblock of any label
        /// (`vdev_uberblock_load`, vdev_label.c: greatest by
        /// [`Uberblock::cmp_active`]; on a tie the first found is kept).
        pub fn active_uberblock(&self) -> Option<ActiveUberblock> {
            let mut best: Option<ActiveUberblock> = None;
            for label in &self.labels {
                for (slot, ub) in label.valid_uberblocks() {
                    if !ub.is_selectable() {
                        continue;
                    }
                    let better = match &best {
                        None => true,
                        Some(b) => ub.cmp_active(&b.uberblock).is_gt(),
                    };
                    if better {
                        best = Some(ActiveUberblock { label: label.index, slot, uberblock: *ub });
                    }
                }
            }
            best
        }
    }

    /// Verifies and decodes the `vdev_phys_t` of a whole label read from
    /// device byte `label_off`.
    fn decode_config(label: &[u8], label_off: u64) -> Result<NvList> {
        let start = VDEV_PHYS_OFFSET as usize;
        let phys = label.get(start..start + VDEV_PHYS_SIZE).ok_or(Error::Truncated)?;
        verify_label_checksum(phys, label_off + VDEV_PHYS_OFFSET)?;
        NvList::unpack(phys)
    }

    /// Verifies and decodes every slot of a label's ring.
    fn ring(label: &[u8], label_off: u64, shift: u32) -> Vec<Result<Uberblock>> {
        let size = 1usize << shift;
        (0..uberblock_count(shift))
            .map(|n| {
                let within = VDEV_UBERBLOCK_RING_OFFSET as usize + n * size;
                let slot = label.get(within..within + size).ok_or(Error::Truncated)?;
                parse_uberblock_slot(slot, label_off + within as u64)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_vdev_label_offset() {
        let psize = label_psize(64 << 20);
        assert_eq!(label_offset(psize, 0, 0), Some(0));
        assert_eq!(label_offset(psize, 1, 16 << 10), Some((256 + 16) << 10));
        assert_eq!(label_offset(psize, 2, 0), Some((64 << 20) - (512 << 10)));
        assert_eq!(label_offset(psize, 3, 0), Some((64 << 20) - (256 << 10)));
        assert_eq!(label_offset(psize, 4, 0), None);
        assert_eq!(label_offset(psize, 0, VDEV_LABEL_SIZE), None);
        assert_eq!(label_offset(1 << 19, 0, 0), None);
        // A size that is not a multiple of 256 KiB is rounded down.
        assert_eq!(label_psize(66_985_984), 66_846_720);
        assert_eq!(uberblock_count(10), 128);
        assert_eq!(uberblock_count(13), 16);
    }

    #[cfg(feature = "alloc")]
    mod image {
        use super::super::*;
        use crate::checksum::fill_label_checksum;
        use crate::nvlist::{NvList, NvValue};
        use crate::uberblock::{Txg, UBERBLOCK_MAGIC};
        use crate::{Endian, MemDevice};
        use proptest::prelude::*;

        /// A 1 MiB + 100 KiB device with four labels written as ZFS writes
        /// them, the ring holding uberblocks for txgs 4..=`last`.
        pub(crate) fn image(endian: Endian, ashift: u64, last: u64) -> std::vec::Vec<u8> {
            let mut disk = std::vec![0u8; (1 << 20) + (100 << 10)];
            let psize = label_psize(disk.len() as u64);
            let config = NvList::new()
                .with("version", NvValue::Uint64(5000))
                .with("name", NvValue::String("img".into()))
                .with("txg", NvValue::Uint64(last))
                .with(
                    "vdev_tree",
                    NvValue::NvList(
                        NvList::new()
                            .with("type", NvValue::String("file".into()))
                            .with("ashift", NvValue::Uint64(ashift)),
                    ),
                );
            let packed = config.pack(endian).unwrap();
            let shift = crate::uberblock::slot_shift(ashift);
            for l in 0..VDEV_LABELS {
                let off = label_offset(psize, l, VDEV_PHYS_OFFSET).unwrap() as usize;
                let phys = &mut disk[off..off + VDEV_PHYS_SIZE];
                phys[..packed.len()].copy_from_slice(&packed);
                fill_label_checksum(phys, off as u64, endian).unwrap();
                for txg in 4..=last {
                    let n = txg as usize % uberblock_count(shift);
                    let within = VDEV_UBERBLOCK_RING_OFFSET + ((n as u64) << shift);
                    let off = label_offset(psize, l, within).unwrap() as usize;
                    let slot = &mut disk[off..off + (1 << shift)];
                    let words = [UBERBLOCK_MAGIC, 5000, txg, 77, 1000 + txg];
                    for (i, w) in words.iter().enumerate() {
                        slot[i * 8..i * 8 + 8].copy_from_slice(&endian.u64_to(*w));
                    }
                    fill_label_checksum(slot, off as u64, endian).unwrap();
                }
            }
            disk
        }

        #[test]
        fn reads_all_labels_and_picks_the_newest_uberblock() {
            for (endian, ashift) in [(Endian::Little, 9), (Endian::Big, 12)] {
                let disk = image(endian, ashift, 200);
                let labels = VdevLabels::read(&mut MemDevice(&disk[..])).unwrap();
                assert!(labels.labels.iter().all(|l| l.is_valid()));
                assert_eq!(labels.config().unwrap().get_str("name"), Some("img"));
                let shift = crate::uberblock::slot_shift(ashift);
                assert_eq!(labels.labels[0].uberblock_shift, shift);
                // The ring wrapped: every slot holds one of the last txgs.
                let count = uberblock_count(shift);
                assert_eq!(labels.labels[3].valid_uberblocks().count(), count);
                let active = labels.active_uberblock().unwrap();
                assert_eq!(active.uberblock.txg, Txg(200));
                assert_eq!(active.slot, 200 % count);
                assert_eq!(active.uberblock.endian, endian);

                // The no-alloc readers see the same.
                let mut dev = MemDevice(&disk[..]);
                let mut phys = std::boxed::Box::new([0u8; VDEV_PHYS_SIZE]);
                read_vdev_phys(&mut dev, 2, &mut phys).unwrap();
                let mut slot = std::vec![0u8; 1 << shift];
                let ub = read_uberblock(&mut dev, 1, active.slot, &mut slot).unwrap();
                assert_eq!(ub.txg, Txg(200));
            }
        }

        #[test]
        fn a_corrupt_label_is_reported_and_the_others_used() {
            let mut disk = image(Endian::Little, 9, 20);
            let psize = label_psize(disk.len() as u64);
            // One flipped bit in label 1's nvlist, one in label 2's newest
            // uberblock.
            let off = label_offset(psize, 1, VDEV_PHYS_OFFSET + 100).unwrap() as usize;
            disk[off] ^= 0x10;
            let off = label_offset(psize, 2, VDEV_UBERBLOCK_RING_OFFSET + (20 << 10) + 20).unwrap() as usize;
            disk[off] ^= 0x01;
            let labels = VdevLabels::read(&mut MemDevice(&disk[..])).unwrap();
            assert_eq!(labels.labels[1].config.as_ref().err(), Some(&Error::BadChecksum));
            assert!(labels.labels[0].is_valid() && labels.labels[2].is_valid());
            assert_eq!(labels.labels[2].uberblocks[20], Err(Error::BadChecksum));
            assert_eq!(labels.active_uberblock().unwrap().uberblock.txg, Txg(20));
            // A label copied to another place fails: the verifier is the offset.
            let l0 = label_offset(psize, 0, 0).unwrap() as usize;
            let l3 = label_offset(psize, 3, 0).unwrap() as usize;
            let copy = disk[l0..l0 + VDEV_LABEL_SIZE as usize].to_vec();
            disk[l3..l3 + VDEV_LABEL_SIZE as usize].copy_from_slice(&copy);
            let labels = VdevLabels::read(&mut MemDevice(&disk[..])).unwrap();
            assert_eq!(labels.labels[3].config.as_ref().err(), Some(&Error::BadChecksum));
            assert!(labels.labels[3].valid_uberblocks().next().is_none());
        }

        #[test]
        fn too_small_devices_are_an_error() {
            let disk = std::vec![0u8; (1 << 20) - 1];
            assert_eq!(VdevLabels::read(&mut MemDevice(&disk[..])).err(), Some(Error::DeviceTooSmall));
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn corrupted_images_never_panic(
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..64),
                big in any::<bool>(),
            ) {
                let endian = if big { Endian::Big } else { Endian::Little };
                let mut disk = image(endian, 9, 10);
                let len = disk.len();
                for (at, byte) in flips {
                    // Aim at the labels, where the structure is.
                    let at = at % (1 << 20);
                    let at = if at >= 512 << 10 { len - (1 << 20) + at } else { at };
                    disk[at] = byte;
                }
                let _ = VdevLabels::read(&mut MemDevice(&disk[..]));
            }
        }
    }
}
