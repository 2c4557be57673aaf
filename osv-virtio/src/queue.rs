//! The split virtqueue (virtio 1.2 §2.7), driver side.
//!
//! One DMA allocation holds the descriptor table (§2.7.5, 16-byte aligned),
//! the available ring (§2.7.6) and the used ring (§2.7.8, 4-byte aligned).
//! The driver's own bookkeeping (free list, which heads are in flight, how
//! many writable bytes each chain has) lives in ordinary memory the device
//! cannot reach, so nothing the device writes is ever used as an index or a
//! length without a check against it.
//!
//! # The untrusted used ring
//!
//! [`VirtQueue::poll_used`] validates every value the device wrote:
//! - the used index may advance by at most the number of chains in flight;
//! - a used id must be `< size` and the head of a chain that is in flight
//!   (this also catches duplicate completions);
//! - the used length must be at most the chain's device-writable bytes.
//!
//! A violation returns a [`QueueError`] and marks the queue broken: every
//! later call fails with [`QueueError::Broken`] until the owner resets the
//! device and builds a new queue. Nothing panics.
//!
//! # Memory ordering
//!
//! - Publishing: descriptors and the ring entry are written, then a release
//!   fence, then the available index (§2.7.13.3.1: the driver performs a
//!   suitable memory barrier before the idx update).
//! - Notification decision: a full fence between the index store and the
//!   read of the used ring's flags (§2.7.10, otherwise a suppressed-notify
//!   race loses a kick).
//! - Consuming: the used index is read, then an acquire fence, then the used
//!   element (§2.7.14: the element is valid once idx covers it).
#![allow(unsafe_code)]

use core::fmt;
use core::ptr::NonNull;

use crate::hal::{AllocError, Dma, Hal, PhysAddr, PAGE_SIZE};
use crate::sync::{dma_fence as fence, DmaOrdering as Ordering};
use crate::transport::{Transport, TransportError};

/// `VIRTQ_DESC_F_NEXT`: the chain continues in `next`.
const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: device-writable.
const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `VIRTQ_USED_F_NO_NOTIFY`.
const USED_F_NO_NOTIFY: u16 = 1;

/// One piece of a chain for [`VirtQueue::add_segments`].
#[derive(Clone, Copy, Debug)]
pub enum Buffer {
    /// Caller memory at a virtual address, translated with
    /// `Hal::virt_to_phys` (page by page; split where it is not physically
    /// contiguous).
    Virt {
        /// First byte.
        ptr: *const u8,
        /// Length in bytes.
        len: usize,
    },
    /// Memory whose physical address is known (the driver's [`Dma`]).
    Phys {
        /// Physical address of the first byte.
        addr: PhysAddr,
        /// Length in bytes.
        len: u32,
    },
}

/// A [`Buffer`] and its direction.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// Where.
    pub buf: Buffer,
    /// `true` if the device writes it (`VIRTQ_DESC_F_WRITE`).
    pub device_writable: bool,
}

/// Identifies one request (the head descriptor of its chain) from
/// [`VirtQueue::add`] until [`VirtQueue::poll_used`] returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[must_use = "the token is how the completion is recognised"]
pub struct Token(u16);

impl Token {
    /// The head descriptor index.
    pub const fn index(self) -> u16 {
        self.0
    }

    /// The token for head `index` (drivers keep per-token tables).
    pub(crate) const fn from_index(index: u16) -> Self {
        Self(index)
    }
}

