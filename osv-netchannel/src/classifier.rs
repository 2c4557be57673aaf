//! The flow classifier (OSv's `classifier`): maps a received packet's
//! [`FlowId`] to the channel of the socket that owns the flow.
//!
//! The table is a fixed array of `SLOTS` entries (a power of two) with open
//! addressing, linear probing and backward-shift deletion (no tombstones, so
//! lookups never degrade after churn). No heap is needed.
//!
//! # Hashing
//!
//! OSv hashes with `src ^ dst ^ sport ^ dport` and a "FIXME: protection
//! against hash attacks?". Here the flow is mixed with a per-table key
//! ([`Classifier::with_key`]); pick it at boot from a random source so a peer
//! cannot aim many flows at one probe chain. Whatever the key, probing is
//! bounded by `SLOTS`.
//!
//! # Concurrency
//!
//! Lookups happen on every received packet and updates only when a socket
//! connects or closes. OSv keeps the table in an RCU hash table. This type has
//! a plain `&mut` update API ([`add`](Classifier::add),
//! [`remove`](Classifier::remove)) and a `&self` read API
//! ([`lookup`](Classifier::lookup), [`classify`](Classifier::classify)); the
//! kernel wraps it in its RCU cell (copy, update, publish) and the RX path
//! posts through the published copy.

use core::fmt;

use crate::ring::{Full, Producer, Wake};
use crate::wire::{self, FlowId, ParseError};
use crate::NetChannel;

/// Where the classifier delivers a flow's packets: a net channel's producer
/// end plus whatever wakes the socket's thread.
pub trait Sink<P> {
    /// Enqueues `packet` and wakes the consumer if it sleeps; gives the packet
    /// back if the channel is full.
    fn post(&mut self, packet: P) -> Result<(), Full<P>>;
}

/// A [`Producer`] paired with the [`Wake`] of its consumer: the usual
/// [`Sink`]. Each post pushes and then notifies (OSv's `push` + `wake`).
#[derive(Debug)]
pub struct WakingProducer<P, const N: usize, R, W>
where
    R: core::ops::Deref<Target = NetChannel<P, N>>,
{
    /// The channel's producing end.
    pub producer: Producer<P, N, R>,
    /// Wakes the channel's consumer.
    pub waker: W,
}

impl<P, const N: usize, R, W> WakingProducer<P, N, R, W>
where
    R: core::ops::Deref<Target = NetChannel<P, N>>,
{
    /// Pairs `producer` with `waker`.
    pub fn new(producer: Producer<P, N, R>, waker: W) -> Self {
        Self { producer, waker }
    }
}

impl<P, const N: usize, R, W> Sink<P> for WakingProducer<P, N, R, W>
where
    R: core::ops::Deref<Target = NetChannel<P, N>>,
    W: Wake,
{
    fn post(&mut self, packet: P) -> Result<(), Full<P>> {
        self.producer.push(packet)?;
        self.producer.wake(&self.waker);
        Ok(())
    }
}

/// Why [`Classifier::post_packet`] did not deliver a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The packet is not a classifiable IPv4/TCP packet.
    Parse(ParseError),
    /// No socket registered this flow.
    UnknownFlow,
    /// The flow's channel is full.
    ChannelFull,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse(e) => write!(f, "unclassifiable packet: {e}"),
            Self::UnknownFlow => f.write_str("no channel for this flow"),
            Self::ChannelFull => f.write_str("flow's channel is full"),
        }
    }
}

impl core::error::Error for RejectReason {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Parse(e) => Some(e),
            _ => None,
        }
    }
}

/// A packet the classifier did not deliver, handed back so the caller can
/// pass it to the normal network stack (OSv's `post_packet` returning false).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rejected<P> {
    /// Why.
    pub reason: RejectReason,
    /// The packet, untouched.
    pub packet: P,
}

impl<P> fmt::Debug for Rejected<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected").field("reason", &self.reason).finish_non_exhaustive()
    }
}

