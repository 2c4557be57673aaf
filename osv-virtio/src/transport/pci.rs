//! Modern virtio over PCI (virtio 1.2 §4.1), as on QEMU's `q35`.
//!
//! 1. [`PciEnumerator`] walks bus 0 and the buses behind its bridges through
//!    the kernel's [`PciConfig`] (ports 0xCF8/0xCFC on x86).
//! 2. [`VirtioPciDevice::probe`] recognises a virtio function (vendor
//!    0x1af4, device 0x1040+ modern or 0x1000-0x103f transitional), walks
//!    its capability list for the common, notify, ISR and device
//!    configuration structures (§4.1.4) and decodes the BARs they live in.
//!    Everything read there comes from the device and is checked: a
//!    structure must lie inside its BAR, the capability walk is bounded.
//! 3. [`PciTransport::new`] enables memory decoding and bus mastering and
//!    asks the kernel's [`BarMapper`] to map each structure.
//!
//! Interrupts: the probe also finds the MSI-X capability (PCI Local Bus 3.0
//! §6.8.2, capability ID 0x11: table BAR/offset, PBA). Until the kernel
//! makes an [`Msix`] for the function (which maps the table, masks every
//! entry and enables MSI-X), QEMU raises INTx and the ISR register works.
//! With MSI-X on, the kernel writes a table entry per vector (message
//! address `0xFEE0_0000 | apic_id << 12`, data = the CPU vector, Intel SDM
//! vol. 3A §11.11) and binds queues and configuration changes to entries
//! with [`PciTransport::set_queue_msix_vector`] and
//! [`PciTransport::set_config_msix_vector`] (virtio 1.2 §4.1.4.3,
//! §4.1.5.1.2); the device answers `VIRTIO_MSI_NO_VECTOR` to an entry it
//! cannot use, which is reported as an error.

use super::{check_config, DeviceStatus, Features, InterruptStatus, Transport, TransportError};
use crate::hal::PhysAddr;
use crate::mmio::Mmio;

/// The virtio PCI vendor ID.
pub const VIRTIO_VENDOR: u16 = 0x1af4;

/// A PCI function address: bus, device (0..32), function (0..8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    bus: u8,
    device: u8,
    function: u8,
}

impl Bdf {
    /// `None` if `device >= 32` or `function >= 8`.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        if device < 32 && function < 8 {
            Some(Self { bus, device, function })
        } else {
            None
        }
    }
    /// The bus number.
    pub const fn bus(self) -> u8 {
        self.bus
    }
    /// The device number (0..32).
    pub const fn device(self) -> u8 {
        self.device
    }
    /// The function number (0..8).
    pub const fn function(self) -> u8 {
        self.function
    }
    /// The CONFIG_ADDRESS value for port 0xCF8 (enable bit set), for the
    /// dword at `offset`.
    pub const fn config_address(self, offset: u8) -> u32 {
        0x8000_0000
            | (self.bus as u32) << 16
            | (self.device as u32) << 11
            | (self.function as u32) << 8
            | (offset as u32 & 0xfc)
    }
}

/// PCI configuration space access, implemented by the kernel (on x86 with
/// ports 0xCF8/0xCFC, see [`Bdf::config_address`]).
///
/// `offset` is always a multiple of 4 below 256.
pub trait PciConfig {
    /// Reads the dword at `offset` of `bdf`'s configuration space
    /// (all ones if there is no such function).
    fn read32(&self, bdf: Bdf, offset: u8) -> u32;
    /// Writes the dword at `offset`.
    fn write32(&self, bdf: Bdf, offset: u8, value: u32);
}

impl<C: PciConfig + ?Sized> PciConfig for &C {
    fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
        (**self).read32(bdf, offset)
    }
    fn write32(&self, bdf: Bdf, offset: u8, value: u32) {
        (**self).write32(bdf, offset, value)
    }
}

/// Maps a physical range of a BAR for the transport, implemented by the
/// kernel. The demo kernel's identity map covers 0-4 GiB (the top GiB
/// uncached), so it can build a [`crate::mmio::VolatileMmio`] at the
/// physical address; a 64-bit BAR placed above 4 GiB needs a real mapping.
pub trait BarMapper {
    /// The register window type.
    type Region: Mmio;
    /// Maps `len` bytes of device memory at `phys` (uncached), or `None`.
    fn map(&mut self, phys: PhysAddr, len: usize) -> Option<Self::Region>;
}