/// What went wrong with a queue operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueError {
    /// An earlier device misbehaviour broke the queue; reset the device.
    Broken,
    /// Not enough free descriptors for this chain now (complete some).
    Full,
    /// The chain has no non-empty buffer.
    EmptyChain,
    /// A buffer is not DMA-able (`Hal::virt_to_phys` said `None`) or its
    /// writable total does not fit 32 bits.
    BadBuffer,
    /// The chain needs more descriptors than the queue has.
    ChainTooLong,
    /// DMA memory for the rings could not be allocated.
    Alloc,
    /// The transport refused the queue.
    Transport(TransportError),
    /// The device advanced the used index by more than the number of chains
    /// in flight.
    UsedIndexJump {
        /// How far it advanced.
        advance: u16,
        /// How many were in flight.
        in_flight: u16,
    },
    /// A used id outside the descriptor table.
    UsedIdOutOfRange(u32),
    /// A used id that is not the head of a chain in flight (never
    /// submitted, not a head, or already completed).
    UsedIdNotInFlight(u32),
    /// The device claims to have written more than the chain can hold.
    UsedLenTooLong {
        /// The request concerned (it is finished: its buffers are free).
        token: Token,
        /// The length the device reported.
        len: u32,
        /// The chain's writable bytes.
        writable: u32,
    },
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Broken => f.write_str("virtqueue broken by an earlier device error"),
            Self::Full => f.write_str("virtqueue full"),
            Self::EmptyChain => f.write_str("empty descriptor chain"),
            Self::BadBuffer => f.write_str("buffer not DMA-able or too long"),
            Self::ChainTooLong => f.write_str("chain longer than the queue"),
            Self::Alloc => f.write_str("no DMA memory for the virtqueue"),
            Self::Transport(e) => write!(f, "transport: {e}"),
            Self::UsedIndexJump { advance, in_flight } => {
                write!(f, "used index advanced by {advance} with {in_flight} in flight")
            }
            Self::UsedIdOutOfRange(id) => write!(f, "used id {id} out of range"),
            Self::UsedIdNotInFlight(id) => write!(f, "used id {id} not in flight"),
            Self::UsedLenTooLong { len, writable, .. } => {
                write!(f, "used length {len} exceeds {writable} writable bytes")
            }
        }
    }
}

impl core::error::Error for QueueError {}

impl From<TransportError> for QueueError {
    fn from(e: TransportError) -> Self {
        Self::Transport(e)
    }
}

impl From<AllocError> for QueueError {
    fn from(_: AllocError) -> Self {
        Self::Alloc
    }
}

/// What the driver remembers about a chain in flight (never read back from
/// DMA memory).
#[derive(Clone, Copy, Debug)]
struct Chain {
    descs: u16,
    writable: u32,
}

/// Byte offsets of the three parts in the DMA allocation for `size` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The available ring's offset.
    pub avail: usize,
    /// The used ring's offset.
    pub used: usize,
    /// Total bytes.
    pub total: usize,
}

impl Layout {
    /// The layout for a queue of `size` entries (§2.7: descriptor table
    /// 16·size bytes; available ring 6 + 2·size; used ring 6 + 8·size,
    /// 4-byte aligned).
    pub const fn new(size: u16) -> Self {
        let n = size as usize;
        let avail = 16 * n;
        let used = (avail + 6 + 2 * n + 3) & !3;
        Self { avail, used, total: used + 6 + 8 * n }
    }
}

/// A split virtqueue with up to `N` entries (the device may offer fewer;
/// `N` is at most 32768).
pub struct VirtQueue<H: Hal, const N: usize> {
    dma: Dma<H>,
    hal: H,
    index: u16,
    size: u16,
    layout: Layout,
    free_head: u16,
    num_free: u16,
    /// Private copy of each descriptor's `next` link (free list and chains).
    next: [u16; N],
    /// Indexed by head: the chains in flight.
    chains: [Option<Chain>; N],
    avail_idx: u16,
    last_used: u16,
    in_flight: u16,
    broken: bool,
}

impl<H: Hal, const N: usize> fmt::Debug for VirtQueue<H, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtQueue")
            .field("index", &self.index)
            .field("size", &self.size)
            .field("in_flight", &self.in_flight)
            .field("num_free", &self.num_free)
            .field("broken", &self.broken)
            .finish()
    }
}

impl<H: Hal, const N: usize> VirtQueue<H, N> {
    const VALID_N: () = assert!(N >= 1 && N <= 32768, "a virtqueue has 1..=32768 entries");

