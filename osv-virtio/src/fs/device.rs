//! The virtio-fs device driver (virtio 1.2 §5.11): configuration, the
//! high-priority queue, one request queue, and FUSE requests over them.
//!
//! Queues (§5.11.2): 0 is `hiprio`, where `FUSE_FORGET` goes (it has no
//! reply, §5.11.6.1); with `VIRTIO_FS_F_NOTIFICATION` (not negotiated here)
//! 1 would be the notification queue; the request queues follow, and this
//! driver uses the first one.
//!
//! Each request is one chain (§5.11.6): a device-readable part
//! (`fuse_in_header`, the arguments, and for `FUSE_WRITE` the caller's
//! data) then a device-writable part (`fuse_out_header` and the reply, and
//! for `FUSE_READ`/`FUSE_READDIR` the caller's buffer). Headers, arguments
//! and fixed-size replies live in a DMA page per slot that the driver owns.
//!
//! # What is checked
//!
//! The virtqueue validates ids and lengths against its own bookkeeping (a
//! violation there breaks the queue, the device is reset and every request
//! in flight fails, as in [`crate::blk`]). Above it, every reply is checked
//! against its request ([`OutHeader::check`]: reported length, `unique`,
//! error field, no payload with an error; then the payload's exact size or
//! its records, [`crate::fs::proto`]). A FUSE-level violation fails only
//! that request: the driver stays usable.
//!
//! Two APIs, as for virtio-blk: [`VirtIOFs::submit`]/[`VirtIOFs::poll`]
//! with several requests in flight, and blocking calls
//! ([`VirtIOFs::lookup`], [`read`](VirtIOFs::read), ...) that spin, or call a
//! wait hook, until their reply arrives.

// Submitting caller buffers to the device is `unsafe` (their lifetime must
// cover the DMA); the blocking API discharges that by waiting.
#![allow(unsafe_code)]

use core::fmt;

use super::proto::{
    self, init_flags, Attr, EntryOut, FileHandle, InitOut, Kstatfs, NodeId, OpenOut, OutHeader, ProtoError,
    ReadOp, Request, SetattrIn, Status, OUT_HEADER_LEN,
};
use crate::hal::{Dma, Hal, PhysAddr, PAGE_SIZE};
use crate::irq::Wait;
use crate::queue::{Buffer, QueueError, Segment, Token, VirtQueue};
use crate::request::{self, Requests, Tracker};
use crate::transport::{Features, Transport, TransportError};

/// Entries asked for on the request queue (the device may offer fewer).
pub const QUEUE_SIZE: usize = 64;
/// Entries asked for on the high-priority queue.
pub const HIPRIO_QUEUE_SIZE: usize = 16;
/// Requests in flight at most on the request queue (one DMA slot each).
pub const SLOTS: usize = 16;
/// The largest `FUSE_READ`/`FUSE_WRITE` payload one request carries (the
/// server's `max_write` and `max_pages` may lower it).
pub const MAX_TRANSFER: u32 = 128 * 1024;

/// Configuration layout (`struct virtio_fs_config`, virtio 1.2 §5.11.4).
pub mod config {
    /// `tag`: 36 bytes of UTF-8, NUL-padded, not NUL-terminated when full.
    pub const TAG: usize = 0;
    /// Length of `tag`.
    pub const TAG_LEN: usize = 36;
    /// `num_request_queues` (le32).
    pub const NUM_REQUEST_QUEUES: usize = 36;
}

/// Feature bits (virtio 1.2 §5.11.3).
pub mod feature {
    use crate::transport::Features;
    /// `VIRTIO_FS_F_NOTIFICATION`: a notification queue exists (not used).
    pub const NOTIFICATION: Features = Features::bit(0);
}

