//! Transports: how the driver reaches a device's registers.
//!
//! [`Transport`] is the one device API the drivers use; [`mmio`] implements
//! it for virtio-mmio version 2 (virtio 1.2 §4.2) and [`pci`] for modern
//! virtio-pci (§4.1). The provided methods implement the generic parts of
//! the device initialization sequence (§3.1.1) and the configuration-space
//! generation protocol (§2.5.1) once for both.

pub mod mmio;
pub mod pci;

use core::fmt;

use crate::hal::PhysAddr;
use crate::DeviceType;

/// The device status field (virtio 1.2 §2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct DeviceStatus(u8);

impl DeviceStatus {
    /// Written 0: reset.
    pub const RESET: Self = Self(0);
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: Self = Self(1);
    /// The guest knows how to drive the device.
    pub const DRIVER: Self = Self(2);
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: Self = Self(4);
    /// Feature negotiation is complete.
    pub const FEATURES_OK: Self = Self(8);
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: Self = Self(64);
    /// The guest gave up on the device.
    pub const FAILED: Self = Self(128);

    /// From the raw register value.
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }
    /// The raw register value.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// `true` if every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    /// `self` with the bits of `other` added.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// A 64-bit virtio feature set (virtio 1.2 §2.2; reserved bits §6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Features(u64);

impl Features {
    /// No features.
    pub const EMPTY: Self = Self(0);
    /// `VIRTIO_F_INDIRECT_DESC` (bit 28).
    pub const INDIRECT_DESC: Self = Self(1 << 28);
    /// `VIRTIO_F_EVENT_IDX` (bit 29).
    pub const EVENT_IDX: Self = Self(1 << 29);
    /// `VIRTIO_F_VERSION_1` (bit 32): the modern interface. Required.
    pub const VERSION_1: Self = Self(1 << 32);
    /// `VIRTIO_F_ACCESS_PLATFORM` (bit 33).
    pub const ACCESS_PLATFORM: Self = Self(1 << 33);
    /// `VIRTIO_F_RING_PACKED` (bit 34).
    pub const RING_PACKED: Self = Self(1 << 34);

    /// From raw bits.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }
    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }
    /// The single feature bit `bit` (0..64).
    pub const fn bit(bit: u32) -> Self {
        Self(1u64 << (bit % 64))
    }
    /// `true` if every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    /// Bits set in both.
    #[must_use]
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
    /// Bits set in either.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// Interrupt status bits (virtio 1.2 §4.1.4.5 ISR, §4.2.2 InterruptStatus).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterruptStatus(u32);

impl InterruptStatus {
    /// From the raw register value.
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }
    /// The raw register value.
    pub const fn bits(self) -> u32 {
        self.0
    }
    /// A used buffer notification: some queue has new used buffers.
    pub const fn queue(self) -> bool {
        self.0 & 1 != 0
    }
    /// The device configuration changed.
    pub const fn config_changed(self) -> bool {
        self.0 & 2 != 0
    }
}

/// What a transport operation found wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportError {
    /// The registers do not start with the virtio-mmio magic value.
    BadMagic(u32),
    /// A virtio-mmio version this crate does not drive: 1 is the legacy
    /// interface (run QEMU with `-global virtio-mmio.force-legacy=false`).
    UnsupportedVersion(u32),
    /// A placeholder slot without a device (device ID 0).
    NoDevice,
    /// The device does not offer `VIRTIO_F_VERSION_1` (a legacy-only device).
    NoVersion1,
    /// The device cleared `FEATURES_OK`: it rejected the features we chose.
    FeaturesRejected,
    /// The device did not read back status 0 after a reset.
    ResetTimeout,
    /// The queue index is not one the device has.
    NoSuchQueue(u16),
    /// The queue is already enabled (set it up once per reset).
    QueueInUse(u16),
    /// The requested queue size is 0 or larger than the device's maximum.
    BadQueueSize(u16),
    /// A configuration-space access outside the device's configuration.
    ConfigOutOfRange,
    /// The configuration kept changing while read (generation counter).
    ConfigUnstable,
    /// The device's notification address lies outside its notify region.
    BadNotifyOffset,
    /// PCI: a required virtio capability is missing.
    MissingCapability(u8),
    /// PCI: a capability or BAR is malformed or points outside its BAR.
    BadCapability,
    /// PCI: not a virtio device, or not a modern-capable one.
    NotVirtio,
    /// PCI: the kernel could not map a BAR range.
    MapFailed,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(m) => write!(f, "bad virtio-mmio magic {m:#x}"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported virtio-mmio version {v} (legacy?)"),
            Self::NoDevice => f.write_str("no device in this slot"),
            Self::NoVersion1 => f.write_str("device does not offer VIRTIO_F_VERSION_1"),
            Self::FeaturesRejected => f.write_str("device rejected the negotiated features"),
            Self::ResetTimeout => f.write_str("device did not complete reset"),
            Self::NoSuchQueue(q) => write!(f, "no queue {q}"),
            Self::QueueInUse(q) => write!(f, "queue {q} already enabled"),
            Self::BadQueueSize(s) => write!(f, "bad queue size {s}"),
            Self::ConfigOutOfRange => f.write_str("config access out of range"),
            Self::ConfigUnstable => f.write_str("config space kept changing"),
            Self::BadNotifyOffset => f.write_str("notify offset outside the notify region"),
            Self::MissingCapability(t) => write!(f, "missing virtio PCI capability type {t}"),
            Self::BadCapability => f.write_str("malformed virtio PCI capability or BAR"),
            Self::NotVirtio => f.write_str("not a modern virtio PCI device"),
            Self::MapFailed => f.write_str("BAR mapping failed"),
        }
    }
}