    /// Allocates queue `index` with `min(N, device maximum)` entries and
    /// gives it to the device. Call between `Transport::begin_init` and
    /// `Transport::finish_init`.
    pub fn new<T: Transport>(hal: &H, transport: &mut T, index: u16) -> Result<Self, QueueError> {
        #[allow(clippy::let_unit_value)]
        let () = Self::VALID_N;
        let max = transport.max_queue_size(index)?;
        if max == 0 {
            return Err(QueueError::Transport(TransportError::NoSuchQueue(index)));
        }
        let size = max.min(N as u16);
        let layout = Layout::new(size);
        let dma = Dma::new(hal, layout.total.div_ceil(PAGE_SIZE))?;
        let base = dma.paddr();
        let at = |off: usize| base.checked_add(off as u64).ok_or(QueueError::Alloc);
        transport.setup_queue(index, size, base, at(layout.avail)?, at(layout.used)?)?;
        let mut next = [0u16; N];
        for (i, n) in next.iter_mut().enumerate() {
            *n = (i + 1) as u16;
        }
        Ok(Self {
            dma,
            hal: hal.clone(),
            index,
            size,
            layout,
            free_head: 0,
            num_free: size,
            next,
            chains: [None; N],
            avail_idx: 0,
            last_used: 0,
            in_flight: 0,
            broken: false,
        })
    }

