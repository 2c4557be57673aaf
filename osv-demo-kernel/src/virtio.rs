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
//!
//! Interrupts (see `osv_virtio::irq`): a virtio-blk device gets one vector
//! from [`FIRST_VECTOR`] on. On PCI the vector is an MSI-X message to the
//! boot CPU's local APIC, bound to queue 0 through `queue_msix_vector`; on
//! microvm it is the device's interrupt line routed through the I/O APIC
//! the ACPI MADT names (GSI from QEMU's `hw/i386/microvm.c`, see
//! [`microvm_gsi`]), acknowledged through `InterruptStatus`/`InterruptACK`.
//! The handler acknowledges, sends the LAPIC EOI and unparks the thread
//! registered for the queue. Requests wait by parking only in interrupt
//! mode ([`set_blk_interrupts`]) and only from scheduler threads
//! ([`enable_thread_waits`]); otherwise they poll as before.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::string::String;
use alloc::vec::Vec;
use core::num::NonZeroUsize;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use osv_boot::arch;
use osv_boot::ioapic::{IoApic, MmioRegs, Redirection, Trigger};
use osv_boot::trap::TrapFrame;
use osv_boot::BootInfo;
use osv_sched::park::{Park, Unpark};
use osv_virtio::irq::{on_interrupt, MmioInterrupt, MsixSource, Outcome, Wait, WaitSlot};
use osv_virtio::transport::mmio::cmdline_devices;
use osv_virtio::transport::pci::{Bdf, MsiMessage, Msix, PciEnumerator, VirtioPciDevice};
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
    /// How its interrupt reaches the CPU.
    pub irq: IrqRoute,
}

/// Where a device's interrupt comes from.
#[derive(Clone, Copy, Debug)]
pub enum IrqRoute {
    /// A PCI function (MSI-X, if it has the capability).
    Pci(VirtioPciDevice),
    /// A virtio-mmio window at `base` on global system interrupt `gsi`.
    Mmio { base: u64, size: u64, gsi: u32 },
    /// Unknown.
    None,
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
                out.push(Found { kind, transport: AnyTransport::Pci(t), location, irq: IrqRoute::Pci(dev) });
            }
        }
        return out;
    }
    let mut windows: Vec<(u64, u64, Option<u32>)> = cmdline_devices(cmdline)
        .filter_map(|d| d.ok())
        .map(|d| (d.base.as_u64(), d.size, Some(d.irq)))
        .collect();
    if windows.is_empty() {
        windows = (0..MICROVM_MMIO_SLOTS)
            .map(|i| (MICROVM_MMIO_BASE + i * MICROVM_MMIO_SLOT, MICROVM_MMIO_SLOT, None))
            .collect();
    }
    for (base, size, gsi) in windows {
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
            let gsi = gsi.or_else(|| microvm_gsi(base));
            out.push(Found {
                kind,
                transport: AnyTransport::Mmio(t),
                location: alloc::format!("mmio {base:#x}"),
                irq: gsi.map_or(IrqRoute::None, |gsi| IrqRoute::Mmio { base, size, gsi }),
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
/// the first poll that found nothing to the last one), or parked for its
/// interrupt, so a measurement can
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
pub enum BlkDriver {
    Mmio(VirtIOBlk<HeapHal, MmioTransport<VolatileMmio>>),
    Pci(VirtIOBlk<HeapHal, PciTransport<VolatileMmio>>),
}

/// A virtio-blk device: the driver, and its interrupt line if one could be
/// routed.
pub struct Blk {
    drv: BlkDriver,
    line: Option<&'static Line>,
    /// Whether the queue currently asks for interrupts.
    interrupts_on: bool,
    /// The MSI-X table (PCI), kept mapped while the device lives.
    _msix: Option<Msix<VolatileMmio>>,
}

macro_rules! blk_dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match &mut $self.drv {
            BlkDriver::Mmio($b) => $e,
            BlkDriver::Pci($b) => $e,
        }
    };
}

impl Blk {
    pub fn sector_size(&self) -> u32 {
        match &self.drv {
            BlkDriver::Mmio(b) => b.sector_size(),
            BlkDriver::Pci(b) => b.sector_size(),
        }
    }
    pub fn size_bytes(&self) -> u64 {
        match &self.drv {
            BlkDriver::Mmio(b) => b.size_bytes(),
            BlkDriver::Pci(b) => b.size_bytes(),
        }
    }

    /// The wait of one request: parking on the interrupt when interrupt
    /// mode is on, this device has a line and the caller is a scheduler
    /// thread; polling otherwise. Switches the queue's interrupt
    /// suppression (`VIRTQ_AVAIL_F_NO_INTERRUPT`) to match, so the polling
    /// mode takes no interrupts.
    fn waiter(&mut self) -> BlkWait {
        let irq = BLK_INTERRUPTS.load(Ordering::Relaxed) && THREADS_UP.load(Ordering::Acquire);
        let line = if irq { self.line.filter(|l| l.ready.load(Ordering::Acquire)) } else { None };
        if line.is_some() != self.interrupts_on {
            self.interrupts_on = line.is_some();
            let on = self.interrupts_on;
            blk_dispatch!(self, b => b.set_interrupts(on));
        }
        match line {
            Some(line) => BlkWait::Irq(IrqWait::new(line)),
            None => BlkWait::Poll(WaitSpan::default()),
        }
    }

    /// `sector` in virtio's fixed 512-byte units (virtio 1.2 §5.2.6).
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        let mut w = self.waiter();
        let r = blk_dispatch!(self, b => b.read_blocks_with(sector, buf, &mut w));
        w.account();
        r
    }
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        let mut w = self.waiter();
        let r = blk_dispatch!(self, b => b.write_blocks_with(sector, buf, &mut w));
        w.account();
        r
    }
    pub fn flush(&mut self) -> Result<(), BlkError> {
        let mut w = self.waiter();
        let r = blk_dispatch!(self, b => b.flush_with(&mut w));
        w.account();
        r
    }
}

