//! virtio for unikernels: transports (virtio-mmio, virtio-pci) and device
//! drivers (blk, rng, net, console, virtio-fs), generic
//! over a transport and a DMA trait, and tested on the host against a fake,
//! adversarial device.
//!
//! # Layers
//!
//! From the hardware up:
//!
//! 1. [`Hal`] (implemented by the kernel): physically contiguous zeroed DMA
//!    pages as RAII [`Dma`] values, and `virt_to_phys` for caller buffers.
//!    The crate never assumes `phys == virt`.
//! 2. Register traits (implemented by the kernel, or by the fakes):
//!    [`Mmio`], a window of registers by byte offset ([`VolatileMmio`] is
//!    the real one, built `unsafe`ly from a mapped pointer), and
//!    [`PciConfig`], PCI configuration space by bus/device/function
//!    ([`transport::pci::Bdf`]). A [`BarMapper`] maps BAR ranges.
//! 3. [`Transport`]: one device API over [`MmioTransport`] (virtio-mmio
//!    version 2, virtio 1.2 §4.2; devices found from
//!    `virtio_mmio.device=` command-line entries) and [`PciTransport`]
//!    (modern virtio-pci, §4.1; devices found by
//!    [`transport::pci::PciEnumerator`] and probed by
//!    [`transport::pci::VirtioPciDevice::probe`]). Its provided methods hold
//!    the initialization sequence (§3.1.1: status protocol, 64-bit feature
//!    negotiation with `VIRTIO_F_VERSION_1` required, FEATURES_OK check) and
//!    the configuration generation retry (§2.5.1).
//! 4. [`VirtQueue`]: the split virtqueue (§2.7) in DMA memory; several
//!    chains in flight, tokens, notification suppression, and validation of
//!    everything the device writes.
//! 5. Drivers, generic over `T: Transport` and `H: Hal`: [`VirtIOBlk`]
//!    (§5.2, with the [`BlockDevice`] trait), [`VirtIORng`] (§5.4),
//!    [`net::VirtIONet`] (§5.1: a packet source/sink with
//!    `receive(|frame| ..)`/`transmit(frame)`, and `smoltcp::phy::Device`
//!    with the `smoltcp` feature) and [`console::VirtIOConsole`] (§5.3,
//!    single port, a `core::fmt::Write` sink).
//! 6. Completion ([`irq`]): every blocking call waits through [`irq::Wait`]
//!    (register as the queue's waiter, check the used ring, then park or
//!    spin), which a kernel implements with park/unpark and the interrupt
//!    handler body [`irq::on_interrupt`]; any `FnMut() -> bool` polls.
//!    virtio-blk and virtio-fs share one request tracker (in-flight records,
//!    stashed completions, the wait loop).
//! 7. virtio-fs ([`fs`], §5.11): the FUSE wire protocol with checked reply
//!    parsing ([`fs::proto`]), the [`fs::VirtIOFs`] driver (hiprio queue
//!    for `FUSE_FORGET`, a request queue with several requests in flight),
//!    and with the `vfs` feature `fs::VirtioFs`, an osv-vfs filesystem
//!    over it.
//!
//! No layer needs a heap: queue bookkeeping is in fixed arrays sized by a
//! const generic. The `alloc` feature is reserved (`vfs` uses the heap for
//! its vnodes); `std` adds the [`fake`]
//! module (fake HAL, fake registers, scriptable device) for host tests and
//! fuzzing.
//!
//! # The untrusted device
//!
//! A buggy or malicious device produces an error on the request concerned,
//! never a panic or memory corruption in the driver:
//! - every index and length read from the used ring is checked against
//!   the driver's private bookkeeping (never against data the device can
//!   write) before it is used; a violation is a typed [`QueueError`] and
//!   breaks the queue;
//! - drivers then reset the device, so it stops using the buffers of the
//!   requests still in flight, and fail those requests;
//! - capability offsets, BAR sizes, notify offsets and configuration
//!   values are range-checked; register windows answer out-of-range
//!   accesses with all ones instead of panicking.
//!
//! (Without an IOMMU a malicious device can still DMA anywhere; that is
//! outside what a driver can prevent.)
//!
//! # Example
//!
//! A virtio-blk device over virtio-mmio, here against the host fake (with
//! the `std` feature). In a kernel, `hal` is the kernel's [`Hal`] and the
//! registers a [`VolatileMmio`] at the address from
//! [`transport::mmio::cmdline_devices`].
//!
//! ```
//! # #[cfg(feature = "std")] {
//! use osv_virtio::fake::{BlkBackend, FakeDevice, FakeHal, FakeMmioRegs};
//! use osv_virtio::{BlockDevice, MmioTransport, Transport, VirtIOBlk};
//!
//! let hal = FakeHal::new();
//! let device = FakeDevice::new(&hal, Box::new(BlkBackend::new(128)), 1, 64);
//!
//! let transport = MmioTransport::new(FakeMmioRegs::new(&device))?;
//! assert_eq!(transport.device_type(), Some(osv_virtio::DeviceType::Block));
//! let mut blk = VirtIOBlk::new(&hal, transport)?;
//! assert_eq!(blk.size_bytes(), 128 * 512);
//!
//! blk.write_blocks(10, &[0x42; 1024])?;
//! let mut buf = [0u8; 1024];
//! blk.read_blocks(10, &mut buf)?;
//! assert_eq!(buf, [0x42; 1024]);
//! blk.flush()?;
//! # }
//! # Ok::<(), Box<dyn core::error::Error>>(())
//! ```
//!
//! And the kernel side, compiled but not run: an identity-mapped [`Hal`]
//! and a transport from the microvm command line.
//!
//! ```no_run
//! use core::ptr::NonNull;
//! use osv_virtio::transport::mmio::cmdline_devices;
//! use osv_virtio::{Hal, MmioTransport, PhysAddr, VirtIORng, VolatileMmio, PAGE_SIZE};
//!
//! # fn alloc_frames(_pages: usize) -> Option<u64> { None }
//! # fn free_frames(_phys: u64, _pages: usize) {}
//! #[derive(Clone, Copy)]
//! struct KernelHal;
//!
//! // SAFETY: frames come zeroed from the page allocator, are contiguous, and
//! // the kernel identity-maps all RAM below 4 GiB (phys == virt there).
//! unsafe impl Hal for KernelHal {
//!     fn dma_alloc(&self, pages: usize) -> Option<(PhysAddr, NonNull<u8>)> {
//!         let phys = alloc_frames(pages)?;
//!         Some((PhysAddr::new(phys), NonNull::new(phys as *mut u8)?))
//!     }
//!     unsafe fn dma_dealloc(&self, paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) {
//!         free_frames(paddr.as_u64(), pages);
//!     }
//!     fn virt_to_phys(&self, vaddr: *const u8) -> Option<PhysAddr> {
//!         Some(PhysAddr::new(vaddr as u64))
//!     }
//! }
//!
//! let cmdline = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12";
//! for desc in cmdline_devices(cmdline).flatten() {
//!     let base = NonNull::new(desc.base.as_u64() as *mut u8).unwrap();
//!     // SAFETY: the window is device registers, identity-mapped uncached.
//!     let regs = unsafe { VolatileMmio::new(base, desc.size as usize) };
//!     let Ok(transport) = MmioTransport::new(regs) else { continue };
//!     if let Ok(mut rng) = VirtIORng::new(&KernelHal, transport) {
//!         let mut seed = [0u8; 32];
//!         let _ = rng.fill(&mut seed);
//!     }
//! }
//! # let _ = PAGE_SIZE;
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod blk;
pub mod console;
#[cfg(test)]
mod e2e_tests;
#[cfg(any(test, feature = "std"))]
pub mod fake;
pub mod fs;
pub mod hal;
pub mod irq;
#[cfg(test)]
mod irq_tests;
pub mod mmio;
pub mod net;
pub mod queue;
mod request;
pub mod rng;
mod sync;
pub mod transport;

pub use blk::{BlkError, BlockDevice, VirtIOBlk};
pub use hal::{Dma, Hal, PhysAddr, PAGE_SIZE};
pub use mmio::{Mmio, VolatileMmio};
pub use queue::{QueueError, Token, VirtQueue};
pub use rng::{RngError, VirtIORng};
pub use transport::mmio::MmioTransport;
pub use transport::pci::{BarMapper, PciConfig, PciTransport};
pub use transport::{Transport, TransportError};

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
    ///
    /// ```
    /// use osv_virtio::DeviceType;
    /// assert_eq!(DeviceType::from_id(26), Some(DeviceType::Fs));
    /// ```
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
