//! Host fakes: a DMA [`Hal`] over heap pages with a fake physical address
//! space, a scriptable (and adversarial) virtio device, and its registers
//! seen through the virtio-mmio layout ([`FakeMmioRegs`]) or through PCI
//! ([`FakePciBus`], [`FakeBarMapper`]).
//!
//! The device runs in the caller's thread: with [`FakeDevice::set_auto`]
//! (the default) it processes a queue when the driver notifies it;
//! otherwise the test drives it with [`FakeDevice::process`] or
//! [`FakeDevice::with_queue`] (a raw [`DeviceQueue`] to pop chains and
//! write arbitrary used-ring contents).
//!
//! Physical addresses: DMA pages live at [`DMA_BASE`] and up (above 4 GiB,
//! so 64-bit queue addresses are exercised and `phys != virt`), and every
//! device access to them is bounds-checked. Caller buffers translate to
//! [`CALLER_BASE`] + their virtual address; the device side trusts the
//! driver under test for those (it is a test device).
//!
//! Available with `cfg(test)` or the `std` feature.
#![allow(unsafe_code)]
#![allow(clippy::missing_panics_doc)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::boxed::Box;
use std::collections::{BTreeMap, VecDeque};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::vec;
use std::vec::Vec;

use crate::hal::{Hal, PhysAddr, PAGE_SIZE};
use crate::mmio::Mmio;
use crate::transport::mmio::{reg, MAGIC};
use crate::transport::pci::{common, BarMapper, Bdf, PciConfig};
use crate::transport::Features;

/// Fake physical address of the first DMA page.
pub const DMA_BASE: u64 = 0x1_0000_0000;
/// Caller buffers translate to `CALLER_BASE + virtual address`.
pub const CALLER_BASE: u64 = 1 << 60;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct Region {
    virt: usize,
    len: usize,
}

#[derive(Debug, Default)]
struct MemInner {
    regions: BTreeMap<u64, Region>,
    next_phys: u64,
}

/// The fake physical address space shared by [`FakeHal`] and the device.
#[derive(Debug, Default)]
pub struct FakeMemory {
    inner: Mutex<MemInner>,
}

/// A device access the fake memory could not serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The physical address.
    pub phys: u64,
    /// The length.
    pub len: usize,
}

impl FakeMemory {
    /// Number of DMA allocations not freed.
    pub fn live_allocations(&self) -> usize {
        lock(&self.inner).regions.len()
    }

    /// The host pointer for `[phys, phys + len)`, if it is inside one DMA
    /// region or in the caller window.
    fn host_ptr(&self, phys: u64, len: usize) -> Result<*mut u8, Fault> {
        let fault = Fault { phys, len };
        if phys >= CALLER_BASE {
            let addr = usize::try_from(phys - CALLER_BASE).map_err(|_| fault)?;
            addr.checked_add(len).ok_or(fault)?;
            return Ok(std::ptr::with_exposed_provenance_mut(addr));
        }
        let inner = lock(&self.inner);
        let (&base, r) = inner.regions.range(..=phys).next_back().ok_or(fault)?;
        let off = usize::try_from(phys - base).map_err(|_| fault)?;
        if off.checked_add(len).is_none_or(|end| end > r.len) {
            return Err(fault);
        }
        Ok(std::ptr::with_exposed_provenance_mut(r.virt + off))
    }