/// Why [`Classifier::add`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddErrorKind {
    /// The flow already has a channel.
    Duplicate,
    /// All `SLOTS` entries are in use.
    TableFull,
}

impl fmt::Display for AddErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Duplicate => "flow already registered",
            Self::TableFull => "classifier table full",
        })
    }
}

impl core::error::Error for AddErrorKind {}

/// A failed [`Classifier::add`]: the channel comes back.
pub struct AddError<S> {
    /// Why.
    pub kind: AddErrorKind,
    /// The channel that was not added.
    pub channel: S,
}

impl<S> fmt::Debug for AddError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddError").field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// Maps flows to channels; see the [module docs](self).
pub struct Classifier<S, const SLOTS: usize> {
    slots: [Option<(FlowId, S)>; SLOTS],
    len: usize,
    key: u64,
}

impl<S, const SLOTS: usize> Classifier<S, SLOTS> {
    const SLOTS_OK: () = assert!(SLOTS.is_power_of_two(), "Classifier SLOTS must be a non-zero power of two");

    /// An empty table with a fixed hash key (tests, or a trusted network).
    #[must_use]
    pub const fn new() -> Self {
        Self::with_key(0x9e37_79b9_7f4a_7c15)
    }

    /// An empty table hashing with `key` (take it from a random source).
    #[must_use]
    pub const fn with_key(key: u64) -> Self {
        let () = Self::SLOTS_OK;
        Self { slots: [const { None }; SLOTS], len: 0, key }
    }

    /// Registered flows.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether no flow is registered.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The table size, `SLOTS`.
    #[must_use]
    pub const fn capacity(&self) -> usize {
        SLOTS
    }

    fn home(&self, flow: &FlowId) -> usize {
        // Two rounds of multiply-xorshift over the key-mixed flow.
        let a = u64::from(flow.src.to_bits()) << 32 | u64::from(flow.dst.to_bits());
        let b = u64::from(flow.sport.0) << 16 | u64::from(flow.dport.0);
        let mut h = (a ^ self.key).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = (h ^ b ^ self.key.rotate_left(32)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        // Truncation is the point: keep the low bits.
        #[allow(clippy::cast_possible_truncation)]
        let h = h as usize;
        h & (SLOTS - 1)
    }

    /// The slot holding `flow`, if any.
    fn find(&self, flow: &FlowId) -> Option<usize> {
        let mut i = self.home(flow);
        for _ in 0..SLOTS {
            match &self.slots[i] {
                None => return None,
                Some((f, _)) if f == flow => return Some(i),
                Some(_) => i = (i + 1) & (SLOTS - 1),
            }
        }
        None
    }

    /// Registers `channel` for `flow` (OSv's `classifier::add`).
    pub fn add(&mut self, flow: FlowId, channel: S) -> Result<(), AddError<S>> {
        if self.find(&flow).is_some() {
            return Err(AddError { kind: AddErrorKind::Duplicate, channel });
        }
        let mut i = self.home(&flow);
        for _ in 0..SLOTS {
            if self.slots[i].is_none() {
                self.slots[i] = Some((flow, channel));
                self.len += 1;
                return Ok(());
            }
            i = (i + 1) & (SLOTS - 1);
        }
        Err(AddError { kind: AddErrorKind::TableFull, channel })
    }

    /// Unregisters `flow` and returns its channel (OSv's `classifier::remove`).
    pub fn remove(&mut self, flow: &FlowId) -> Option<S> {
        let mut hole = self.find(flow)?;
        let (_, channel) = self.slots[hole].take()?;
        self.len -= 1;
        // Backward-shift: pull later entries of the probe run into the hole
        // when the hole lies on their path from home, so `find` still stops
        // only at a real gap.
        let mut i = hole;
        for _ in 0..SLOTS {
            i = (i + 1) & (SLOTS - 1);
            let Some((f, _)) = &self.slots[i] else { break };
            let home = self.home(f);
            // Distance from home to i, and from home to the hole, around the ring.
            let dist_i = i.wrapping_sub(home) & (SLOTS - 1);
            let dist_hole = hole.wrapping_sub(home) & (SLOTS - 1);
            if dist_hole < dist_i {
                self.slots[hole] = self.slots[i].take();
                hole = i;
            }
        }
        Some(channel)
    }

    /// The channel registered for `flow`.
    #[must_use]
    pub fn lookup(&self, flow: &FlowId) -> Option<&S> {
        let i = self.find(flow)?;
        self.slots[i].as_ref().map(|(_, s)| s)
    }

    /// The channel registered for `flow`, mutably.
    pub fn lookup_mut(&mut self, flow: &FlowId) -> Option<&mut S> {
        let i = self.find(flow)?;
        self.slots[i].as_mut().map(|(_, s)| s)
    }

    /// The registered channel for an Ethernet frame, if it has one.
    pub fn classify(&self, frame: &[u8]) -> Result<Option<&S>, ParseError> {
        Ok(self.lookup(&wire::frame_flow(frame)?))
    }

    /// Every registered flow and its channel, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowId, &S)> + '_ {
        self.slots.iter().filter_map(|e| e.as_ref().map(|(f, s)| (f, s)))
    }

