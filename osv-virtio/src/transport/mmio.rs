//! virtio over MMIO, version 2 (virtio 1.2 §4.2), as on QEMU's `microvm`
//! and Firecracker.
//!
//! Devices are found through the kernel command line QEMU appends
//! (`virtio_mmio.device=512@0xfeb00e00:12`, parsed by [`MmioDeviceDesc`] and
//! [`cmdline_devices`]); the kernel maps each region and hands the window to
//! [`MmioTransport::new`]. The legacy interface (version 1, §4.2.4) is
//! detected and refused with [`TransportError::UnsupportedVersion`].

use core::fmt;

use super::{check_config, DeviceStatus, Features, InterruptStatus, Transport, TransportError};
use crate::hal::PhysAddr;
use crate::mmio::Mmio;

/// The register offsets of virtio 1.2 §4.2.2 "MMIO Device Register Layout".
pub mod reg {
    /// `MagicValue`: 0x74726976 ("virt").
    pub const MAGIC_VALUE: usize = 0x000;
    /// `Version`: 2 for the modern interface, 1 for legacy.
    pub const VERSION: usize = 0x004;
    /// `DeviceID`: the virtio device type, 0 for an empty slot.
    pub const DEVICE_ID: usize = 0x008;
    /// `VendorID`.
    pub const VENDOR_ID: usize = 0x00c;
    /// `DeviceFeatures`: 32 feature bits selected by `DeviceFeaturesSel`.
    pub const DEVICE_FEATURES: usize = 0x010;
    /// `DeviceFeaturesSel`.
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    /// `DriverFeatures`.
    pub const DRIVER_FEATURES: usize = 0x020;
    /// `DriverFeaturesSel`.
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    /// `QueueSel`.
    pub const QUEUE_SEL: usize = 0x030;
    /// `QueueNumMax`.
    pub const QUEUE_NUM_MAX: usize = 0x034;
    /// `QueueNum`.
    pub const QUEUE_NUM: usize = 0x038;
    /// `QueueReady`.
    pub const QUEUE_READY: usize = 0x044;
    /// `QueueNotify`.
    pub const QUEUE_NOTIFY: usize = 0x050;
    /// `InterruptStatus`.
    pub const INTERRUPT_STATUS: usize = 0x060;
    /// `InterruptACK`.
    pub const INTERRUPT_ACK: usize = 0x064;
    /// `Status`.
    pub const STATUS: usize = 0x070;
    /// `QueueDescLow` (then `QueueDescHigh` at +4).
    pub const QUEUE_DESC_LOW: usize = 0x080;
    /// `QueueDriverLow` (the available ring; `High` at +4).
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    /// `QueueDeviceLow` (the used ring; `High` at +4).
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    /// `ConfigGeneration`.
    pub const CONFIG_GENERATION: usize = 0x0fc;
    /// `Config`: the device-specific configuration space starts here.
    pub const CONFIG: usize = 0x100;
}

/// "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;

/// A virtio-mmio version 2 device.
#[derive(Debug)]
pub struct MmioTransport<M: Mmio> {
    regs: M,
    device_id: u32,
    vendor_id: u32,
}

impl<M: Mmio> MmioTransport<M> {
    /// Checks the magic value, the version (2) and that the slot holds a
    /// device. `regs` is the whole register window (at least 0x100 bytes
    /// plus the configuration space; QEMU's are 0x200).
    pub fn new(regs: M) -> Result<Self, TransportError> {
        if regs.len() < reg::CONFIG {
            return Err(TransportError::ConfigOutOfRange);
        }
        let magic = regs.read32(reg::MAGIC_VALUE);
        if magic != MAGIC {
            return Err(TransportError::BadMagic(magic));
        }
        let version = regs.read32(reg::VERSION);
        if version != 2 {
            return Err(TransportError::UnsupportedVersion(version));
        }
        let device_id = regs.read32(reg::DEVICE_ID);
        if device_id == 0 {
            return Err(TransportError::NoDevice);
        }
        let vendor_id = regs.read32(reg::VENDOR_ID);
        Ok(Self { regs, device_id, vendor_id })
    }

    /// The vendor ID register.
    pub fn vendor_id(&self) -> u32 {
        self.vendor_id
    }

    /// The register window.
    pub fn regs(&self) -> &M {
        &self.regs
    }

