//! Arbitrary bytes into `osv-netchannel`'s frame parser and classifier.
//!
//! Must never panic, and the classifier must agree with the parser: a frame is
//! delivered exactly when it parses to a registered flow whose channel has room.
#![no_main]

use core::cell::Cell;

use libfuzzer_sys::fuzz_target;
use osv_netchannel::{
    wire::{self, FlowId, Ipv4Addr, Port},
    Classifier, NetChannel, RejectReason, WakingProducer,
};

fn fixed_flow(n: u8) -> FlowId {
    FlowId {
        src: Ipv4Addr::new(192, 168, 1, 100 + n),
        dst: Ipv4Addr::new(192, 168, 1, 1),
        sport: Port(54321),
        dport: Port(80),
    }
}

fuzz_target!(|data: &[u8]| {
    // The parsers on their own, at both layers.
    let parsed = wire::frame_flow(data);
    let _ = wire::ipv4_flow(data);
    if let Some(ip) = data.get(14..) {
        if data.get(12..14) == Some(&[0x08, 0x00][..]) {
            assert_eq!(parsed, wire::ipv4_flow(ip));
        }
    }

    // Three channels of two slots; the third flow is the input's own (when it
    // parses), so the delivery path is reached.
    let own = parsed.ok();
    let mut rings = [NetChannel::<&[u8], 2>::new(), NetChannel::new(), NetChannel::new()];
    let wakes = Cell::new(0u32);
    let waker = || wakes.set(wakes.get() + 1);
    let mut classifier = Classifier::<_, 8>::with_key(0x5eed);
    let mut consumers = Vec::new();
    let flows = [fixed_flow(0), fixed_flow(1), own.unwrap_or(fixed_flow(2))];
    for (ring, flow) in rings.iter_mut().zip(flows) {
        let (producer, consumer) = ring.split();
        consumers.push(consumer);
        // The input's flow may equal a fixed one: then it is a duplicate.
        let _ = classifier.add(flow, WakingProducer::new(producer, waker));
    }

    // Three posts into a two-slot channel: the third finds it full.
    let mut delivered = 0;
    for _ in 0..3 {
        match classifier.post_packet(data) {
            Ok(()) => delivered += 1,
            Err(rejected) => {
                assert_eq!(rejected.packet, data);
                match rejected.reason {
                    RejectReason::Parse(e) => assert_eq!(Err(e), parsed),
                    RejectReason::ChannelFull => assert_eq!(delivered, 2),
                    RejectReason::UnknownFlow => unreachable!("own flow is registered"),
                    _ => {}
                }
            }
        }
    }
    assert_eq!(delivered, if parsed.is_ok() { 2 } else { 0 });
    // Nobody was parked, so nobody needed waking.
    assert_eq!(wakes.get(), 0);

    let drained: usize = consumers.iter_mut().map(|c| c.drain().count()).sum();
    assert_eq!(drained, delivered);

    // Unregistering hands every producer back exactly once.
    for flow in flows {
        let _ = classifier.remove(&flow);
        assert!(classifier.lookup(&flow).is_none());
    }
    assert!(classifier.is_empty());
});