/// Configuration header offsets (PCI Local Bus 3.0 §6.1).
mod cfg {
    pub const ID: u8 = 0x00;
    pub const COMMAND_STATUS: u8 = 0x04;
    pub const CLASS: u8 = 0x08;
    pub const HEADER: u8 = 0x0c;
    pub const BAR0: u8 = 0x10;
    pub const BUS_NUMBERS: u8 = 0x18;
    pub const SUBSYSTEM: u8 = 0x2c;
    pub const CAP_PTR: u8 = 0x34;
    pub const STATUS_CAP_LIST: u32 = 1 << (16 + 4);
    pub const CMD_MEMORY: u32 = 1 << 1;
    pub const CMD_BUS_MASTER: u32 = 1 << 2;
    pub const CAP_VENDOR: u8 = 0x09;
    /// MSI-X (PCI Local Bus 3.0 §6.8.2).
    pub const CAP_MSIX: u8 = 0x11;
}

/// One PCI function found by [`PciEnumerator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// Where it is.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code, subclass, programming interface (high to low).
    pub class: u32,
    /// Header type without the multi-function bit.
    pub header_type: u8,
}

impl PciFunction {
    /// `true` if this is a virtio function a modern driver can use.
    pub fn is_virtio(&self) -> bool {
        self.vendor == VIRTIO_VENDOR && (0x1000..=0x107f).contains(&self.device)
    }
}

/// Iterates the functions on bus 0 and on the buses behind the bridges
/// found there (in bus order; the firmware's bus numbering is trusted only
/// as far as it bounds the scan).
#[derive(Debug)]
pub struct PciEnumerator<C: PciConfig> {
    cfg: C,
    bus: u16,
    device: u8,
    function: u8,
    max_bus: u8,
    multi: bool,
}

impl<C: PciConfig> PciEnumerator<C> {
    /// Starts at 00:00.0.
    pub fn new(cfg: C) -> Self {
        Self { cfg, bus: 0, device: 0, function: 0, max_bus: 0, multi: false }
    }

    fn advance(&mut self) {
        if self.function == 0 && !self.multi {
            self.function = 8;
        } else {
            self.function += 1;
        }
        if self.function >= 8 {
            self.function = 0;
            self.multi = false;
            self.device += 1;
            if self.device >= 32 {
                self.device = 0;
                self.bus += 1;
            }
        }
    }
}

impl<C: PciConfig> Iterator for PciEnumerator<C> {
    type Item = PciFunction;

    fn next(&mut self) -> Option<PciFunction> {
        while self.bus <= u16::from(self.max_bus) {
            let bdf = Bdf::new(self.bus as u8, self.device, self.function)?;
            let id = self.cfg.read32(bdf, cfg::ID);
            let vendor = id as u16;
            if vendor == 0xffff || vendor == 0 {
                if self.function == 0 {
                    self.multi = false;
                    self.function = 7; // skip the other functions
                }
                self.advance();
                continue;
            }
            let header = (self.cfg.read32(bdf, cfg::HEADER) >> 16) as u8;
            if self.function == 0 {
                self.multi = header & 0x80 != 0;
            }
            let header_type = header & 0x7f;
            if header_type == 1 {
                let buses = self.cfg.read32(bdf, cfg::BUS_NUMBERS);
                let subordinate = (buses >> 16) as u8;
                self.max_bus = self.max_bus.max(subordinate);
            }
            let class = self.cfg.read32(bdf, cfg::CLASS) >> 8;
            self.advance();
            return Some(PciFunction { bdf, vendor, device: (id >> 16) as u16, class, header_type });
        }
        None
    }
}

/// A decoded memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Physical base.
    pub base: PhysAddr,
    /// Size in bytes.
    pub size: u64,
    /// 64-bit BAR (occupies two slots).
    pub is_64bit: bool,
}

/// Where one virtio structure lives: `length` bytes at `offset` in `bar`
/// (the `struct virtio_pci_cap` of virtio 1.2 §4.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapRegion {
    /// BAR index (0..6).
    pub bar: u8,
    /// Offset within the BAR.
    pub offset: u32,
    /// Length in bytes.
    pub length: u32,
    /// Physical address of the structure (BAR base + offset).
    pub phys: PhysAddr,
}

