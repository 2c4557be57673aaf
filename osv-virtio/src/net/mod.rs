//! virtio-net (virtio 1.2 §5.1): one receive and one transmit queue, as a
//! packet source and sink.
//!
//! # Queues and buffers
//!
//! `receiveq1` is queue 0 and `transmitq1` queue 1 (§5.1.2); no control
//! queue, no multiqueue. Every buffer lives in two DMA regions allocated
//! once at initialization, one per queue, cut into [`BUF_SIZE`]-byte slots;
//! each slot is a single descriptor holding the 12-byte `virtio_net_hdr`
//! followed by the frame (with `VIRTIO_F_VERSION_1` the header and the
//! packet may share a descriptor, §5.1.6). After the first call nothing is
//! allocated per packet:
//! - receive: the rx queue is filled with every slot at initialization; a
//!   slot the device returned is re-posted as soon as the caller's closure
//!   has seen the frame;
//! - transmit: the frame is copied into a free tx slot (or built in place
//!   by smoltcp's `TxToken`), several frames are in flight at once, and a
//!   slot comes back when the device returns it on the used ring
//!   ([`VirtIONet::reclaim_tx`], also done by every transmit).
//!
//! # Features (§5.1.3)
//!
//! Negotiated when offered: `VIRTIO_NET_F_MAC` (the address is read from
//! the configuration, §5.1.4), `VIRTIO_NET_F_STATUS` (link state),
//! `VIRTIO_NET_F_CSUM` (transmit with a partial checksum the device
//! completes, [`VirtIONet::transmit_with_checksum`]),
//! `VIRTIO_NET_F_GUEST_CSUM` (the device may deliver frames with a partial
//! checksum; the driver completes it before the caller sees the frame, so
//! the caller always gets a complete checksum) and
//! `VIRTIO_NET_F_MRG_RXBUF` (a frame may span several rx buffers, counted
//! by `num_buffers`, §5.1.6.4). No segmentation offload is negotiated, so a
//! frame is at most [`MAX_FRAME_LEN`] bytes.
//!
//! # The untrusted device
//!
//! On top of the virtqueue's checks (used ids and lengths,
//! [`crate::queue`]), every received packet is checked before the caller
//! sees it: the used length must cover the header and at least one byte of
//! frame; `num_buffers` must be at least 1 and no more than the buffers the
//! device has actually returned; the assembled frame must fit
//! [`MAX_FRAME_LEN`]; `gso_type` must be `VIRTIO_NET_HDR_GSO_NONE`; a
//! `NEEDS_CSUM` header needs `GUEST_CSUM` and offsets inside the frame. A
//! violation drops that packet with an [`RxError`] (its buffers are
//! re-posted) and the device keeps running. A virtqueue violation breaks
//! the queue: the driver then resets the device and brings it up again
//! with the same buffers, reporting [`NetError::Reset`]; packets in flight
//! are lost, as on a link flap.
#![allow(unsafe_code)]

use core::fmt;

use crate::hal::{Dma, Hal, PhysAddr, PAGE_SIZE};
use crate::queue::{Buffer, QueueError, Segment, Token, VirtQueue};
use crate::transport::{Features, Transport, TransportError};

/// Entries the driver asks for in the receive queue (the device may offer
/// fewer); one rx buffer per entry.
pub const RX_QUEUE_SIZE: usize = 64;
/// Entries the driver asks for in the transmit queue; one tx buffer each.
pub const TX_QUEUE_SIZE: usize = 64;
/// Bytes per buffer slot (header + frame). §5.1.6.3.1: without
/// `VIRTIO_NET_F_MRG_RXBUF` or receive segmentation offloads, each rx
/// buffer must hold at least 1526 bytes (header + 1514-byte frame).
pub const BUF_SIZE: usize = 2048;
/// `sizeof(struct virtio_net_hdr)` with `VIRTIO_F_VERSION_1` (§5.1.6: with
/// VERSION_1 `num_buffers` is always present, 12 bytes).
pub const HDR_LEN: usize = 12;
/// The longest frame accepted either way: a 1500-byte MTU Ethernet frame
/// (14-byte header, no FCS) plus one 802.1Q tag.
pub const MAX_FRAME_LEN: usize = 1518;

const _: () = assert!(HDR_LEN + MAX_FRAME_LEN <= BUF_SIZE && BUF_SIZE >= 1526);
const _: () = assert!(PAGE_SIZE.is_multiple_of(BUF_SIZE));

