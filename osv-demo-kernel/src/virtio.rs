//! virtio devices for the demo kernel (osv-virtio): discovery on both
//! machine types, the DMA `Hal` over the heap, and the transports.
//!
//! - `q35`/`pc`: PCI configuration mechanism #1 (ports `0xcf8`/`0xcfc`),
//!   modern virtio-pci functions, BARs in the identity-mapped 0-4 GiB.
//! - `microvm` (no PCI): `virtio_mmio.device=` entries of the command line
//!   if the loader passed any, else QEMU microvm's fixed transport window
//!   (`VIRTIO_MMIO_BASE` 0xfeb00000, 512-byte slots; QEMU
//!   `include/hw/i386/microvm.h`). Only modern (version 2) registers are
//!   driven: QEMU needs `-global virtio-mmio.force-legacy=false`.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;
use osv_boot::arch;
use osv_virtio::transport::mmio::cmdline_devices;
use osv_virtio::transport::pci::{Bdf, PciEnumerator, VirtioPciDevice};
use osv_virtio::{
    BarMapper, BlkError, BlockDevice, DeviceType, Hal, MmioTransport, PciConfig, PciTransport, PhysAddr,
    RngError, Transport, VirtIOBlk, VirtIORng, VolatileMmio, PAGE_SIZE,
};

/// Everything below 4 GiB is identity-mapped by osv-boot's page tables.
const IDENTITY_LIMIT: u64 = 1 << 32;

/// DMA memory from the kernel heap: page-aligned, zeroed, and (identity
/// map) at the same physical address as its virtual one.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapHal;

fn layout(pages: usize) -> Option<Layout> {
    Layout::from_size_align(pages.checked_mul(PAGE_SIZE)?, PAGE_SIZE).ok()
}

// SAFETY: `dma_alloc` returns zeroed, page-aligned memory owned by the
// caller until `dma_dealloc`; its physical address is its virtual address
// (identity map, checked below 4 GiB); `virt_to_phys` is the identity there.
unsafe impl Hal for HeapHal {
    fn dma_alloc(&self, pages: usize) -> Option<(PhysAddr, NonNull<u8>)> {
        let l = layout(pages)?;
        if l.size() == 0 {
            return None;
        }
        // SAFETY: the layout has a non-zero size.
        let p = NonNull::new(unsafe { alloc_zeroed(l) })?;
        let end = (p.as_ptr() as u64).checked_add(l.size() as u64)?;
        if end > IDENTITY_LIMIT {
            // SAFETY: just allocated with this layout.
            unsafe { dealloc(p.as_ptr(), l) };
            return None;
        }
        Some((PhysAddr::new(p.as_ptr() as u64), p))
    }

    unsafe fn dma_dealloc(&self, _paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) {
        if let Some(l) = layout(pages) {
            // SAFETY: the caller passes back what `dma_alloc` returned for
            // `pages`, so it was allocated with this layout.
            unsafe { dealloc(vaddr.as_ptr(), l) };
        }
    }

    fn virt_to_phys(&self, vaddr: *const u8) -> Option<PhysAddr> {
        let a = vaddr as u64;
        (a < IDENTITY_LIMIT).then_some(PhysAddr::new(a))
    }
}

/// PCI configuration mechanism #1.
pub struct PortConfig;

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

impl PciConfig for PortConfig {
    fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
        arch::without_interrupts(|| {
            // SAFETY: ring 0; the PCI configuration ports belong to the
            // kernel, and interrupts are off across the address/data pair.
            unsafe {
                arch::outl(CONFIG_ADDRESS, bdf.config_address(offset));
                arch::inl(CONFIG_DATA)
            }
        })
    }

    fn write32(&self, bdf: Bdf, offset: u8, value: u32) {
        arch::without_interrupts(|| {
            // SAFETY: as in `read32`; the caller (the transport) owns the
            // function whose register it writes.
            unsafe {
                arch::outl(CONFIG_ADDRESS, bdf.config_address(offset));
                arch::outl(CONFIG_DATA, value);
            }
        })
    }
}

/// BARs below 4 GiB are already mapped (identity, uncached in the top GiB).
struct IdentityBars;

impl BarMapper for IdentityBars {
    type Region = VolatileMmio;
    fn map(&mut self, phys: PhysAddr, len: usize) -> Option<VolatileMmio> {
        let end = phys.as_u64().checked_add(len as u64)?;
        if end > IDENTITY_LIMIT || !phys.as_u64().is_multiple_of(4) {
            return None;
        }
        let base = NonNull::new(phys.as_u64() as *mut u8)?;
        // SAFETY: the range is a BAR the PCI probe read from the function's
        // configuration, identity-mapped uncached; the transport owns it.
        Some(unsafe { VolatileMmio::new(base, len) })
    }
}