    /// The queue index on the device.
    pub fn index(&self) -> u16 {
        self.index
    }
    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }
    /// Chains submitted and not yet returned by `poll_used`.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }
    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }
    /// `true` once the device misbehaved; only a reset helps.
    pub fn is_broken(&self) -> bool {
        self.broken
    }
    /// Physical address of the descriptor table.
    pub fn desc_paddr(&self) -> PhysAddr {
        self.dma.paddr()
    }
    /// Physical address of the available ring (driver area).
    pub fn avail_paddr(&self) -> PhysAddr {
        PhysAddr::new(self.dma.paddr().as_u64() + self.layout.avail as u64)
    }
    /// Physical address of the used ring (device area).
    pub fn used_paddr(&self) -> PhysAddr {
        PhysAddr::new(self.dma.paddr().as_u64() + self.layout.used as u64)
    }

    fn ptr(&self, offset: usize) -> NonNull<u8> {
        debug_assert!(offset < self.layout.total);
        // SAFETY: every caller passes an offset computed from the layout with
        // an index `< size`, which lies inside the allocation of
        // `layout.total` bytes.
        unsafe { self.dma.vaddr().add(offset) }
    }

    fn write16(&self, offset: usize, v: u16) {
        // SAFETY: `ptr` is inside our DMA allocation (see `ptr`), 2-aligned
        // (all ring fields are at even offsets of a page-aligned region), and
        // only reached through raw pointers.
        unsafe { self.ptr(offset).cast::<u16>().write_volatile(v.to_le()) }
    }

    fn read16(&self, offset: usize) -> u16 {
        // SAFETY: as in `write16`.
        u16::from_le(unsafe { self.ptr(offset).cast::<u16>().read_volatile() })
    }

    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: as in `write16`; used elements are 4-aligned (the used
        // ring is 4-aligned and elements are 8 bytes after a 4-byte header).
        u32::from_le(unsafe { self.ptr(offset).cast::<u32>().read_volatile() })
    }

    fn write_desc(&self, i: u16, addr: PhysAddr, len: u32, flags: u16, next: u16) {
        let p = self.ptr(16 * usize::from(i));
        // SAFETY: descriptor `i < size` occupies 16 bytes at `16 * i`, inside
        // the table and 16-aligned; raw-pointer access only.
        unsafe {
            p.cast::<u64>().write_volatile(addr.as_u64().to_le());
            p.add(8).cast::<u32>().write_volatile(len.to_le());
            p.add(12).cast::<u16>().write_volatile(flags.to_le());
            p.add(14).cast::<u16>().write_volatile(next.to_le());
        }
    }

    /// Hints the device whether to interrupt on used buffers
    /// (`VIRTQ_AVAIL_F_NO_INTERRUPT`, §2.7.7; only a hint).
    pub fn set_interrupts(&mut self, enabled: bool) {
        self.write16(self.layout.avail, if enabled { 0 } else { AVAIL_F_NO_INTERRUPT });
    }

    /// Calls `emit` for each physically contiguous run of `buf` (one
    /// descriptor each) and returns how many there are.
    fn segments(&self, buf: Buffer, emit: &mut dyn FnMut(PhysAddr, u32)) -> Result<u16, QueueError> {
        let (ptr, len) = match buf {
            Buffer::Phys { addr, len } => {
                if len == 0 {
                    return Ok(0);
                }
                emit(addr, len);
                return Ok(1);
            }
            Buffer::Virt { ptr, len } => (ptr, len),
        };
        let mut count: u16 = 0;
        let mut done = 0usize;
        while done < len {
            let p = ptr.wrapping_add(done);
            let start = self.hal.virt_to_phys(p).ok_or(QueueError::BadBuffer)?;
            // Grow the run page by page while the physical pages follow on.
            let mut run = (PAGE_SIZE - (p as usize % PAGE_SIZE)).min(len - done);
            while done + run < len && run < (u32::MAX as usize - PAGE_SIZE) {
                let q = ptr.wrapping_add(done + run);
                match self.hal.virt_to_phys(q) {
                    Some(pa) if Some(pa) == start.checked_add(run as u64) => {
                        run += PAGE_SIZE.min(len - done - run);
                    }
                    Some(_) => break,
                    None => return Err(QueueError::BadBuffer),
                }
            }
            emit(start, run as u32);
            count = count.checked_add(1).ok_or(QueueError::ChainTooLong)?;
            done += run;
        }
        Ok(count)
    }

    /// Makes `inputs` (device-readable) followed by `outputs`
    /// (device-writable) available to the device as one chain. Empty
    /// buffers are skipped. The caller then asks
    /// [`should_notify`](Self::should_notify) and notifies the transport
    /// (or calls [`kick`](Self::kick)).
    ///
    /// # Safety
    ///
    /// 1. Every buffer stays valid, and is not accessed by the caller
    ///    (outputs) or not written (inputs), until `poll_used` returns this
    ///    chain's token, or until the device has been reset (after a queue
    ///    error the owner resets the device before it releases the buffers
    ///    of chains still in flight).
    pub unsafe fn add(&mut self, inputs: &[&[u8]], outputs: &mut [&mut [u8]]) -> Result<Token, QueueError> {
        let walk = |f: &mut dyn FnMut(Buffer, bool) -> Result<(), QueueError>| {
            for b in inputs {
                f(Buffer::Virt { ptr: b.as_ptr(), len: b.len() }, false)?;
            }
            for b in outputs.iter() {
                f(Buffer::Virt { ptr: b.as_ptr(), len: b.len() }, true)?;
            }
            Ok(())
        };
        self.add_walk(&walk)
    }

    /// Like [`add`](Self::add) for a chain given as raw segments (a
    /// readable part first, then a writable part), e.g. a request header in
    /// the driver's own [`Dma`] memory.
    ///
    /// # Safety
    ///
    /// 1. Every segment is valid memory for its whole length and stays so,
    ///    untouched by the caller as in [`add`](Self::add), until the token
    ///    is returned or the device is reset.
    /// 2. A `Buffer::Phys` address is the physical address of such memory.
    pub unsafe fn add_segments(&mut self, segs: &[Segment]) -> Result<Token, QueueError> {
        let walk = |f: &mut dyn FnMut(Buffer, bool) -> Result<(), QueueError>| {
            for s in segs {
                f(s.buf, s.device_writable)?;
            }
            Ok(())
        };
        self.add_walk(&walk)
    }

    #[allow(clippy::type_complexity)]
    fn add_walk(
        &mut self,
        walk: &dyn Fn(&mut dyn FnMut(Buffer, bool) -> Result<(), QueueError>) -> Result<(), QueueError>,
    ) -> Result<Token, QueueError> {
        if self.broken {
            return Err(QueueError::Broken);
        }
        // Pass 1: count descriptors and writable bytes, check every buffer.
        let mut needed: u32 = 0;
        let mut writable: u64 = 0;
        let mut seen_writable = false;
        walk(&mut |b, w| {
            if !w && seen_writable {
                // §2.7.4.2: device-writable parts come after readable ones.
                return Err(QueueError::BadBuffer);
            }
            seen_writable |= w;
            needed += u32::from(self.segments(b, &mut |_, l| {
                if w {
                    writable += u64::from(l);
                }
            })?);
            Ok(())
        })?;
        let writable = u32::try_from(writable).map_err(|_| QueueError::BadBuffer)?;
        if needed == 0 {
            return Err(QueueError::EmptyChain);
        }
        if needed > u32::from(self.size) {
            return Err(QueueError::ChainTooLong);
        }
        if needed > u32::from(self.num_free) {
            return Err(QueueError::Full);
        }
        // Pass 2: write the chain along the free list.
        let head = self.free_head;
        let mut cur = head;
        let mut left = needed;
        let mut last = head;
        walk(&mut |b, w| {
            self.segments(b, &mut |addr, len| {
                if left == 0 {
                    return; // the Hal answered differently than in pass 1
                }
                left -= 1;
                let next = self.next[usize::from(cur)];
                let mut flags = if w { DESC_F_WRITE } else { 0 };
                if left > 0 {
                    flags |= DESC_F_NEXT;
                }
                self.write_desc(cur, addr, len, flags, if left > 0 { next } else { 0 });
                last = cur;
                cur = next;
            })?;
            Ok(())
        })?;
        let used = needed - left;
        if used == 0 {
            return Err(QueueError::BadBuffer);
        }
        if left > 0 {
            // Fewer runs than counted: terminate the chain at the last one.
            self.write_desc_flags_end(last);
        }
        self.free_head = self.next[usize::from(last)];
        self.num_free -= used as u16;
        self.chains[usize::from(head)] = Some(Chain { descs: used as u16, writable });

        let slot = usize::from(self.avail_idx % self.size);
        self.write16(self.layout.avail + 4 + 2 * slot, head);
        // The descriptors and ring entry must be visible before the index.
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write16(self.layout.avail + 2, self.avail_idx);
        self.in_flight += 1;
        Ok(Token(head))
    }

    fn write_desc_flags_end(&self, i: u16) {
        let off = 16 * usize::from(i) + 12;
        let flags = self.read16(off) & !DESC_F_NEXT;
        self.write16(off, flags);
    }

    /// Whether the device wants a notification now (it did not set
    /// `VIRTQ_USED_F_NO_NOTIFY`, §2.7.10).
    pub fn should_notify(&self) -> bool {
        // Order the avail idx store before reading the device's flags.
        fence(Ordering::SeqCst);
        self.read16(self.layout.used) & USED_F_NO_NOTIFY == 0
    }

    /// Notifies `transport` if the device wants it.
    pub fn kick<T: Transport>(&self, transport: &mut T) {
        if self.should_notify() {
            transport.notify(self.index);
        }
    }

    /// `true` if the device has returned buffers not yet polled (or the
    /// queue is broken, so `poll_used` has an error to report).
    pub fn has_used(&self) -> bool {
        self.broken || self.read16(self.layout.used + 2) != self.last_used
    }

    fn break_with(&mut self, e: QueueError) -> Option<Result<(Token, u32), QueueError>> {
        self.broken = true;
        Some(Err(e))
    }

    /// Takes the next used element, validated (see the module docs):
    /// `None` if there is none, `Some(Ok((token, written_len)))` for a
    /// completed chain (its descriptors are free again), `Some(Err(_))` if
    /// the device misbehaved (the queue is then broken).
    pub fn poll_used(&mut self) -> Option<Result<(Token, u32), QueueError>> {
        if self.broken {
            return Some(Err(QueueError::Broken));
        }
        let used_idx = self.read16(self.layout.used + 2);
        let advance = used_idx.wrapping_sub(self.last_used);
        if advance == 0 {
            return None;
        }
        if advance > self.in_flight {
            return self.break_with(QueueError::UsedIndexJump { advance, in_flight: self.in_flight });
        }
        // The element is valid once the index covers it.
        fence(Ordering::Acquire);
        let slot = usize::from(self.last_used % self.size);
        let elem = self.layout.used + 4 + 8 * slot;
        let id = self.read32(elem);
        let len = self.read32(elem + 4);
        if id >= u32::from(self.size) {
            return self.break_with(QueueError::UsedIdOutOfRange(id));
        }
        let head = id as u16;
        let Some(chain) = self.chains[usize::from(head)].take() else {
            return self.break_with(QueueError::UsedIdNotInFlight(id));
        };
        // Return the chain's descriptors to the free list, following the
        // private links only.
        let mut last = head;
        for _ in 1..chain.descs {
            last = self.next[usize::from(last)];
        }
        self.next[usize::from(last)] = self.free_head;
        self.free_head = head;
        self.num_free += chain.descs;
        self.in_flight -= 1;
        self.last_used = self.last_used.wrapping_add(1);
        let token = Token(head);
        if len > chain.writable {
            return self.break_with(QueueError::UsedLenTooLong { token, len, writable: chain.writable });
        }
        Some(Ok((token, len)))
    }

    /// The writable byte count of an in-flight chain (for drivers checking
    /// lengths), `None` if `token` is not in flight.
    pub fn writable_len(&self, token: Token) -> Option<u32> {
        self.chains.get(usize::from(token.0)).copied().flatten().map(|c| c.writable)
    }
}