/// Feature bits of virtio 1.2 §5.1.3.
pub mod feature {
    use crate::transport::Features;
    /// `VIRTIO_NET_F_CSUM`: the device completes partial checksums on tx.
    pub const CSUM: Features = Features::bit(0);
    /// `VIRTIO_NET_F_GUEST_CSUM`: the driver accepts partial checksums on rx.
    pub const GUEST_CSUM: Features = Features::bit(1);
    /// `VIRTIO_NET_F_MTU`: `mtu` in the configuration (not negotiated).
    pub const MTU: Features = Features::bit(3);
    /// `VIRTIO_NET_F_MAC`: `mac` in the configuration is valid.
    pub const MAC: Features = Features::bit(5);
    /// `VIRTIO_NET_F_GUEST_TSO4` (not negotiated).
    pub const GUEST_TSO4: Features = Features::bit(7);
    /// `VIRTIO_NET_F_MRG_RXBUF`: a frame may span several rx buffers.
    pub const MRG_RXBUF: Features = Features::bit(15);
    /// `VIRTIO_NET_F_STATUS`: `status` in the configuration is valid.
    pub const STATUS: Features = Features::bit(16);
    /// `VIRTIO_NET_F_CTRL_VQ` (not negotiated: no control queue).
    pub const CTRL_VQ: Features = Features::bit(17);
}

/// Offsets in `struct virtio_net_config` (virtio 1.2 §5.1.4).
pub mod config {
    /// `mac[6]`.
    pub const MAC: usize = 0;
    /// `status` (le16); bit 0 `VIRTIO_NET_S_LINK_UP`.
    pub const STATUS: usize = 6;
    /// `VIRTIO_NET_S_LINK_UP`.
    pub const S_LINK_UP: u16 = 1;
}

/// `struct virtio_net_hdr` flags and GSO types (§5.1.6).
pub mod hdr {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: checksum from `csum_start` to the end
    /// still to be computed and stored at `csum_start + csum_offset`.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: the device validated the checksum.
    pub const F_DATA_VALID: u8 = 2;
    /// `VIRTIO_NET_HDR_GSO_NONE`.
    pub const GSO_NONE: u8 = 0;
}

/// The receive queue index (`receiveq1`, §5.1.2).
const RXQ: u16 = 0;
/// The transmit queue index (`transmitq1`).
const TXQ: u16 = 1;

/// A `struct virtio_net_hdr` (§5.1.6), decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdr {
    /// `flags`.
    pub flags: u8,
    /// `gso_type`.
    pub gso_type: u8,
    /// `hdr_len`.
    pub hdr_len: u16,
    /// `gso_size`.
    pub gso_size: u16,
    /// `csum_start`.
    pub csum_start: u16,
    /// `csum_offset`.
    pub csum_offset: u16,
    /// `num_buffers`.
    pub num_buffers: u16,
}

impl NetHdr {
    /// Decodes the 12 little-endian header bytes.
    pub fn parse(b: &[u8; HDR_LEN]) -> Self {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        }
    }

    /// Encodes it.
    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [self.hdr_len, self.gso_size, self.csum_start, self.csum_offset, self.num_buffers]
            .into_iter()
            .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// Why one received packet was dropped (the device keeps running).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RxError {
    /// The used length does not cover the header and one byte of frame.
    TooShort {
        /// The used length.
        len: u32,
    },
    /// The frame is longer than [`MAX_FRAME_LEN`].
    FrameTooLong {
        /// Its length (so far, for a merged frame).
        len: usize,
    },
    /// `num_buffers` is 0, or more than the device returned.
    BadNumBuffers {
        /// What the header claims.
        claimed: u16,
        /// How many buffers the device had returned.
        returned: u16,
    },
    /// A continuation buffer of a merged frame that is empty.
    EmptyContinuation,
    /// `gso_type` other than NONE (no segmentation offload was negotiated).
    Gso(u8),
    /// `NEEDS_CSUM` without `VIRTIO_NET_F_GUEST_CSUM`.
    UnexpectedPartialChecksum,
    /// `csum_start`/`csum_offset` outside the frame.
    BadChecksumOffsets {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// The frame length.
        len: usize,
    },
}

impl fmt::Display for RxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "used length {len} leaves no frame after the header"),
            Self::FrameTooLong { len } => write!(f, "frame of {len} bytes exceeds {MAX_FRAME_LEN}"),
            Self::BadNumBuffers { claimed, returned } => {
                write!(f, "num_buffers {claimed} with {returned} buffers returned")
            }
            Self::EmptyContinuation => f.write_str("empty continuation buffer"),
            Self::Gso(t) => write!(f, "unexpected gso_type {t}"),
            Self::UnexpectedPartialChecksum => f.write_str("partial checksum without GUEST_CSUM"),
            Self::BadChecksumOffsets { start, offset, len } => {
                write!(f, "checksum at {start}+{offset} outside a {len}-byte frame")
            }
        }
    }
}