/// `cfg_type` values of virtio 1.2 §4.1.4.
pub mod cap_type {
    /// `VIRTIO_PCI_CAP_COMMON_CFG`.
    pub const COMMON: u8 = 1;
    /// `VIRTIO_PCI_CAP_NOTIFY_CFG`.
    pub const NOTIFY: u8 = 2;
    /// `VIRTIO_PCI_CAP_ISR_CFG`.
    pub const ISR: u8 = 3;
    /// `VIRTIO_PCI_CAP_DEVICE_CFG`.
    pub const DEVICE: u8 = 4;
    /// `VIRTIO_PCI_CAP_PCI_CFG`.
    pub const PCI: u8 = 5;
}

/// A probed virtio PCI function: its type and where its structures are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioPciDevice {
    /// Where it is.
    pub bdf: Bdf,
    /// The virtio device ID (§5).
    pub device_id: u32,
    /// The common configuration structure (§4.1.4.3).
    pub common: CapRegion,
    /// The notification structure (§4.1.4.4).
    pub notify: CapRegion,
    /// `notify_off_multiplier` of the notification capability.
    pub notify_off_multiplier: u32,
    /// The ISR status byte (§4.1.4.5).
    pub isr: CapRegion,
    /// The device-specific configuration (§4.1.4.6), if the device has one.
    pub device: Option<CapRegion>,
    /// The MSI-X capability, if the function has a usable one.
    pub msix: Option<MsixCap>,
}

/// A function's MSI-X capability (PCI Local Bus 3.0 §6.8.2.1-§6.8.2.4),
/// checked: the table lies inside a memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCap {
    /// Configuration-space offset of the capability.
    pub cap: u8,
    /// Table entries (Message Control bits 10:0, plus one).
    pub table_size: u16,
    /// The table (16 bytes per entry).
    pub table: CapRegion,
}

/// Longest capability walk (256 bytes of config space / 4-byte minimum
/// capability): a looping list ends here.
const MAX_CAPS: usize = 48;