/// A transport of either kind.
pub enum AnyTransport {
    Mmio(MmioTransport<VolatileMmio>),
    Pci(PciTransport<VolatileMmio>),
}

/// A device found on the machine, not yet driven.
pub struct Found {
    pub kind: DeviceType,
    pub transport: AnyTransport,
    pub location: alloc::string::String,
}

/// Whether a PCI host bridge answers at 00:00.0.
pub fn has_pci() -> bool {
    let Some(bdf) = Bdf::new(0, 0, 0) else { return false };
    PortConfig.read32(bdf, 0) & 0xffff != 0xffff
}

/// QEMU microvm's virtio-mmio window (`include/hw/i386/microvm.h`).
const MICROVM_MMIO_BASE: u64 = 0xfeb0_0000;
const MICROVM_MMIO_SLOT: u64 = 0x200;
const MICROVM_MMIO_SLOTS: u64 = 24;

/// Finds every virtio device this kernel can drive.
pub fn discover(cmdline: &str) -> Vec<Found> {
    let mut out = Vec::new();
    if has_pci() {
        for f in PciEnumerator::new(PortConfig).filter(|f| f.is_virtio()) {
            let Ok(dev) = VirtioPciDevice::probe(&PortConfig, f.bdf) else { continue };
            let Ok(t) = PciTransport::new(&PortConfig, &dev, &mut IdentityBars) else { continue };
            if let Some(kind) = DeviceType::from_id(t.device_id()) {
                let location =
                    alloc::format!("pci {:02x}:{:02x}.{}", f.bdf.bus(), f.bdf.device(), f.bdf.function());
                out.push(Found { kind, transport: AnyTransport::Pci(t), location });
            }
        }
        return out;
    }
    let mut windows: Vec<(u64, u64)> =
        cmdline_devices(cmdline).filter_map(|d| d.ok()).map(|d| (d.base.as_u64(), d.size)).collect();
    if windows.is_empty() {
        windows = (0..MICROVM_MMIO_SLOTS)
            .map(|i| (MICROVM_MMIO_BASE + i * MICROVM_MMIO_SLOT, MICROVM_MMIO_SLOT))
            .collect();
    }
    for (base, size) in windows {
        if base.checked_add(size).is_none_or(|e| e > IDENTITY_LIMIT) || !base.is_multiple_of(4) {
            continue;
        }
        let Some(ptr) = NonNull::new(base as *mut u8) else { continue };
        // SAFETY: a virtio-mmio register window (from the loader's command
        // line or QEMU microvm's fixed layout), identity-mapped uncached;
        // the transport validates the magic and version before anything else.
        let regs = unsafe { VolatileMmio::new(ptr, size as usize) };
        let Ok(t) = MmioTransport::new(regs) else { continue };
        if let Some(kind) = DeviceType::from_id(t.device_id()) {
            out.push(Found {
                kind,
                transport: AnyTransport::Mmio(t),
                location: alloc::format!("mmio {base:#x}"),
            });
        }
    }
    out
}

/// A virtio-rng driver on either transport.
pub enum Rng {
    Mmio(VirtIORng<HeapHal, MmioTransport<VolatileMmio>>),
    Pci(VirtIORng<HeapHal, PciTransport<VolatileMmio>>),
}

impl Rng {
    /// Fills `buf` completely; `Err(None)` if the device returned nothing.
    pub fn fill_all(&mut self, buf: &mut [u8]) -> Result<(), Option<RngError>> {
        let mut done = 0;
        while done < buf.len() {
            let n = match self {
                Rng::Mmio(r) => r.fill(&mut buf[done..])?,
                Rng::Pci(r) => r.fill(&mut buf[done..])?,
            };
            if n == 0 {
                return Err(None);
            }
            done += n;
        }
        Ok(())
    }
}

/// Nanoseconds all virtio-blk requests spent spinning for the device (from
/// the first poll that found nothing to the last one), so a measurement can
/// tell the driver's own work from waiting for QEMU. Under `-icount` the
/// nanoseconds are instructions, and the wait depends on how fast the host
/// serves the request: only the rest is a property of the guest's code.
pub static BLK_WAIT_NS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The wait hook of one blocking request: spins, and remembers the span.
#[derive(Default)]
struct WaitSpan {
    first: Option<u64>,
    last: u64,
}