/// How one blocking virtio-blk request waits.
enum BlkWait {
    Poll(WaitSpan),
    Irq(IrqWait),
}

impl BlkWait {
    fn account(self) {
        match self {
            BlkWait::Poll(w) => w.account(),
            BlkWait::Irq(w) => {
                BLK_PARKS.fetch_add(u64::from(w.parks), Ordering::Relaxed);
                BLK_WAIT_NS.fetch_add(w.parked_ns, Ordering::Relaxed);
            }
        }
    }
}

impl Wait for BlkWait {
    fn prepare(&mut self) {
        if let BlkWait::Irq(w) = self {
            w.prepare();
        }
    }
    fn wait(&mut self) -> bool {
        match self {
            BlkWait::Poll(w) => w.poll(),
            BlkWait::Irq(w) => w.wait(),
        }
    }
    fn done(&mut self) {
        if let BlkWait::Irq(w) = self {
            w.done();
        }
    }
}

/// Times virtio-blk requests parked waiting for their interrupt (their
/// parked time goes to [`BLK_WAIT_NS`]: from the park to the return, which
/// includes the switch to the idle thread, its halt, the interrupt handler
/// and the switch back).
pub static BLK_PARKS: AtomicU64 = AtomicU64::new(0);

/// Interrupt mode for virtio-blk requests made by threads (off: poll).
static BLK_INTERRUPTS: AtomicBool = AtomicBool::new(false);