impl VirtioPciDevice {
    /// Probes `bdf`: checks it is a virtio function, walks its capabilities
    /// and sizes the BARs they use. Sizing writes the BARs, so memory
    /// decoding is switched off meanwhile (and left off: `PciTransport::new`
    /// turns it on).
    pub fn probe<C: PciConfig>(config: &C, bdf: Bdf) -> Result<Self, TransportError> {
        let id = config.read32(bdf, cfg::ID);
        let (vendor, device) = (id as u16, (id >> 16) as u16);
        if vendor != VIRTIO_VENDOR {
            return Err(TransportError::NotVirtio);
        }
        let device_id = match device {
            0x1040..=0x107f => u32::from(device - 0x1040),
            // Transitional: the subsystem device ID is the virtio type (§4.1.2.1).
            0x1000..=0x103f => config.read32(bdf, cfg::SUBSYSTEM) >> 16,
            _ => return Err(TransportError::NotVirtio),
        };
        let cmd = config.read32(bdf, cfg::COMMAND_STATUS);
        if cmd & cfg::STATUS_CAP_LIST == 0 {
            return Err(TransportError::MissingCapability(cap_type::COMMON));
        }
        // Memory decoding off while the BARs are sized; keep the status
        // half zero (its bits are write-one-to-clear).
        config.write32(bdf, cfg::COMMAND_STATUS, cmd & 0xffff & !cfg::CMD_MEMORY);

        let mut bars: [Option<Option<Bar>>; 6] = [None; 6];
        let mut found: [Option<(CapRegion, u32)>; 5] = [None; 5];
        let mut msix = None;
        let mut ptr = (config.read32(bdf, cfg::CAP_PTR) as u8) & 0xfc;
        let mut walked = 0;
        while ptr >= 0x40 && walked < MAX_CAPS {
            walked += 1;
            let head = config.read32(bdf, ptr);
            let next = ((head >> 8) as u8) & 0xfc;
            let (cap_id, cap_len, cfg_type) = (head as u8, (head >> 16) as u8, (head >> 24) as u8);
            if cap_id == cfg::CAP_MSIX && msix.is_none() && ptr <= 0xf4 {
                // §6.8.2.3 Message Control (upper half of the first dword),
                // §6.8.2.4 Table Offset/BIR (second dword).
                let table_size = ((head >> 16) & 0x7ff) as u16 + 1;
                let t = config.read32(bdf, ptr + 4);
                let (bar, offset) = ((t & 7) as u8, t & !7);
                let length = u32::from(table_size) * MSIX_ENTRY;
                if bar < 6 {
                    let decoded = *bars[usize::from(bar)].get_or_insert_with(|| decode_bar(config, bdf, bar));
                    if let Some(b) = decoded {
                        let end = u64::from(offset) + u64::from(length);
                        if let (true, Some(phys)) = (end <= b.size, b.base.checked_add(u64::from(offset))) {
                            msix = Some(MsixCap {
                                cap: ptr,
                                table_size,
                                table: CapRegion { bar, offset, length, phys },
                            });
                        }
                    }
                }
            }
            if cap_id == cfg::CAP_VENDOR
                && cap_len >= 16
                && (cap_type::COMMON..=cap_type::DEVICE).contains(&cfg_type)
                && ptr <= 0xf0
            {
                let bar = config.read32(bdf, ptr + 4) as u8;
                let offset = config.read32(bdf, ptr + 8);
                let length = config.read32(bdf, ptr + 12);
                let multiplier = if cfg_type == cap_type::NOTIFY && cap_len >= 20 && ptr <= 0xec {
                    config.read32(bdf, ptr + 16)
                } else {
                    0
                };
                let slot = &mut found[usize::from(cfg_type)];
                // §4.1.4: use the first capability of each type we can use.
                if slot.is_none() && bar < 6 {
                    let decoded = *bars[usize::from(bar)].get_or_insert_with(|| decode_bar(config, bdf, bar));
                    if let Some(b) = decoded {
                        let end = u64::from(offset).checked_add(u64::from(length));
                        if let (Some(end), Some(phys)) = (end, b.base.checked_add(u64::from(offset))) {
                            if end <= b.size && length > 0 {
                                *slot = Some((CapRegion { bar, offset, length, phys }, multiplier));
                            }
                        }
                    }
                }
            }
            ptr = next;
        }
        let need = |t: u8, min: u32| match found[usize::from(t)] {
            Some((r, m)) if r.length >= min => Ok((r, m)),
            Some(_) => Err(TransportError::BadCapability),
            None => Err(TransportError::MissingCapability(t)),
        };
        let (common, _) = need(cap_type::COMMON, common::LEN as u32)?;
        let (notify, notify_off_multiplier) = need(cap_type::NOTIFY, 2)?;
        let (isr, _) = need(cap_type::ISR, 1)?;
        let device = found[usize::from(cap_type::DEVICE)].map(|(r, _)| r);
        Ok(Self { bdf, device_id, common, notify, notify_off_multiplier, isr, device, msix })
    }
}

/// Decodes and sizes BAR `index` (a memory BAR; I/O BARs give `None`).
fn decode_bar<C: PciConfig>(config: &C, bdf: Bdf, index: u8) -> Option<Bar> {
    let off = cfg::BAR0 + 4 * index;
    let lo = config.read32(bdf, off);
    if lo & 1 != 0 {
        return None; // I/O space
    }
    let is_64bit = match (lo >> 1) & 3 {
        0 => false,
        2 if index < 5 => true,
        _ => return None,
    };
    config.write32(bdf, off, u32::MAX);
    let lo_mask = config.read32(bdf, off) & !0xf;
    config.write32(bdf, off, lo);
    let (base, mask) = if is_64bit {
        let hi = config.read32(bdf, off + 4);
        config.write32(bdf, off + 4, u32::MAX);
        let hi_mask = config.read32(bdf, off + 4);
        config.write32(bdf, off + 4, hi);
        (u64::from(lo & !0xf) | u64::from(hi) << 32, u64::from(lo_mask) | u64::from(hi_mask) << 32)
    } else {
        (u64::from(lo & !0xf), u64::from(lo_mask) | 0xffff_ffff_0000_0000)
    };
    let size = (!mask).wrapping_add(1);
    if mask == 0 || size == 0 || base == 0 || base.checked_add(size).is_none() {
        return None; // unimplemented or unassigned
    }
    // A BAR's size is a power of two and its base is aligned to it (PCI
    // Local Bus 3.0 §6.2.5.1); a read-back mask that is not contiguous ones
    // from the top is a broken or hostile device, not a window to trust.
    if !size.is_power_of_two() || !base.is_multiple_of(size) {
        return None;
    }
    Some(Bar { base: PhysAddr::new(base), size, is_64bit })
}

