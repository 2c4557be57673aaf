//! virtio-blk (virtio 1.2 §5.2): read, write, flush, discard, several
//! requests in flight, and the [`BlockDevice`] trait.
//!
//! Each request is a chain `[header (readable)] [data] [status (writable)]`
//! (§5.2.6). The header, status byte and discard segment live in a DMA page
//! the driver owns; data buffers are the caller's. Sector numbers are always
//! in 512-byte units on the wire; [`BlockDevice::sector_size`] is the
//! device's logical block size (`blk_size` if offered).
//!
//! Two APIs:
//! - submit/poll: [`VirtIOBlk::submit_read`] (and write, flush, discard)
//!   return a [`Token`]; [`VirtIOBlk::poll`] returns [`Completion`]s in the
//!   order the device finishes them.
//! - blocking: [`VirtIOBlk::read_blocks`], [`write_blocks`](VirtIOBlk::write_blocks),
//!   [`flush`](VirtIOBlk::flush) spin on the used ring, calling a wait hook
//!   (`*_with` variants) between polls.
//!
//! If the device breaks the queue protocol, the driver resets the device (so
//! it stops touching buffers), fails every request in flight, and refuses
//! further requests with [`BlkError::Broken`].

// Submitting caller buffers to the device is `unsafe` (their lifetime must
// cover the DMA); the blocking API discharges that by waiting.
#![allow(unsafe_code)]

use core::fmt;

use crate::hal::{Dma, Hal, PhysAddr};
use crate::irq::Wait;
use crate::queue::{Buffer, QueueError, Segment, Token, VirtQueue};
use crate::request::{self, Requests, Tracker};
use crate::transport::{Features, Transport, TransportError};

/// The queue size this driver asks for (the device may offer fewer).
pub const QUEUE_SIZE: usize = 64;

/// The wire sector size.
pub const SECTOR_SIZE: usize = 512;

/// The largest data transfer of one request built by the blocking API.
pub const MAX_TRANSFER: usize = 64 * 1024;

/// Feature bits of virtio 1.2 §5.2.3.
pub mod feature {
    use crate::transport::Features;
    /// `VIRTIO_BLK_F_SIZE_MAX`.
    pub const SIZE_MAX: Features = Features::bit(1);
    /// `VIRTIO_BLK_F_SEG_MAX`.
    pub const SEG_MAX: Features = Features::bit(2);
    /// `VIRTIO_BLK_F_RO`: read-only device.
    pub const RO: Features = Features::bit(5);
    /// `VIRTIO_BLK_F_BLK_SIZE`: `blk_size` is valid.
    pub const BLK_SIZE: Features = Features::bit(6);
    /// `VIRTIO_BLK_F_FLUSH`: flush command.
    pub const FLUSH: Features = Features::bit(9);
    /// `VIRTIO_BLK_F_DISCARD`: discard command.
    pub const DISCARD: Features = Features::bit(13);
}

/// Offsets in `struct virtio_blk_config` (virtio 1.2 §5.2.4).
pub mod config {
    /// `capacity` (le64), in 512-byte sectors.
    pub const CAPACITY: usize = 0;
    /// `size_max` (le32).
    pub const SIZE_MAX: usize = 8;
    /// `seg_max` (le32).
    pub const SEG_MAX: usize = 12;
    /// `blk_size` (le32).
    pub const BLK_SIZE: usize = 20;
    /// `max_discard_sectors` (le32).
    pub const MAX_DISCARD_SECTORS: usize = 36;
    /// `max_discard_seg` (le32).
    pub const MAX_DISCARD_SEG: usize = 40;
}

/// Request types (virtio 1.2 §5.2.6).
mod req_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const DISCARD: u32 = 11;
}

/// Status byte values (virtio 1.2 §5.2.6).
pub mod status {
    /// `VIRTIO_BLK_S_OK`.
    pub const OK: u8 = 0;
    /// `VIRTIO_BLK_S_IOERR`.
    pub const IOERR: u8 = 1;
    /// `VIRTIO_BLK_S_UNSUPP`.
    pub const UNSUPP: u8 = 2;
}

/// The status byte before the device writes it: not a valid status, so a
/// device that claims completion without writing it is caught.
const STATUS_UNSET: u8 = 0xff;