    /// Delivers an Ethernet frame to its flow's channel (OSv's
    /// `classifier::post_packet`).
    ///
    /// `Ok` is OSv's `true`: the packet is queued and the socket's thread
    /// notified. `Err` is OSv's `false` and hands the packet back, to be
    /// processed by the normal stack: not IPv4/TCP, a non-first fragment, an
    /// unknown flow (e.g. a SYN for a listening socket), or a full channel.
    pub fn post_packet<P>(&mut self, packet: P) -> Result<(), Rejected<P>>
    where
        P: AsRef<[u8]>,
        S: Sink<P>,
    {
        let flow = match wire::frame_flow(packet.as_ref()) {
            Ok(flow) => flow,
            Err(e) => return Err(Rejected { reason: RejectReason::Parse(e), packet }),
        };
        let Some(sink) = self.lookup_mut(&flow) else {
            return Err(Rejected { reason: RejectReason::UnknownFlow, packet });
        };
        sink.post(packet).map_err(|Full(packet)| Rejected { reason: RejectReason::ChannelFull, packet })
    }
}

impl<S, const SLOTS: usize> Default for Classifier<S, SLOTS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, const SLOTS: usize> fmt::Debug for Classifier<S, SLOTS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier").field("len", &self.len).field("capacity", &SLOTS).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests::{build_frame, syn_flow, SYN_FRAME};
    use crate::wire::{Ipv4Addr, Port};
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A test sink: a bounded Vec.
    #[derive(Debug, Default, PartialEq)]
    struct VecSink(Vec<Vec<u8>>);
    impl Sink<Vec<u8>> for VecSink {
        fn post(&mut self, packet: Vec<u8>) -> Result<(), Full<Vec<u8>>> {
            if self.0.len() == 2 {
                return Err(Full(packet));
            }
            self.0.push(packet);
            Ok(())
        }
    }

    fn flow(n: u8) -> FlowId {
        FlowId {
            src: Ipv4Addr::new(10, 0, 0, n),
            dst: Ipv4Addr::new(10, 0, 0, 1),
            sport: Port(40000 + u16::from(n)),
            dport: Port(11211),
        }
    }

    #[test]
    fn add_lookup_remove() {
        let mut c = Classifier::<u32, 4>::new();
        assert!(c.is_empty());
        c.add(flow(1), 1).unwrap();
        c.add(flow(2), 2).unwrap();
        assert_eq!(c.add(flow(1), 9).unwrap_err().kind, AddErrorKind::Duplicate);
        c.add(flow(3), 3).unwrap();
        c.add(flow(4), 4).unwrap();
        let e = c.add(flow(5), 5).unwrap_err();
        assert_eq!((e.kind, e.channel), (AddErrorKind::TableFull, 5));
        assert_eq!(c.lookup(&flow(5)), None);
        assert_eq!(c.len(), 4);
        assert_eq!(c.remove(&flow(2)), Some(2));
        assert_eq!(c.remove(&flow(2)), None);
        for n in [1, 3, 4] {
            assert_eq!(c.lookup(&flow(n)), Some(&u32::from(n)));
        }
        assert_eq!(c.iter().count(), 3);
    }

    #[test]
    fn post_packet_routes_or_hands_back() {
        let mut c = Classifier::<VecSink, 8>::new();
        c.add(syn_flow(), VecSink::default()).unwrap();
        c.add(flow(7), VecSink::default()).unwrap();

        assert_eq!(c.post_packet(SYN_FRAME.to_vec()), Ok(()));
        let other = build_frame(flow(7), b"get k\r\n");
        assert_eq!(c.post_packet(other.clone()), Ok(()));
        assert_eq!(c.lookup(&flow(7)).unwrap().0, [other]);
        assert!(c.classify(&SYN_FRAME).unwrap().is_some());

        let unknown = build_frame(flow(8), b"");
        let r = c.post_packet(unknown.clone()).unwrap_err();
        assert_eq!((r.reason, r.packet), (RejectReason::UnknownFlow, unknown));

        let junk = vec![0u8; 10];
        let r = c.post_packet(junk).unwrap_err();
        assert_eq!(r.reason, RejectReason::Parse(ParseError::Truncated));

        assert_eq!(c.post_packet(SYN_FRAME.to_vec()), Ok(()));
        let r = c.post_packet(SYN_FRAME.to_vec()).unwrap_err();
        assert_eq!(r.reason, RejectReason::ChannelFull);
        assert_eq!(r.packet, SYN_FRAME);
    }

    #[test]
    fn post_through_real_channel_wakes_consumer() {
        let mut ring = NetChannel::<&[u8], 4>::new();
        let (p, mut consumer) = ring.split();
        let woken = core::cell::Cell::new(0u32);
        let waker = || woken.set(woken.get() + 1);
        let mut c = Classifier::<_, 16>::with_key(42);
        c.add(syn_flow(), WakingProducer::new(p, waker)).unwrap();

        assert_eq!(consumer.prepare_park(), crate::Park::Sleep);
        c.post_packet(&SYN_FRAME[..]).unwrap();
        c.post_packet(&SYN_FRAME[..]).unwrap();
        assert_eq!(woken.get(), 1);
        assert_eq!(consumer.drain().count(), 2);
        // Closing the socket: the producer comes back out of the table.
        let sink = c.remove(&syn_flow()).unwrap();
        assert!(sink.producer.channel().is_empty());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Add(u8, u32),
        Remove(u8),
        Lookup(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct flows and a small table: collisions, wrap-around,
        // full tables and deletes in the middle of probe runs.
        prop_oneof![
            (0u8..24, any::<u32>()).prop_map(|(f, v)| Op::Add(f, v)),
            (0u8..24).prop_map(Op::Remove),
            (0u8..24).prop_map(Op::Lookup),
        ]
    }

    proptest! {
        #[test]
        fn classifier_matches_hashmap(key: u64, ops in proptest::collection::vec(op(), 0..200)) {
            let mut c = Classifier::<u32, 16>::with_key(key);
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    Op::Add(f, v) => {
                        let r = c.add(flow(f), v);
                        if model.contains_key(&f) {
                            prop_assert_eq!(r.unwrap_err().kind, AddErrorKind::Duplicate);
                        } else if model.len() == 16 {
                            prop_assert_eq!(r.unwrap_err().kind, AddErrorKind::TableFull);
                        } else {
                            prop_assert!(r.is_ok());
                            model.insert(f, v);
                        }
                    }
                    Op::Remove(f) => prop_assert_eq!(c.remove(&flow(f)), model.remove(&f)),
                    Op::Lookup(f) => prop_assert_eq!(c.lookup(&flow(f)), model.get(&f)),
                }
                prop_assert_eq!(c.len(), model.len());
            }
            for f in 0..24 {
                prop_assert_eq!(c.lookup(&flow(f)), model.get(&f));
            }
        }
    }
}