// One slot: the request head, then the reply header and fixed reply.
const SLOT_LEN: usize = 1024;
const IN_AREA: usize = 768;
const OUT_AREA: usize = SLOT_LEN - IN_AREA;
/// Room for a fixed-size reply after its header.
const REPLY_ROOM: usize = OUT_AREA - OUT_HEADER_LEN;
const _: () = assert!(proto::MAX_REQUEST_HEAD <= IN_AREA && proto::MAX_FIXED_REPLY <= REPLY_ROOM);
const SLOT_PAGES: usize = (SLOTS * SLOT_LEN).div_ceil(PAGE_SIZE);
// FORGET requests: header and `fuse_forget_in`, 48 bytes, in 64-byte slots.
const FORGET_LEN: usize = proto::IN_HEADER_LEN + 8;
const FORGET_SLOT: usize = 64;
const _: () = assert!(HIPRIO_QUEUE_SIZE * FORGET_SLOT <= PAGE_SIZE);

/// What went wrong with a virtio-fs request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FsError {
    /// The server answered with this errno (Linux values).
    Server(u32),
    /// The reply broke the FUSE protocol (this request failed; the driver
    /// stays usable), or a request could not be built.
    Proto(ProtoError),
    /// The virtqueue failed (the device broke the protocol); the device was
    /// reset.
    Queue(QueueError),
    /// Initialization failed.
    Transport(TransportError),
    /// The configuration space is unusable.
    BadConfig(&'static str),
    /// Too many requests in flight: poll some.
    Busy,
    /// The device was reset after a protocol error or a timeout; make a new
    /// driver.
    Broken,
    /// The wait hook gave up; the device was reset.
    TimedOut,
    /// `token` is not a request of this driver in flight.
    UnknownToken,
    /// An argument is out of range (a buffer larger than one request
    /// carries, write data that does not match the request).
    InvalidArgument,
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server(e) => write!(f, "server error {e}"),
            Self::Proto(e) => write!(f, "FUSE protocol: {e}"),
            Self::Queue(e) => write!(f, "virtqueue: {e}"),
            Self::Transport(e) => write!(f, "transport: {e}"),
            Self::BadConfig(what) => write!(f, "bad virtio-fs configuration: {what}"),
            Self::Busy => f.write_str("too many requests in flight"),
            Self::Broken => f.write_str("device reset after a protocol error"),
            Self::TimedOut => f.write_str("request timed out; device reset"),
            Self::UnknownToken => f.write_str("unknown request token"),
            Self::InvalidArgument => f.write_str("invalid argument"),
        }
    }
}

impl core::error::Error for FsError {}

impl From<TransportError> for FsError {
    fn from(e: TransportError) -> Self {
        Self::Transport(e)
    }
}

impl From<ProtoError> for FsError {
    fn from(e: ProtoError) -> Self {
        Self::Proto(e)
    }
}

/// The filesystem's name from the configuration (`tag`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    bytes: [u8; config::TAG_LEN],
    len: u8,
}

impl Tag {
    /// The raw bytes (without the NUL padding).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
    /// The tag as text, if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        core::str::from_utf8(self.as_bytes()).ok()
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => write!(f, "Tag({s:?})"),
            None => write!(f, "Tag({:?})", self.as_bytes()),
        }
    }
}

/// A successful reply.
#[derive(Clone, Copy)]
pub struct Reply {
    payload: [u8; REPLY_ROOM],
    /// Bytes of the fixed reply in `payload`, or of data in the caller's
    /// buffer (`data` true).
    len: u32,
    data: bool,
}

impl Reply {
    /// The fixed-size reply (empty when the reply went to the caller's
    /// buffer).
    pub fn payload(&self) -> &[u8] {
        if self.data {
            &[]
        } else {
            &self.payload[..self.len as usize]
        }
    }
    /// Bytes the device put in the caller's buffer (`FUSE_READ`,
    /// `FUSE_READDIR`).
    pub fn data_len(&self) -> usize {
        if self.data {
            self.len as usize
        } else {
            0
        }
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply").field("len", &self.len).field("data", &self.data).finish()
    }
}

/// A finished request.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// Which one.
    pub token: Token,
    /// How it ended.
    pub result: Result<Reply, FsError>,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    slot: u16,
    unique: u64,
    data_out: bool,
}

