//! virtio-console (virtio 1.2 §5.3), single port: transmit and receive on
//! port 0, usable as a `core::fmt::Write` sink (an alternative console to
//! the 16550).
//!
//! `receiveq(port0)` is queue 0 and `transmitq(port0)` queue 1 (§5.3.2);
//! `VIRTIO_CONSOLE_F_MULTIPORT` is not negotiated, so there is no control
//! queue. `VIRTIO_CONSOLE_F_SIZE` (columns and rows in the configuration,
//! §5.3.4) is read when offered. Buffers are slots of one DMA region per
//! queue, allocated at initialization; nothing is allocated afterwards.
//!
//! The device is untrusted as everywhere in this crate: the virtqueue
//! checks ids and lengths (a received length is at most the buffer). A
//! virtqueue violation resets the device and fails every later call with
//! [`ConsoleError::Broken`].
#![allow(unsafe_code)]

use core::fmt;

use crate::hal::{Dma, Hal, PhysAddr, PAGE_SIZE};
use crate::queue::{Buffer, QueueError, Segment, VirtQueue};
use crate::transport::{Features, Transport, TransportError};

/// Entries (and buffers) per queue the driver asks for.
pub const QUEUE_SIZE: usize = 8;
/// Bytes per buffer.
pub const BUF_SIZE: usize = 512;

const _: () = assert!(QUEUE_SIZE * BUF_SIZE <= PAGE_SIZE * 2);

/// Feature bits of virtio 1.2 §5.3.3.
pub mod feature {
    use crate::transport::Features;
    /// `VIRTIO_CONSOLE_F_SIZE`: `cols` and `rows` are valid.
    pub const SIZE: Features = Features::bit(0);
    /// `VIRTIO_CONSOLE_F_MULTIPORT` (not negotiated).
    pub const MULTIPORT: Features = Features::bit(1);
    /// `VIRTIO_CONSOLE_F_EMERG_WRITE` (not negotiated).
    pub const EMERG_WRITE: Features = Features::bit(2);
}

/// Offsets in `struct virtio_console_config` (§5.3.4).
pub mod config {
    /// `cols` (le16).
    pub const COLS: usize = 0;
    /// `rows` (le16).
    pub const ROWS: usize = 2;
}

const RXQ: u16 = 0;
const TXQ: u16 = 1;

/// What went wrong with the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsoleError {
    /// The device broke the virtqueue protocol; it was reset.
    Queue(QueueError),
    /// Initialization failed.
    Transport(TransportError),
    /// The device was reset after an error; make a new driver.
    Broken,
    /// The wait hook gave up while every tx buffer was in flight; the
    /// device was reset.
    TimedOut,
}

impl fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Queue(e) => write!(f, "virtqueue: {e}"),
            Self::Transport(e) => write!(f, "transport: {e}"),
            Self::Broken => f.write_str("device reset after an error"),
            Self::TimedOut => f.write_str("transmit timed out; device reset"),
        }
    }
}

impl core::error::Error for ConsoleError {}

impl From<TransportError> for ConsoleError {
    fn from(e: TransportError) -> Self {
        Self::Transport(e)
    }
}

/// A virtio-console device (port 0).
pub struct VirtIOConsole<H: Hal, T: Transport> {
    transport: T,
    rxq: VirtQueue<H, QUEUE_SIZE>,
    txq: VirtQueue<H, QUEUE_SIZE>,
    rx_bufs: Dma<H>,
    tx_bufs: Dma<H>,
    /// Indexed by token: the slot.
    rx_slot_of: [u16; QUEUE_SIZE],
    tx_slot_of: [u16; QUEUE_SIZE],
    tx_free: [u16; QUEUE_SIZE],
    tx_nfree: u16,
    /// Received bytes not yet read: (slot, offset, end).
    pending: Option<(u16, usize, usize)>,
    size: Option<(u16, u16)>,
    broken: bool,
}

impl<H: Hal, T: Transport> fmt::Debug for VirtIOConsole<H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtIOConsole")
            .field("rxq", &self.rxq)
            .field("txq", &self.txq)
            .field("size", &self.size)
            .field("broken", &self.broken)
            .finish()
    }
}

fn paddr<H: Hal>(d: &Dma<H>, slot: u16) -> PhysAddr {
    PhysAddr::new(d.paddr().as_u64() + (usize::from(slot) * BUF_SIZE) as u64)
}