impl WaitSpan {
    fn poll(&mut self) -> bool {
        let now = osv_boot::rt::now_ns();
        self.first.get_or_insert(now);
        core::hint::spin_loop();
        self.last = osv_boot::rt::now_ns();
        true
    }

    fn account(self) {
        if let Some(first) = self.first {
            BLK_WAIT_NS.fetch_add(self.last - first, core::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A virtio-blk driver on either transport.
pub enum Blk {
    Mmio(VirtIOBlk<HeapHal, MmioTransport<VolatileMmio>>),
    Pci(VirtIOBlk<HeapHal, PciTransport<VolatileMmio>>),
}

macro_rules! blk_dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Blk::Mmio($b) => $e,
            Blk::Pci($b) => $e,
        }
    };
}

impl Blk {
    pub fn sector_size(&self) -> u32 {
        blk_dispatch!(self, b => b.sector_size())
    }
    pub fn size_bytes(&self) -> u64 {
        blk_dispatch!(self, b => b.size_bytes())
    }
    /// `sector` in virtio's fixed 512-byte units (virtio 1.2 §5.2.6).
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        let mut w = WaitSpan::default();
        let r = blk_dispatch!(self, b => b.read_blocks_with(sector, buf, &mut || w.poll()));
        w.account();
        r
    }
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        let mut w = WaitSpan::default();
        let r = blk_dispatch!(self, b => b.write_blocks_with(sector, buf, &mut || w.poll()));
        w.account();
        r
    }
    pub fn flush(&mut self) -> Result<(), BlkError> {
        blk_dispatch!(self, b => b.flush())
    }
}

/// The drivers the kernel runs, made once at boot.
#[derive(Default)]
pub struct Devices {
    pub rng: Option<(Rng, String)>,
    pub blk: Vec<(Blk, String)>,
    /// Devices found but not driven (unsupported type or a failed init).
    pub other: Vec<String>,
}

/// Devices found at boot that `init` does not drive itself (net, console,
/// fs, ...): the subsystem that drives a kind takes it with [`take`].
static UNCLAIMED: spin::Mutex<Vec<Found>> = spin::Mutex::new(Vec::new());

/// Takes the first unclaimed device of `kind`, if there is one.
pub fn take(kind: DeviceType) -> Option<Found> {
    let mut all = UNCLAIMED.lock();
    let i = all.iter().position(|f| f.kind == kind)?;
    Some(all.remove(i))
}

/// Where the devices nobody has claimed yet are, for the banner.
pub fn unclaimed() -> Vec<String> {
    UNCLAIMED.lock().iter().map(|f| alloc::format!("{:?} at {}", f.kind, f.location)).collect()
}

/// Finds the devices and starts a driver for each one this kernel uses.
pub fn init(cmdline: &str) -> Devices {
    let mut d = Devices::default();
    for f in discover(cmdline) {
        match (f.kind, f.transport) {
            (DeviceType::Rng, AnyTransport::Mmio(t)) if d.rng.is_none() => {
                match VirtIORng::new(&HeapHal, t) {
                    Ok(r) => d.rng = Some((Rng::Mmio(r), f.location)),
                    Err(e) => d.other.push(alloc::format!("virtio-rng at {}: {e:?}", f.location)),
                }
            }
            (DeviceType::Rng, AnyTransport::Pci(t)) if d.rng.is_none() => match VirtIORng::new(&HeapHal, t) {
                Ok(r) => d.rng = Some((Rng::Pci(r), f.location)),
                Err(e) => d.other.push(alloc::format!("virtio-rng at {}: {e:?}", f.location)),
            },
            (DeviceType::Block, AnyTransport::Mmio(t)) => match VirtIOBlk::new(&HeapHal, t) {
                Ok(b) => d.blk.push((Blk::Mmio(b), f.location)),
                Err(e) => d.other.push(alloc::format!("virtio-blk at {}: {e:?}", f.location)),
            },
            (DeviceType::Block, AnyTransport::Pci(t)) => match VirtIOBlk::new(&HeapHal, t) {
                Ok(b) => d.blk.push((Blk::Pci(b), f.location)),
                Err(e) => d.other.push(alloc::format!("virtio-blk at {}: {e:?}", f.location)),
            },
            (kind, transport) => UNCLAIMED.lock().push(Found { kind, transport, location: f.location }),
        }
    }
    d
}