    /// Device-side read of `buf.len()` bytes at `phys`.
    pub fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let p = self.host_ptr(phys, buf.len())?;
        // SAFETY: `host_ptr` checked the range lies in a live DMA region, or
        // it is a caller buffer the driver under test handed to the device
        // (the fake trusts it); `buf` is a distinct slice.
        unsafe { std::ptr::copy(p, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Device-side write of `data` at `phys`.
    pub fn write(&self, phys: u64, data: &[u8]) -> Result<(), Fault> {
        let p = self.host_ptr(phys, data.len())?;
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    fn read_u16(&self, phys: u64) -> Result<u16, Fault> {
        let mut b = [0; 2];
        self.read(phys, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
}

/// A [`Hal`] over heap pages, with [`FakeMemory`]'s address space.
#[derive(Clone, Debug, Default)]
pub struct FakeHal {
    mem: Arc<FakeMemory>,
}

impl FakeHal {
    /// A fresh address space.
    pub fn new() -> Self {
        Self::default()
    }
    /// The address space (for the device side).
    pub fn memory(&self) -> Arc<FakeMemory> {
        self.mem.clone()
    }
}

// SAFETY: `dma_alloc` returns fresh zeroed, page-aligned heap memory of the
// requested size, registered at a unique fake physical range that the fake
// device resolves to exactly those bytes; `virt_to_phys` is the inverse of
// the device-side translation.
unsafe impl Hal for FakeHal {
    fn dma_alloc(&self, pages: usize) -> Option<(PhysAddr, NonNull<u8>)> {
        let len = pages.checked_mul(PAGE_SIZE)?;
        let layout = Layout::from_size_align(len, PAGE_SIZE).ok()?;
        // SAFETY: `len > 0` (pages ≥ 1 per the trait) and the layout is valid.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        let mut inner = lock(&self.mem.inner);
        let phys = DMA_BASE + inner.next_phys;
        // Leave a guard page between regions.
        inner.next_phys += (len + PAGE_SIZE) as u64;
        inner.regions.insert(phys, Region { virt: ptr.as_ptr().expose_provenance(), len });
        Some((PhysAddr::new(phys), ptr))
    }

    unsafe fn dma_dealloc(&self, paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) {
        let r = lock(&self.mem.inner).regions.remove(&paddr.as_u64());
        let r = r.expect("fake dma_dealloc of an unknown region");
        assert_eq!(r.virt, vaddr.as_ptr() as usize, "fake dma_dealloc: wrong vaddr");
        assert_eq!(r.len, pages * PAGE_SIZE, "fake dma_dealloc: wrong size");
        let layout = Layout::from_size_align(r.len, PAGE_SIZE).expect("layout");
        // SAFETY: allocated in `dma_alloc` with this layout (checked above)
        // and removed from the table, so freed once.
        unsafe { dealloc(vaddr.as_ptr(), layout) };
    }

    fn virt_to_phys(&self, vaddr: *const u8) -> Option<PhysAddr> {
        let v = vaddr.expose_provenance();
        let inner = lock(&self.mem.inner);
        for (&phys, r) in &inner.regions {
            if v >= r.virt && v < r.virt + r.len {
                return Some(PhysAddr::new(phys + (v - r.virt) as u64));
            }
        }
        Some(PhysAddr::new(CALLER_BASE + v as u64))
    }
}

/// A chain the device popped from the available ring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceChain {
    /// Head descriptor index.
    pub head: u16,
    /// Device-readable (address, length) pieces.
    pub readable: Vec<(u64, u32)>,
    /// Device-writable pieces.
    pub writable: Vec<(u64, u32)>,
}

impl DeviceChain {
    /// Total writable bytes.
    pub fn writable_len(&self) -> u32 {
        self.writable.iter().map(|w| w.1).sum()
    }
}

/// The device's view of one split virtqueue (virtio 1.2 §2.7), over
/// [`FakeMemory`].
#[derive(Debug)]
pub struct DeviceQueue {
    mem: Arc<FakeMemory>,
    size: u16,
    desc: u64,
    driver: u64,
    device: u64,
    last_avail: u16,
    used_idx: u16,
}

impl DeviceQueue {
    /// A queue of `size` entries at these physical addresses.
    pub fn new(mem: Arc<FakeMemory>, size: u16, desc: u64, driver: u64, device: u64) -> Self {
        Self { mem, size, desc, driver, device, last_avail: 0, used_idx: 0 }
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Pops the next available chain, if any.
    pub fn pop_avail(&mut self) -> Result<Option<DeviceChain>, Fault> {
        let avail_idx = self.mem.read_u16(self.driver + 2)?;
        if avail_idx == self.last_avail || self.size == 0 {
            return Ok(None);
        }
        let slot = u64::from(self.last_avail % self.size);
        let head = self.mem.read_u16(self.driver + 4 + 2 * slot)?;
        let mut chain = DeviceChain { head, ..Default::default() };
        let mut i = head;
        for _ in 0..self.size {
            if i >= self.size {
                return Err(Fault { phys: self.desc, len: 16 });
            }
            let mut d = [0u8; 16];
            self.mem.read(self.desc + 16 * u64::from(i), &mut d)?;
            let addr = u64::from_le_bytes(d[0..8].try_into().expect("8"));
            let len = u32::from_le_bytes(d[8..12].try_into().expect("4"));
            let flags = u16::from_le_bytes([d[12], d[13]]);
            let next = u16::from_le_bytes([d[14], d[15]]);
            if flags & 2 != 0 {
                chain.writable.push((addr, len));
            } else {
                chain.readable.push((addr, len));
            }
            if flags & 1 == 0 {
                self.last_avail = self.last_avail.wrapping_add(1);
                return Ok(Some(chain));
            }
            i = next;
        }
        Err(Fault { phys: self.desc, len: 16 })
    }

    /// The device-readable bytes of `chain`, concatenated.
    pub fn read_chain(&self, chain: &DeviceChain) -> Result<Vec<u8>, Fault> {
        let mut out = Vec::new();
        for &(addr, len) in &chain.readable {
            let start = out.len();
            out.resize(start + len as usize, 0);
            self.mem.read(addr, &mut out[start..])?;
        }
        Ok(out)
    }

    /// Scatters `data` over the writable pieces of `chain` (at most their
    /// total).
    pub fn write_chain(&self, chain: &DeviceChain, data: &[u8]) -> Result<(), Fault> {
        let mut rest = data;
        for &(addr, len) in &chain.writable {
            let n = rest.len().min(len as usize);
            self.mem.write(addr, &rest[..n])?;
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Writes used element `slot` (mod size) without publishing it.
    pub fn write_used_elem(&self, slot: u16, id: u32, len: u32) -> Result<(), Fault> {
        let off = self.device + 4 + 8 * u64::from(slot % self.size.max(1));
        let mut e = [0u8; 8];
        e[0..4].copy_from_slice(&id.to_le_bytes());
        e[4..8].copy_from_slice(&len.to_le_bytes());
        self.mem.write(off, &e)
    }

    /// Publishes a used index.
    pub fn set_used_idx(&mut self, idx: u16) -> Result<(), Fault> {
        self.used_idx = idx;
        self.mem.write(self.device + 2, &idx.to_le_bytes())
    }

    /// The used index the device last published.
    pub fn used_idx(&self) -> u16 {
        self.used_idx
    }

    /// Writes one used element and advances the used index by one.
    pub fn push_used(&mut self, id: u32, len: u32) -> Result<(), Fault> {
        self.write_used_elem(self.used_idx, id, len)?;
        self.set_used_idx(self.used_idx.wrapping_add(1))
    }

    /// Sets or clears `VIRTQ_USED_F_NO_NOTIFY`.
    pub fn set_no_notify(&self, on: bool) -> Result<(), Fault> {
        self.mem.write(self.device, &u16::from(on).to_le_bytes())
    }

    /// Overwrites the whole used ring area (flags, idx, elements, event)
    /// with `bytes` (truncated or zero-padded to its size).
    pub fn write_used_raw(&mut self, bytes: &[u8]) -> Result<(), Fault> {
        let total = 6 + 8 * usize::from(self.size);
        let mut buf = vec![0u8; total];
        let n = bytes.len().min(total);
        buf[..n].copy_from_slice(&bytes[..n]);
        self.used_idx = u16::from_le_bytes([buf[2], buf[3]]);
        self.mem.write(self.device, &buf)
    }
}

/// What a fake device does with requests.
pub trait Backend: Send {
    /// The virtio device ID.
    fn device_id(&self) -> u32;
    /// Device-specific feature bits offered (the fake adds `VERSION_1`).
    fn features(&self) -> u64;
    /// The initial configuration space.
    fn config(&self) -> Vec<u8>;
    /// Handles one request on `queue`: `req` is the readable part, `resp`
    /// the zeroed writable part; returns how many bytes to report written.
    fn handle(&mut self, queue: u16, req: &[u8], resp: &mut [u8]) -> u32;
}

/// One scripted misbehaviour, applied to the next completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehave {
    /// Report this used id instead of the chain's head.
    UsedId(u32),
    /// Report `k` more bytes written than were (the data itself is
    /// written as the backend produced it, here and for `Len`).
    ExtraLen(u32),
    /// Report exactly this length.
    Len(u32),
    /// Advance the used index by `1 + k`.
    IdxJump(u16),
    /// Report the completion twice.
    Duplicate,
    /// Overwrite the last written byte (the blk status) with this value.
    Status(u8),
    /// Never complete this chain.
    Swallow,
}

/// A feature/status/queue register state machine with a backend behind it.
struct DevState {
    mem: Arc<FakeMemory>,
    backend: Box<dyn Backend>,
    version: u32,
    magic: u32,
    offered: u64,
    driver_features: u64,
    dev_sel: u32,
    drv_sel: u32,
    status: u8,
    queue_sel: u16,
    queues: Vec<QState>,
    isr: u32,
    /// The MSI-X table (address low, high, data, control per entry) and
    /// `config_msix_vector`.
    msix_table: [u32; 4 * MSIX_ENTRIES as usize],
    config_msix: Option<u16>,
    config: Vec<u8>,
    generation: u32,
    unstable_reads: u32,
    auto: bool,
    reject_features: bool,
    misbehave: VecDeque<Misbehave>,
    faults: u64,
    completions: u64,
    notifies: u64,
}

#[derive(Clone, Debug, Default)]
struct QState {
    /// `queue_msix_vector` (`None`: `VIRTIO_MSI_NO_VECTOR`).
    msix: Option<u16>,
    max: u16,
    num: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
    dq: Option<std::sync::Arc<Mutex<DeviceQueue>>>,
}

impl DevState {
    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.isr = 0;
        self.config_msix = None;
        for q in &mut self.queues {
            *q = QState { max: q.max, num: q.max, ..Default::default() };
        }
    }

    fn q(&mut self) -> Option<&mut QState> {
        self.queues.get_mut(usize::from(self.queue_sel))
    }

    fn set_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        if v & 8 != 0 && self.status & 8 == 0 {
            let ok = self.driver_features & !self.offered == 0 && !self.reject_features;
            if !ok {
                v &= !8;
            }
        }
        self.status = v;
    }

    fn set_ready(&mut self, on: bool) {
        let mem = self.mem.clone();
        if let Some(q) = self.q() {
            q.ready = on;
            q.dq = on.then(|| Arc::new(Mutex::new(DeviceQueue::new(mem, q.num, q.desc, q.driver, q.device))));
        }
    }

    fn generation(&mut self) -> u32 {
        if self.unstable_reads > 0 {
            self.unstable_reads -= 1;
            self.generation = self.generation.wrapping_add(1);
        }
        self.generation
    }

    fn config_read(&self, off: usize, width: usize) -> u32 {
        let mut v = 0u32;
        for i in 0..width {
            let b = self.config.get(off + i).copied().unwrap_or(0);
            v |= u32::from(b) << (8 * i);
        }
        v
    }

    fn config_write(&mut self, off: usize, width: usize, value: u32) {
        for i in 0..width {
            if let Some(b) = self.config.get_mut(off + i) {
                *b = (value >> (8 * i)) as u8;
            }
        }
    }

    fn notify(&mut self, queue: u16) {
        self.notifies += 1;
        if self.auto && self.status & 4 != 0 {
            self.process(queue);
        }
    }

    /// Processes every available chain of `queue`.
    fn process(&mut self, queue: u16) {
        let Some(dq) = self.queues.get(usize::from(queue)).and_then(|q| q.dq.clone()) else {
            return;
        };
        let mut dq = lock(&dq);
        loop {
            let chain = match dq.pop_avail() {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(_) => {
                    self.faults += 1;
                    break;
                }
            };
            let Ok(req) = dq.read_chain(&chain) else {
                self.faults += 1;
                continue;
            };
            let mut resp = vec![0u8; chain.writable_len() as usize];
            let written = (self.backend.handle(queue, &req, &mut resp) as usize).min(resp.len());
            let mut n = written as u32;
            let (mut id, mut times, mut jump) = (u32::from(chain.head), 1, 0u16);
            match self.misbehave.pop_front() {
                Some(Misbehave::UsedId(i)) => id = i,
                Some(Misbehave::ExtraLen(k)) => n = n.saturating_add(k),
                Some(Misbehave::Len(l)) => n = l,
                Some(Misbehave::IdxJump(k)) => jump = k,
                Some(Misbehave::Duplicate) => times = 2,
                Some(Misbehave::Status(s)) => {
                    if let Some(last) = resp[..written].last_mut() {
                        *last = s;
                    }
                }
                Some(Misbehave::Swallow) => continue,
                None => {}
            }
            if dq.write_chain(&chain, &resp[..written]).is_err() {
                self.faults += 1;
            }
            for _ in 0..times {
                if dq.push_used(id, n).is_err() {
                    self.faults += 1;
                }
            }
            if jump > 0 {
                let idx = dq.used_idx().wrapping_add(jump);
                let _ = dq.set_used_idx(idx);
            }
            self.completions += 1;
        }
        self.isr |= 1;
    }
}

/// A fake virtio device (a cheap shared handle).
#[derive(Clone)]
pub struct FakeDevice {
    inner: Arc<Mutex<DevState>>,
}

impl std::fmt::Debug for FakeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.inner);
        f.debug_struct("FakeDevice").field("status", &s.status).field("completions", &s.completions).finish()
    }
}

impl FakeDevice {
    /// A modern device over `hal`'s memory with `queues` queues of at most
    /// `queue_max` entries.
    pub fn new(hal: &FakeHal, backend: Box<dyn Backend>, queues: u16, queue_max: u16) -> Self {
        let offered = backend.features() | Features::VERSION_1.bits();
        let config = backend.config();
        let state = DevState {
            mem: hal.memory(),
            backend,
            version: 2,
            magic: MAGIC,
            offered,
            driver_features: 0,
            dev_sel: 0,
            drv_sel: 0,
            status: 0,
            queue_sel: 0,
            queues: vec![
                QState { max: queue_max, num: queue_max, ..Default::default() };
                usize::from(queues)
            ],
            isr: 0,
            msix_table: [0; 4 * MSIX_ENTRIES as usize],
            config_msix: None,
            config,
            generation: 0,
            unstable_reads: 0,
            auto: true,
            reject_features: false,
            misbehave: VecDeque::new(),
            faults: 0,
            completions: 0,
            notifies: 0,
        };
        Self { inner: Arc::new(Mutex::new(state)) }
    }