/// Bytes per MSI-X table entry (§6.8.2.6: address low, address high, data,
/// vector control).
const MSIX_ENTRY: u32 = 16;
/// Message Control: MSI-X Enable (bit 15) and Function Mask (bit 14).
const MSIX_ENABLE: u32 = 1 << 15;
const MSIX_FUNCTION_MASK: u32 = 1 << 14;
/// Vector Control bit 0: the entry is masked.
const MSIX_ENTRY_MASKED: u32 = 1;

/// `VIRTIO_MSI_NO_VECTOR` (virtio 1.2 §4.1.4.3): no interrupt for this
/// queue or for configuration changes.
pub const NO_VECTOR: u16 = 0xffff;

/// An x86 MSI message (Intel SDM vol. 3A §11.11.1, §11.11.2): fixed
/// delivery, edge-triggered, physical destination `apic_id`, `vector`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

impl MsiMessage {
    /// The message that raises `vector` on the local APIC `apic_id` (xAPIC
    /// ids up to 255).
    pub const fn x86(apic_id: u8, vector: u8) -> Self {
        Self { address: 0xfee0_0000 | (apic_id as u64) << 12, data: vector as u32 }
    }
}

/// What went wrong programming MSI-X.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixError {
    /// The function has no usable MSI-X capability.
    NoCapability,
    /// The table could not be mapped.
    MapFailed,
    /// An entry index past the table.
    NoSuchEntry(u16),
    /// The device answered `VIRTIO_MSI_NO_VECTOR`: it cannot use the entry.
    Rejected(u16),
    /// No such queue.
    NoSuchQueue(u16),
}

impl core::fmt::Display for MsixError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoCapability => f.write_str("no MSI-X capability"),
            Self::MapFailed => f.write_str("MSI-X table mapping failed"),
            Self::NoSuchEntry(e) => write!(f, "no MSI-X table entry {e}"),
            Self::Rejected(e) => write!(f, "device rejected MSI-X entry {e}"),
            Self::NoSuchQueue(q) => write!(f, "no queue {q}"),
        }
    }
}

impl core::error::Error for MsixError {}

/// A function's MSI-X table, mapped, with MSI-X enabled.
#[derive(Debug)]
pub struct Msix<M: Mmio> {
    table: M,
    size: u16,
}

impl<M: Mmio> Msix<M> {
    /// Maps the table of `dev`, masks every entry, then enables MSI-X
    /// (Message Control: Enable set, Function Mask clear). From here the
    /// function no longer raises INTx (§6.8.2.3).
    pub fn enable<C: PciConfig, B: BarMapper<Region = M>>(
        config: &C,
        dev: &VirtioPciDevice,
        mapper: &mut B,
    ) -> Result<Self, MsixError> {
        let cap = dev.msix.ok_or(MsixError::NoCapability)?;
        let table = mapper.map(cap.table.phys, cap.table.length as usize).ok_or(MsixError::MapFailed)?;
        if table.len() < cap.table.length as usize {
            return Err(MsixError::MapFailed);
        }
        let this = Self { table, size: cap.table_size };
        for i in 0..this.size {
            this.mask(i)?;
        }
        let head = config.read32(dev.bdf, cap.cap);
        let control = ((head >> 16) | MSIX_ENABLE) & !MSIX_FUNCTION_MASK;
        config.write32(dev.bdf, cap.cap, (head & 0xffff) | control << 16);
        Ok(this)
    }