/// A virtio-fs device driven over `T` with DMA from `H`, after the FUSE
/// `INIT` handshake.
pub struct VirtIOFs<H: Hal, T: Transport> {
    transport: T,
    hiprio: VirtQueue<H, HIPRIO_QUEUE_SIZE>,
    requests: VirtQueue<H, QUEUE_SIZE>,
    slots: Dma<H>,
    forgets: Dma<H>,
    slot_busy: [bool; SLOTS],
    /// Per hiprio token: the forget slot it uses.
    forget_busy: [Option<u16>; HIPRIO_QUEUE_SIZE],
    /// Requests in flight on the request queue, and completions a blocking
    /// call found for other tokens (the same tracking as virtio-blk's).
    tracker: Tracker<InFlight, Result<Reply, FsError>, QUEUE_SIZE>,
    next_unique: u64,
    tag: Tag,
    num_request_queues: u32,
    init: InitOut,
    broken: bool,
}

impl<H: Hal, T: Transport> fmt::Debug for VirtIOFs<H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtIOFs")
            .field("tag", &self.tag)
            .field("num_request_queues", &self.num_request_queues)
            .field("init", &self.init)
            .field("requests", &self.requests)
            .field("broken", &self.broken)
            .finish()
    }
}

fn spin() -> bool {
    core::hint::spin_loop();
    true
}

impl<H: Hal, T: Transport> VirtIOFs<H, T> {
    /// The `FUSE_INIT` flags we ask for.
    pub const INIT_FLAGS: u32 = init_flags::BIG_WRITES
        | init_flags::MAX_PAGES
        | init_flags::DO_READDIRPLUS
        | init_flags::PARALLEL_DIROPS;

    /// Initializes the device (no device features), reads the
    /// configuration, sets up the hiprio queue and the first request queue,
    /// sets DRIVER_OK and performs the FUSE `INIT` handshake.
    pub fn new(hal: &H, mut transport: T) -> Result<Self, FsError> {
        transport.begin_init(Features::VERSION_1)?;
        let (tag, num_request_queues) = match Self::read_config(&transport) {
            Ok(v) => v,
            Err(e) => {
                transport.fail();
                return Err(e);
            }
        };
        // DMA first: once the queues exist the device knows their addresses,
        // so no failure path may free memory after that without a reset.
        let (Ok(slots), Ok(forgets)) = (Dma::new(hal, SLOT_PAGES), Dma::new(hal, 1)) else {
            transport.fail();
            return Err(FsError::Queue(QueueError::Alloc));
        };
        let hiprio = match VirtQueue::new(hal, &mut transport, 0) {
            Ok(q) => q,
            Err(e) => {
                transport.fail();
                return Err(FsError::Queue(e));
            }
        };
        let requests = match VirtQueue::new(hal, &mut transport, 1) {
            Ok(q) => q,
            Err(e) => {
                // Reset so the device forgets the hiprio queue before its
                // memory goes.
                let _ = transport.reset();
                transport.fail();
                return Err(FsError::Queue(e));
            }
        };
        let mut this = Self {
            transport,
            hiprio,
            requests,
            slots,
            forgets,
            slot_busy: [false; SLOTS],
            forget_busy: [None; HIPRIO_QUEUE_SIZE],
            tracker: Tracker::new(),
            next_unique: 1,
            tag,
            num_request_queues,
            init: InitOut::default(),
            broken: false,
        };
        this.hiprio.set_interrupts(false);
        this.requests.set_interrupts(false);
        this.transport.finish_init();
        let reply = this.call(&Request::Init { max_readahead: 0, flags: Self::INIT_FLAGS }, &[], None)?;
        this.init = InitOut::parse(reply.payload())?;
        Ok(this)
    }

    fn read_config(t: &T) -> Result<(Tag, u32), FsError> {
        let (bytes, queues) = t.read_config_consistent(|t| {
            let mut b = [0u8; config::TAG_LEN];
            for (i, x) in b.iter_mut().enumerate() {
                *x = t.read_config_u8(config::TAG + i)?;
            }
            Ok((b, t.read_config_u32(config::NUM_REQUEST_QUEUES)?))
        })?;
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(config::TAG_LEN);
        if len == 0 {
            return Err(FsError::BadConfig("empty tag"));
        }
        if queues == 0 {
            return Err(FsError::BadConfig("no request queues"));
        }
        Ok((Tag { bytes, len: len as u8 }, queues))
    }