impl core::error::Error for TransportError {}

/// How many times [`Transport::reset`] polls the status register, and
/// [`Transport::read_config_consistent`] retries, before giving up.
pub const RETRY_LIMIT: u32 = 1 << 16;

/// The device API the drivers use, one per transport.
///
/// The required methods are thin register accesses; the provided methods
/// hold the protocol ([`begin_init`](Transport::begin_init),
/// [`read_config_consistent`](Transport::read_config_consistent)).
pub trait Transport {
    /// The raw virtio device ID (virtio 1.2 §5).
    fn device_id(&self) -> u32;

    /// The device type, if this crate knows it.
    fn device_type(&self) -> Option<DeviceType> {
        DeviceType::from_id(self.device_id())
    }

    /// The 64 feature bits the device offers.
    fn device_features(&mut self) -> Features;

    /// Writes the 64 feature bits the driver accepts.
    fn set_driver_features(&mut self, features: Features);

    /// Reads the device status.
    fn status(&self) -> DeviceStatus;

    /// Writes the device status.
    fn set_status(&mut self, status: DeviceStatus);

    /// Resets the device (writes status 0 and waits until it reads back
    /// 0, §2.4). Afterwards the device uses no queue or buffer.
    fn reset(&mut self) -> Result<(), TransportError> {
        self.set_status(DeviceStatus::RESET);
        for _ in 0..RETRY_LIMIT {
            if self.status() == DeviceStatus::RESET {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(TransportError::ResetTimeout)
    }

    /// The largest size the device allows for `queue` (0: no such queue).
    fn max_queue_size(&mut self, queue: u16) -> Result<u16, TransportError>;

    /// Configures and enables `queue` with `size` entries and the physical
    /// addresses of its descriptor table, driver (available) area and device
    /// (used) area (§2.7, §4.1.5.1.3, §4.2.3.2).
    fn setup_queue(
        &mut self,
        queue: u16,
        size: u16,
        desc: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) -> Result<(), TransportError>;

    /// Tells the device that `queue` has new available buffers.
    fn notify(&mut self, queue: u16);

    /// Reads and acknowledges the interrupt status.
    fn ack_interrupt(&mut self) -> InterruptStatus;

    /// The configuration generation counter (§2.5.1).
    fn config_generation(&self) -> u32;

    /// The size of the device-specific configuration space in bytes (an
    /// upper bound for MMIO, which does not say).
    fn config_len(&self) -> usize;

    /// Reads the configuration byte at `offset`.
    fn read_config_u8(&self, offset: usize) -> Result<u8, TransportError>;
    /// Reads the 16-bit configuration field at `offset`.
    fn read_config_u16(&self, offset: usize) -> Result<u16, TransportError>;
    /// Reads the 32-bit configuration field at `offset`.
    fn read_config_u32(&self, offset: usize) -> Result<u32, TransportError>;
    /// Writes the configuration byte at `offset`.
    fn write_config_u8(&mut self, offset: usize, value: u8) -> Result<(), TransportError>;
    /// Writes the 32-bit configuration field at `offset`.
    fn write_config_u32(&mut self, offset: usize, value: u32) -> Result<(), TransportError>;

    /// Reads a 64-bit configuration field as two 32-bit halves (the
    /// generation protocol makes the pair consistent when used inside
    /// [`read_config_consistent`](Transport::read_config_consistent)).
    fn read_config_u64(&self, offset: usize) -> Result<u64, TransportError> {
        let lo = self.read_config_u32(offset)?;
        let hi = self.read_config_u32(offset.checked_add(4).ok_or(TransportError::ConfigOutOfRange)?)?;
        Ok(u64::from(lo) | u64::from(hi) << 32)
    }

    /// Runs `read` until the configuration generation is the same before and
    /// after it (§2.5.1: the device may change fields while we read them).
    fn read_config_consistent<R>(
        &self,
        mut read: impl FnMut(&Self) -> Result<R, TransportError>,
    ) -> Result<R, TransportError> {
        for _ in 0..RETRY_LIMIT {
            let before = self.config_generation();
            let value = read(self)?;
            if self.config_generation() == before {
                return Ok(value);
            }
        }
        Err(TransportError::ConfigUnstable)
    }

    /// Steps 1-6 of the initialization sequence (§3.1.1): reset,
    /// ACKNOWLEDGE, DRIVER, negotiate `supported ∩ offered` (plus the
    /// required `VIRTIO_F_VERSION_1`), FEATURES_OK and check it stuck.
    /// Returns the negotiated features. On error the device is marked
    /// FAILED. The driver then sets up its queues and calls
    /// [`finish_init`](Transport::finish_init).
    fn begin_init(&mut self, supported: Features) -> Result<Features, TransportError> {
        self.reset()?;
        self.set_status(DeviceStatus::ACKNOWLEDGE);
        let s = DeviceStatus::ACKNOWLEDGE.union(DeviceStatus::DRIVER);
        self.set_status(s);
        let offered = self.device_features();
        if !offered.contains(Features::VERSION_1) {
            self.fail();
            return Err(TransportError::NoVersion1);
        }
        let chosen = offered.intersection(supported.union(Features::VERSION_1));
        self.set_driver_features(chosen);
        let s = s.union(DeviceStatus::FEATURES_OK);
        self.set_status(s);
        if !self.status().contains(DeviceStatus::FEATURES_OK) {
            self.fail();
            return Err(TransportError::FeaturesRejected);
        }
        Ok(chosen)
    }

    /// Step 8 (§3.1.1): DRIVER_OK; the device is live.
    fn finish_init(&mut self) {
        let s = self.status().union(DeviceStatus::DRIVER_OK);
        self.set_status(s);
    }

    /// Sets FAILED: the driver gave up on the device.
    fn fail(&mut self) {
        let s = self.status().union(DeviceStatus::FAILED);
        self.set_status(s);
    }
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn device_id(&self) -> u32 {
        (**self).device_id()
    }
    fn device_features(&mut self) -> Features {
        (**self).device_features()
    }
    fn set_driver_features(&mut self, features: Features) {
        (**self).set_driver_features(features)
    }
    fn status(&self) -> DeviceStatus {
        (**self).status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        (**self).set_status(status)
    }
    fn max_queue_size(&mut self, queue: u16) -> Result<u16, TransportError> {
        (**self).max_queue_size(queue)
    }
    fn setup_queue(
        &mut self,
        queue: u16,
        size: u16,
        desc: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) -> Result<(), TransportError> {
        (**self).setup_queue(queue, size, desc, driver_area, device_area)
    }
    fn notify(&mut self, queue: u16) {
        (**self).notify(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        (**self).ack_interrupt()
    }
    fn config_generation(&self) -> u32 {
        (**self).config_generation()
    }
    fn config_len(&self) -> usize {
        (**self).config_len()
    }
    fn read_config_u8(&self, offset: usize) -> Result<u8, TransportError> {
        (**self).read_config_u8(offset)
    }
    fn read_config_u16(&self, offset: usize) -> Result<u16, TransportError> {
        (**self).read_config_u16(offset)
    }
    fn read_config_u32(&self, offset: usize) -> Result<u32, TransportError> {
        (**self).read_config_u32(offset)
    }
    fn write_config_u8(&mut self, offset: usize, value: u8) -> Result<(), TransportError> {
        (**self).write_config_u8(offset, value)
    }
    fn write_config_u32(&mut self, offset: usize, value: u32) -> Result<(), TransportError> {
        (**self).write_config_u32(offset, value)
    }
}

/// Checks a `width`-byte access at `offset` lies in a config space of
/// `len` bytes and is naturally aligned (§4.1.3.1, §4.2.2.2: the driver uses
/// the natural width of each field).
pub(crate) fn check_config(offset: usize, width: usize, len: usize) -> Result<(), TransportError> {
    match offset.checked_add(width) {
        Some(end) if end <= len && offset.is_multiple_of(width) => Ok(()),
        _ => Err(TransportError::ConfigOutOfRange),
    }
}