/// Chooses how virtio-blk requests from threads wait: `true` parks them
/// until the device's interrupt, `false` polls the used ring.
pub fn set_blk_interrupts(on: bool) {
    BLK_INTERRUPTS.store(on, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------
// Interrupts

/// The first vector virtio devices get (the scheduler uses 0x30, the LAPIC
/// tests 0x40).
pub const FIRST_VECTOR: u8 = 0x50;
/// Vectors for virtio devices.
const LINES: usize = 16;
/// How long an interrupt-mode request waits before the driver gives up and
/// resets the device (the watchdog wakes waiters to check).
const IRQ_TIMEOUT_NS: u64 = 5_000_000_000;
/// The watchdog's period.
const WATCHDOG_MS: u64 = 10;

/// What the handler acknowledges.
enum Source {
    Mmio(MmioInterrupt<VolatileMmio>),
    Msix,
}

/// One routed interrupt vector.
pub struct Line {
    slot: WaitSlot,
    source: spin::Mutex<Option<Source>>,
    spurious: AtomicU64,
    /// The route to the CPU is programmed (MSI-X at once; an I/O APIC entry
    /// once [`enable_thread_waits`] has the ACPI tables).
    ready: AtomicBool,
    /// Wakers (the handler, the watchdog) between reading the slot's waiter
    /// and unparking it. A waiter that unregistered waits for this to drop
    /// to zero before its wait ends, so a waker on another CPU never
    /// touches a thread that went on to finish and be freed.
    waking: AtomicU32,
}

impl Line {
    /// Runs `f` (which may read the slot's waiter and unpark it) as a
    /// waker [`IrqWait::done`] waits for. Interrupts must be off.
    ///
    /// Preemption is off inside: an unpark that wants the woken thread to
    /// run here switches only after the count drops (at `preempt_enable`),
    /// so the woken thread never spins in `done` on a waker it displaced.
    fn as_waker<R>(&self, f: impl FnOnce() -> R) -> R {
        crate::threads::preempt_disable();
        self.waking.fetch_add(1, Ordering::SeqCst);
        // Dekker-style with `IrqWait::done`: our count, then its slot; its
        // slot, then our count. One of the two sees the other.
        core::sync::atomic::fence(Ordering::SeqCst);
        let r = f();
        self.waking.fetch_sub(1, Ordering::Release);
        crate::threads::preempt_enable();
        r
    }
}

impl Line {
    /// Interrupts that announced used buffers.
    pub fn interrupts(&self) -> u64 {
        self.slot.interrupts()
    }
    /// Interrupts with no status bit set.
    pub fn spurious(&self) -> u64 {
        self.spurious.load(Ordering::Relaxed)
    }
}

static LINE_TABLE: [Line; LINES] = [const {
    Line {
        slot: WaitSlot::new(),
        source: spin::Mutex::new(None),
        spurious: AtomicU64::new(0),
        ready: AtomicBool::new(false),
        waking: AtomicU32::new(0),
    }
}; LINES];
static NEXT_LINE: AtomicUsize = AtomicUsize::new(0);

/// Takes the next free vector for `source` and installs the handler.
fn alloc_line(source: Source) -> Option<(u8, &'static Line)> {
    let i = NEXT_LINE.fetch_add(1, Ordering::Relaxed);
    let line = LINE_TABLE.get(i)?;
    let vector = FIRST_VECTOR + i as u8;
    arch::without_interrupts(|| *line.source.lock() = Some(source));
    osv_boot::rt::trap::set_handler(vector, on_virtio_interrupt).then_some((vector, line))
}

/// The handler of every virtio vector: acknowledge, EOI, wake the waiter.
fn on_virtio_interrupt(frame: &mut TrapFrame) {
    let i = (frame.vector as usize).wrapping_sub(usize::from(FIRST_VECTOR));
    let Some(line) = LINE_TABLE.get(i) else {
        if let Some(l) = osv_boot::rt::lapic() {
            l.eoi();
        }
        return;
    };
    line.as_waker(|| {
        let outcome: Option<Outcome> = {
            // Only this handler and `alloc_line` (interrupts off) take the lock.
            let mut src = line.source.lock();
            src.as_mut().map(|s| match s {
                Source::Mmio(m) => on_interrupt(m, &line.slot),
                Source::Msix => on_interrupt(&mut MsixSource, &line.slot),
            })
        };
        if outcome.as_ref().is_some_and(|o| o.spurious()) {
            line.spurious.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(l) = osv_boot::rt::lapic() {
            l.eoi();
        }
        if let Some(w) = outcome.and_then(|o| o.wake) {
            wake(w);
        }
    });
}

/// Unparks the thread registered as `w`.
fn wake(w: NonZeroUsize) {
    // SAFETY: only `IrqWait::prepare` registers, with `threads::current()`,
    // and `IrqWait::done` unregisters and then waits until no waker is
    // inside `Line::as_waker` before the thread's wait ends; callers read
    // the waiter and call this inside `as_waker` with interrupts off. The
    // watchdog thread is never joined, so never freed.
    let t = unsafe { &*(w.get() as *const crate::threads::Thread) };
    t.unparker().unpark();
}

/// Set once the scheduler runs and the watchdog exists: interrupt waits
/// are possible.
static THREADS_UP: AtomicBool = AtomicBool::new(false);

/// Starts the scheduler (if it is not running) and the timeout watchdog,
/// and programs the I/O APIC entries of virtio-mmio devices (the MADT is
/// found through the PVH start info's RSDP), after which virtio-blk
/// requests from threads may park on interrupts.
pub fn enable_thread_waits(boot: &BootInfo) -> Result<(), &'static str> {
    program_pending(*RSDP.call_once(|| boot.start_info.rsdp_paddr));
    if THREADS_UP.load(Ordering::Acquire) {
        return Ok(());
    }
    crate::threads::init()?;
    // Never joined: the thread runs for the kernel's life (a JoinHandle
    // dropped unjoined leaves the thread running).
    let h = crate::threads::spawn("virtio-irq-watchdog", watchdog);
    WATCHDOG.store(h.thread() as *const crate::threads::Thread as usize, Ordering::Release);
    THREADS_UP.store(true, Ordering::Release);
    Ok(())
}

/// The watchdog thread (0 until it exists).
static WATCHDOG: AtomicUsize = AtomicUsize::new(0);
/// Set while the watchdog is parked with no waiter to watch.
static WATCHDOG_IDLE: AtomicBool = AtomicBool::new(false);

/// While any thread waits for an interrupt, wakes every registered waiter
/// each [`WATCHDOG_MS`] so it checks its deadline (a device that never
/// interrupts ends in a timeout error, not a hang; a wakeup with nothing
/// used is harmless). With no waiter it parks without a timer, so an idle
/// kernel stays tickless; [`IrqWait::wait`] wakes it.
fn watchdog() {
    let any_waiter = || LINE_TABLE.iter().any(|l| l.slot.waiter().is_some());
    loop {
        // Idle first, then look (the waiter registers, then looks at the
        // flag: one of the two sees the other).
        WATCHDOG_IDLE.store(true, Ordering::SeqCst);
        core::sync::atomic::fence(Ordering::SeqCst);
        if !any_waiter() {
            crate::threads::KernelPark::park();
            continue;
        }
        WATCHDOG_IDLE.store(false, Ordering::SeqCst);
        crate::threads::sleep(osv_sched::time::Nanos::from_millis(WATCHDOG_MS));
        arch::without_interrupts(|| {
            for line in &LINE_TABLE {
                line.as_waker(|| {
                    if let Some(w) = line.slot.waiter() {
                        wake(w);
                    }
                });
            }
        });
    }
}

/// Waits (at most about [`WATCHDOG_MS`]) until the watchdog has parked
/// with nothing to watch, so it takes no CPU time after the caller's
/// interrupt waits (tests that time threads may run next).
pub fn quiesce_watchdog() {
    if !THREADS_UP.load(Ordering::Acquire) {
        return;
    }
    let until = osv_boot::rt::now_ns() + 20 * WATCHDOG_MS * 1_000_000;
    while !WATCHDOG_IDLE.load(Ordering::SeqCst) && osv_boot::rt::now_ns() < until {
        crate::threads::sleep(osv_sched::time::Nanos::from_millis(1));
    }
}

/// Wakes the watchdog if it is parked idle.
fn kick_watchdog() {
    if WATCHDOG_IDLE.swap(false, Ordering::SeqCst) {
        if let Some(w) = NonZeroUsize::new(WATCHDOG.load(Ordering::Acquire)) {
            arch::without_interrupts(|| wake(w));
        }
    }
}

/// An interrupt-mode wait: register in the line's slot, park, give up at
/// the deadline.
pub struct IrqWait {
    line: &'static Line,
    deadline: u64,
    parks: u32,
    parked_ns: u64,
}

impl IrqWait {
    fn new(line: &'static Line) -> Self {
        Self { line, deadline: osv_boot::rt::now_ns() + IRQ_TIMEOUT_NS, parks: 0, parked_ns: 0 }
    }
    /// Times parked.
    pub fn parks(&self) -> u32 {
        self.parks
    }
    /// Nanoseconds parked (from each park to its return).
    pub fn parked_ns(&self) -> u64 {
        self.parked_ns
    }
    /// Starts a new deadline (for a wait used across many packets).
    pub fn rearm(&mut self) {
        self.deadline = osv_boot::rt::now_ns() + IRQ_TIMEOUT_NS;
    }
}

impl Wait for IrqWait {
    fn prepare(&mut self) {
        let me = crate::threads::current() as *const crate::threads::Thread as usize;
        if let Some(me) = NonZeroUsize::new(me) {
            self.line.slot.register(me);
        }
    }
    fn wait(&mut self) -> bool {
        if osv_boot::rt::now_ns() >= self.deadline {
            return false;
        }
        self.parks += 1;
        // Registered (prepare) before this look at the watchdog.
        kick_watchdog();
        let t = osv_boot::rt::now_ns();
        crate::threads::KernelPark::park();
        self.parked_ns += osv_boot::rt::now_ns() - t;
        true
    }
    fn done(&mut self) {
        self.line.slot.unregister();
        // See `Line::as_waker`: a waker on another CPU that read us before
        // the unregister finishes its unpark before this thread may end.
        core::sync::atomic::fence(Ordering::SeqCst);
        while self.line.waking.load(Ordering::Acquire) != 0 {
            core::hint::spin_loop();
        }
    }
}

/// The GSI of a virtio-mmio slot on QEMU's microvm: `microvm_devices_init`
/// in `hw/i386/microvm.c` wires transport `i` (at `VIRTIO_MMIO_BASE + i *
/// 512`) to `gsi[virtio_irq_base + i]`, where `virtio_irq_base` is
/// `IO_APIC_SECONDARY_IRQBASE` (24) when a second I/O APIC exists (ACPI on,
/// `ioapic2` not off: the default), 16 with ACPI and one I/O APIC, 5
/// without ACPI. The second I/O APIC shows in the MADT with GSI base 24.
pub fn microvm_gsi(base: u64) -> Option<u32> {
    let off = base.checked_sub(MICROVM_MMIO_BASE)?;
    if !off.is_multiple_of(MICROVM_MMIO_SLOT) || off / MICROVM_MMIO_SLOT >= MICROVM_MMIO_SLOTS {
        return None;
    }
    let slot = (off / MICROVM_MMIO_SLOT) as u32;
    // The default configuration (the I/O APICs are only known later, from
    // the MADT; see `enable_thread_waits`).
    Some(MICROVM_VIRTIO_IRQ_BASE + slot)
}

/// `IO_APIC_SECONDARY_IRQBASE` (QEMU `include/hw/i386/x86.h`): where
/// microvm's virtio-mmio lines start with two I/O APICs.
const MICROVM_VIRTIO_IRQ_BASE: u32 = 24;

/// The RSDP from the PVH start info (0: none), once known.
static RSDP: spin::Once<u64> = spin::Once::new();

/// Writes the I/O APIC entries of the lines routed so far.
fn program_pending(rsdp: u64) {
    let pending = core::mem::take(&mut *PENDING_GSI.lock());
    for (gsi, vector, dest, line) in pending {
        let r = Redirection { vector, trigger: Trigger::Level, active_low: false, masked: false, dest };
        let routed = io_apics(rsdp)
            .iter()
            .find(|a| a.gsis().contains(&gsi))
            .map(|io| arch::without_interrupts(|| io.set(gsi, r)));
        match routed {
            Some(Ok(())) => line.ready.store(true, Ordering::Release),
            Some(Err(e)) => osv_boot::println!("virtio: GSI {gsi}: {e}; its device polls"),
            None => osv_boot::println!("virtio: no I/O APIC serves GSI {gsi}; its device polls"),
        }
    }
}

/// virtio-mmio lines waiting for their I/O APIC entry: (GSI, vector,
/// destination APIC id, line).
#[allow(clippy::type_complexity)]
static PENDING_GSI: spin::Mutex<Vec<(u32, u8, u8, &'static Line)>> = spin::Mutex::new(Vec::new());

/// The I/O APICs of the ACPI MADT (through the RSDP at `rsdp`, from the PVH
/// start info, else searched), masked at first sight.
fn io_apics(rsdp: u64) -> &'static [IoApic<MmioRegs>] {
    static IOAPICS: spin::Once<Vec<IoApic<MmioRegs>>> = spin::Once::new();
    IOAPICS.call_once(|| {
        let mut out = Vec::new();
        let Some(rsdp) = (rsdp != 0).then_some(rsdp).or_else(find_rsdp) else {
            osv_boot::println!("virtio: no ACPI RSDP found");
            return out;
        };
        let madt = match osv_boot::acpi::find_madt(&IdentityMem, rsdp) {
            Ok(m) => m,
            Err(e) => {
                osv_boot::println!("virtio: ACPI MADT via the RSDP at {rsdp:#x}: {e}");
                return out;
            }
        };
        for e in madt.io_apics() {
            let addr = u64::from(e.address);
            if !(0xc000_0000..IDENTITY_LIMIT - 0x1000).contains(&addr) {
                continue;
            }
            // SAFETY: the MADT names this page as an I/O APIC's registers; it
            // lies in the uncached MMIO hole of the identity map, and only
            // this table touches it.
            let io = IoApic::new(unsafe { MmioRegs::new(addr as *mut u32) }, e.gsi_base);
            io.mask_all();
            out.push(io);
        }
        out
    })
}

/// The ACPI RSDP: searched on 16-byte boundaries in the BIOS read-only area
/// 0xE0000-0xFFFFF (ACPI 6.5 §5.2.5.1 "Finding the RSDP on IA-PC Systems").
fn find_rsdp() -> Option<u64> {
    let mut a = 0xe_0000u64;
    while a < 0x10_0000 {
        let head = IdentityMem.read_probe(a, 20)?;
        if head.starts_with(b"RSD PTR ") && osv_boot::acpi::parse_rsdp(head).is_ok() {
            return Some(a);
        }
        a += 16;
    }
    None
}

/// Physical memory through the identity map, probed first so an unmapped
/// address is `None`, not a fault.
struct IdentityMem;

impl IdentityMem {
    fn read_probe(&self, paddr: u64, len: usize) -> Option<&'static [u8]> {
        let end = paddr.checked_add(len as u64)?;
        if paddr < 0x1000 || end > IDENTITY_LIMIT || len == 0 {
            return None;
        }
        for page in (paddr & !0xfff..end).step_by(0x1000) {
            // SAFETY: a probe: a fault is caught and reported as an error.
            unsafe { osv_boot::rt::probe::read_u64(page.max(paddr) & !7) }.ok()?;
        }
        // SAFETY: every page of the range is mapped (probed above) in the
        // identity map, and firmware tables are never written by the kernel.
        Some(unsafe { core::slice::from_raw_parts(paddr as *const u8, len) })
    }
}

impl osv_boot::acpi::PhysMem for IdentityMem {
    fn read(&self, paddr: u64, len: usize) -> Option<&[u8]> {
        self.read_probe(paddr, len)
    }
}

/// Routes the interrupt of a virtio-blk device to a vector: MSI-X on PCI,
/// the I/O APIC on virtio-mmio. `None` if it cannot.
fn route_blk(
    blk: &mut BlkDriver,
    route: IrqRoute,
) -> Result<(&'static Line, Option<Msix<VolatileMmio>>), &'static str> {
    let irq = match (blk, route) {
        (BlkDriver::Pci(b), IrqRoute::Pci(dev)) => route_pci(&dev, b.transport_mut(), 0)?,
        (BlkDriver::Mmio(_), IrqRoute::Mmio { base, size, gsi }) => route_mmio(base, size, gsi)?,
        (_, IrqRoute::None) => return Err("no interrupt line known"),
        _ => return Err("transport and route disagree"),
    };
    Ok((irq.line, irq.msix))
}

/// A routed interrupt of one device queue.
pub struct Irq {
    line: &'static Line,
    msix: Option<Msix<VolatileMmio>>,
}

impl Irq {
    /// A wait on this interrupt (for a scheduler thread; see
    /// [`enable_thread_waits`]).
    pub fn waiter(&self) -> IrqWait {
        IrqWait::new(self.line)
    }
    /// Used-buffer interrupts so far.
    pub fn interrupts(&self) -> u64 {
        self.line.interrupts()
    }
    /// Whether the route to the CPU is programmed.
    pub fn ready(&self) -> bool {
        self.line.ready.load(Ordering::Acquire)
    }
}

/// MSI-X for `queue` of the PCI function `dev`: table entry 0 raises a new
/// vector on the boot CPU.
pub fn route_pci(
    dev: &VirtioPciDevice,
    t: &mut PciTransport<VolatileMmio>,
    queue: u16,
) -> Result<Irq, &'static str> {
    let apic_id = osv_boot::rt::lapic().ok_or("no local APIC")?.id();
    let dest = u8::try_from(apic_id).map_err(|_| "x2APIC id above 255")?;
    let msix = Msix::enable(&PortConfig, dev, &mut IdentityBars).map_err(|_| "no usable MSI-X")?;
    let (vector, line) = alloc_line(Source::Msix).ok_or("out of vectors")?;
    msix.set(0, MsiMessage::x86(dest, vector)).map_err(|_| "MSI-X table entry 0")?;
    t.set_queue_msix_vector(queue, 0).map_err(|_| "the device refused MSI-X entry 0")?;
    line.ready.store(true, Ordering::Release);
    Ok(Irq { line, msix: Some(msix) })
}

/// The interrupt line of the virtio-mmio window at `base` (GSI `gsi`):
/// acknowledged through its InterruptStatus/InterruptACK; the I/O APIC
/// entry is written by [`enable_thread_waits`] (it needs the ACPI tables).
pub fn route_mmio(base: u64, size: u64, gsi: u32) -> Result<Irq, &'static str> {
    let apic_id = osv_boot::rt::lapic().ok_or("no local APIC")?.id();
    let dest = u8::try_from(apic_id).map_err(|_| "x2APIC id above 255")?;
    let ptr = NonNull::new(base as *mut u8).ok_or("null window")?;
    // SAFETY: the device's register window (validated when the transport
    // was made); the interrupt side touches only InterruptStatus and
    // InterruptACK.
    let regs = unsafe { VolatileMmio::new(ptr, size as usize) };
    let (vector, line) = alloc_line(Source::Mmio(MmioInterrupt::new(regs))).ok_or("out of vectors")?;
    // QEMU's microvm DSDT describes the virtio-mmio interrupts as
    // level-triggered, active high (hw/i386/acpi-microvm.c,
    // acpi_dsdt_add_virtio); virtio-mmio keeps the line up until
    // InterruptACK clears the status.
    PENDING_GSI.lock().push((gsi, vector, dest, line));
    if let Some(rsdp) = RSDP.get() {
        program_pending(*rsdp);
    }
    Ok(Irq { line, msix: None })
}