    /// The filesystem's tag (what the host named it).
    pub fn tag(&self) -> Tag {
        self.tag
    }
    /// How many request queues the device offers (this driver uses one).
    pub fn num_request_queues(&self) -> u32 {
        self.num_request_queues
    }
    /// What the server answered to `FUSE_INIT`.
    pub fn init_out(&self) -> &InitOut {
        &self.init
    }
    /// `true` if the server accepted `FUSE_DO_READDIRPLUS`.
    pub fn readdirplus(&self) -> bool {
        self.init.flags & init_flags::DO_READDIRPLUS != 0
    }
    /// The largest `FUSE_READ` (and `FUSE_READDIR`) size this driver sends.
    pub fn max_read(&self) -> u32 {
        let pages = if self.init.flags & init_flags::MAX_PAGES != 0 && self.init.max_pages > 0 {
            u32::from(self.init.max_pages)
        } else {
            32 // FUSE_DEFAULT_MAX_PAGES_PER_REQ (Linux fs/fuse/fuse_i.h)
        };
        (pages * PAGE_SIZE as u32).min(MAX_TRANSFER)
    }
    /// The largest `FUSE_WRITE` payload this driver sends.
    pub fn max_write(&self) -> u32 {
        self.max_read().min(self.init.max_write)
    }
    /// `true` after a protocol error or a timeout reset the device.
    pub fn is_broken(&self) -> bool {
        self.broken
    }
    /// The transport (e.g. to acknowledge interrupts).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Resets the device after a protocol error: it stops using every
    /// buffer, and every request in flight is failed.
    fn break_device(&mut self) {
        self.broken = true;
        if self.transport.reset().is_err() {
            self.transport.fail();
        }
        self.tracker.clear();
        self.slot_busy = [false; SLOTS];
        self.forget_busy = [None; HIPRIO_QUEUE_SIZE];
    }

    fn paddr(dma: &Dma<H>, off: usize) -> PhysAddr {
        PhysAddr::new(dma.paddr().as_u64() + off as u64)
    }