/// What went wrong with a block request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlkError {
    /// The device answered `VIRTIO_BLK_S_IOERR`.
    IoError,
    /// The device answered `VIRTIO_BLK_S_UNSUPP`.
    Unsupported,
    /// The device wrote a status byte that is none of the defined ones (or
    /// none at all).
    BadStatus(u8),
    /// The device reported a written length that does not match the request
    /// (a read must fill the buffer and the status byte).
    BadLength {
        /// What the device reported.
        len: u32,
        /// What the request needs.
        expected: u32,
    },
    /// The device does not offer this operation (flush, discard), or the
    /// device is read-only.
    NotSupported,
    /// Offset or length not a multiple of the sector size, or empty.
    Unaligned,
    /// Past the end of the device.
    OutOfRange,
    /// Too many requests in flight: poll some.
    Busy,
    /// The virtqueue failed (the device broke the protocol).
    Queue(QueueError),
    /// Initialization failed.
    Transport(TransportError),
    /// The device was reset after a protocol error; make a new driver.
    Broken,
    /// The wait hook gave up; the device was reset.
    TimedOut,
    /// `token` is not a request of this driver in flight.
    UnknownToken,
}

impl fmt::Display for BlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IoError => f.write_str("I/O error"),
            Self::Unsupported => f.write_str("request unsupported by the device"),
            Self::BadStatus(s) => write!(f, "bad status byte {s:#x}"),
            Self::BadLength { len, expected } => write!(f, "device wrote {len} bytes, expected {expected}"),
            Self::NotSupported => f.write_str("operation not offered by the device"),
            Self::Unaligned => f.write_str("unaligned or empty request"),
            Self::OutOfRange => f.write_str("beyond the end of the device"),
            Self::Busy => f.write_str("too many requests in flight"),
            Self::Queue(e) => write!(f, "virtqueue: {e}"),
            Self::Transport(e) => write!(f, "transport: {e}"),
            Self::Broken => f.write_str("device reset after a protocol error"),
            Self::TimedOut => f.write_str("request timed out; device reset"),
            Self::UnknownToken => f.write_str("unknown request token"),
        }
    }
}

impl core::error::Error for BlkError {}

impl From<TransportError> for BlkError {
    fn from(e: TransportError) -> Self {
        Self::Transport(e)
    }
}

/// A finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Which one.
    pub token: Token,
    /// How it ended.
    pub result: Result<(), BlkError>,
}

/// A block device: what a filesystem needs (osv-zfs adapts its own block
/// I/O trait to this in the demo kernel).
pub trait BlockDevice {
    /// The error type.
    type Error;
    /// The logical sector size in bytes (a power of two ≥ 512); offsets and
    /// lengths must be multiples of it.
    fn sector_size(&self) -> u32;
    /// The device size in bytes.
    fn size_bytes(&self) -> u64;
    /// Reads `buf.len()` bytes at byte `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Writes `buf` at byte `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), Self::Error>;
    /// Makes completed writes durable.
    fn flush(&mut self) -> Result<(), Self::Error>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
    Discard,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    slot: u16,
    kind: Kind,
    data_len: u32,
}

// The request page: per slot a 16-byte header, a status byte and a 16-byte
// discard segment.
const HDR_OFF: usize = 0;
const STATUS_OFF: usize = 16 * QUEUE_SIZE;
const SEG_OFF: usize = STATUS_OFF + QUEUE_SIZE;
const REQ_PAGE_LEN: usize = SEG_OFF + 16 * QUEUE_SIZE;
const _: () = assert!(REQ_PAGE_LEN <= crate::hal::PAGE_SIZE);

/// A virtio-blk device driven over `T` with DMA from `H`.
pub struct VirtIOBlk<H: Hal, T: Transport> {
    transport: T,
    queue: VirtQueue<H, QUEUE_SIZE>,
    reqs: Dma<H>,
    slot_busy: [bool; QUEUE_SIZE],
    /// Requests in flight, and completions a blocking call found for other
    /// tokens, by token.
    requests: Tracker<InFlight, Result<(), BlkError>, QUEUE_SIZE>,
    features: Features,
    capacity: u64,
    blk_size: u32,
    broken: bool,
}

impl<H: Hal, T: Transport> fmt::Debug for VirtIOBlk<H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtIOBlk")
            .field("capacity", &self.capacity)
            .field("blk_size", &self.blk_size)
            .field("features", &self.features)
            .field("queue", &self.queue)
            .field("broken", &self.broken)
            .finish()
    }
}