    fn config_off(&self, offset: usize, width: usize) -> Result<usize, TransportError> {
        check_config(offset, width, self.config_len())?;
        Ok(reg::CONFIG + offset)
    }
}

impl<M: Mmio> Transport for MmioTransport<M> {
    fn device_id(&self) -> u32 {
        self.device_id
    }

    fn device_features(&mut self) -> Features {
        Features::from_bits(self.regs.read_selected64(reg::DEVICE_FEATURES_SEL, reg::DEVICE_FEATURES))
    }

    fn set_driver_features(&mut self, features: Features) {
        self.regs.write_selected64(reg::DRIVER_FEATURES_SEL, reg::DRIVER_FEATURES, features.bits());
    }

    fn status(&self) -> DeviceStatus {
        DeviceStatus::from_bits(self.regs.read32(reg::STATUS) as u8)
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.regs.write32(reg::STATUS, u32::from(status.bits()));
    }

    fn max_queue_size(&mut self, queue: u16) -> Result<u16, TransportError> {
        self.regs.write32(reg::QUEUE_SEL, u32::from(queue));
        // QueueNumMax is 32 bits wide; sizes above 32768 are invalid (§2.7).
        Ok(self.regs.read32(reg::QUEUE_NUM_MAX).min(32768) as u16)
    }

    fn setup_queue(
        &mut self,
        queue: u16,
        size: u16,
        desc: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) -> Result<(), TransportError> {
        // §4.2.3.2 "Virtqueue Configuration".
        self.regs.write32(reg::QUEUE_SEL, u32::from(queue));
        if self.regs.read32(reg::QUEUE_READY) != 0 {
            return Err(TransportError::QueueInUse(queue));
        }
        let max = self.regs.read32(reg::QUEUE_NUM_MAX);
        if max == 0 {
            return Err(TransportError::NoSuchQueue(queue));
        }
        if size == 0 || u32::from(size) > max {
            return Err(TransportError::BadQueueSize(size));
        }
        self.regs.write32(reg::QUEUE_NUM, u32::from(size));
        self.regs.write64_split(reg::QUEUE_DESC_LOW, desc.as_u64());
        self.regs.write64_split(reg::QUEUE_DRIVER_LOW, driver_area.as_u64());
        self.regs.write64_split(reg::QUEUE_DEVICE_LOW, device_area.as_u64());
        self.regs.write32(reg::QUEUE_READY, 1);
        Ok(())
    }

    fn notify(&mut self, queue: u16) {
        self.regs.write32(reg::QUEUE_NOTIFY, u32::from(queue));
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let s = self.regs.read32(reg::INTERRUPT_STATUS);
        if s != 0 {
            self.regs.write32(reg::INTERRUPT_ACK, s);
        }
        InterruptStatus::from_bits(s)
    }

    fn config_generation(&self) -> u32 {
        self.regs.read32(reg::CONFIG_GENERATION)
    }

    fn config_len(&self) -> usize {
        self.regs.len().saturating_sub(reg::CONFIG)
    }

    fn read_config_u8(&self, offset: usize) -> Result<u8, TransportError> {
        Ok(self.regs.read8(self.config_off(offset, 1)?))
    }

    fn read_config_u16(&self, offset: usize) -> Result<u16, TransportError> {
        Ok(self.regs.read16(self.config_off(offset, 2)?))
    }

    fn read_config_u32(&self, offset: usize) -> Result<u32, TransportError> {
        Ok(self.regs.read32(self.config_off(offset, 4)?))
    }

    fn write_config_u8(&mut self, offset: usize, value: u8) -> Result<(), TransportError> {
        let off = self.config_off(offset, 1)?;
        self.regs.write8(off, value);
        Ok(())
    }

    fn write_config_u32(&mut self, offset: usize, value: u32) -> Result<(), TransportError> {
        let off = self.config_off(offset, 4)?;
        self.regs.write32(off, value);
        Ok(())
    }
}

/// One `virtio_mmio.device=<size>@<base>:<irq>` entry of the Linux-style
/// command line (`size` may carry a `K`/`M`/`G` suffix; numbers are decimal
/// or `0x` hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDeviceDesc {
    /// Physical base of the register window.
    pub base: PhysAddr,
    /// Size of the register window in bytes.
    pub size: u64,
    /// The interrupt line (GSI).
    pub irq: u32,
    /// The optional platform device id after a second `:` (Linux allows it).
    pub id: Option<u32>,
}