/// What went wrong with the network device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetError {
    /// One received packet was malformed and dropped.
    Rx(RxError),
    /// The device broke the virtqueue protocol; it has been reset and
    /// brought up again (packets in flight are lost).
    Reset(QueueError),
    /// Initialization (or re-initialization) failed.
    Transport(TransportError),
    /// A queue could not be set up.
    Queue(QueueError),
    /// The device could not be brought back after an error; make a new
    /// driver.
    Broken,
    /// Every tx buffer is in flight; reclaim or try later.
    TxFull,
    /// A frame to send is empty or longer than [`MAX_FRAME_LEN`].
    BadFrameLength(usize),
    /// A partial-checksum transmit without `VIRTIO_NET_F_CSUM`, or with
    /// offsets outside the frame.
    ChecksumOffload,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rx(e) => write!(f, "packet dropped: {e}"),
            Self::Reset(e) => write!(f, "device reset after a virtqueue error: {e}"),
            Self::Transport(e) => write!(f, "transport: {e}"),
            Self::Queue(e) => write!(f, "virtqueue: {e}"),
            Self::Broken => f.write_str("device could not be re-initialized"),
            Self::TxFull => f.write_str("all transmit buffers in flight"),
            Self::BadFrameLength(n) => write!(f, "frame length {n} not in 1..={MAX_FRAME_LEN}"),
            Self::ChecksumOffload => f.write_str("checksum offload not negotiated or bad offsets"),
        }
    }
}

impl core::error::Error for NetError {}

impl From<TransportError> for NetError {
    fn from(e: TransportError) -> Self {
        Self::Transport(e)
    }
}

/// Counters since initialization.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to the caller.
    pub rx_packets: u64,
    /// Received packets dropped as malformed.
    pub rx_errors: u64,
    /// Frames given to the device.
    pub tx_packets: u64,
    /// Transmit buffers the device returned.
    pub tx_completed: u64,
    /// Frames smoltcp built while no tx buffer was free (dropped).
    pub tx_dropped: u64,
    /// Device resets after virtqueue errors.
    pub resets: u64,
}

/// The receive side: the queue, its buffers, and which slot each token
/// carries.
struct Rx<H: Hal> {
    queue: VirtQueue<H, RX_QUEUE_SIZE>,
    /// `slots` buffers, then one scratch slot for merged frames.
    bufs: Dma<H>,
    slots: u16,
    /// Indexed by token: the slot it carries.
    slot_of: [u16; RX_QUEUE_SIZE],
    /// Buffers were re-posted without a notification yet.
    kick_pending: bool,
    /// A queue operation failed; the owner resets the device.
    fault: Option<QueueError>,
    /// Frames handed out, packets dropped.
    packets: u64,
    errors: u64,
    mrg: bool,
    guest_csum: bool,
}

/// The transmit side.
struct Tx<H: Hal> {
    queue: VirtQueue<H, TX_QUEUE_SIZE>,
    /// `slots` buffers, then one scratch slot (a frame that cannot be sent).
    bufs: Dma<H>,
    slots: u16,
    /// Indexed by token: the slot in flight.
    slot_of: [u16; TX_QUEUE_SIZE],
    /// Stack of free slots.
    free: [u16; TX_QUEUE_SIZE],
    nfree: u16,
    fault: Option<QueueError>,
    /// Frames queued, buffers returned, frames dropped for lack of a buffer.
    packets: u64,
    completed: u64,
    dropped: u64,
    csum: bool,
}

/// Where a received frame is, and which slots to re-post after it.
struct Packet {
    /// Byte offset in the rx region and length.
    at: usize,
    len: usize,
    slots: [u16; RX_QUEUE_SIZE],
    nslots: u16,
}

/// A virtio-net device driven over `T` with DMA from `H`.
pub struct VirtIONet<H: Hal, T: Transport> {
    hal: H,
    transport: T,
    features: Features,
    mac: Option<[u8; 6]>,
    rx: Rx<H>,
    tx: Tx<H>,
    resets: u64,
    broken: bool,
}

impl<H: Hal, T: Transport> fmt::Debug for VirtIONet<H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtIONet")
            .field("features", &self.features)
            .field("mac", &self.mac)
            .field("rx", &self.rx.queue)
            .field("tx", &self.tx.queue)
            .field("stats", &self.stats())
            .field("broken", &self.broken)
            .finish()
    }
}

fn slot_off(slot: u16) -> usize {
    usize::from(slot) * BUF_SIZE
}

impl<H: Hal> Rx<H> {
    fn slot_paddr(&self, slot: u16) -> PhysAddr {
        PhysAddr::new(self.bufs.paddr().as_u64() + slot_off(slot) as u64)
    }

    /// Posts `slot` as one device-writable buffer.
    fn post(&mut self, slot: u16) -> Result<(), QueueError> {
        let seg = Segment {
            buf: Buffer::Phys { addr: self.slot_paddr(slot), len: BUF_SIZE as u32 },
            device_writable: true,
        };
        // SAFETY: the slot is inside our DMA region (`slot < slots`), which
        // lives as long as the queue and the device; the driver does not
        // touch a slot between posting it and the device returning it
        // (or a reset).
        let tok = unsafe { self.queue.add_segments(&[seg]) }?;
        self.slot_of[usize::from(tok.index())] = slot;
        self.kick_pending = true;
        Ok(())
    }