    /// Table entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    fn entry(&self, i: u16) -> Result<usize, MsixError> {
        if i < self.size {
            Ok(usize::from(i) * MSIX_ENTRY as usize)
        } else {
            Err(MsixError::NoSuchEntry(i))
        }
    }

    /// Writes entry `i` and unmasks it.
    pub fn set(&self, i: u16, msg: MsiMessage) -> Result<(), MsixError> {
        let at = self.entry(i)?;
        self.table.write32(at + 12, MSIX_ENTRY_MASKED);
        self.table.write32(at, msg.address as u32);
        self.table.write32(at + 4, (msg.address >> 32) as u32);
        self.table.write32(at + 8, msg.data);
        self.table.write32(at + 12, 0);
        Ok(())
    }

    /// Masks entry `i`.
    pub fn mask(&self, i: u16) -> Result<(), MsixError> {
        let at = self.entry(i)?;
        self.table.write32(at + 12, MSIX_ENTRY_MASKED);
        Ok(())
    }
}

/// Offsets in `struct virtio_pci_common_cfg` (virtio 1.2 §4.1.4.3).
pub mod common {
    /// `device_feature_select` (le32).
    pub const DEVICE_FEATURE_SELECT: usize = 0x00;
    /// `device_feature` (le32).
    pub const DEVICE_FEATURE: usize = 0x04;
    /// `driver_feature_select` (le32).
    pub const DRIVER_FEATURE_SELECT: usize = 0x08;
    /// `driver_feature` (le32).
    pub const DRIVER_FEATURE: usize = 0x0c;
    /// `config_msix_vector` (le16).
    pub const CONFIG_MSIX_VECTOR: usize = 0x10;
    /// `num_queues` (le16).
    pub const NUM_QUEUES: usize = 0x12;
    /// `device_status` (u8).
    pub const DEVICE_STATUS: usize = 0x14;
    /// `config_generation` (u8).
    pub const CONFIG_GENERATION: usize = 0x15;
    /// `queue_select` (le16).
    pub const QUEUE_SELECT: usize = 0x16;
    /// `queue_size` (le16).
    pub const QUEUE_SIZE: usize = 0x18;
    /// `queue_msix_vector` (le16).
    pub const QUEUE_MSIX_VECTOR: usize = 0x1a;
    /// `queue_enable` (le16).
    pub const QUEUE_ENABLE: usize = 0x1c;
    /// `queue_notify_off` (le16).
    pub const QUEUE_NOTIFY_OFF: usize = 0x1e;
    /// `queue_desc` (le64).
    pub const QUEUE_DESC: usize = 0x20;
    /// `queue_driver` (le64).
    pub const QUEUE_DRIVER: usize = 0x28;
    /// `queue_device` (le64).
    pub const QUEUE_DEVICE: usize = 0x30;
    /// The part of the structure this driver uses.
    pub const LEN: usize = 0x38;
}

/// How many queues' notify addresses are cached (the rest are computed on
/// each notify).
const NOTIFY_CACHE: usize = 8;

/// A modern virtio PCI device's registers.
#[derive(Debug)]
pub struct PciTransport<M: Mmio> {
    device_id: u32,
    common: M,
    notify: M,
    notify_off_multiplier: u32,
    isr: M,
    device: Option<M>,
    notify_cache: [Option<usize>; NOTIFY_CACHE],
}

impl<M: Mmio> PciTransport<M> {
    /// Enables memory decoding and bus mastering for `dev` and maps its
    /// structures through `mapper`.
    pub fn new<C: PciConfig, B: BarMapper<Region = M>>(
        config: &C,
        dev: &VirtioPciDevice,
        mapper: &mut B,
    ) -> Result<Self, TransportError> {
        let cmd = config.read32(dev.bdf, cfg::COMMAND_STATUS) & 0xffff;
        config.write32(dev.bdf, cfg::COMMAND_STATUS, cmd | cfg::CMD_MEMORY | cfg::CMD_BUS_MASTER);
        let mut map = |r: &CapRegion| {
            let m = mapper.map(r.phys, r.length as usize).ok_or(TransportError::MapFailed)?;
            if m.len() < r.length as usize {
                return Err(TransportError::MapFailed);
            }
            Ok(m)
        };
        let common = map(&dev.common)?;
        let notify = map(&dev.notify)?;
        let isr = map(&dev.isr)?;
        let device = match &dev.device {
            Some(r) => Some(map(r)?),
            None => None,
        };
        Ok(Self {
            device_id: dev.device_id,
            common,
            notify,
            notify_off_multiplier: dev.notify_off_multiplier,
            isr,
            device,
            notify_cache: [None; NOTIFY_CACHE],
        })
    }

