//! virtio for unikernels: transports (PCI, MMIO) and devices (net, blk, fs,
//! rng, console), generic over a transport and a DMA trait.
//!
//! Status: only the device-type table exists today; transports and devices
//! are tracked in issue #7.
//!
//! ```
//! use osv_virtio::DeviceType;
//!
//! assert_eq!(DeviceType::from_id(26), Some(DeviceType::Fs));
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

/// virtio device types (virtio 1.2, §5 "Device Types": the device ID table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeviceType {
    /// Network card (ID 1).
    Net,
    /// Block device (ID 2).
    Block,
    /// Console (ID 3).
    Console,
    /// Entropy source (ID 4).
    Rng,
    /// File system, virtio-fs (ID 26).
    Fs,
}

impl DeviceType {
    /// Maps a virtio device ID to a type this crate knows.
    pub const fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            1 => Self::Net,
            2 => Self::Block,
            3 => Self::Console,
            4 => Self::Rng,
            26 => Self::Fs,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceType;

    #[test]
    fn ids() {
        assert_eq!(DeviceType::from_id(1), Some(DeviceType::Net));
        assert_eq!(DeviceType::from_id(0), None);
    }
}