/// How many virtio-blk devices have a routed interrupt.
pub fn blk_routed() -> usize {
    BLK_LINES.lock().len()
}

/// Interrupts taken by the virtio-blk lines: (used-buffer, spurious).
pub fn blk_interrupts() -> (u64, u64) {
    BLK_LINES.lock().iter().fold((0, 0), |(a, b), l| (a + l.interrupts(), b + l.spurious()))
}
static BLK_LINES: spin::Mutex<Vec<&'static Line>> = spin::Mutex::new(Vec::new());

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
                Ok(b) => d.blk.push((blk(BlkDriver::Mmio(b), f.irq), f.location)),
                Err(e) => d.other.push(alloc::format!("virtio-blk at {}: {e:?}", f.location)),
            },
            (DeviceType::Block, AnyTransport::Pci(t)) => match VirtIOBlk::new(&HeapHal, t) {
                Ok(b) => d.blk.push((blk(BlkDriver::Pci(b), f.irq), f.location)),
                Err(e) => d.other.push(alloc::format!("virtio-blk at {}: {e:?}", f.location)),
            },
            (kind, transport) => {
                UNCLAIMED.lock().push(Found { kind, transport, location: f.location, irq: f.irq })
            }
        }
    }
    d
}

/// A virtio-blk device with its interrupt routed (if possible); the queue
/// starts with interrupts suppressed (polling mode).
fn blk(mut drv: BlkDriver, route: IrqRoute) -> Blk {
    let (line, msix) = match route_blk(&mut drv, route) {
        Ok((line, msix)) => {
            BLK_LINES.lock().push(line);
            (Some(line), msix)
        }
        Err(why) => {
            osv_boot::println!("virtio-blk: interrupt not routed ({why}); requests poll");
            (None, None)
        }
    };
    Blk { drv, line, interrupts_on: false, _msix: msix }
}