    /// The byte offset in the notify region for the selected queue, checked
    /// to leave room for the 16-bit write (§4.1.4.4).
    fn selected_notify_offset(&self) -> Option<usize> {
        let off = u64::from(self.common.read16(common::QUEUE_NOTIFY_OFF))
            .checked_mul(u64::from(self.notify_off_multiplier))?;
        let off = usize::try_from(off).ok()?;
        (off.checked_add(2)? <= self.notify.len() && off % 2 == 0).then_some(off)
    }

    fn num_queues(&self) -> u16 {
        self.common.read16(common::NUM_QUEUES)
    }

    /// Routes configuration-change interrupts to MSI-X table entry `entry`
    /// ([`NO_VECTOR`]: none). The device reads back `NO_VECTOR` if it cannot
    /// (virtio 1.2 §4.1.5.1.2.1).
    pub fn set_config_msix_vector(&mut self, entry: u16) -> Result<(), MsixError> {
        self.common.write16(common::CONFIG_MSIX_VECTOR, entry);
        match self.common.read16(common::CONFIG_MSIX_VECTOR) {
            v if v == entry => Ok(()),
            _ => Err(MsixError::Rejected(entry)),
        }
    }

    /// Routes `queue`'s used-buffer notifications to MSI-X table entry
    /// `entry` ([`NO_VECTOR`]: none), checked by reading it back.
    pub fn set_queue_msix_vector(&mut self, queue: u16, entry: u16) -> Result<(), MsixError> {
        if queue >= self.num_queues() {
            return Err(MsixError::NoSuchQueue(queue));
        }
        self.common.write16(common::QUEUE_SELECT, queue);
        self.common.write16(common::QUEUE_MSIX_VECTOR, entry);
        match self.common.read16(common::QUEUE_MSIX_VECTOR) {
            v if v == entry => Ok(()),
            _ => Err(MsixError::Rejected(entry)),
        }
    }

    fn device_cfg(&self, offset: usize, width: usize) -> Result<&M, TransportError> {
        let d = self.device.as_ref().ok_or(TransportError::ConfigOutOfRange)?;
        check_config(offset, width, d.len())?;
        Ok(d)
    }
}

impl<M: Mmio> Transport for PciTransport<M> {
    fn device_id(&self) -> u32 {
        self.device_id
    }

    fn device_features(&mut self) -> Features {
        Features::from_bits(
            self.common.read_selected64(common::DEVICE_FEATURE_SELECT, common::DEVICE_FEATURE),
        )
    }

    fn set_driver_features(&mut self, features: Features) {
        self.common.write_selected64(common::DRIVER_FEATURE_SELECT, common::DRIVER_FEATURE, features.bits());
    }

    fn status(&self) -> DeviceStatus {
        DeviceStatus::from_bits(self.common.read8(common::DEVICE_STATUS))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.common.write8(common::DEVICE_STATUS, status.bits());
    }

    fn max_queue_size(&mut self, queue: u16) -> Result<u16, TransportError> {
        if queue >= self.num_queues() {
            return Ok(0);
        }
        self.common.write16(common::QUEUE_SELECT, queue);
        // Before the driver writes it, queue_size holds the maximum.
        Ok(self.common.read16(common::QUEUE_SIZE).min(32768))
    }

    fn setup_queue(
        &mut self,
        queue: u16,
        size: u16,
        desc: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) -> Result<(), TransportError> {
        // §4.1.5.1.3 "Virtqueue Configuration".
        if queue >= self.num_queues() {
            return Err(TransportError::NoSuchQueue(queue));
        }
        self.common.write16(common::QUEUE_SELECT, queue);
        if self.common.read16(common::QUEUE_ENABLE) != 0 {
            return Err(TransportError::QueueInUse(queue));
        }
        let max = self.common.read16(common::QUEUE_SIZE);
        if max == 0 {
            return Err(TransportError::NoSuchQueue(queue));
        }
        if size == 0 || size > max {
            return Err(TransportError::BadQueueSize(size));
        }
        let notify_off = self.selected_notify_offset().ok_or(TransportError::BadNotifyOffset)?;
        self.common.write16(common::QUEUE_SIZE, size);
        self.common.write64_split(common::QUEUE_DESC, desc.as_u64());
        self.common.write64_split(common::QUEUE_DRIVER, driver_area.as_u64());
        self.common.write64_split(common::QUEUE_DEVICE, device_area.as_u64());
        self.common.write16(common::QUEUE_ENABLE, 1);
        if let Some(slot) = self.notify_cache.get_mut(usize::from(queue)) {
            *slot = Some(notify_off);
        }
        Ok(())
    }