#[cfg(test)]
mod tests {
    // The tests hand buffers to the (fake) device.
    #![allow(unsafe_code)]

    use std::boxed::Box;
    use std::collections::VecDeque;
    use std::vec;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;
    use crate::fake::{DeviceChain, FakeDevice, FakeHal, FakeMmioRegs, RngBackend};
    use crate::transport::mmio::MmioTransport;
    use crate::transport::Features;

    const N: usize = 8;

    fn setup(max: u16) -> (FakeHal, FakeDevice, VirtQueue<FakeHal, N>) {
        let hal = FakeHal::new();
        let dev = FakeDevice::new(&hal, Box::new(RngBackend::default()), 1, max);
        dev.set_auto(false);
        let mut t = MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap();
        t.begin_init(Features::VERSION_1).unwrap();
        let q = VirtQueue::new(&hal, &mut t, 0).unwrap();
        (hal, dev, q)
    }

    #[test]
    fn layout_alignment() {
        for size in [1u16, 2, 3, 8, 255, 256, 32768] {
            let l = Layout::new(size);
            assert_eq!(l.avail, 16 * usize::from(size));
            assert_eq!(l.used % 4, 0);
            assert!(l.used >= l.avail + 6 + 2 * usize::from(size));
        }
    }

    #[test]
    fn chains_and_free_list() {
        let (_hal, dev, mut q) = setup(4);
        assert_eq!(q.size(), 4);
        let a = [1u8; 10];
        let mut b = [0u8; 20];
        // SAFETY: the buffers outlive the queue's use in this test.
        let t = unsafe { q.add(&[&a], &mut [&mut b]) }.unwrap();
        assert_eq!(q.num_free(), 2);
        assert_eq!(q.writable_len(t), Some(20));
        let mut c = [0u8; 1];
        // SAFETY: as above.
        assert_eq!(unsafe { q.add(&[&a, &a], &mut [&mut c]) }, Err(QueueError::Full));
        // SAFETY: as above.
        assert_eq!(unsafe { q.add(&[&[], &a, &a, &a, &a, &a], &mut []) }, Err(QueueError::ChainTooLong));
        // SAFETY: as above.
        assert_eq!(unsafe { q.add(&[&[]], &mut []) }, Err(QueueError::EmptyChain));
        assert!(q.should_notify());
        let chain = dev.with_queue(0, |d| d.pop_avail().unwrap().unwrap()).unwrap();
        assert_eq!(chain.head, t.index());
        assert_eq!(chain.readable.len(), 1);
        assert_eq!(chain.writable_len(), 20);
        assert!(!q.has_used());
        dev.with_queue(0, |d| d.push_used(u32::from(chain.head), 20).unwrap());
        assert!(q.has_used());
        assert_eq!(q.poll_used(), Some(Ok((t, 20))));
        assert_eq!(q.poll_used(), None);
        assert_eq!(q.num_free(), 4);
        // NO_NOTIFY is respected.
        dev.with_queue(0, |d| d.set_no_notify(true).unwrap());
        assert!(!q.should_notify());
    }