impl<H: Hal, T: Transport> VirtIOConsole<H, T> {
    /// Initializes the device (§5.3.5) with port 0's two queues, fills the
    /// receive queue and sets DRIVER_OK.
    pub fn new(hal: &H, mut transport: T) -> Result<Self, ConsoleError> {
        let features = transport.begin_init(feature::SIZE.union(Features::VERSION_1))?;
        let size = if features.contains(feature::SIZE) {
            match transport.read_config_consistent(|t| {
                Ok((t.read_config_u16(config::COLS)?, t.read_config_u16(config::ROWS)?))
            }) {
                Ok(s) => Some(s),
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
            ConsoleError::Queue(e)
        };
        let pages = (QUEUE_SIZE * BUF_SIZE).div_ceil(PAGE_SIZE);
        let rx_bufs = Dma::new(hal, pages).map_err(|_| fail(&mut transport, QueueError::Alloc))?;
        let tx_bufs = Dma::new(hal, pages).map_err(|_| fail(&mut transport, QueueError::Alloc))?;
        let rxq = VirtQueue::new(hal, &mut transport, RXQ).map_err(|e| fail(&mut transport, e))?;
        let txq = VirtQueue::new(hal, &mut transport, TXQ).map_err(|e| fail(&mut transport, e))?;
        let mut this = Self {
            transport,
            rxq,
            txq,
            rx_bufs,
            tx_bufs,
            rx_slot_of: [0; QUEUE_SIZE],
            tx_slot_of: [0; QUEUE_SIZE],
            tx_free: [0; QUEUE_SIZE],
            tx_nfree: 0,
            pending: None,
            size,
            broken: false,
        };
        this.rxq.set_interrupts(false);
        this.txq.set_interrupts(false);
        for s in 0..this.rxq.size() {
            if let Err(e) = this.post_rx(s) {
                this.fail();
                return Err(ConsoleError::Queue(e));
            }
        }
        for s in (0..this.txq.size()).rev() {
            this.tx_free[usize::from(this.tx_nfree)] = s;
            this.tx_nfree += 1;
        }
        this.transport.finish_init();
        this.rxq.kick(&mut this.transport);
        Ok(this)
    }

    /// Columns and rows, if the device reports them (`VIRTIO_CONSOLE_F_SIZE`).
    pub fn size(&self) -> Option<(u16, u16)> {
        self.size
    }

    /// The transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    fn fail(&mut self) {
        self.broken = true;
        if self.transport.reset().is_err() {
            self.transport.fail();
        }
    }

    fn queue_error(&mut self, e: QueueError) -> ConsoleError {
        self.fail();
        ConsoleError::Queue(e)
    }

    fn post_rx(&mut self, slot: u16) -> Result<(), QueueError> {
        let seg = Segment {
            buf: Buffer::Phys { addr: paddr(&self.rx_bufs, slot), len: BUF_SIZE as u32 },
            device_writable: true,
        };
        // SAFETY: the slot is inside our rx DMA region, which outlives the
        // device's use (reset before drop); we do not touch it until the
        // device returns it.
        let tok = unsafe { self.rxq.add_segments(&[seg]) }?;
        self.rx_slot_of[usize::from(tok.index())] = slot;
        Ok(())
    }

    /// Reads received bytes into `buf` without waiting; returns how many
    /// (0: nothing pending).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ConsoleError> {
        if self.broken {
            return Err(ConsoleError::Broken);
        }
        let mut done = 0;
        while done < buf.len() {
            let (slot, off, end) = match self.pending.take() {
                Some(p) => p,
                None => match self.rxq.poll_used() {
                    None => break,
                    // The queue checked `len <= BUF_SIZE`.
                    Some(Ok((tok, len))) => (self.rx_slot_of[usize::from(tok.index())], 0, len as usize),
                    Some(Err(e)) => return Err(self.queue_error(e)),
                },
            };
            let n = (end - off).min(buf.len() - done);
            self.rx_bufs.read_bytes(usize::from(slot) * BUF_SIZE + off, &mut buf[done..done + n]);
            done += n;
            if off + n < end {
                self.pending = Some((slot, off + n, end));
            } else {
                if let Err(e) = self.post_rx(slot) {
                    return Err(self.queue_error(e));
                }
                self.rxq.kick(&mut self.transport);
            }
        }
        Ok(done)
    }

    fn reclaim(&mut self) -> Result<(), ConsoleError> {
        while let Some(r) = self.txq.poll_used() {
            match r {
                Ok((tok, _)) => {
                    self.tx_free[usize::from(self.tx_nfree)] = self.tx_slot_of[usize::from(tok.index())];
                    self.tx_nfree += 1;
                }
                Err(e) => return Err(self.queue_error(e)),
            }
        }
        Ok(())
    }

    /// Queues all of `bytes` for output, calling `wait` while every tx
    /// buffer is in flight (`false` gives up: the device is reset).
    pub fn write_with(&mut self, bytes: &[u8], wait: &mut dyn FnMut() -> bool) -> Result<(), ConsoleError> {
        if self.broken {
            return Err(ConsoleError::Broken);
        }
        for chunk in bytes.chunks(BUF_SIZE) {
            let slot = loop {
                self.reclaim()?;
                if let Some(n) = self.tx_nfree.checked_sub(1) {
                    self.tx_nfree = n;
                    break self.tx_free[usize::from(n)];
                }
                if !wait() {
                    self.fail();
                    return Err(ConsoleError::TimedOut);
                }
            };
            self.tx_bufs.write_bytes(usize::from(slot) * BUF_SIZE, chunk);
            let seg = Segment {
                buf: Buffer::Phys { addr: paddr(&self.tx_bufs, slot), len: chunk.len() as u32 },
                device_writable: false,
            };
            // SAFETY: a free slot of our tx region, not touched again until
            // the device returns it (reclaim) or is reset.
            match unsafe { self.txq.add_segments(&[seg]) } {
                Ok(tok) => self.tx_slot_of[usize::from(tok.index())] = slot,
                Err(e) => return Err(self.queue_error(e)),
            }
            self.txq.kick(&mut self.transport);
        }
        Ok(())
    }

    /// [`write_with`](Self::write_with), spinning at most about 2^24 times
    /// for a free buffer.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ConsoleError> {
        let mut spins = 0u32;
        self.write_with(bytes, &mut || {
            spins += 1;
            core::hint::spin_loop();
            spins < 1 << 24
        })
    }

    /// Transmit buffers the device has not returned yet.
    pub fn tx_in_flight(&self) -> usize {
        usize::from(self.txq.in_flight())
    }
}