    /// Submits `req` on the request queue. `data_in` is `FUSE_WRITE`'s data
    /// (its length must be the request's `size`; empty otherwise);
    /// `data_out` receives the reply of `FUSE_READ`/`FUSE_READDIR`/
    /// `FUSE_READDIRPLUS` (other replies go to the driver's slot).
    ///
    /// # Safety
    ///
    /// 1. `data_in` and `data_out` stay valid and are not accessed (nor
    ///    `data_in` written) until [`poll`](Self::poll) returns this
    ///    token's completion, or `poll` returns `Err` (the driver then reset
    ///    the device), or the driver is dropped (which resets the device).
    pub unsafe fn submit(
        &mut self,
        req: &Request<'_>,
        data_in: &[u8],
        data_out: Option<&mut [u8]>,
    ) -> Result<Token, FsError> {
        if self.broken {
            return Err(FsError::Broken);
        }
        if !req.expects_reply() || req.data_len() != data_in.len() {
            return Err(FsError::InvalidArgument);
        }
        if data_out.as_ref().is_some_and(|d| d.len() > MAX_TRANSFER as usize) {
            return Err(FsError::InvalidArgument);
        }
        let mut head = [0u8; IN_AREA];
        let unique = self.next_unique;
        let n = req.encode(unique, &mut head)?;
        let s = self.slot_busy.iter().position(|b| !b).ok_or(FsError::Busy)?;
        let base = s * SLOT_LEN;
        self.slots.write_bytes(base, &head[..n]);
        // A zeroed header (unique 0, which no request uses) until the device
        // writes its own.
        self.slots.write_bytes(base + IN_AREA, &[0u8; OUT_HEADER_LEN]);
        let out_len = if data_out.is_some() { OUT_HEADER_LEN } else { OUT_AREA };
        let mut segs = [Segment {
            buf: Buffer::Phys { addr: Self::paddr(&self.slots, base), len: n as u32 },
            device_writable: false,
        }; 4];
        let mut k = 1;
        if !data_in.is_empty() {
            segs[k] = Segment {
                buf: Buffer::Virt { ptr: data_in.as_ptr(), len: data_in.len() },
                device_writable: false,
            };
            k += 1;
        }
        segs[k] = Segment {
            buf: Buffer::Phys { addr: Self::paddr(&self.slots, base + IN_AREA), len: out_len as u32 },
            device_writable: true,
        };
        k += 1;
        let has_out = data_out.is_some();
        if let Some(d) = data_out {
            if !d.is_empty() {
                segs[k] =
                    Segment { buf: Buffer::Virt { ptr: d.as_ptr(), len: d.len() }, device_writable: true };
                k += 1;
            }
        }
        // SAFETY: the head and reply areas are this slot's part of
        // `self.slots`, which lives as long as the queue, at their physical
        // addresses, and the slot is not reused until the request
        // completes; the caller's buffers are valid per this function's
        // contract.
        let token = match unsafe { self.requests.add_segments(&segs[..k]) } {
            Ok(t) => t,
            Err(QueueError::Full) => return Err(FsError::Busy),
            Err(e) => return Err(FsError::Queue(e)),
        };
        self.slot_busy[s] = true;
        self.next_unique = self.next_unique.wrapping_add(1).max(1);
        self.tracker.insert(token, InFlight { slot: s as u16, unique, data_out: has_out });
        self.requests.kick(&mut self.transport);
        Ok(token)
    }

    /// Takes the next finished request. `None`: nothing finished yet.
    /// `Some(Ok(c))`: a request finished, successfully or with an error of
    /// its own in `c.result`. `Some(Err(_))`: the device broke the queue
    /// protocol; it has been reset and all requests in flight are lost.
    pub fn poll(&mut self) -> Option<Result<Completion, FsError>> {
        if let Some((token, result)) = self.tracker.pop_stashed() {
            return Some(Ok(Completion { token, result }));
        }
        self.poll_device()
    }

    fn poll_device(&mut self) -> Option<Result<Completion, FsError>> {
        if self.broken {
            return Some(Err(FsError::Broken));
        }
        self.reap_hiprio();
        if self.broken {
            return Some(Err(FsError::Broken));
        }
        let (token, used) = match self.requests.poll_used()? {
            Ok(v) => v,
            Err(e) => {
                self.break_device();
                return Some(Err(FsError::Queue(e)));
            }
        };
        let Some(req) = self.tracker.complete(token) else {
            self.break_device();
            return Some(Err(FsError::UnknownToken));
        };
        let base = usize::from(req.slot) * SLOT_LEN + IN_AREA;
        self.slot_busy[usize::from(req.slot)] = false;
        let mut h = [0u8; OUT_HEADER_LEN];
        self.slots.read_bytes(base, &mut h);
        let result = OutHeader::parse(&h).and_then(|hdr| hdr.check(used, req.unique)).map_err(FsError::Proto);
        let result = result.and_then(|status| match status {
            Status::Err(e) => Err(FsError::Server(e)),
            Status::Ok(len) => {
                let mut r = Reply { payload: [0; REPLY_ROOM], len, data: req.data_out };
                if !req.data_out {
                    // `used <= OUT_AREA` (the queue checked it against the
                    // chain), so `len <= REPLY_ROOM`.
                    let n = (len as usize).min(REPLY_ROOM);
                    self.slots.read_bytes(base + OUT_HEADER_LEN, &mut r.payload[..n]);
                }
                Ok(r)
            }
        });
        Some(Ok(Completion { token, result }))
    }