    #[test]
    fn device_smaller_than_n() {
        let (_hal, _dev, q) = setup(3);
        assert_eq!(q.size(), 3);
        let (_hal, _dev, q) = setup(300);
        assert_eq!(q.size(), N as u16);
    }

    #[test]
    fn buffers_split_at_physical_discontinuities() {
        // A Hal whose caller memory is physically scattered per page.
        #[derive(Clone)]
        struct Scatter(FakeHal);
        // SAFETY: DMA comes from the inner fake unchanged; translation of
        // caller memory is only used to compute descriptors, never
        // dereferenced by this test's device.
        unsafe impl Hal for Scatter {
            fn dma_alloc(&self, pages: usize) -> Option<(PhysAddr, NonNull<u8>)> {
                self.0.dma_alloc(pages)
            }
            unsafe fn dma_dealloc(&self, paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) {
                // SAFETY: forwarded contract.
                unsafe { self.0.dma_dealloc(paddr, vaddr, pages) }
            }
            fn virt_to_phys(&self, vaddr: *const u8) -> Option<PhysAddr> {
                let v = vaddr as u64;
                // Reverse the page order within each 4-page group.
                let page = v / 4096;
                let swapped = (page & !3) | (3 - (page & 3));
                Some(PhysAddr::new((1 << 40) + swapped * 4096 + v % 4096))
            }
        }
        let hal = Scatter(FakeHal::new());
        let dev = FakeDevice::new(&hal.0, Box::new(RngBackend::default()), 1, 64);
        let mut t = MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap();
        t.begin_init(Features::VERSION_1).unwrap();
        let mut q = VirtQueue::<Scatter, 64>::new(&hal, &mut t, 0).unwrap();
        let mut buf = vec![0u8; 5 * 4096];
        // SAFETY: the device never touches the buffer in this test.
        let tok = unsafe { q.add(&[], &mut [&mut buf]) }.unwrap();
        let chain: DeviceChain = dev.with_queue(0, |d| d.pop_avail().unwrap().unwrap()).unwrap();
        assert!(chain.writable.len() >= 5, "{chain:?}");
        assert_eq!(chain.writable_len(), 5 * 4096);
        assert_eq!(q.writable_len(tok), Some(5 * 4096));
        assert_eq!(q.num_free(), 64 - chain.writable.len() as u16);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Submit {
            readable: Vec<u16>,
            writable: Vec<u16>,
        },
        /// Complete the `pick`-th popped chain with `frac`/255 of its length.
        Complete {
            pick: usize,
            frac: u8,
        },
        Poll,
        /// Write an arbitrary used element and index.
        Garbage {
            id: u32,
            len: u32,
            advance: u16,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (proptest::collection::vec(0u16..600, 0..3), proptest::collection::vec(0u16..600, 0..3))
                .prop_map(|(readable, writable)| Op::Submit { readable, writable }),
            4 => (any::<usize>(), any::<u8>()).prop_map(|(pick, frac)| Op::Complete { pick, frac }),
            4 => Just(Op::Poll),
            1 => (prop_oneof![0u32..10, any::<u32>()], prop_oneof![0u32..700, any::<u32>()], 0u16..12)
                .prop_map(|(id, len, advance)| Op::Garbage { id, len, advance }),
        ]
    }