    /// Re-posts slots after their packet was handled; a failure is kept
    /// for the owner, who resets the device.
    fn recycle(&mut self, slots: &[u16]) {
        for &s in slots {
            if let Err(e) = self.post(s) {
                self.fault.get_or_insert(e);
            }
        }
    }

    fn bytes(&self, at: usize, len: usize) -> &[u8] {
        debug_assert!(at + len <= self.bufs.len());
        // SAFETY: `at + len` lies inside the rx region (callers take it from
        // validated lengths within one slot or the scratch slot). The bytes
        // are ours: the device returned these slots on the used ring (or the
        // scratch slot is never posted), and they are re-posted only after
        // this borrow ends (the borrow of `self` prevents `recycle`).
        unsafe { core::slice::from_raw_parts(self.bufs.vaddr().as_ptr().add(at), len) }
    }

    fn bytes_mut(&mut self, at: usize, len: usize) -> &mut [u8] {
        debug_assert!(at + len <= self.bufs.len());
        // SAFETY: as in `bytes`, and `&mut self` makes the slice unique.
        unsafe { core::slice::from_raw_parts_mut(self.bufs.vaddr().as_ptr().add(at), len) }
    }

    /// Takes the next packet from the used ring and validates it.
    /// `Ok(None)`: nothing pending. `Err(Ok(e))`: a packet dropped (its
    /// buffers re-posted). `Err(Err(q))`: a queue error (reset needed).
    fn take(&mut self) -> Result<Option<Packet>, Result<RxError, QueueError>> {
        if let Some(e) = self.fault.take() {
            return Err(Err(e));
        }
        let (tok, len) = match self.queue.poll_used() {
            None => return Ok(None),
            Some(Ok(v)) => v,
            Some(Err(e)) => return Err(Err(e)),
        };
        let first = self.slot_of[usize::from(tok.index())];
        let mut pkt = Packet { at: slot_off(first), len: 0, slots: [0; RX_QUEUE_SIZE], nslots: 1 };
        pkt.slots[0] = first;
        let drop = |this: &mut Self, pkt: &Packet, e: RxError| {
            this.recycle(&pkt.slots[..usize::from(pkt.nslots)]);
            Err(Ok(e))
        };
        // The queue checked `len <= BUF_SIZE` (the chain's writable bytes).
        if (len as usize) <= HDR_LEN {
            return drop(self, &pkt, RxError::TooShort { len });
        }
        let mut h = [0u8; HDR_LEN];
        h.copy_from_slice(self.bytes(pkt.at, HDR_LEN));
        let hdr = NetHdr::parse(&h);
        let frame_len = len as usize - HDR_LEN;
        // §5.1.6.4: without MRG_RXBUF a packet is one buffer (devices set
        // num_buffers to 1, older vhost-net left it 0, so it is ignored).
        let n = if self.mrg { hdr.num_buffers } else { 1 };
        if n == 0 {
            return drop(self, &pkt, RxError::BadNumBuffers { claimed: 0, returned: 1 });
        }
        if n == 1 {
            pkt.at += HDR_LEN;
            pkt.len = frame_len;
        } else {
            // Gather the continuation buffers into the scratch slot. The
            // device publishes a packet's buffers together, so they must be
            // on the used ring already; fewer means num_buffers lies.
            let scratch = slot_off(self.slots);
            // Take all `n` buffers even after an error, so none is later
            // mistaken for the start of a packet.
            let mut err = None;
            if frame_len > MAX_FRAME_LEN {
                err = Some(RxError::FrameTooLong { len: frame_len });
            } else {
                self.copy_within(pkt.at + HDR_LEN, scratch, frame_len);
            }
            let mut total = frame_len;
            while pkt.nslots < n {
                let (t, l) = match self.queue.poll_used() {
                    None => {
                        let returned = pkt.nslots;
                        return drop(self, &pkt, RxError::BadNumBuffers { claimed: n, returned });
                    }
                    Some(Ok(v)) => v,
                    Some(Err(e)) => return Err(Err(e)),
                };
                let s = self.slot_of[usize::from(t.index())];
                pkt.slots[usize::from(pkt.nslots)] = s;
                pkt.nslots += 1;
                let l = l as usize;
                if err.is_some() {
                    continue;
                }
                if l == 0 {
                    err = Some(RxError::EmptyContinuation);
                } else if total + l > MAX_FRAME_LEN {
                    err = Some(RxError::FrameTooLong { len: total + l });
                } else {
                    self.copy_within(slot_off(s), scratch + total, l);
                    total += l;
                }
            }
            if let Some(e) = err {
                return drop(self, &pkt, e);
            }
            pkt.at = scratch;
            pkt.len = total;
        }
        if pkt.len > MAX_FRAME_LEN {
            return drop(self, &pkt, RxError::FrameTooLong { len: pkt.len });
        }
        if hdr.gso_type != hdr::GSO_NONE {
            return drop(self, &pkt, RxError::Gso(hdr.gso_type));
        }
        if hdr.flags & hdr::F_NEEDS_CSUM != 0 {
            if !self.guest_csum {
                return drop(self, &pkt, RxError::UnexpectedPartialChecksum);
            }
            let frame = self.bytes_mut(pkt.at, pkt.len);
            if !complete_checksum(frame, hdr.csum_start, hdr.csum_offset) {
                let len = pkt.len;
                let e = RxError::BadChecksumOffsets { start: hdr.csum_start, offset: hdr.csum_offset, len };
                return drop(self, &pkt, e);
            }
        }
        Ok(Some(pkt))
    }