    /// Frees the forget slots of hiprio requests the device finished.
    fn reap_hiprio(&mut self) {
        while let Some(r) = self.hiprio.poll_used() {
            match r {
                Ok((t, _)) => {
                    if self.forget_busy.get_mut(usize::from(t.index())).and_then(Option::take).is_none() {
                        self.break_device();
                        return;
                    }
                }
                Err(_) => {
                    self.break_device();
                    return;
                }
            }
        }
    }

    /// Waits for `token` through `wait` (see [`crate::irq`]); `wait`
    /// returning `false` gives up (the device is reset so the buffers are
    /// free).
    fn wait_for(&mut self, token: Token, wait: &mut dyn Wait) -> Result<Reply, FsError> {
        request::wait_for(self, token, wait)
    }

    /// Sends `req` and waits for its reply, calling `wait` between polls.
    pub fn call_with(
        &mut self,
        req: &Request<'_>,
        data_in: &[u8],
        data_out: Option<&mut [u8]>,
        wait: &mut dyn Wait,
    ) -> Result<Reply, FsError> {
        // SAFETY: both buffers are borrowed for this whole call, and
        // `wait_for` returns only once the request completed or the device
        // was reset, so the device is done with them.
        let token = unsafe { self.submit(req, data_in, data_out)? };
        self.wait_for(token, wait)
    }

    /// [`call_with`](Self::call_with), spinning.
    pub fn call(
        &mut self,
        req: &Request<'_>,
        data_in: &[u8],
        data_out: Option<&mut [u8]>,
    ) -> Result<Reply, FsError> {
        self.call_with(req, data_in, data_out, &mut spin)
    }

    /// `FUSE_FORGET` on the hiprio queue: gives back `nlookup` lookups of
    /// `node`. There is no reply; the buffer is reclaimed when the device
    /// returns it. Spins while every hiprio slot waits for the device.
    pub fn forget(&mut self, node: NodeId, nlookup: u64) -> Result<(), FsError> {
        self.forget_with(node, nlookup, &mut spin)
    }

    /// [`forget`](Self::forget) calling `wait` while every hiprio slot is
    /// busy; `wait` returning `false` gives up (the device is reset).
    pub fn forget_with(&mut self, node: NodeId, nlookup: u64, wait: &mut dyn Wait) -> Result<(), FsError> {
        let slot = loop {
            wait.prepare();
            self.reap_hiprio();
            if self.broken {
                wait.done();
                return Err(FsError::Broken);
            }
            let busy = |i: usize| self.forget_busy.contains(&Some(i as u16));
            if let Some(s) = (0..HIPRIO_QUEUE_SIZE).find(|&i| !busy(i)) {
                wait.done();
                break s;
            }
            if !wait.wait() {
                wait.done();
                self.break_device();
                return Err(FsError::TimedOut);
            }
        };
        let unique = self.next_unique;
        let mut b = [0u8; FORGET_LEN];
        Request::Forget { node, nlookup }.encode(unique, &mut b)?;
        let off = slot * FORGET_SLOT;
        self.forgets.write_bytes(off, &b);
        let seg = Segment {
            buf: Buffer::Phys { addr: Self::paddr(&self.forgets, off), len: FORGET_LEN as u32 },
            device_writable: false,
        };
        // SAFETY: the request is in this forget slot of `self.forgets`,
        // which lives as long as the queue, and the slot is not reused until
        // the device returns the buffer (`reap_hiprio`).
        let token = match unsafe { self.hiprio.add_segments(&[seg]) } {
            Ok(t) => t,
            Err(QueueError::Full) => return Err(FsError::Busy),
            Err(e) => return Err(FsError::Queue(e)),
        };
        self.next_unique = self.next_unique.wrapping_add(1).max(1);
        self.forget_busy[usize::from(token.index())] = Some(slot as u16);
        self.hiprio.kick(&mut self.transport);
        Ok(())
    }

    /// Hiprio requests the device has not returned yet.
    pub fn forgets_in_flight(&self) -> usize {
        usize::from(self.hiprio.in_flight())
    }