impl<H: Hal, T: Transport> VirtIOBlk<H, T> {
    /// The features this driver negotiates when offered.
    pub const SUPPORTED: Features = feature::RO
        .union(feature::BLK_SIZE)
        .union(feature::FLUSH)
        .union(feature::DISCARD)
        .union(Features::VERSION_1);

    /// Initializes the device: negotiates features, reads the
    /// configuration, sets up request queue 0 and sets DRIVER_OK.
    pub fn new(hal: &H, mut transport: T) -> Result<Self, BlkError> {
        let features = transport.begin_init(Self::SUPPORTED)?;
        let (capacity, blk_size) = match Self::read_config(&transport, features) {
            Ok(v) => v,
            Err(e) => {
                transport.fail();
                return Err(e);
            }
        };
        // The request page first: once the queue exists the device knows
        // its addresses, so no failure path may follow it.
        let Ok(reqs) = Dma::new(hal, 1) else {
            transport.fail();
            return Err(BlkError::Queue(QueueError::Alloc));
        };
        let queue = match VirtQueue::new(hal, &mut transport, 0) {
            Ok(q) => q,
            Err(e) => {
                transport.fail();
                return Err(BlkError::Queue(e));
            }
        };
        let mut this = Self {
            transport,
            queue,
            reqs,
            slot_busy: [false; QUEUE_SIZE],
            requests: Tracker::new(),
            features,
            capacity,
            blk_size,
            broken: false,
        };
        this.queue.set_interrupts(false);
        this.transport.finish_init();
        Ok(this)
    }