    fn state(&self) -> MutexGuard<'_, DevState> {
        lock(&self.inner)
    }

    /// Process queues when notified (default `true`).
    pub fn set_auto(&self, on: bool) {
        self.state().auto = on;
    }
    /// MSI-X table entry `i` of the PCI form: (message address, data,
    /// masked).
    pub fn msix_entry(&self, i: usize) -> Option<(u64, u32, bool)> {
        let s = self.state();
        let e = s.msix_table.get(4 * i..4 * i + 4)?;
        Some((u64::from(e[0]) | u64::from(e[1]) << 32, e[2], e[3] & 1 != 0))
    }
    /// `queue_msix_vector` of `queue` (`None`: no vector).
    pub fn queue_msix_vector(&self, queue: u16) -> Option<u16> {
        self.state().queues.get(usize::from(queue)).and_then(|q| q.msix)
    }
    /// `config_msix_vector` (`None`: no vector).
    pub fn config_msix_vector(&self) -> Option<u16> {
        self.state().config_msix
    }
    /// Sets the virtio-mmio version register (1 = legacy).
    pub fn set_mmio_version(&self, v: u32) {
        self.state().version = v;
    }
    /// Sets the virtio-mmio magic register.
    pub fn set_magic(&self, v: u32) {
        self.state().magic = v;
    }
    /// Replaces the offered feature bits.
    pub fn set_offered_features(&self, bits: u64) {
        self.state().offered = bits;
    }
    /// Clear FEATURES_OK whatever the driver chose.
    pub fn set_reject_features(&self, on: bool) {
        self.state().reject_features = on;
    }
    /// The next `n` generation reads each see a new generation.
    pub fn set_unstable_config(&self, n: u32) {
        self.state().unstable_reads = n;
    }
    /// Replaces the configuration space bytes.
    pub fn set_config(&self, bytes: &[u8]) {
        self.state().config = bytes.to_vec();
    }
    /// Queues a misbehaviour for the next completion.
    pub fn misbehave(&self, m: Misbehave) {
        self.state().misbehave.push_back(m);
    }
    /// The device status register.
    pub fn status(&self) -> u8 {
        self.state().status
    }
    /// The features the driver wrote.
    pub fn driver_features(&self) -> u64 {
        self.state().driver_features
    }
    /// Memory accesses the device could not make (0 for a correct driver).
    pub fn faults(&self) -> u64 {
        self.state().faults
    }
    /// Chains completed.
    pub fn completions(&self) -> u64 {
        self.state().completions
    }
    /// Notifications received.
    pub fn notifies(&self) -> u64 {
        self.state().notifies
    }
    /// Processes every available chain of `queue` now.
    pub fn process(&self, queue: u16) {
        self.state().process(queue);
    }
    /// Runs `f` on the raw device view of `queue` (if it is enabled).
    pub fn with_queue<R>(&self, queue: u16, f: impl FnOnce(&mut DeviceQueue) -> R) -> Option<R> {
        let dq = self.state().queues.get(usize::from(queue))?.dq.clone()?;
        let mut dq = lock(&dq);
        Some(f(&mut dq))
    }
    /// Runs `f` on the backend (e.g. to inspect a disk).
    pub fn with_backend<R>(&self, f: impl FnOnce(&mut dyn Backend) -> R) -> R {
        f(self.state().backend.as_mut())
    }
}

/// Logical registers shared by both layouts.
#[derive(Clone, Copy, Debug)]
enum Reg {
    DevFeatures,
    DevFeaturesSel,
    DrvFeatures,
    DrvFeaturesSel,
    QueueSel,
    QueueNumMax,
    QueueNum,
    QueueReady,
    QueueNotifyOff,
    NumQueues,
    Status,
    Generation,
    Addr { which: u8, high: bool },
    Ignore,
}

impl DevState {
    fn read_reg(&mut self, r: Reg) -> u32 {
        match r {
            Reg::DevFeatures => match self.dev_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            Reg::DevFeaturesSel => self.dev_sel,
            Reg::DrvFeatures => match self.drv_sel {
                0 => self.driver_features as u32,
                1 => (self.driver_features >> 32) as u32,
                _ => 0,
            },
            Reg::DrvFeaturesSel => self.drv_sel,
            Reg::QueueSel => u32::from(self.queue_sel),
            Reg::QueueNumMax => self.q().map_or(0, |q| u32::from(q.max)),
            Reg::QueueNum => self.q().map_or(0, |q| u32::from(q.num)),
            Reg::QueueReady => self.q().map_or(0, |q| u32::from(q.ready)),
            Reg::QueueNotifyOff => u32::from(self.queue_sel),
            Reg::NumQueues => self.queues.len() as u32,
            Reg::Status => u32::from(self.status),
            Reg::Generation => self.generation(),
            Reg::Addr { which, high } => self.q().map_or(0, |q| {
                let a = [q.desc, q.driver, q.device][usize::from(which)];
                if high {
                    (a >> 32) as u32
                } else {
                    a as u32
                }
            }),
            Reg::Ignore => 0,
        }
    }

    fn write_reg(&mut self, r: Reg, v: u32) {
        match r {
            Reg::DevFeaturesSel => self.dev_sel = v,
            Reg::DrvFeaturesSel => self.drv_sel = v,
            Reg::DrvFeatures => match self.drv_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | u64::from(v) << 32,
                _ => {}
            },
            Reg::QueueSel => self.queue_sel = v as u16,
            Reg::QueueNum => {
                if let Some(q) = self.q() {
                    q.num = v as u16;
                }
            }
            Reg::QueueReady => self.set_ready(v & 1 != 0),
            Reg::Status => self.set_status(v as u8),
            Reg::Addr { which, high } => {
                if let Some(q) = self.q() {
                    let a = match which {
                        0 => &mut q.desc,
                        1 => &mut q.driver,
                        _ => &mut q.device,
                    };
                    *a = if high {
                        (*a & 0xffff_ffff) | u64::from(v) << 32
                    } else {
                        (*a & !0xffff_ffff) | u64::from(v)
                    };
                }
            }
            _ => {}
        }
    }
}

