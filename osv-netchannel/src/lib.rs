//! Van Jacobson net channels for unikernels: a flow classifier feeding
//! per-socket SPSC rings, after OSv's `net_channel` and `classifier`.
//!
//! # Why net channels
//!
//! A classic kernel receives a packet in the driver, runs IP and TCP in
//! interrupt or softirq context under socket locks, and only then wakes the
//! reader. Van Jacobson's net channels (and OSv after him) cut that short: the
//! driver's receive path runs only a tiny *classifier* that looks at the
//! IPv4/TCP header, finds the socket that owns the flow, and pushes the raw
//! packet into that socket's *channel*. The TCP processing then happens in the
//! socket's own thread, on the CPU that will read the data, with no lock shared
//! with the receive path.
//!
//! # Layers
//!
//! * [`wire`]: no-panic parsing of untrusted Ethernet II / IPv4 / TCP bytes
//!   into a [`FlowId`] (fragments past the first are refused: no TCP header).
//! * [`NetChannel`]: one per flow, a fixed-capacity lock-free ring with exactly
//!   one [`Producer`] (the classifier, on the driver's receive thread) and one
//!   [`Consumer`] (the socket's thread). Single-producer single-consumer is
//!   what keeps it to two atomic stores per packet and no locks; the split
//!   handles make it a type-level fact.
//! * [`Classifier`]: a fixed-size open-addressing table from [`FlowId`] to a
//!   [`Sink`] (normally a [`WakingProducer`]). A packet it does not know is
//!   handed back so the caller runs the normal stack on it.
//!
//! # The wake protocol
//!
//! When the consumer finds its ring empty it announces it is going to sleep
//! ([`Consumer::prepare_park`]), re-checks the ring, and sleeps only if it is
//! still empty. The producer pushes, then checks the announcement
//! ([`Producer::notify`] / [`Producer::wake`]) and wakes the consumer if it
//! was set. Both sides use read-modify-writes on one flag, which rules out a
//! lost wakeup without `SeqCst`; the argument is in [`ring`]'s docs and is
//! model-checked with loom (`tests/loom_ring.rs`).
//!
//! # Example
//!
//! ```
//! use core::cell::Cell;
//! use osv_netchannel::{
//!     wire::{FlowId, Ipv4Addr, Port},
//!     Classifier, NetChannel, Park, WakingProducer,
//! };
//!
//! // An Ethernet/IPv4/TCP frame as the NIC will receive it, and an ARP frame.
//! let mut frame = [0u8; 54];
//! frame[12..14].copy_from_slice(&[0x08, 0x00]); // IPv4
//! frame[14] = 0x45; // version 4, 20-byte header
//! frame[17] = 40; // total length
//! frame[23] = 6; // TCP
//! frame[26..30].copy_from_slice(&[10, 0, 0, 2]);
//! frame[30..34].copy_from_slice(&[10, 0, 0, 1]);
//! frame[34..36].copy_from_slice(&40000u16.to_be_bytes());
//! frame[36..38].copy_from_slice(&80u16.to_be_bytes());
//! frame[46] = 0x50; // 20-byte TCP header
//! let arp = [0u8; 42];
//!
//! // A socket for 10.0.0.2:40000 -> 10.0.0.1:80 gets a channel...
//! let mut ring = NetChannel::<&[u8], 256>::new();
//! let (producer, mut consumer) = ring.split();
//! let woken = Cell::new(false);
//! let flow = FlowId {
//!     src: Ipv4Addr::new(10, 0, 0, 2),
//!     dst: Ipv4Addr::new(10, 0, 0, 1),
//!     sport: Port(40000),
//!     dport: Port(80),
//! };
//! // ...registered with the classifier, with a way to wake its thread.
//! let mut classifier = Classifier::<_, 64>::new();
//! classifier
//!     .add(flow, WakingProducer::new(producer, || woken.set(true)))
//!     .unwrap();
//!
//! // The socket's thread finds nothing to do and goes to sleep.
//! assert_eq!(consumer.prepare_park(), Park::Sleep);
//!
//! // The driver's receive path posts the frame.
//! classifier.post_packet(&frame[..]).unwrap();
//! assert!(woken.get());
//!
//! // Anything else goes back to the caller for the normal stack.
//! assert!(classifier.post_packet(&arp[..]).is_err());
//!
//! // Woken, the socket's thread runs TCP on what arrived.
//! assert_eq!(consumer.pop(), Some(&frame[..]));
//! ```
//!
//! # Features
//!
//! * `alloc`: [`NetChannel::new_shared`], handles that own the ring through an
//!   `Arc` (for threads that are not scoped).
//! * `std`: `alloc`, for host tools.
//!
//! Without features the crate needs neither `std` nor a heap.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod classifier;
pub mod ring;
mod sync;
pub mod wire;

pub use classifier::{AddError, AddErrorKind, Classifier, RejectReason, Rejected, Sink, WakingProducer};
pub use ring::{Consumer, Full, NetChannel, Notify, Park, Producer, Wake};
#[cfg(any(feature = "alloc", loom))]
pub use ring::{SharedConsumer, SharedProducer};
pub use wire::{FlowId, ParseError};

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
