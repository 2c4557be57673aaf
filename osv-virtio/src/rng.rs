//! virtio-rng, the entropy device (virtio 1.2 §5.4): one request queue;
//! the driver offers writable buffers and the device fills them.

// Submitting caller buffers to the device is `unsafe` (their lifetime must
// cover the DMA); the blocking API discharges that by waiting.
#![allow(unsafe_code)]

use core::fmt;

use crate::hal::Hal;
use crate::queue::{QueueError, VirtQueue};
use crate::transport::{Features, Transport, TransportError};

/// The queue size this driver asks for.
pub const QUEUE_SIZE: usize = 4;

/// What went wrong getting entropy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RngError {
    /// The virtqueue failed (the device broke the protocol); the device was
    /// reset.
    Queue(QueueError),
    /// Initialization failed.
    Transport(TransportError),
    /// The device was reset after an error; make a new driver.
    Broken,
    /// The wait hook gave up; the device was reset.
    TimedOut,
}

impl fmt::Display for RngError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Queue(e) => write!(f, "virtqueue: {e}"),
            Self::Transport(e) => write!(f, "transport: {e}"),
            Self::Broken => f.write_str("device reset after an error"),
            Self::TimedOut => f.write_str("request timed out; device reset"),
        }
    }
}

impl core::error::Error for RngError {}

impl From<TransportError> for RngError {
    fn from(e: TransportError) -> Self {
        Self::Transport(e)
    }
}

/// A virtio-rng device.
pub struct VirtIORng<H: Hal, T: Transport> {
    transport: T,
    queue: VirtQueue<H, QUEUE_SIZE>,
    broken: bool,
}

impl<H: Hal, T: Transport> fmt::Debug for VirtIORng<H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtIORng").field("queue", &self.queue).field("broken", &self.broken).finish()
    }
}

impl<H: Hal, T: Transport> VirtIORng<H, T> {
    /// Initializes the device (no device features) and its queue 0.
    pub fn new(hal: &H, mut transport: T) -> Result<Self, RngError> {
        transport.begin_init(Features::VERSION_1)?;
        let queue = match VirtQueue::new(hal, &mut transport, 0) {
            Ok(q) => q,
            Err(e) => {
                transport.fail();
                return Err(RngError::Queue(e));
            }
        };
        let mut this = Self { transport, queue, broken: false };
        this.queue.set_interrupts(false);
        this.transport.finish_init();
        Ok(this)
    }

    /// Asks the device to interrupt on completions (off by default: the
    /// drivers poll). Only a hint (`VIRTQ_AVAIL_F_NO_INTERRUPT`, §2.7.7);
    /// acknowledge with `transport_mut().ack_interrupt()`.
    pub fn set_interrupts(&mut self, enabled: bool) {
        self.queue.set_interrupts(enabled);
    }

    /// The transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Fills a prefix of `buf` with entropy, spinning until the device
    /// answers; returns how many bytes it wrote (possibly fewer than asked,
    /// possibly 0).
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<usize, RngError> {
        self.fill_with(buf, &mut || {
            core::hint::spin_loop();
            true
        })
    }

    /// [`fill`](Self::fill) calling `wait` between polls; `wait` returning
    /// `false` gives up (the device is reset).
    pub fn fill_with(&mut self, buf: &mut [u8], wait: &mut dyn FnMut() -> bool) -> Result<usize, RngError> {
        if self.broken {
            return Err(RngError::Broken);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        // SAFETY: `buf` stays mutably borrowed until we return, and we
        // return only after the device gave the chain back or was reset.
        let token = match unsafe { self.queue.add(&[], &mut [&mut *buf]) } {
            Ok(t) => t,
            Err(e) => return Err(RngError::Queue(e)),
        };
        self.queue.kick(&mut self.transport);
        loop {
            match self.queue.poll_used() {
                // Only one request is ever in flight, so the validated token
                // is ours; the length is ≤ buf.len() (checked by the queue).
                Some(Ok((t, len))) if t == token => return Ok(len as usize),
                Some(Ok(_)) => {
                    self.fail();
                    return Err(RngError::Queue(QueueError::Broken));
                }
                Some(Err(e)) => {
                    self.fail();
                    return Err(RngError::Queue(e));
                }
                None => {
                    if !wait() {
                        self.fail();
                        return Err(RngError::TimedOut);
                    }
                }
            }
        }
    }

    fn fail(&mut self) {
        self.broken = true;
        if self.transport.reset().is_err() {
            self.transport.fail();
        }
    }
}

impl<H: Hal, T: Transport> Drop for VirtIORng<H, T> {
    fn drop(&mut self) {
        let _ = self.transport.reset();
    }
}