    fn copy_within(&mut self, src: usize, dst: usize, len: usize) {
        debug_assert!(src + len <= self.bufs.len() && dst + len <= self.bufs.len());
        // SAFETY: both ranges lie inside the rx region (callers bound `len`
        // by a slot's validated used length and the scratch slot by
        // MAX_FRAME_LEN); the source slot was returned by the device and the
        // scratch slot is never posted, so neither is in the device's hands;
        // distinct slots do not overlap.
        unsafe {
            let base = self.bufs.vaddr().as_ptr();
            core::ptr::copy_nonoverlapping(base.add(src), base.add(dst), len);
        }
    }
}

/// Completes a partial checksum in place (§5.1.6.4.1, `NEEDS_CSUM`): the
/// ones'-complement sum (RFC 1071) of `frame[start..]`, whose checksum field
/// already holds the pseudo-header sum, folded, complemented and stored
/// big-endian at `start + offset`. `false` if the offsets do not fit.
pub fn complete_checksum(frame: &mut [u8], start: u16, offset: u16) -> bool {
    let (start, offset) = (usize::from(start), usize::from(offset));
    let Some(at) = start.checked_add(offset) else { return false };
    if start >= frame.len() || at + 2 > frame.len() {
        return false;
    }
    let mut sum: u32 = 0;
    let mut chunks = frame[start..].chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[at..at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    true
}

impl<H: Hal> Tx<H> {
    fn slot_paddr(&self, slot: u16) -> PhysAddr {
        PhysAddr::new(self.bufs.paddr().as_u64() + slot_off(slot) as u64)
    }

    /// Returns finished tx buffers to the free stack; counts them.
    fn reclaim(&mut self) -> Result<u64, QueueError> {
        if let Some(e) = self.fault.take() {
            return Err(e);
        }
        let mut n = 0;
        while let Some(r) = self.queue.poll_used() {
            // The queue checked the id is a chain in flight and the length
            // is ≤ 0 writable bytes.
            let (tok, _len) = r?;
            self.free[usize::from(self.nfree)] = self.slot_of[usize::from(tok.index())];
            self.nfree += 1;
            n += 1;
        }
        self.completed += n;
        Ok(n)
    }

    fn buf_mut(&mut self, slot: u16, len: usize) -> &mut [u8] {
        debug_assert!(slot_off(slot) + HDR_LEN + len <= self.bufs.len());
        // SAFETY: slot ≤ slots, so `HDR_LEN + len ≤ BUF_SIZE` bytes from its
        // start lie in the tx region; a free slot (or the scratch slot) is
        // not in the device's hands; `&mut self` makes the slice unique.
        unsafe {
            core::slice::from_raw_parts_mut(self.bufs.vaddr().as_ptr().add(slot_off(slot) + HDR_LEN), len)
        }
    }

    /// Writes the header of a free `slot` and gives `HDR_LEN + len` bytes
    /// of it to the device.
    fn send(&mut self, slot: u16, len: usize, hdr: NetHdr) -> Result<(), QueueError> {
        self.bufs.write_bytes(slot_off(slot), &hdr.to_bytes());
        let seg = Segment {
            buf: Buffer::Phys { addr: self.slot_paddr(slot), len: (HDR_LEN + len) as u32 },
            device_writable: false,
        };
        // SAFETY: the slot is inside our DMA region, which outlives the
        // device's use; the driver does not touch it until the device
        // returns it (reclaim) or is reset.
        let tok: Token = unsafe { self.queue.add_segments(&[seg]) }?;
        self.slot_of[usize::from(tok.index())] = slot;
        Ok(())
    }

    fn pop_free(&mut self) -> Option<u16> {
        self.nfree = self.nfree.checked_sub(1)?;
        Some(self.free[usize::from(self.nfree)])
    }
}

impl<H: Hal, T: Transport> VirtIONet<H, T> {
    /// The features this driver negotiates when offered (besides the
    /// required `VIRTIO_F_VERSION_1`).
    pub const SUPPORTED: Features = feature::MAC
        .union(feature::STATUS)
        .union(feature::CSUM)
        .union(feature::GUEST_CSUM)
        .union(feature::MRG_RXBUF)
        .union(Features::VERSION_1);

    /// Initializes the device (§5.1.5): negotiates features, reads the MAC,
    /// sets up the two queues, fills the receive queue and sets DRIVER_OK.
    pub fn new(hal: &H, mut transport: T) -> Result<Self, NetError> {
        let features = transport.begin_init(Self::SUPPORTED)?;
        let mac = if features.contains(feature::MAC) {
            match Self::read_mac(&transport) {
                Ok(m) => Some(m),
                Err(e) => {
                    transport.fail();
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        let fail = |t: &mut T, e: QueueError| {
            t.fail();
            NetError::Queue(e)
        };
        // Buffers before the queues: once a queue exists the device knows
        // its address, so no failure may leave a buffer-less queue behind
        // (the device is marked FAILED, and reset on drop of the queue's
        // owner below).
        let pages = |slots: usize| ((slots + 1) * BUF_SIZE).div_ceil(PAGE_SIZE);
        let rx_bufs =
            Dma::new(hal, pages(RX_QUEUE_SIZE)).map_err(|_| fail(&mut transport, QueueError::Alloc))?;
        let tx_bufs =
            Dma::new(hal, pages(TX_QUEUE_SIZE)).map_err(|_| fail(&mut transport, QueueError::Alloc))?;
        let rxq = VirtQueue::new(hal, &mut transport, RXQ).map_err(|e| fail(&mut transport, e))?;
        let txq = VirtQueue::new(hal, &mut transport, TXQ).map_err(|e| fail(&mut transport, e))?;
        let mut this = Self {
            hal: hal.clone(),
            transport,
            features,
            mac,
            rx: Rx {
                slots: rxq.size(),
                queue: rxq,
                bufs: rx_bufs,
                slot_of: [0; RX_QUEUE_SIZE],
                kick_pending: false,
                fault: None,
                packets: 0,
                errors: 0,
                mrg: features.contains(feature::MRG_RXBUF),
                guest_csum: features.contains(feature::GUEST_CSUM),
            },
            tx: Tx {
                slots: txq.size(),
                queue: txq,
                bufs: tx_bufs,
                slot_of: [0; TX_QUEUE_SIZE],
                free: [0; TX_QUEUE_SIZE],
                nfree: 0,
                fault: None,
                packets: 0,
                completed: 0,
                dropped: 0,
                csum: features.contains(feature::CSUM),
            },
            resets: 0,
            broken: false,
        };
        if let Err(e) = this.start() {
            this.broken = true;
            this.transport.fail();
            return Err(NetError::Queue(e));
        }
        Ok(this)
    }

    /// Fills the rx queue, frees every tx slot, and sets DRIVER_OK
    /// (§3.1.1 step 8; §5.1.5: rx buffers may be added before DRIVER_OK).
    fn start(&mut self) -> Result<(), QueueError> {
        self.rx.queue.set_interrupts(false);
        self.tx.queue.set_interrupts(false);
        for s in 0..self.rx.slots {
            self.rx.post(s)?;
        }
        self.tx.nfree = 0;
        for s in (0..self.tx.slots).rev() {
            self.tx.free[usize::from(self.tx.nfree)] = s;
            self.tx.nfree += 1;
        }
        self.transport.finish_init();
        self.rx.queue.kick(&mut self.transport);
        self.rx.kick_pending = false;
        Ok(())
    }

    fn read_mac(t: &T) -> Result<[u8; 6], TransportError> {
        t.read_config_consistent(|t| {
            let mut m = [0u8; 6];
            for (i, b) in m.iter_mut().enumerate() {
                *b = t.read_config_u8(config::MAC + i)?;
            }
            Ok(m)
        })
    }

    /// Resets the device after a queue error and brings it up again with
    /// the same buffers and features.
    fn recover(&mut self, e: QueueError) -> NetError {
        self.resets += 1;
        // The device must stop using the rings and buffers before the old
        // queues are dropped.
        if self.transport.reset().is_err() {
            self.broken = true;
            self.transport.fail();
            return NetError::Broken;
        }
        let ok = (|| -> Result<(), NetError> {
            let f = self.transport.begin_init(self.features)?;
            if f != self.features {
                return Err(NetError::Broken);
            }
            let rxq = VirtQueue::new(&self.hal, &mut self.transport, RXQ).map_err(NetError::Queue)?;
            let txq = VirtQueue::new(&self.hal, &mut self.transport, TXQ).map_err(NetError::Queue)?;
            // The same device offers the same sizes; the buffer regions were
            // sized for the old ones.
            if rxq.size() > self.rx.slots || txq.size() > self.tx.slots {
                return Err(NetError::Broken);
            }
            self.rx.slots = rxq.size();
            self.tx.slots = txq.size();
            self.rx.queue = rxq;
            self.tx.queue = txq;
            self.rx.fault = None;
            self.tx.fault = None;
            self.start().map_err(NetError::Queue)
        })();
        match ok {
            Ok(()) => NetError::Reset(e),
            Err(_) => {
                self.broken = true;
                self.transport.fail();
                NetError::Broken
            }
        }
    }

    /// The negotiated features.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The MAC address from the configuration (`VIRTIO_NET_F_MAC`), if the
    /// device gives one (§5.1.5: otherwise the driver picks its own).
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.mac
    }

    /// The link state: `VIRTIO_NET_S_LINK_UP` if `VIRTIO_NET_F_STATUS` was
    /// negotiated, else always up (§5.1.4).
    pub fn link_up(&self) -> Result<bool, NetError> {
        if !self.features.contains(feature::STATUS) {
            return Ok(true);
        }
        let s = self.transport.read_config_consistent(|t| t.read_config_u16(config::STATUS))?;
        Ok(s & config::S_LINK_UP != 0)
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        NetStats {
            rx_packets: self.rx.packets,
            rx_errors: self.rx.errors,
            tx_packets: self.tx.packets,
            tx_completed: self.tx.completed,
            tx_dropped: self.tx.dropped,
            resets: self.resets,
        }
    }

    /// Number of rx buffers (the rx queue size).
    pub fn rx_buffers(&self) -> usize {
        usize::from(self.rx.slots)
    }

    /// Number of tx buffers (the tx queue size).
    pub fn tx_buffers(&self) -> usize {
        usize::from(self.tx.slots)
    }

    /// Frames given to the device and not yet returned.
    pub fn tx_in_flight(&self) -> usize {
        usize::from(self.tx.queue.in_flight())
    }

    /// Asks the device to interrupt on used buffers of both queues (off by
    /// default: the driver polls). Only a hint (§2.7.7); acknowledge with
    /// `transport_mut().ack_interrupt()`.
    pub fn set_interrupts(&mut self, enabled: bool) {
        self.rx.queue.set_interrupts(enabled);
        self.tx.queue.set_interrupts(enabled);
    }

    /// The transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// `true` if the device has returned rx buffers not yet looked at.
    pub fn rx_pending(&self) -> bool {
        self.rx.queue.has_used()
    }

    fn check(&mut self) -> Result<(), NetError> {
        if self.broken {
            return Err(NetError::Broken);
        }
        if self.rx.kick_pending {
            self.rx.kick_pending = false;
            self.rx.queue.kick(&mut self.transport);
        }
        if let Some(e) = self.rx.fault.take().or(self.tx.fault.take()) {
            return Err(self.recover(e));
        }
        Ok(())
    }

    /// Takes one received frame, if there is one, and calls `f` with it
    /// (without the `virtio_net_hdr`; any partial checksum completed). The
    /// buffer goes back to the device when `f` returns. `Ok(None)`: no
    /// frame pending. `Err(NetError::Rx(_))`: one malformed packet was
    /// dropped; call again for the next one.
    pub fn receive<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, NetError> {
        self.check()?;
        let pkt = match self.rx.take() {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(Ok(e)) => {
                self.rx.errors += 1;
                self.check()?;
                return Err(NetError::Rx(e));
            }
            Err(Err(e)) => return Err(self.recover(e)),
        };
        let r = f(self.rx.bytes(pkt.at, pkt.len));
        self.rx.packets += 1;
        self.rx.recycle(&pkt.slots[..usize::from(pkt.nslots)]);
        self.check()?;
        Ok(Some(r))
    }

    /// Returns finished tx buffers to the driver; how many.
    pub fn reclaim_tx(&mut self) -> Result<usize, NetError> {
        self.check()?;
        match self.tx.reclaim() {
            Ok(n) => Ok(n as usize),
            Err(e) => Err(self.recover(e)),
        }
    }

    /// Sends one Ethernet frame (without FCS; the checksums in it complete).
    /// Returns once the frame is in the tx queue; the buffer is reclaimed
    /// later. [`NetError::TxFull`] if all buffers are still in flight.
    pub fn transmit(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.transmit_hdr(frame, NetHdr::default())
    }

    /// Sends a frame whose checksum from `csum_start` to the end is left to
    /// the device (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, needs
    /// `VIRTIO_NET_F_CSUM`, §5.1.6.2): the field at `csum_start +
    /// csum_offset` must hold the pseudo-header sum.
    pub fn transmit_with_checksum(
        &mut self,
        frame: &[u8],
        csum_start: u16,
        csum_offset: u16,
    ) -> Result<(), NetError> {
        let at = usize::from(csum_start) + usize::from(csum_offset);
        if !self.tx.csum || usize::from(csum_start) >= frame.len() || at + 2 > frame.len() {
            return Err(NetError::ChecksumOffload);
        }
        let h = NetHdr { flags: hdr::F_NEEDS_CSUM, csum_start, csum_offset, ..NetHdr::default() };
        self.transmit_hdr(frame, h)
    }

    fn transmit_hdr(&mut self, frame: &[u8], h: NetHdr) -> Result<(), NetError> {
        if frame.is_empty() || frame.len() > MAX_FRAME_LEN {
            return Err(NetError::BadFrameLength(frame.len()));
        }
        self.reclaim_tx()?;
        let slot = self.tx.pop_free().ok_or(NetError::TxFull)?;
        self.tx.buf_mut(slot, frame.len()).copy_from_slice(frame);
        if let Err(e) = self.tx.send(slot, frame.len(), h) {
            return Err(self.recover(e));
        }
        self.tx.packets += 1;
        self.tx.queue.kick(&mut self.transport);
        Ok(())
    }
}

impl<H: Hal, T: Transport> Drop for VirtIONet<H, T> {
    fn drop(&mut self) {
        // The device must stop touching the buffers before they are freed.
        let _ = self.transport.reset();
    }
}

#[cfg(feature = "smoltcp")]
mod smol {
    //! `smoltcp::phy::Device` for [`VirtIONet`].
    use super::*;
    use smoltcp::phy::{self, DeviceCapabilities, Medium};
    use smoltcp::time::Instant;

    /// A received frame for smoltcp; its buffers are re-posted when it is
    /// consumed (the notification follows on the next device call).
    pub struct NetRxToken<'a, H: Hal> {
        rx: &'a mut Rx<H>,
        pkt: Packet,
    }

    /// A transmit slot for smoltcp (the frame is built in place).
    pub struct NetTxToken<'a, H: Hal, T: Transport> {
        tx: &'a mut Tx<H>,
        transport: &'a mut T,
    }

    impl<H: Hal> phy::RxToken for NetRxToken<'_, H> {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            let r = f(self.rx.bytes(self.pkt.at, self.pkt.len));
            self.rx.packets += 1;
            self.rx.recycle(&self.pkt.slots[..usize::from(self.pkt.nslots)]);
            r
        }
    }

    impl<H: Hal, T: Transport> phy::TxToken for NetTxToken<'_, H, T> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            if let Err(e) = self.tx.reclaim() {
                self.tx.fault.get_or_insert(e);
            }
            let slot = match self.tx.pop_free() {
                Some(s) if (1..=MAX_FRAME_LEN).contains(&len) => s,
                other => {
                    // No buffer (or an impossible length): build the frame
                    // in the scratch slot and drop it.
                    if let Some(s) = other {
                        self.tx.free[usize::from(self.tx.nfree)] = s;
                        self.tx.nfree += 1;
                    }
                    self.tx.dropped += 1;
                    let scratch = self.tx.slots;
                    return f(self.tx.buf_mut(scratch, len.min(BUF_SIZE - HDR_LEN)));
                }
            };
            let r = f(self.tx.buf_mut(slot, len));
            match self.tx.send(slot, len, NetHdr::default()) {
                Ok(()) => {
                    self.tx.packets += 1;
                    self.tx.queue.kick(self.transport);
                }
                Err(e) => {
                    self.tx.fault.get_or_insert(e);
                }
            }
            r
        }
    }

    impl<H: Hal, T: Transport> phy::Device for VirtIONet<H, T> {
        type RxToken<'a>
            = NetRxToken<'a, H>
        where
            Self: 'a;
        type TxToken<'a>
            = NetTxToken<'a, H, T>
        where
            Self: 'a;

        fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
            self.check().ok()?;
            // Malformed packets are dropped and counted; the loop ends
            // because each one consumes used-ring entries.
            let pkt = loop {
                match self.rx.take() {
                    Ok(Some(p)) => break p,
                    Ok(None) => return None,
                    Err(Ok(_)) => self.rx.errors += 1,
                    Err(Err(e)) => {
                        let _ = self.recover(e);
                        return None;
                    }
                }
            };
            let Self { rx, tx, transport, .. } = self;
            Some((NetRxToken { rx, pkt }, NetTxToken { tx, transport }))
        }

        fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
            self.check().ok()?;
            let Self { tx, transport, .. } = self;
            if let Err(e) = tx.reclaim() {
                tx.fault.get_or_insert(e);
                return None;
            }
            (tx.nfree > 0).then_some(NetTxToken { tx, transport })
        }

        fn capabilities(&self) -> DeviceCapabilities {
            let mut caps = DeviceCapabilities::default();
            caps.medium = Medium::Ethernet;
            // Ethernet header + payload, without FCS.
            caps.max_transmission_unit = 1514;
            caps.max_burst_size = Some(usize::from(self.tx.slots));
            caps
        }
    }
}

#[cfg(feature = "smoltcp")]
pub use smol::{NetRxToken, NetTxToken};

#[cfg(test)]
mod tests;