    fn read_config(t: &T, features: Features) -> Result<(u64, u32), BlkError> {
        Ok(t.read_config_consistent(|t| {
            let capacity = t.read_config_u64(config::CAPACITY)?;
            let blk_size = if features.contains(feature::BLK_SIZE) {
                t.read_config_u32(config::BLK_SIZE)?
            } else {
                SECTOR_SIZE as u32
            };
            Ok((capacity, blk_size))
        })
        .map(|(capacity, blk_size)| {
            // An implausible block size from the device falls back to 512.
            let ok = blk_size.is_power_of_two() && (512..=1 << 16).contains(&blk_size);
            (capacity, if ok { blk_size } else { SECTOR_SIZE as u32 })
        })?)
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
    /// The negotiated features.
    pub fn features(&self) -> Features {
        self.features
    }
    /// `true` if the device is read-only.
    pub fn readonly(&self) -> bool {
        self.features.contains(feature::RO)
    }
    /// Asks the device to interrupt on completions (off by default: the
    /// drivers poll). Only a hint (`VIRTQ_AVAIL_F_NO_INTERRUPT`, §2.7.7);
    /// acknowledge with `transport_mut().ack_interrupt()`.
    pub fn set_interrupts(&mut self, enabled: bool) {
        self.queue.set_interrupts(enabled);
    }

    /// The transport (e.g. to acknowledge interrupts).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }
    /// `true` after a protocol error reset the device.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Resets the device after a protocol error: it stops using every
    /// buffer, and every request in flight is failed.
    fn break_device(&mut self) {
        self.broken = true;
        // Reset status 0; on a timeout mark FAILED as well (best effort).
        if self.transport.reset().is_err() {
            self.transport.fail();
        }
        self.requests.clear();
        self.slot_busy = [false; QUEUE_SIZE];
    }

    fn check_range(&self, sector: u64, len: usize) -> Result<(), BlkError> {
        let bs = self.blk_size as usize;
        if len == 0 || !len.is_multiple_of(SECTOR_SIZE) || !len.is_multiple_of(bs) {
            return Err(BlkError::Unaligned);
        }
        let byte = sector.checked_mul(SECTOR_SIZE as u64).ok_or(BlkError::OutOfRange)?;
        if byte % bs as u64 != 0 {
            return Err(BlkError::Unaligned);
        }
        let end = sector.checked_add((len / SECTOR_SIZE) as u64).ok_or(BlkError::OutOfRange)?;
        if end > self.capacity {
            return Err(BlkError::OutOfRange);
        }
        Ok(())
    }

    fn take_slot(&mut self) -> Result<u16, BlkError> {
        let i = self.slot_busy.iter().position(|b| !b).ok_or(BlkError::Busy)?;
        self.slot_busy[i] = true;
        Ok(i as u16)
    }

    fn slot_paddr(&self, off: usize) -> PhysAddr {
        PhysAddr::new(self.reqs.paddr().as_u64() + off as u64)
    }

    /// Builds and submits one request. `data` is the caller's buffer.
    ///
    /// # Safety
    ///
    /// As for [`submit_read`](Self::submit_read): `data` must stay valid and
    /// untouched until the request completes or the driver reports a queue
    /// failure.
    unsafe fn submit(
        &mut self,
        kind: Kind,
        sector: u64,
        data: Option<(*const u8, usize)>,
        discard_sectors: u32,
    ) -> Result<Token, BlkError> {
        if self.broken {
            return Err(BlkError::Broken);
        }
        let slot = self.take_slot()?;
        let s = usize::from(slot);
        let typ = match kind {
            Kind::Read => req_type::IN,
            Kind::Write => req_type::OUT,
            Kind::Flush => req_type::FLUSH,
            Kind::Discard => req_type::DISCARD,
        };
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&typ.to_le_bytes());
        let hdr_sector = if matches!(kind, Kind::Read | Kind::Write) { sector } else { 0 };
        hdr[8..16].copy_from_slice(&hdr_sector.to_le_bytes());
        self.reqs.write_bytes(HDR_OFF + 16 * s, &hdr);
        self.reqs.write_bytes(STATUS_OFF + s, &[STATUS_UNSET]);
        let hdr_seg = Segment {
            buf: Buffer::Phys { addr: self.slot_paddr(HDR_OFF + 16 * s), len: 16 },
            device_writable: false,
        };
        let status_seg = Segment {
            buf: Buffer::Phys { addr: self.slot_paddr(STATUS_OFF + s), len: 1 },
            device_writable: true,
        };
        let mut data_len = 0u32;
        let mut segs = [hdr_seg, status_seg, status_seg];
        let n = match (kind, data) {
            (Kind::Read | Kind::Write, Some((ptr, len))) => {
                data_len = len as u32;
                segs[1] = Segment { buf: Buffer::Virt { ptr, len }, device_writable: kind == Kind::Read };
                3
            }
            (Kind::Discard, _) => {
                // struct virtio_blk_discard_write_zeroes (§5.2.6).
                let mut seg = [0u8; 16];
                seg[0..8].copy_from_slice(&sector.to_le_bytes());
                seg[8..12].copy_from_slice(&discard_sectors.to_le_bytes());
                self.reqs.write_bytes(SEG_OFF + 16 * s, &seg);
                segs[1] = Segment {
                    buf: Buffer::Phys { addr: self.slot_paddr(SEG_OFF + 16 * s), len: 16 },
                    device_writable: false,
                };
                3
            }
            _ => 2,
        };
        // SAFETY: the header, segment and status are in `self.reqs`, which
        // lives as long as the queue, at their physical addresses, and this
        // slot is not reused until the request completes; `data` is valid
        // per this function's contract.
        let token = match unsafe { self.queue.add_segments(&segs[..n]) } {
            Ok(t) => t,
            Err(e) => {
                self.slot_busy[s] = false;
                return Err(match e {
                    QueueError::Full => BlkError::Busy,
                    e => BlkError::Queue(e),
                });
            }
        };
        self.requests.insert(token, InFlight { slot, kind, data_len });
        self.queue.kick(&mut self.transport);
        Ok(token)
    }

    /// Submits a read of `buf.len()` bytes at `sector` (512-byte units).
    ///
    /// # Safety
    ///
    /// 1. `buf` stays valid and is not accessed until [`poll`](Self::poll)
    ///    returns this token's completion, or `poll` returns `Err` (the
    ///    driver then reset the device), or the driver is dropped (which
    ///    resets the device).
    pub unsafe fn submit_read(&mut self, sector: u64, buf: &mut [u8]) -> Result<Token, BlkError> {
        self.check_range(sector, buf.len())?;
        // SAFETY: forwarded contract.
        unsafe { self.submit(Kind::Read, sector, Some((buf.as_ptr(), buf.len())), 0) }
    }