/// The fake device's registers in the virtio-mmio version 2 layout
/// (virtio 1.2 §4.2.2), 0x200 bytes.
#[derive(Clone, Debug)]
pub struct FakeMmioRegs {
    dev: FakeDevice,
}

impl FakeMmioRegs {
    /// The window of `dev`.
    pub fn new(dev: &FakeDevice) -> Self {
        Self { dev: dev.clone() }
    }

    fn decode(off: usize) -> Reg {
        match off {
            reg::DEVICE_FEATURES => Reg::DevFeatures,
            reg::DEVICE_FEATURES_SEL => Reg::DevFeaturesSel,
            reg::DRIVER_FEATURES => Reg::DrvFeatures,
            reg::DRIVER_FEATURES_SEL => Reg::DrvFeaturesSel,
            reg::QUEUE_SEL => Reg::QueueSel,
            reg::QUEUE_NUM_MAX => Reg::QueueNumMax,
            reg::QUEUE_NUM => Reg::QueueNum,
            reg::QUEUE_READY => Reg::QueueReady,
            reg::STATUS => Reg::Status,
            reg::CONFIG_GENERATION => Reg::Generation,
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                Reg::Addr { which: ((off - 0x80) / 0x10) as u8, high: off & 4 != 0 }
            }
            _ => Reg::Ignore,
        }
    }
}

impl Mmio for FakeMmioRegs {
    fn len(&self) -> usize {
        0x200
    }
    fn read8(&self, offset: usize) -> u8 {
        self.read32(offset & !3).to_le_bytes()[offset & 3]
    }
    fn read16(&self, offset: usize) -> u16 {
        (self.read32(offset & !3) >> (8 * (offset & 2))) as u16
    }
    fn read32(&self, offset: usize) -> u32 {
        let mut s = self.dev.state();
        match offset {
            reg::MAGIC_VALUE => s.magic,
            reg::VERSION => s.version,
            reg::DEVICE_ID => s.backend.device_id(),
            reg::VENDOR_ID => 0x554d_4551,
            reg::INTERRUPT_STATUS => s.isr,
            o if o >= reg::CONFIG => s.config_read(o - reg::CONFIG, 4),
            o => s.read_reg(Self::decode(o)),
        }
    }
    fn write8(&self, offset: usize, value: u8) {
        let mut s = self.dev.state();
        if offset >= reg::CONFIG {
            s.config_write(offset - reg::CONFIG, 1, u32::from(value));
        }
    }
    fn write16(&self, offset: usize, value: u16) {
        let mut s = self.dev.state();
        if offset >= reg::CONFIG {
            s.config_write(offset - reg::CONFIG, 2, u32::from(value));
        }
    }
    fn write32(&self, offset: usize, value: u32) {
        let mut s = self.dev.state();
        match offset {
            reg::QUEUE_NOTIFY => s.notify(value as u16),
            reg::INTERRUPT_ACK => s.isr &= !value,
            o if o >= reg::CONFIG => s.config_write(o - reg::CONFIG, 4, value),
            o => s.write_reg(Self::decode(o), value),
        }
    }
}

// ---------------------------------------------------------------------------
// PCI

/// BAR 4's layout in the fake: the four virtio structures.
pub mod bar_layout {
    /// Common configuration at BAR offset 0.
    pub const COMMON: u64 = 0x0000;
    /// ISR at 0x1000.
    pub const ISR: u64 = 0x1000;
    /// Device configuration at 0x2000.
    pub const DEVICE: u64 = 0x2000;
    /// Notifications at 0x3000, `notify_off_multiplier` 4.
    pub const NOTIFY: u64 = 0x3000;
    /// The MSI-X table at 0x4000 ([`MSIX_ENTRIES`](super::MSIX_ENTRIES)
    /// entries), its PBA at 0x4800.
    pub const MSIX: u64 = 0x4000;
    /// BAR size.
    pub const SIZE: u64 = 0x8000;
}

/// MSI-X table entries of the fake PCI function.
pub const MSIX_ENTRIES: u32 = 4;
const NO_VECTOR: u16 = 0xffff;

/// One fake PCI function's configuration space.
#[derive(Debug)]
struct FakeFunction {
    cfg: [u32; 64],
    /// (BAR register index, size) of the memory BARs it decodes.
    bars: Vec<(usize, u64)>,
}

impl FakeFunction {
    fn write(&mut self, off: u8, v: u32) {
        let i = usize::from(off / 4);
        if let Some(&(_, size)) = self.bars.iter().find(|b| b.0 == i) {
            // Low half of a 64-bit memory BAR: size bits read back as 0.
            self.cfg[i] = (v & !((size - 1) as u32) & !0xf) | (self.cfg[i] & 0xf);
        } else if self.bars.iter().any(|b| b.0 + 1 == i) {
            self.cfg[i] = v; // high half: the size is below 4 GiB
        } else if i == 1 {
            self.cfg[1] = (self.cfg[1] & 0xffff_0000) | (v & 0xffff);
        } else if i == 0x84 / 4 && self.cfg[i] & 0xff == 0x11 {
            // MSI-X Message Control: only Enable and Function Mask are writable.
            let keep = self.cfg[i] & !(0xc000 << 16);
            self.cfg[i] = keep | (v & (0xc000 << 16));
        } else if i >= 4 {
            // Everything else past the header is read-only in this fake.
        }
    }
}

/// A fake PCI configuration space: a few functions, possibly behind a
/// bridge.
#[derive(Debug, Default)]
pub struct FakePciBus {
    functions: Mutex<BTreeMap<Bdf, FakeFunction>>,
}

impl FakePciBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a PCI-to-PCI bridge at `bdf` forwarding buses
    /// `secondary..=subordinate`.
    pub fn add_bridge(&self, bdf: Bdf, secondary: u8, subordinate: u8) {
        let mut cfg = [0u32; 64];
        cfg[0] = 0x0001_8086;
        cfg[2] = 0x0604_0000;
        cfg[3] = 0x0001_0000; // header type 1
        cfg[6] = u32::from(subordinate) << 16 | u32::from(secondary) << 8 | u32::from(bdf.bus());
        lock(&self.functions).insert(bdf, FakeFunction { cfg, bars: Vec::new() });
    }

    /// Adds a non-virtio function (vendor:device).
    pub fn add_other(&self, bdf: Bdf, vendor: u16, device: u16) {
        let mut cfg = [0u32; 64];
        cfg[0] = u32::from(device) << 16 | u32::from(vendor);
        lock(&self.functions).insert(bdf, FakeFunction { cfg, bars: Vec::new() });
    }

    /// Adds a virtio function of `device_id` whose structures live in a
    /// 64-bit BAR 4 at `bar_base` (see [`bar_layout`]). `transitional`
    /// uses PCI device 0x1000 + n with the type in the subsystem ID, as
    /// QEMU's transitional devices do.
    pub fn add_virtio(&self, bdf: Bdf, device_id: u32, transitional: bool, bar_base: u64) {
        let mut c = [0u32; 64];
        let pci_dev = if transitional { 0x1000 } else { 0x1040 + device_id };
        c[0] = pci_dev << 16 | 0x1af4;
        c[1] = 0x0010_0000; // status: capability list
        c[2] = 0x0100_0001;
        c[8] = (bar_base as u32 & !0xf) | 0x4; // BAR4: 64-bit memory
        c[9] = (bar_base >> 32) as u32;
        c[11] = device_id << 16 | 0x1af4;
        c[13] = 0x84; // first capability: MSI-X (PCI 3.0 §6.8.2)
        c[0x84 / 4] = (MSIX_ENTRIES - 1) << 16 | 0x4011; // table size, next 0x40, id 0x11
        c[0x88 / 4] = bar_layout::MSIX as u32 | 4; // table in BAR 4
        c[0x8c / 4] = (bar_layout::MSIX + 0x800) as u32 | 4; // PBA in BAR 4
        let cap = |c: &mut [u32; 64], at: usize, next: u32, len: u32, typ: u32, off: u64, length: u32| {
            c[at / 4] = typ << 24 | len << 16 | next << 8 | 0x09;
            c[at / 4 + 1] = 4;
            c[at / 4 + 2] = off as u32;
            c[at / 4 + 3] = length;
        };
        cap(&mut c, 0x40, 0x50, 16, 1, bar_layout::COMMON, common::LEN as u32);
        cap(&mut c, 0x50, 0x64, 20, 2, bar_layout::NOTIFY, 0x1000);
        c[0x60 / 4] = 4; // notify_off_multiplier
        cap(&mut c, 0x64, 0x74, 16, 3, bar_layout::ISR, 0x20);
        cap(&mut c, 0x74, 0x00, 16, 4, bar_layout::DEVICE, 0x1000);
        lock(&self.functions).insert(bdf, FakeFunction { cfg: c, bars: vec![(8, bar_layout::SIZE)] });
    }

    /// Overwrites one dword of `bdf`'s configuration space (to corrupt
    /// capabilities in tests).
    pub fn poke(&self, bdf: Bdf, offset: u8, value: u32) {
        if let Some(f) = lock(&self.functions).get_mut(&bdf) {
            f.cfg[usize::from(offset / 4)] = value;
        }
    }
}