    fn entry(reply: &Reply, opcode: proto::Opcode) -> Result<EntryOut, FsError> {
        match EntryOut::parse(reply.payload()) {
            Ok(Some(e)) => Ok(e),
            // A negative entry (node id 0) is a cacheable ENOENT.
            Ok(None) if opcode == proto::Opcode::Lookup => Err(FsError::Server(2)),
            Ok(None) => Err(FsError::Proto(ProtoError::BadValue("node id 0 for a new object"))),
            Err(ProtoError::BadPayloadLength { len, .. }) => {
                Err(FsError::Proto(ProtoError::BadPayloadLength { opcode, len }))
            }
            Err(e) => Err(FsError::Proto(e)),
        }
    }

    /// `FUSE_LOOKUP`: `name` in `parent`. A success adds one lookup to the
    /// node (give it back with [`forget`](Self::forget)).
    pub fn lookup(&mut self, parent: NodeId, name: &[u8]) -> Result<EntryOut, FsError> {
        let r = self.call(&Request::Lookup { parent, name }, &[], None)?;
        Self::entry(&r, proto::Opcode::Lookup)
    }

    /// `FUSE_GETATTR`.
    pub fn getattr(&mut self, node: NodeId, fh: Option<FileHandle>) -> Result<Attr, FsError> {
        let r = self.call(&Request::Getattr { node, fh }, &[], None)?;
        Ok(proto::parse_attr_out(r.payload(), proto::Opcode::Getattr)?)
    }

    /// `FUSE_SETATTR`; returns the new attributes.
    pub fn setattr(&mut self, node: NodeId, attr: SetattrIn) -> Result<Attr, FsError> {
        let r = self.call(&Request::Setattr { node, attr }, &[], None)?;
        Ok(proto::parse_attr_out(r.payload(), proto::Opcode::Setattr)?)
    }

    /// `FUSE_OPEN` (`dir == false`) or `FUSE_OPENDIR`.
    pub fn open(&mut self, node: NodeId, flags: u32, dir: bool) -> Result<OpenOut, FsError> {
        let req = Request::Open { node, flags, dir };
        let r = self.call(&req, &[], None)?;
        Ok(OpenOut::parse(r.payload(), req.opcode())?)
    }