    /// Submits a write of `buf` at `sector`.
    ///
    /// # Safety
    ///
    /// 1. As for [`submit_read`](Self::submit_read) (the device reads
    ///    `buf` until completion, so it must not be written).
    pub unsafe fn submit_write(&mut self, sector: u64, buf: &[u8]) -> Result<Token, BlkError> {
        if self.readonly() {
            return Err(BlkError::NotSupported);
        }
        self.check_range(sector, buf.len())?;
        // SAFETY: forwarded contract.
        unsafe { self.submit(Kind::Write, sector, Some((buf.as_ptr(), buf.len())), 0) }
    }

    /// Submits a flush (needs `VIRTIO_BLK_F_FLUSH`; without it, writes are
    /// durable on completion and this returns `NotSupported`).
    pub fn submit_flush(&mut self) -> Result<Token, BlkError> {
        if !self.features.contains(feature::FLUSH) {
            return Err(BlkError::NotSupported);
        }
        // SAFETY: no caller buffer; the header and status are ours.
        unsafe { self.submit(Kind::Flush, 0, None, 0) }
    }

    /// Submits a discard of `count` sectors at `sector` (needs
    /// `VIRTIO_BLK_F_DISCARD`).
    pub fn submit_discard(&mut self, sector: u64, count: u32) -> Result<Token, BlkError> {
        if !self.features.contains(feature::DISCARD) || self.readonly() {
            return Err(BlkError::NotSupported);
        }
        self.check_range(sector, count as usize * SECTOR_SIZE)?;
        // SAFETY: no caller buffer; the header, segment and status are ours.
        unsafe { self.submit(Kind::Discard, sector, None, count) }
    }

    /// Takes the next finished request. `None`: nothing finished yet.
    /// `Some(Err(_))`: the device broke the protocol; it has been reset, all
    /// requests in flight are lost, and the driver is broken.
    pub fn poll(&mut self) -> Option<Result<Completion, BlkError>> {
        if let Some((token, result)) = self.requests.pop_stashed() {
            return Some(Ok(Completion { token, result }));
        }
        self.poll_device()
    }

    /// [`poll`](Self::poll) without the stashed completions.
    fn poll_device(&mut self) -> Option<Result<Completion, BlkError>> {
        if self.broken {
            return Some(Err(BlkError::Broken));
        }
        let (token, len) = match self.queue.poll_used()? {
            Ok(v) => v,
            Err(e) => {
                self.break_device();
                return Some(Err(BlkError::Queue(e)));
            }
        };
        let Some(req) = self.requests.complete(token) else {
            // The queue validated it is in flight, so this is ours; but stay total.
            self.break_device();
            return Some(Err(BlkError::UnknownToken));
        };
        let s = usize::from(req.slot);
        let mut st = [STATUS_UNSET];
        self.reqs.read_bytes(STATUS_OFF + s, &mut st);
        self.slot_busy[s] = false;
        let expected = match req.kind {
            Kind::Read => req.data_len + 1,
            _ => 1,
        };
        let result = match st[0] {
            status::OK if len != expected => Err(BlkError::BadLength { len, expected }),
            status::OK => Ok(()),
            status::IOERR => Err(BlkError::IoError),
            status::UNSUPP => Err(BlkError::Unsupported),
            other => Err(BlkError::BadStatus(other)),
        };
        Some(Ok(Completion { token, result }))
    }

    /// Waits for `token` through `wait` (see [`crate::irq`]); `wait`
    /// returning `false` gives up (the device is reset so the buffer is
    /// free).
    fn wait_for(&mut self, token: Token, wait: &mut dyn Wait) -> Result<(), BlkError> {
        request::wait_for(self, token, wait)
    }

    /// Reads `buf.len()` bytes (a multiple of the sector size) at `sector`
    /// (512-byte units), spinning until done.
    pub fn read_blocks(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.read_blocks_with(sector, buf, &mut spin)
    }