impl PciConfig for FakePciBus {
    fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
        lock(&self.functions).get(&bdf).map_or(u32::MAX, |f| f.cfg[usize::from(offset / 4)])
    }
    fn write32(&self, bdf: Bdf, offset: u8, value: u32) {
        if let Some(f) = lock(&self.functions).get_mut(&bdf) {
            f.write(offset, value);
        }
    }
}

/// Maps the fake BAR 4 of one device to register windows.
#[derive(Clone, Debug)]
pub struct FakeBarMapper {
    dev: FakeDevice,
    bar_base: u64,
    /// Ranges mapped so far.
    pub mapped: Vec<(u64, usize)>,
}

impl FakeBarMapper {
    /// The mapper for `dev`, whose BAR 4 is at `bar_base`.
    pub fn new(dev: &FakeDevice, bar_base: u64) -> Self {
        Self { dev: dev.clone(), bar_base, mapped: Vec::new() }
    }
}

impl BarMapper for FakeBarMapper {
    type Region = FakePciRegion;
    fn map(&mut self, phys: PhysAddr, len: usize) -> Option<FakePciRegion> {
        let off = phys.as_u64().checked_sub(self.bar_base)?;
        if off.checked_add(len as u64)? > bar_layout::SIZE {
            return None;
        }
        self.mapped.push((phys.as_u64(), len));
        Some(FakePciRegion { dev: self.dev.clone(), base: off, len })
    }
}

/// A mapped window of the fake BAR.
#[derive(Clone, Debug)]
pub struct FakePciRegion {
    dev: FakeDevice,
    base: u64,
    len: usize,
}

impl FakePciRegion {
    fn common_reg(off: usize) -> Reg {
        match off {
            common::DEVICE_FEATURE_SELECT => Reg::DevFeaturesSel,
            common::DEVICE_FEATURE => Reg::DevFeatures,
            common::DRIVER_FEATURE_SELECT => Reg::DrvFeaturesSel,
            common::DRIVER_FEATURE => Reg::DrvFeatures,
            common::NUM_QUEUES => Reg::NumQueues,
            common::DEVICE_STATUS => Reg::Status,
            common::CONFIG_GENERATION => Reg::Generation,
            common::QUEUE_SELECT => Reg::QueueSel,
            common::QUEUE_SIZE => Reg::QueueNum,
            common::QUEUE_ENABLE => Reg::QueueReady,
            common::QUEUE_NOTIFY_OFF => Reg::QueueNotifyOff,
            0x20..=0x37 => Reg::Addr { which: ((off - 0x20) / 8) as u8, high: off % 8 == 4 },
            _ => Reg::Ignore,
        }
    }

    fn read(&self, offset: usize, width: usize) -> u32 {
        if offset.checked_add(width).is_none_or(|e| e > self.len) {
            return u32::MAX;
        }
        let at = self.base + offset as u64;
        let mut s = self.dev.state();
        if at >= bar_layout::MSIX {
            let i = ((at - bar_layout::MSIX) / 4) as usize;
            s.msix_table.get(i).copied().unwrap_or(0)
        } else if at < bar_layout::ISR {
            match at as usize {
                common::CONFIG_MSIX_VECTOR => u32::from(s.config_msix.unwrap_or(NO_VECTOR)),
                common::QUEUE_MSIX_VECTOR => u32::from(s.q().and_then(|q| q.msix).unwrap_or(NO_VECTOR)),
                o => s.read_reg(Self::common_reg(o)),
            }
        } else if at < bar_layout::DEVICE {
            // Reading the ISR clears it.
            std::mem::take(&mut s.isr)
        } else if at < bar_layout::NOTIFY {
            s.config_read((at - bar_layout::DEVICE) as usize, width)
        } else {
            0
        }
    }

    fn write(&self, offset: usize, width: usize, value: u32) {
        if offset.checked_add(width).is_none_or(|e| e > self.len) {
            return;
        }
        let at = self.base + offset as u64;
        let mut s = self.dev.state();
        if at >= bar_layout::MSIX {
            let i = ((at - bar_layout::MSIX) / 4) as usize;
            if let Some(e) = s.msix_table.get_mut(i) {
                *e = value;
            }
        } else if at < bar_layout::ISR {
            // As QEMU: a vector past the table reads back as NO_VECTOR.
            let v = (value < MSIX_ENTRIES).then_some(value as u16);
            match at as usize {
                common::CONFIG_MSIX_VECTOR => s.config_msix = v,
                common::QUEUE_MSIX_VECTOR => {
                    if let Some(q) = s.q() {
                        q.msix = v;
                    }
                }
                o => s.write_reg(Self::common_reg(o), value),
            }
        } else if at < bar_layout::DEVICE {
        } else if at < bar_layout::NOTIFY {
            s.config_write((at - bar_layout::DEVICE) as usize, width, value);
        } else {
            let q = ((at - bar_layout::NOTIFY) / 4) as u16;
            if u32::from(q) == value {
                s.notify(q);
            } else {
                s.faults += 1;
            }
        }
    }
}

impl Mmio for FakePciRegion {
    fn len(&self) -> usize {
        self.len
    }
    fn read8(&self, offset: usize) -> u8 {
        self.read(offset, 1) as u8
    }
    fn read16(&self, offset: usize) -> u16 {
        self.read(offset, 2) as u16
    }
    fn read32(&self, offset: usize) -> u32 {
        self.read(offset, 4)
    }
    fn write8(&self, offset: usize, value: u8) {
        self.write(offset, 1, u32::from(value))
    }
    fn write16(&self, offset: usize, value: u16) {
        self.write(offset, 2, u32::from(value))
    }
    fn write32(&self, offset: usize, value: u32) {
        self.write(offset, 4, value)
    }
}

// ---------------------------------------------------------------------------
// Backends

/// An in-memory virtio-blk backend (virtio 1.2 §5.2.6).
#[derive(Debug, Clone)]
pub struct BlkBackend {
    /// The disk contents.
    pub disk: Vec<u8>,
    /// Offered blk feature bits.
    pub features: u64,
    /// `blk_size` in the configuration.
    pub blk_size: u32,
    /// Flush requests seen.
    pub flushes: u32,
    /// Discarded (sector, count) pairs.
    pub discards: Vec<(u64, u32)>,
}

impl BlkBackend {
    /// A zeroed disk of `sectors` 512-byte sectors offering flush, discard
    /// and blk_size (512).
    pub fn new(sectors: u64) -> Self {
        Self {
            disk: vec![0; sectors as usize * 512],
            features: crate::blk::feature::FLUSH
                .union(crate::blk::feature::DISCARD)
                .union(crate::blk::feature::BLK_SIZE)
                .bits(),
            blk_size: 512,
            flushes: 0,
            discards: Vec::new(),
        }
    }
}