    /// `FUSE_READ` of up to `buf.len()` (at most [`max_read`](Self::max_read))
    /// bytes at `offset`; returns the count (short at the end of file).
    pub fn read(
        &mut self,
        node: NodeId,
        fh: FileHandle,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, FsError> {
        self.read_op(ReadOp::Data, node, fh, offset, buf)
    }

    /// `FUSE_READDIR` (`plus == false`) or `FUSE_READDIRPLUS` into `buf`
    /// from the cookie `offset`; returns how many bytes of records arrived
    /// (parse them with [`proto::DirentIter`]; 0 is the end).
    pub fn readdir(
        &mut self,
        node: NodeId,
        fh: FileHandle,
        offset: u64,
        buf: &mut [u8],
        plus: bool,
    ) -> Result<usize, FsError> {
        self.read_op(if plus { ReadOp::DirPlus } else { ReadOp::Dir }, node, fh, offset, buf)
    }

    fn read_op(
        &mut self,
        op: ReadOp,
        node: NodeId,
        fh: FileHandle,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, FsError> {
        if buf.len() > self.max_read() as usize {
            return Err(FsError::InvalidArgument);
        }
        let size = buf.len() as u32;
        let r = self.call(&Request::Read { op, node, fh, offset, size }, &[], Some(buf))?;
        Ok(r.data_len())
    }

    /// `FUSE_WRITE` of `data` (at most [`max_write`](Self::max_write)
    /// bytes) at `offset`; returns the count the server wrote.
    pub fn write(
        &mut self,
        node: NodeId,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<usize, FsError> {
        if data.len() > self.max_write() as usize {
            return Err(FsError::InvalidArgument);
        }
        let size = data.len() as u32;
        let r = self.call(&Request::Write { node, fh, offset, size }, data, None)?;
        Ok(proto::parse_write_out(r.payload(), size)? as usize)
    }

    /// `FUSE_CREATE`: creates and opens `name` in `parent`.
    pub fn create(
        &mut self,
        parent: NodeId,
        name: &[u8],
        flags: u32,
        mode: u32,
    ) -> Result<(EntryOut, OpenOut), FsError> {
        let r = self.call(&Request::Create { parent, name, flags, mode, umask: 0 }, &[], None)?;
        Ok(proto::parse_create_out(r.payload())?)
    }

    /// `FUSE_MKDIR`.
    pub fn mkdir(&mut self, parent: NodeId, name: &[u8], mode: u32) -> Result<EntryOut, FsError> {
        let r = self.call(&Request::Mkdir { parent, name, mode, umask: 0 }, &[], None)?;
        Self::entry(&r, proto::Opcode::Mkdir)
    }

    fn empty_reply(r: &Reply, opcode: proto::Opcode) -> Result<(), FsError> {
        if !r.payload().is_empty() {
            return Err(FsError::Proto(ProtoError::BadPayloadLength { opcode, len: r.len }));
        }
        Ok(())
    }

    fn call_empty(&mut self, req: &Request<'_>) -> Result<(), FsError> {
        let r = self.call(req, &[], None)?;
        Self::empty_reply(&r, req.opcode())
    }

    /// `FUSE_UNLINK` (`dir == false`) or `FUSE_RMDIR`.
    pub fn remove(&mut self, parent: NodeId, name: &[u8], dir: bool) -> Result<(), FsError> {
        self.call_empty(&Request::Remove { parent, name, dir })
    }

    /// `FUSE_RENAME` (`flags == 0`) or `FUSE_RENAME2`.
    pub fn rename(
        &mut self,
        parent: NodeId,
        name: &[u8],
        new_parent: NodeId,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), FsError> {
        self.call_empty(&Request::Rename { parent, name, new_parent, new_name, flags })
    }

    /// `FUSE_STATFS`.
    pub fn statfs(&mut self, node: NodeId) -> Result<Kstatfs, FsError> {
        let r = self.call(&Request::Statfs { node }, &[], None)?;
        Ok(Kstatfs::parse(r.payload())?)
    }

    /// `FUSE_RELEASE` (`dir == false`) or `FUSE_RELEASEDIR`.
    pub fn release(&mut self, node: NodeId, fh: FileHandle, flags: u32, dir: bool) -> Result<(), FsError> {
        self.call_empty(&Request::Release { node, fh, flags, dir })
    }

    /// `FUSE_FSYNC` (`dir == false`) or `FUSE_FSYNCDIR`.
    pub fn fsync(&mut self, node: NodeId, fh: FileHandle, datasync: bool, dir: bool) -> Result<(), FsError> {
        self.call_empty(&Request::Fsync { node, fh, datasync, dir })
    }

    /// `FUSE_FLUSH`.
    pub fn flush(&mut self, node: NodeId, fh: FileHandle) -> Result<(), FsError> {
        self.call_empty(&Request::Flush { node, fh, lock_owner: 0 })
    }

    /// `FUSE_DESTROY`: ends the session (the server drops its state).
    pub fn destroy(&mut self) -> Result<(), FsError> {
        self.call_empty(&Request::Destroy)
    }
}

impl<H: Hal, T: Transport> Requests for VirtIOFs<H, T> {
    type Output = Reply;
    type Error = FsError;
    fn take_stashed(&mut self, token: Token) -> Option<Result<Reply, FsError>> {
        self.tracker.take_stashed(token)
    }
    fn stash(&mut self, token: Token, result: Result<Reply, FsError>) {
        self.tracker.stash(token, result);
    }
    fn poll_device(&mut self) -> Option<Result<(Token, Result<Reply, FsError>), FsError>> {
        VirtIOFs::poll_device(self).map(|r| r.map(|c| (c.token, c.result)))
    }
    fn give_up(&mut self) -> FsError {
        self.break_device();
        FsError::TimedOut
    }
}

impl<H: Hal, T: Transport> Drop for VirtIOFs<H, T> {
    fn drop(&mut self) {
        // Stop the device before the queues' and slots' DMA memory is freed.
        let _ = self.transport.reset();
    }
}