    proptest! {
        /// Random interleavings of submit/complete/poll against a model of
        /// in-flight tokens and expected completions, with occasional raw
        /// garbage in the used ring: never a panic, every Ok completion is
        /// one the model expects (or, after garbage, a token in flight with
        /// a length within its buffer), and after the first error the queue
        /// stays broken.
        #[test]
        fn queue_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
            let (_hal, dev, mut q) = setup(N as u16);
            // Buffers stay alive until the end (the device may hold them).
            let mut keep: Vec<Vec<u8>> = Vec::new();
            let mut in_flight: Vec<(Token, u32)> = Vec::new();
            let mut popped: Vec<DeviceChain> = Vec::new();
            let mut expected: VecDeque<(Token, u32)> = VecDeque::new();
            let mut garbage = false;
            let mut broken = false;
            for op in ops {
                match op {
                    Op::Submit { readable, writable } => {
                        let mut rb: Vec<Vec<u8>> = readable.iter().map(|&n| vec![1u8; usize::from(n)]).collect();
                        let mut wb: Vec<Vec<u8>> = writable.iter().map(|&n| vec![0u8; usize::from(n)]).collect();
                        let ins: Vec<&[u8]> = rb.iter().map(|b| b.as_slice()).collect();
                        let mut outs: Vec<&mut [u8]> = wb.iter_mut().map(|b| b.as_mut_slice()).collect();
                        let free = q.num_free();
                        // SAFETY: the buffers are moved into `keep`, which
                        // outlives the queue (heap contents do not move).
                        let r = unsafe { q.add(&ins, &mut outs) };
                        let wlen: u32 = writable.iter().map(|&n| u32::from(n)).sum();
                        let descs = readable.iter().chain(&writable).filter(|&&n| n > 0).count();
                        match r {
                            Ok(t) => {
                                prop_assert!(!broken);
                                prop_assert!(!in_flight.iter().any(|&(x, _)| x == t));
                                in_flight.push((t, wlen));
                            }
                            Err(QueueError::Broken) => prop_assert!(broken),
                            Err(QueueError::EmptyChain) => prop_assert_eq!(descs, 0),
                            Err(QueueError::Full) => prop_assert!(descs > usize::from(free)),
                            Err(e) => prop_assert!(false, "unexpected {:?}", e),
                        }
                        keep.append(&mut rb);
                        keep.append(&mut wb);
                    }
                    Op::Complete { pick, frac } => {
                        dev.with_queue(0, |d| {
                            while let Ok(Some(c)) = d.pop_avail() {
                                popped.push(c);
                            }
                        });
                        if popped.is_empty() {
                            continue;
                        }
                        let c = popped.remove(pick % popped.len());
                        let len = (u64::from(c.writable_len()) * u64::from(frac) / 255) as u32;
                        dev.with_queue(0, |d| d.push_used(u32::from(c.head), len).unwrap());
                        expected.push_back((Token(c.head), len));
                    }
                    Op::Garbage { id, len, advance } => {
                        garbage = true;
                        dev.with_queue(0, |d| {
                            let idx = d.used_idx();
                            d.write_used_elem(idx, id, len).unwrap();
                            d.set_used_idx(idx.wrapping_add(advance)).unwrap();
                        });
                    }
                    Op::Poll => match q.poll_used() {
                        None => prop_assert!(garbage || expected.is_empty(), "completions lost: {:?}", expected),
                        Some(Ok((t, len))) => {
                            prop_assert!(!broken);
                            let pos = in_flight.iter().position(|&(x, _)| x == t);
                            prop_assert!(pos.is_some(), "token {:?} not in flight", t);
                            let (_, cap) = in_flight.swap_remove(pos.unwrap_or(0));
                            prop_assert!(len <= cap);
                            if !garbage {
                                prop_assert_eq!(expected.pop_front(), Some((t, len)));
                            }
                        }
                        Some(Err(e)) => {
                            prop_assert!(garbage || broken, "error {:?} from a well-behaved device", e);
                            if let QueueError::UsedLenTooLong { token, .. } = e {
                                in_flight.retain(|&(x, _)| x != token);
                            }
                            if broken {
                                prop_assert_eq!(e, QueueError::Broken);
                            }
                            broken = true;
                            prop_assert!(q.is_broken());
                        }
                    },
                }
                prop_assert_eq!(usize::from(q.in_flight()), in_flight.len());
                let descs_free = q.num_free();
                prop_assert!(descs_free <= q.size());
            }
            drop(q);
            drop(keep);
        }
    }
}