impl Backend for BlkBackend {
    fn device_id(&self) -> u32 {
        2
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; 60];
        c[0..8].copy_from_slice(&((self.disk.len() / 512) as u64).to_le_bytes());
        c[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        c[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        c[40..44].copy_from_slice(&1u32.to_le_bytes());
        c
    }
    fn handle(&mut self, _queue: u16, req: &[u8], resp: &mut [u8]) -> u32 {
        let Some(status_at) = resp.len().checked_sub(1) else { return 0 };
        if req.len() < 16 {
            resp[status_at] = 1;
            return resp.len() as u32;
        }
        let typ = u32::from_le_bytes(req[0..4].try_into().expect("4"));
        let sector = u64::from_le_bytes(req[8..16].try_into().expect("8"));
        let range = |len: usize| {
            let start = usize::try_from(sector).ok()?.checked_mul(512)?;
            let end = start.checked_add(len)?;
            (end <= self.disk.len()).then_some(start..end)
        };
        let status = match typ {
            0 => match range(status_at) {
                Some(r) => {
                    resp[..status_at].copy_from_slice(&self.disk[r]);
                    0
                }
                None => 1,
            },
            1 => match range(req.len() - 16) {
                Some(r) => {
                    self.disk[r].copy_from_slice(&req[16..]);
                    0
                }
                None => 1,
            },
            4 => {
                self.flushes += 1;
                0
            }
            11 if req.len() >= 32 => {
                let s = u64::from_le_bytes(req[16..24].try_into().expect("8"));
                let n = u32::from_le_bytes(req[24..28].try_into().expect("4"));
                self.discards.push((s, n));
                0
            }
            _ => 2,
        };
        resp[status_at] = status;
        if typ == 0 && status == 0 {
            resp.len() as u32
        } else {
            1
        }
    }
}

/// A virtio-rng backend producing a counting byte pattern.
#[derive(Debug, Clone, Default)]
pub struct RngBackend {
    /// The next byte.
    pub next: u8,
    /// Cap on bytes per request (0: fill all).
    pub max_per_request: u32,
}

impl Backend for RngBackend {
    fn device_id(&self) -> u32 {
        4
    }
    fn features(&self) -> u64 {
        0
    }
    fn config(&self) -> Vec<u8> {
        Vec::new()
    }
    fn handle(&mut self, _queue: u16, _req: &[u8], resp: &mut [u8]) -> u32 {
        let n = if self.max_per_request == 0 {
            resp.len()
        } else {
            resp.len().min(self.max_per_request as usize)
        };
        for b in &mut resp[..n] {
            *b = self.next;
            self.next = self.next.wrapping_add(1);
        }
        n as u32
    }
}

// ---------------------------------------------------------------------------
// Fuzzing

/// The body of the `virtio_pci_probe` fuzz target (also run over its seed
/// corpus by the unit tests): `data` is a virtio function's configuration
/// space after the header's first dword (the device writes all of it: the
/// capability list, the virtio structures, the MSI-X capability) over the
/// fake's decoding BAR 4. The probe must return a value or a typed error,
/// and every region it returns must lie inside the BAR; enabling MSI-X and
/// building a transport on a successful probe must not panic either.
/// Returns whether the probe accepted the function with an MSI-X table.
pub fn fuzz_pci_probe(data: &[u8]) -> bool {
    use crate::transport::pci::{Bdf, Msix, PciTransport, VirtioPciDevice};
    const BAR: u64 = 0x8_0000_0000;
    let bus = FakePciBus::new();
    let Some(bdf) = Bdf::new(0, 1, 0) else { return false };
    bus.add_virtio(bdf, 2, false, BAR);
    // Keep the vendor/device dword (so the probe gets past the ID check)
    // and the BAR registers (the fake's BAR 4 decodes, BARs 0-3 read as
    // unimplemented; a device's read-back masks are covered by the unit
    // test `hostile_bar_masks_are_not_windows`); the rest is the input.
    for (i, chunk) in data.chunks(4).take(63).enumerate() {
        let off = 4 * (i + 1);
        if (0x10..0x28).contains(&off) {
            continue;
        }
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        bus.poke(bdf, off as u8, u32::from_le_bytes(w));
    }
    let Ok(info) = VirtioPciDevice::probe(&bus, bdf) else { return false };
    let inside = |r: &crate::transport::pci::CapRegion| {
        r.phys.as_u64() >= BAR
            && r.phys.as_u64() - BAR + u64::from(r.length) <= bar_layout::SIZE
            && r.phys.as_u64() == BAR + u64::from(r.offset)
    };
    assert!(inside(&info.common) && inside(&info.notify) && inside(&info.isr));
    assert!(info.device.as_ref().is_none_or(inside));
    if let Some(m) = info.msix {
        assert!(inside(&m.table), "MSI-X table outside the BAR: {m:?}");
        assert!(m.table_size >= 1 && m.table_size <= 2048);
    }
    let hal = FakeHal::new();
    let dev = FakeDevice::new(&hal, Box::new(BlkBackend::new(8)), 1, 8);
    let mut mapper = FakeBarMapper::new(&dev, BAR);
    if let Ok(mut t) = PciTransport::new(&bus, &info, &mut mapper) {
        if let Ok(msix) = Msix::enable(&bus, &info, &mut mapper) {
            let _ = msix.set(0, crate::transport::pci::MsiMessage::x86(0, 0x50));
            let _ = msix.set(msix.size(), crate::transport::pci::MsiMessage::x86(0, 0x50));
        }
        let _ = t.set_queue_msix_vector(0, 0);
        let _ = t.set_config_msix_vector(1);
    }
    info.msix.is_some()
}

/// The body of the `virtio_used_ring` fuzz target (also run over the seed
/// corpus by the unit tests): `data` configures a blk device (features,
/// configuration bytes) and then supplies raw used-ring contents for a
/// queue with requests in flight. Every outcome must be a value or a typed
/// error; the function panics only if the driver broke an invariant.
pub fn fuzz_used_ring(data: &[u8]) {
    use crate::blk::VirtIOBlk;
    use crate::queue::VirtQueue;
    use crate::transport::mmio::MmioTransport;

    let (head, rest) = data.split_at(data.len().min(4));
    let mut h = [0u8; 4];
    h[..head.len()].copy_from_slice(head);
    let hal = FakeHal::new();

    // Part 1: the blk driver over arbitrary configuration and features.
    {
        let (cfg, _) = rest.split_at(rest.len().min(60));
        let mut backend = BlkBackend::new(64);
        backend.features = u64::from(h[0]) << 5 | u64::from(h[1]) << 13;
        let dev = FakeDevice::new(&hal, Box::new(backend), 1, u16::from(h[2] % 16) + 1);
        let mut c = dev.state().config.clone();
        c[..cfg.len()].copy_from_slice(cfg);
        dev.set_config(&c);
        if let Ok(t) = MmioTransport::new(FakeMmioRegs::new(&dev)) {
            if let Ok(mut blk) = VirtIOBlk::new(&hal, t) {
                let mut buf = [0u8; 1024];
                let _ = blk.read_blocks(0, &mut buf);
                let _ = blk.write_blocks(blk.capacity().saturating_sub(2), &buf);
                let _ = blk.flush();
            }
        }
    }

    // Part 2: the bare queue against arbitrary used-ring contents.
    let dev = FakeDevice::new(&hal, Box::new(RngBackend::default()), 1, 8);
    dev.set_auto(false);
    let Ok(mut t) = MmioTransport::new(FakeMmioRegs::new(&dev)) else { return };
    if crate::transport::Transport::begin_init(&mut t, Features::VERSION_1).is_err() {
        return;
    }
    let Ok(mut q) = VirtQueue::<FakeHal, 8>::new(&hal, &mut t, 0) else { return };
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let mut inflight: Vec<(crate::queue::Token, u32)> = Vec::new();
    let in_flight_n = usize::from(h[3] % 8) + 1;
    for i in 0..in_flight_n {
        bufs.push(vec![0u8; 16 + 8 * i]);
    }
    for b in &mut bufs {
        let len = b.len() as u32;
        // SAFETY: `bufs` outlives the queue's use of them: it is dropped
        // after `q` at the end of this function, and the fake device only
        // touches them inside this function.
        if let Ok(tok) = unsafe { q.add(&[], &mut [b.as_mut_slice()]) } {
            inflight.push((tok, len));
        }
    }
    let used_len = 6 + 8 * usize::from(q.size());
    for chunk in rest.chunks(used_len.max(1)) {
        let _ = dev.with_queue(0, |dq| {
            let _ = dq.pop_avail();
            dq.write_used_raw(chunk)
        });
        for _ in 0..16 {
            match q.poll_used() {
                None => break,
                Some(Ok((tok, len))) => {
                    let pos = inflight
                        .iter()
                        .position(|&(t, _)| t == tok)
                        .expect("completed a token not in flight");
                    let (_, cap) = inflight.swap_remove(pos);
                    assert!(len <= cap, "length above the buffer passed validation");
                }
                Some(Err(e)) => {
                    if let crate::queue::QueueError::UsedLenTooLong { token, .. } = e {
                        inflight.retain(|&(t, _)| t != token);
                    }
                    assert!(q.is_broken());
                    assert!(matches!(q.poll_used(), Some(Err(crate::queue::QueueError::Broken))));
                    break;
                }
            }
        }
    }
    assert_eq!(usize::from(q.in_flight()), inflight.len());
    drop(q);
    drop(bufs);
}

// ---------------------------------------------------------------------------
// virtio-net (the fake behind `crate::net`'s tests and the `virtio_net_rx`
// fuzz target). Added as its own section; nothing above depends on it.

/// A virtio-net backend (virtio 1.2 §5.1): identity, features and the
/// configuration space only. Its queues are driven by [`FakeNet`], since
/// receive buffers wait on the ring until a frame arrives.
#[derive(Debug, Clone)]
pub struct NetBackend {
    /// `mac` in the configuration.
    pub mac: [u8; 6],
    /// Offered net feature bits.
    pub features: u64,
    /// `status` in the configuration (`VIRTIO_NET_S_LINK_UP` = 1).
    pub status: u16,
}

impl Backend for NetBackend {
    fn device_id(&self) -> u32 {
        1
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn config(&self) -> Vec<u8> {
        // struct virtio_net_config (§5.1.4): mac, status, max_virtqueue_pairs, mtu.
        let mut c = vec![0u8; 12];
        c[0..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&self.status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&1500u16.to_le_bytes());
        c
    }
    fn handle(&mut self, _queue: u16, _req: &[u8], _resp: &mut [u8]) -> u32 {
        0
    }
}

/// A fake virtio-net device: a [`FakeDevice`] (not auto-processing) with a
/// receive side that keeps the driver's rx buffers until a frame is
/// delivered, and a transmit side the test drains.
#[derive(Debug)]
pub struct FakeNet {
    dev: FakeDevice,
    /// Rx buffers popped from the available ring, not used yet.
    stash: VecDeque<DeviceChain>,
    /// The rx queue those buffers came from (its descriptor table address):
    /// after a reset the stash is stale.
    stash_queue: u64,
    /// With MRG_RXBUF: at most this many bytes per buffer (to force merged
    /// frames); `None`: fill each buffer.
    split: Option<u32>,
}

/// The 12-byte `virtio_net_hdr` length (with VERSION_1).
const FAKE_NET_HDR: usize = 12;

impl FakeNet {
    /// The MAC address it reports.
    pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// A device offering `features` (net bits; VERSION_1 is added), link
    /// up, two queues of at most `queue_max` entries.
    pub fn new(hal: &FakeHal, features: u64, queue_max: u16) -> Self {
        let backend = NetBackend { mac: Self::MAC, features, status: 1 };
        let dev = FakeDevice::new(hal, Box::new(backend), 2, queue_max);
        dev.set_auto(false);
        Self { dev, stash: VecDeque::new(), stash_queue: 0, split: None }
    }