/// Why a `virtio_mmio.device=` value did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError {
    /// Not `size@base:irq`.
    Syntax,
    /// A number did not parse or overflowed.
    Number,
    /// Size 0, or base + size overflows.
    Range,
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Syntax => "expected size@base:irq",
            Self::Number => "bad number",
            Self::Range => "empty or overflowing range",
        })
    }
}

impl core::error::Error for CmdlineError {}

fn parse_num(s: &str) -> Result<u64, CmdlineError> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return Err(CmdlineError::Number);
    }
    u64::from_str_radix(digits, radix).map_err(|_| CmdlineError::Number)
}

impl MmioDeviceDesc {
    /// The prefix of the command-line parameter.
    pub const PARAM: &'static str = "virtio_mmio.device=";

    /// Parses the value part, e.g. `512@0xfeb00e00:12`.
    pub fn parse(value: &str) -> Result<Self, CmdlineError> {
        let (size, rest) = value.split_once('@').ok_or(CmdlineError::Syntax)?;
        let (base, rest) = rest.split_once(':').ok_or(CmdlineError::Syntax)?;
        let (irq, id) = match rest.split_once(':') {
            Some((irq, id)) => (irq, Some(id)),
            None => (rest, None),
        };
        let (size_digits, shift) = match size.as_bytes().last() {
            Some(b'k' | b'K') => (&size[..size.len() - 1], 10),
            Some(b'm' | b'M') => (&size[..size.len() - 1], 20),
            Some(b'g' | b'G') => (&size[..size.len() - 1], 30),
            _ => (size, 0),
        };
        let size = parse_num(size_digits)?;
        let size = size.checked_mul(1 << shift).ok_or(CmdlineError::Number)?;
        let base = parse_num(base)?;
        let irq = u32::try_from(parse_num(irq)?).map_err(|_| CmdlineError::Number)?;
        let id = match id {
            Some(id) => Some(u32::try_from(parse_num(id)?).map_err(|_| CmdlineError::Number)?),
            None => None,
        };
        if size == 0 || base.checked_add(size).is_none() {
            return Err(CmdlineError::Range);
        }
        Ok(Self { base: PhysAddr::new(base), size, irq, id })
    }
}

/// Every `virtio_mmio.device=` entry of a command line, in order; entries
/// that do not parse are yielded as errors (the rest still parse).
pub fn cmdline_devices(cmdline: &str) -> impl Iterator<Item = Result<MmioDeviceDesc, CmdlineError>> + '_ {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.strip_prefix(MmioDeviceDesc::PARAM))
        .map(MmioDeviceDesc::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_qemu_microvm_line() {
        let line = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 \
                    virtio_mmio.device=4K@0xfeb01000:13:3 tests=all virtio_mmio.device=oops";
        let mut it = cmdline_devices(line);
        assert_eq!(
            it.next(),
            Some(Ok(MmioDeviceDesc { base: PhysAddr::new(0xfeb0_0e00), size: 512, irq: 12, id: None }))
        );
        assert_eq!(
            it.next(),
            Some(Ok(MmioDeviceDesc { base: PhysAddr::new(0xfeb0_1000), size: 4096, irq: 13, id: Some(3) }))
        );
        assert_eq!(it.next(), Some(Err(CmdlineError::Syntax)));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(MmioDeviceDesc::parse("0@0x1000:1"), Err(CmdlineError::Range));
        assert_eq!(MmioDeviceDesc::parse("1M@0xffffffffffffffff:1"), Err(CmdlineError::Range));
        assert_eq!(MmioDeviceDesc::parse("@0x1000:1"), Err(CmdlineError::Number));
        assert_eq!(MmioDeviceDesc::parse("16G@0x0:99999999999"), Err(CmdlineError::Number));
        assert_eq!(MmioDeviceDesc::parse("99999999999G@0x0:1"), Err(CmdlineError::Number));
        assert_eq!(MmioDeviceDesc::parse("1M@0x:1"), Err(CmdlineError::Number));
        assert_eq!(MmioDeviceDesc::parse("1M"), Err(CmdlineError::Syntax));
        assert_eq!(MmioDeviceDesc::parse("1m@4096:5").unwrap().size, 1 << 20);
    }
}