    /// [`read_blocks`](Self::read_blocks) waiting through `wait` (any
    /// `FnMut() -> bool` polls: spin, halt or yield; a kernel's interrupt
    /// [`Wait`] parks until the queue's interrupt); `wait` returns `false`
    /// to give up.
    pub fn read_blocks_with(
        &mut self,
        sector: u64,
        buf: &mut [u8],
        wait: &mut dyn Wait,
    ) -> Result<(), BlkError> {
        self.check_range(sector, buf.len())?;
        let mut sector = sector;
        for chunk in buf.chunks_mut(MAX_TRANSFER) {
            // SAFETY: `chunk` is borrowed for this whole block; `wait_for`
            // returns only when the request completed or the device was
            // reset, so the device is done with it.
            let token = unsafe { self.submit(Kind::Read, sector, Some((chunk.as_ptr(), chunk.len())), 0)? };
            self.wait_for(token, wait)?;
            sector += (chunk.len() / SECTOR_SIZE) as u64;
        }
        Ok(())
    }

    /// Writes `buf` at `sector`, spinning until done.
    pub fn write_blocks(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        self.write_blocks_with(sector, buf, &mut spin)
    }

    /// [`write_blocks`](Self::write_blocks) with a wait hook.
    pub fn write_blocks_with(
        &mut self,
        sector: u64,
        buf: &[u8],
        wait: &mut dyn Wait,
    ) -> Result<(), BlkError> {
        if self.readonly() {
            return Err(BlkError::NotSupported);
        }
        self.check_range(sector, buf.len())?;
        let mut sector = sector;
        for chunk in buf.chunks(MAX_TRANSFER) {
            // SAFETY: as in `read_blocks_with`.
            let token = unsafe { self.submit(Kind::Write, sector, Some((chunk.as_ptr(), chunk.len())), 0)? };
            self.wait_for(token, wait)?;
            sector += (chunk.len() / SECTOR_SIZE) as u64;
        }
        Ok(())
    }

    /// Flushes the write cache, spinning until done (a no-op success if the
    /// device does not offer flush: its writes are then write-through).
    pub fn flush(&mut self) -> Result<(), BlkError> {
        self.flush_with(&mut spin)
    }

    /// [`flush`](Self::flush) with a wait hook.
    pub fn flush_with(&mut self, wait: &mut dyn Wait) -> Result<(), BlkError> {
        if !self.features.contains(feature::FLUSH) {
            return if self.broken { Err(BlkError::Broken) } else { Ok(()) };
        }
        let token = self.submit_flush()?;
        self.wait_for(token, wait)
    }

    /// Discards `count` sectors at `sector`, spinning until done.
    pub fn discard_with(&mut self, sector: u64, count: u32, wait: &mut dyn Wait) -> Result<(), BlkError> {
        let token = self.submit_discard(sector, count)?;
        self.wait_for(token, wait)
    }
}

fn spin() -> bool {
    core::hint::spin_loop();
    true
}

impl<H: Hal, T: Transport> Requests for VirtIOBlk<H, T> {
    type Output = ();
    type Error = BlkError;
    fn take_stashed(&mut self, token: Token) -> Option<Result<(), BlkError>> {
        self.requests.take_stashed(token)
    }
    fn stash(&mut self, token: Token, result: Result<(), BlkError>) {
        self.requests.stash(token, result);
    }
    fn poll_device(&mut self) -> Option<Result<(Token, Result<(), BlkError>), BlkError>> {
        VirtIOBlk::poll_device(self).map(|r| r.map(|c| (c.token, c.result)))
    }
    fn give_up(&mut self) -> BlkError {
        self.break_device();
        BlkError::TimedOut
    }
}

impl<H: Hal, T: Transport> Drop for VirtIOBlk<H, T> {
    fn drop(&mut self) {
        // Stop the device before the queue's DMA memory is freed.
        let _ = self.transport.reset();
    }
}

impl<H: Hal, T: Transport> BlockDevice for VirtIOBlk<H, T> {
    type Error = BlkError;

    fn sector_size(&self) -> u32 {
        self.blk_size
    }

    fn size_bytes(&self) -> u64 {
        self.capacity.saturating_mul(SECTOR_SIZE as u64)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        if !offset.is_multiple_of(u64::from(self.blk_size)) {
            return Err(BlkError::Unaligned);
        }
        self.read_blocks(offset / SECTOR_SIZE as u64, buf)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), BlkError> {
        if !offset.is_multiple_of(u64::from(self.blk_size)) {
            return Err(BlkError::Unaligned);
        }
        self.write_blocks(offset / SECTOR_SIZE as u64, buf)
    }

    fn flush(&mut self) -> Result<(), BlkError> {
        VirtIOBlk::flush(self)
    }
}