    /// The device (registers, status, misbehaviour knobs).
    pub fn device(&self) -> &FakeDevice {
        &self.dev
    }

    /// Spread each frame over buffers of at most `bytes` (MRG_RXBUF).
    pub fn set_split(&mut self, bytes: Option<u32>) {
        self.split = bytes;
    }

    /// Pops the rx buffers the driver made available.
    fn refill(&mut self) {
        let stash = &mut self.stash;
        let known = &mut self.stash_queue;
        self.dev.with_queue(0, |q| {
            if q.desc != *known {
                stash.clear();
                *known = q.desc;
            }
            while let Ok(Some(c)) = q.pop_avail() {
                stash.push_back(c);
            }
        });
    }

    /// How many rx buffers the device holds now.
    pub fn rx_buffers(&mut self) -> usize {
        self.refill();
        self.stash.len()
    }

    /// Delivers `frame` with header `hdr` (its `num_buffers` is set to the
    /// buffers used): one buffer, or several with [`set_split`](Self::set_split).
    /// `false` (nothing delivered) if the driver has not posted enough
    /// buffers.
    pub fn deliver(&mut self, hdr: [u8; FAKE_NET_HDR], frame: &[u8]) -> bool {
        self.refill();
        let mut bytes = hdr.to_vec();
        bytes.extend_from_slice(frame);
        // Plan the buffers.
        let mut pieces: Vec<(DeviceChain, usize, usize)> = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < bytes.len() {
            let Some(c) = self.stash.get(i) else { return false };
            let mut cap = c.writable_len() as usize;
            if let Some(s) = self.split {
                cap = cap.min(s.max(FAKE_NET_HDR as u32 + 1) as usize);
            }
            if cap == 0 {
                return false;
            }
            let n = cap.min(bytes.len() - at);
            pieces.push((c.clone(), at, n));
            at += n;
            i += 1;
        }
        let count = pieces.len() as u16;
        bytes[10..12].copy_from_slice(&count.to_le_bytes());
        self.stash.drain(..pieces.len());
        let ok = self.dev.with_queue(0, |q| {
            let mut idx = q.used_idx();
            for (c, at, n) in &pieces {
                if q.write_chain(c, &bytes[*at..*at + *n]).is_err()
                    || q.write_used_elem(idx, u32::from(c.head), *n as u32).is_err()
                {
                    return false;
                }
                idx = idx.wrapping_add(1);
            }
            q.set_used_idx(idx).is_ok()
        });
        ok == Some(true)
    }

    /// Delivers `frame` with an all-zero header (no offloads).
    pub fn inject(&mut self, frame: &[u8]) -> bool {
        self.deliver([0; FAKE_NET_HDR], frame)
    }

    /// Adversarial delivery: for each `(bytes, reported_len)`, writes
    /// `bytes` (truncated to the buffer) into the next rx buffer and
    /// publishes a used element with `reported_len`; all at once. `false`
    /// if there are not enough buffers.
    pub fn inject_raw(&mut self, bufs: &[(&[u8], u32)]) -> bool {
        self.refill();
        if self.stash.len() < bufs.len() {
            return false;
        }
        let chains: Vec<DeviceChain> = self.stash.drain(..bufs.len()).collect();
        let ok = self.dev.with_queue(0, |q| {
            let mut idx = q.used_idx();
            for (c, (b, len)) in chains.iter().zip(bufs) {
                let n = b.len().min(c.writable_len() as usize);
                if q.write_chain(c, &b[..n]).is_err()
                    || q.write_used_elem(idx, u32::from(c.head), *len).is_err()
                {
                    return false;
                }
                idx = idx.wrapping_add(1);
            }
            q.set_used_idx(idx).is_ok()
        });
        ok == Some(true)
    }

    /// Pops the frames the driver sent, without completing them: each as
    /// (head, header bytes, frame).
    pub fn pop_tx(&mut self) -> Vec<(u16, [u8; FAKE_NET_HDR], Vec<u8>)> {
        let mut out = Vec::new();
        self.dev.with_queue(1, |q| {
            while let Ok(Some(c)) = q.pop_avail() {
                let Ok(bytes) = q.read_chain(&c) else { continue };
                let mut h = [0u8; FAKE_NET_HDR];
                let n = bytes.len().min(FAKE_NET_HDR);
                h[..n].copy_from_slice(&bytes[..n]);
                out.push((c.head, h, bytes[n..].to_vec()));
            }
        });
        out
    }

    /// Returns sent buffers to the driver (used length 0: the device
    /// writes nothing into a tx buffer).
    pub fn complete_tx(&mut self, heads: &[u16]) {
        self.dev.with_queue(1, |q| {
            for &h in heads {
                let _ = q.push_used(u32::from(h), 0);
            }
        });
    }