impl<H: Hal, T: Transport> fmt::Write for VirtIOConsole<H, T> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write(s.as_bytes()).map_err(|_| fmt::Error)
    }
}

impl<H: Hal, T: Transport> Drop for VirtIOConsole<H, T> {
    fn drop(&mut self) {
        let _ = self.transport.reset();
    }
}

#[cfg(test)]
mod tests {
    use core::fmt::Write;
    use std::string::String;
    use std::vec::Vec;

    use super::*;
    use crate::fake::{FakeConsole, FakeHal, FakeMmioRegs};
    use crate::transport::mmio::MmioTransport;
    use crate::DeviceType;

    fn setup(qmax: u16) -> (FakeHal, FakeConsole, VirtIOConsole<FakeHal, MmioTransport<FakeMmioRegs>>) {
        let hal = FakeHal::new();
        let fake = FakeConsole::new(&hal, qmax);
        let t = MmioTransport::new(FakeMmioRegs::new(fake.device())).unwrap();
        assert_eq!(t.device_type(), Some(DeviceType::Console));
        let con = VirtIOConsole::new(&hal, t).unwrap();
        (hal, fake, con)
    }

    #[test]
    fn write_and_read() {
        let (_hal, mut fake, mut con) = setup(8);
        assert_eq!(fake.device().status(), 0x0f);
        assert_eq!(con.size(), Some((80, 25)));
        let mut out = String::new();
        for i in 0..100 {
            writeln!(con, "line {i}: {}", "x".repeat(i)).unwrap();
            out.push_str(&std::format!("line {i}: {}\n", "x".repeat(i)));
            // Each formatted piece takes a buffer; the device returns them.
            fake.drain_output();
        }
        fake.drain_output();
        assert_eq!(String::from_utf8(fake.output().to_vec()).unwrap(), out);

        let mut b = [0u8; 16];
        assert_eq!(con.read(&mut b), Ok(0));
        let input: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
        assert!(fake.type_input(&input));
        let mut got = Vec::new();
        // Small reads split buffers; every byte arrives once, in order.
        loop {
            let n = con.read(&mut b[..7]).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, input);
        assert_eq!(fake.rx_buffers(), 8, "rx buffers re-posted");
    }

    #[test]
    fn large_writes_wait_for_buffers() {
        let (_hal, mut fake, mut con) = setup(2);
        // More than two buffers: the wait hook runs the device.
        let text = "y".repeat(5 * BUF_SIZE + 3);
        let f = &mut fake;
        con.write_with(text.as_bytes(), &mut || {
            f.drain_output();
            true
        })
        .unwrap();
        fake.drain_output();
        assert_eq!(fake.output(), text.as_bytes());
        // A device that never returns buffers: the hook gives up.
        let (_hal, _fake, mut con) = setup(2);
        let mut n = 0;
        let r = con.write_with(&[b'z'; 3 * BUF_SIZE], &mut || {
            n += 1;
            n < 10
        });
        assert_eq!(r, Err(ConsoleError::TimedOut));
        assert_eq!(con.write(b"a"), Err(ConsoleError::Broken));
    }

    #[test]
    fn device_errors_break_the_console() {
        let (_hal, fake, mut con) = setup(4);
        fake.device().with_queue(0, |q| {
            let c = q.pop_avail().unwrap().unwrap();
            q.push_used(u32::from(c.head), BUF_SIZE as u32 + 1).unwrap();
        });
        let mut b = [0u8; 8];
        assert!(matches!(con.read(&mut b), Err(ConsoleError::Queue(QueueError::UsedLenTooLong { .. }))));
        assert_eq!(fake.device().status(), 0, "reset");
        assert_eq!(con.read(&mut b), Err(ConsoleError::Broken));
    }
}