    fn notify(&mut self, queue: u16) {
        let off = match self.notify_cache.get(usize::from(queue)) {
            Some(Some(off)) => Some(*off),
            _ => {
                self.common.write16(common::QUEUE_SELECT, queue);
                self.selected_notify_offset()
            }
        };
        if let Some(off) = off {
            self.notify.write16(off, queue);
        }
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        // Reading the ISR acknowledges it (§4.1.4.5.1).
        InterruptStatus::from_bits(u32::from(self.isr.read8(0)))
    }

    fn config_generation(&self) -> u32 {
        u32::from(self.common.read8(common::CONFIG_GENERATION))
    }

    fn config_len(&self) -> usize {
        self.device.as_ref().map_or(0, |d| d.len())
    }

    fn read_config_u8(&self, offset: usize) -> Result<u8, TransportError> {
        Ok(self.device_cfg(offset, 1)?.read8(offset))
    }

    fn read_config_u16(&self, offset: usize) -> Result<u16, TransportError> {
        Ok(self.device_cfg(offset, 2)?.read16(offset))
    }

    fn read_config_u32(&self, offset: usize) -> Result<u32, TransportError> {
        Ok(self.device_cfg(offset, 4)?.read32(offset))
    }

    fn write_config_u8(&mut self, offset: usize, value: u8) -> Result<(), TransportError> {
        self.device_cfg(offset, 1)?.write8(offset, value);
        Ok(())
    }

    fn write_config_u32(&mut self, offset: usize, value: u32) -> Result<(), TransportError> {
        self.device_cfg(offset, 4)?.write32(offset, value);
        Ok(())
    }
}

#[cfg(test)]
mod bar_tests {
    use super::*;
    use core::cell::Cell;

    /// One function whose BAR 0 answers sizing with `mask` and otherwise
    /// reads as `base` (a device may answer anything).
    struct OneBar {
        base: u32,
        mask: u32,
        sizing: Cell<bool>,
    }

    impl PciConfig for OneBar {
        fn read32(&self, _: Bdf, offset: u8) -> u32 {
            match (offset, self.sizing.get()) {
                (o, true) if o == cfg::BAR0 => self.mask,
                (o, false) if o == cfg::BAR0 => self.base,
                _ => 0,
            }
        }
        fn write32(&self, _: Bdf, offset: u8, value: u32) {
            if offset == cfg::BAR0 {
                self.sizing.set(value == u32::MAX);
            }
        }
    }

    fn decode(base: u32, mask: u32) -> Option<Bar> {
        let c = OneBar { base, mask, sizing: Cell::new(false) };
        decode_bar(&c, Bdf::new(0, 1, 0).unwrap(), 0)
    }

    #[test]
    fn hostile_bar_masks_are_not_windows() {
        // A proper 64 KiB BAR decodes.
        let b = decode(0xfeb0_0000, 0xffff_0000).expect("a 64 KiB BAR");
        assert_eq!((b.base.as_u64(), b.size), (0xfeb0_0000, 0x1_0000));
        // Non-contiguous read-back masks (the fuzzer's find: a size of
        // 0xffd1_0000 that made a 4 GiB window out of a stray value).
        assert!(decode(0x002f_0000, 0x002f_0000).is_none());
        assert!(decode(0xfeb0_0000, 0xff0f_0000).is_none());
        // A base not aligned to the size.
        assert!(decode(0xfeb0_8000, 0xffff_0000).is_none());
        // Unimplemented (all zeros) and unassigned (base 0).
        assert!(decode(0, 0).is_none());
        assert!(decode(0, 0xffff_0000).is_none());
    }
}