    /// [`pop_tx`](Self::pop_tx) and complete them: the frames sent, with
    /// their headers.
    pub fn take_tx(&mut self) -> Vec<([u8; FAKE_NET_HDR], Vec<u8>)> {
        let sent = self.pop_tx();
        let heads: Vec<u16> = sent.iter().map(|s| s.0).collect();
        self.complete_tx(&heads);
        sent.into_iter().map(|(_, h, f)| (h, f)).collect()
    }
}

/// The body of the `virtio_net_rx` fuzz target (also run over its seed
/// corpus by the unit tests): `data` picks the offered features and queue
/// size, then a sequence of operations fills the rx path with well-formed
/// frames, raw buffer contents with arbitrary used lengths, and raw used
/// elements with arbitrary ids, lengths and index jumps, interleaved with
/// transmits. The driver must answer every one with a frame or a typed
/// error; this panics only if it broke an invariant (a frame longer than
/// the limit, a well-formed frame lost or altered before any garbage, a
/// receive that panicked).
pub fn fuzz_net_rx(data: &[u8]) {
    use crate::net::{feature, NetError, VirtIONet, MAX_FRAME_LEN};
    use crate::transport::mmio::MmioTransport;

    struct Cursor<'a>(&'a [u8]);
    impl Cursor<'_> {
        fn byte(&mut self) -> Option<u8> {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            Some(b)
        }
        fn u16(&mut self) -> Option<u16> {
            Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from(self.u16()?) | u32::from(self.u16()?) << 16)
        }
        fn take(&mut self, n: usize) -> &[u8] {
            let (a, b) = self.0.split_at(n.min(self.0.len()));
            self.0 = b;
            a
        }
    }

    let mut c = Cursor(data);
    let (Some(f), Some(qmax)) = (c.byte(), c.byte()) else { return };
    let mut features = 0u64;
    for (i, bit) in [feature::MRG_RXBUF, feature::GUEST_CSUM, feature::CSUM, feature::MAC, feature::STATUS]
        .into_iter()
        .enumerate()
    {
        if f & (1 << i) != 0 {
            features |= bit.bits();
        }
    }
    let hal = FakeHal::new();
    let mut fake = FakeNet::new(&hal, features, u16::from(qmax % 16) + 1);
    let Ok(t) = MmioTransport::new(FakeMmioRegs::new(fake.device())) else { return };
    let Ok(mut net) = VirtIONet::new(&hal, t) else { return };
    let mut garbage = false;
    let mut expected: VecDeque<Vec<u8>> = VecDeque::new();
    while let Some(op) = c.byte() {
        match op % 4 {
            0 => {
                // Raw buffer contents with an arbitrary used length.
                let n = usize::from(c.byte().unwrap_or(0));
                let bytes = c.take(n).to_vec();
                let len = c.u32().unwrap_or(0);
                garbage |= fake.inject_raw(&[(&bytes, len)]);
            }
            1 => {
                // A raw used element and index advance.
                let (id, len, adv) = (c.u32().unwrap_or(0), c.u32().unwrap_or(0), c.byte().unwrap_or(1));
                fake.device().with_queue(0, |q| {
                    let idx = q.used_idx();
                    let _ = q.write_used_elem(idx, id, len);
                    let _ = q.set_used_idx(idx.wrapping_add(u16::from(adv % 4)));
                });
                garbage = true;
            }
            2 => {
                // A well-formed frame, possibly merged.
                let n = usize::from(c.u16().unwrap_or(60) % 1600);
                let split = c.byte().unwrap_or(0);
                let frame: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(op | 1)).collect();
                let mrg = features & feature::MRG_RXBUF.bits() != 0;
                fake.set_split((mrg && split > 0).then_some(u32::from(split) * 8));
                let valid = (1..=MAX_FRAME_LEN).contains(&n);
                if fake.deliver([0; 12], &frame) {
                    if valid {
                        expected.push_back(frame);
                    } else {
                        garbage = true; // a legitimate error, not a lost frame
                    }
                }
            }
            _ => {
                let n = usize::from(c.u16().unwrap_or(60) % 1600);
                let frame = vec![0x5au8; n];
                let _ = net.transmit(&frame);
                if c.byte().unwrap_or(0) & 1 == 0 {
                    fake.take_tx();
                }
                let _ = net.reclaim_tx();
            }
        }
        for _ in 0..4 {
            match net.receive(|f| f.to_vec()) {
                Ok(None) => break,
                Ok(Some(f)) => {
                    assert!(!f.is_empty() && f.len() <= MAX_FRAME_LEN, "frame of {} bytes", f.len());
                    if !garbage {
                        assert_eq!(
                            expected.pop_front().as_deref(),
                            Some(f.as_slice()),
                            "frame altered or invented"
                        );
                    }
                }
                Err(NetError::Broken) => return,
                Err(NetError::Rx(_)) | Err(NetError::Reset(_)) => {
                    if !garbage {
                        panic!("error from a well-behaved device");
                    }
                    expected.clear();
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// virtio-console (the fake behind `crate::console`'s tests).

/// A virtio-console backend (virtio 1.2 §5.3): identity, `VIRTIO_CONSOLE_F_SIZE`
/// and an 80x25 configuration; the queues are driven by [`FakeConsole`].
#[derive(Debug, Clone, Default)]
pub struct ConsoleBackend;

impl Backend for ConsoleBackend {
    fn device_id(&self) -> u32 {
        3
    }
    fn features(&self) -> u64 {
        1 // VIRTIO_CONSOLE_F_SIZE
    }
    fn config(&self) -> Vec<u8> {
        // struct virtio_console_config (§5.3.4): cols, rows, max_nr_ports, emerg_wr.
        let mut c = vec![0u8; 12];
        c[0..2].copy_from_slice(&80u16.to_le_bytes());
        c[2..4].copy_from_slice(&25u16.to_le_bytes());
        c[4..8].copy_from_slice(&1u32.to_le_bytes());
        c
    }
    fn handle(&mut self, _queue: u16, _req: &[u8], _resp: &mut [u8]) -> u32 {
        0
    }
}

/// A fake virtio-console: keeps the driver's receive buffers until input is
/// typed, and collects what the driver transmits.
#[derive(Debug)]
pub struct FakeConsole {
    dev: FakeDevice,
    stash: VecDeque<DeviceChain>,
    output: Vec<u8>,
}

impl FakeConsole {
    /// A console device with two queues of at most `queue_max` entries.
    pub fn new(hal: &FakeHal, queue_max: u16) -> Self {
        let dev = FakeDevice::new(hal, Box::new(ConsoleBackend), 2, queue_max);
        dev.set_auto(false);
        Self { dev, stash: VecDeque::new(), output: Vec::new() }
    }

    /// The device.
    pub fn device(&self) -> &FakeDevice {
        &self.dev
    }

    fn refill(&mut self) {
        let stash = &mut self.stash;
        self.dev.with_queue(0, |q| {
            while let Ok(Some(c)) = q.pop_avail() {
                stash.push_back(c);
            }
        });
    }

    /// Receive buffers the device holds.
    pub fn rx_buffers(&mut self) -> usize {
        self.refill();
        self.stash.len()
    }

    /// Delivers `input` over as many receive buffers as needed; `false`
    /// (nothing delivered) if there are not enough.
    pub fn type_input(&mut self, input: &[u8]) -> bool {
        self.refill();
        let mut plan = Vec::new();
        let mut at = 0;
        for c in &self.stash {
            if at >= input.len() {
                break;
            }
            let n = (c.writable_len() as usize).min(input.len() - at);
            plan.push((c.clone(), at, n));
            at += n;
        }
        if at < input.len() {
            return false;
        }
        self.stash.drain(..plan.len());
        self.dev
            .with_queue(0, |q| {
                plan.iter().all(|(c, at, n)| {
                    q.write_chain(c, &input[*at..*at + *n]).is_ok()
                        && q.push_used(u32::from(c.head), *n as u32).is_ok()
                })
            })
            .unwrap_or(false)
    }

    /// Takes what the driver transmitted so far into [`output`](Self::output)
    /// and returns the buffers.
    pub fn drain_output(&mut self) {
        let out = &mut self.output;
        self.dev.with_queue(1, |q| {
            while let Ok(Some(c)) = q.pop_avail() {
                if let Ok(b) = q.read_chain(&c) {
                    out.extend_from_slice(&b);
                }
                let _ = q.push_used(u32::from(c.head), 0);
            }
        });
    }

    /// Everything transmitted and drained so far.
    pub fn output(&self) -> &[u8] {
        &self.output
    }
}

// ---------------------------------------------------------------------------
// virtio-fs (the fake FUSE server lives beside the driver, in
// `crate::fs::fake`; re-exported here with the other fakes)

pub use crate::fs::fake::{fuzz_fuse_reply, FuseBackend, FuseMisbehave};
