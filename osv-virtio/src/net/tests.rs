//! virtio-net against the fake device ([`crate::fake::FakeNet`]).

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::fake::{FakeBarMapper, FakeHal, FakeMmioRegs, FakeNet, FakePciBus, FakePciRegion};
use crate::transport::mmio::MmioTransport;
use crate::transport::pci::{Bdf, PciTransport, VirtioPciDevice};
use crate::DeviceType;

type Net = VirtIONet<FakeHal, MmioTransport<FakeMmioRegs>>;

const ALL: u64 = feature::MAC.bits()
    | feature::STATUS.bits()
    | feature::CSUM.bits()
    | feature::GUEST_CSUM.bits()
    | feature::MRG_RXBUF.bits()
    | feature::CTRL_VQ.bits()
    | feature::GUEST_TSO4.bits()
    | feature::MTU.bits();

fn setup(features: u64, qmax: u16) -> (FakeHal, FakeNet, Net) {
    let hal = FakeHal::new();
    let fake = FakeNet::new(&hal, features, qmax);
    let t = MmioTransport::new(FakeMmioRegs::new(fake.device())).unwrap();
    assert_eq!(t.device_type(), Some(DeviceType::Net));
    let net = VirtIONet::new(&hal, t).unwrap();
    (hal, fake, net)
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn recv(net: &mut Net) -> Result<Option<Vec<u8>>, NetError> {
    net.receive(|f| f.to_vec())
}

#[test]
fn init_negotiates_and_fills_rx() {
    let (_hal, mut fake, net) = setup(ALL, 256);
    assert_eq!(fake.device().status(), 0x0f, "ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK");
    let want = VirtIONet::<FakeHal, MmioTransport<FakeMmioRegs>>::SUPPORTED;
    // Offered but not supported: CTRL_VQ, GUEST_TSO4, MTU stay off.
    assert_eq!(fake.device().driver_features(), want.bits());
    assert_eq!(net.features(), want);
    assert_eq!(net.mac(), Some(FakeNet::MAC));
    assert_eq!(net.link_up(), Ok(true));
    assert_eq!(net.rx_buffers(), RX_QUEUE_SIZE);
    assert_eq!(net.tx_buffers(), TX_QUEUE_SIZE);
    assert_eq!(fake.rx_buffers(), RX_QUEUE_SIZE, "every rx buffer is posted");
    assert!(fake.device().notifies() >= 1, "the rx queue was kicked");

    // A minimal device: no MAC, no STATUS, a small queue.
    let (_hal, mut fake, net) = setup(0, 4);
    assert_eq!(net.features(), Features::VERSION_1);
    assert_eq!(net.mac(), None);
    assert_eq!(net.link_up(), Ok(true), "without STATUS the link is assumed up");
    assert_eq!((net.rx_buffers(), net.tx_buffers()), (4, 4));
    assert_eq!(fake.rx_buffers(), 4);
}

#[test]
fn link_status_is_read() {
    let (_hal, fake, net) = setup(ALL, 8);
    let mut c = fake.device().with_backend(|b| b.config());
    c[6] = 0;
    fake.device().set_config(&c);
    assert_eq!(net.link_up(), Ok(false));
}

#[test]
fn frames_round_trip() {
    let (_hal, mut fake, mut net) = setup(ALL, 64);
    assert_eq!(recv(&mut net), Ok(None));
    for (i, len) in [1usize, 14, 60, 64, 577, 1500, 1514, MAX_FRAME_LEN].into_iter().enumerate() {
        let f = frame(len, i as u8);
        assert!(fake.inject(&f));
        assert!(net.rx_pending());
        assert_eq!(recv(&mut net), Ok(Some(f.clone())), "rx {len}");
        assert_eq!(recv(&mut net), Ok(None));
        net.transmit(&f).unwrap();
        let sent = fake.take_tx();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, [0u8; HDR_LEN], "plain transmit header");
        assert_eq!(sent[0].1, f, "tx {len}");
    }
    // Several frames queued at once come out in order.
    for i in 0..10u8 {
        assert!(fake.inject(&frame(100 + usize::from(i), i)));
    }
    for i in 0..10u8 {
        assert_eq!(recv(&mut net), Ok(Some(frame(100 + usize::from(i), i))));
    }
    assert_eq!(net.transmit(&[]), Err(NetError::BadFrameLength(0)));
    assert_eq!(net.transmit(&[0; MAX_FRAME_LEN + 1]), Err(NetError::BadFrameLength(MAX_FRAME_LEN + 1)));
    let s = net.stats();
    assert_eq!((s.rx_packets, s.tx_packets, s.rx_errors, s.resets), (18, 8, 0, 0));
    assert_eq!(fake.device().faults(), 0);
}

#[test]
fn over_pci() {
    const BAR: u64 = 0x8_0000_0000;
    let hal = FakeHal::new();
    let mut fake = FakeNet::new(&hal, ALL, 32);
    let bus = FakePciBus::new();
    let at = Bdf::new(0, 4, 0).unwrap();
    bus.add_virtio(at, 1, false, BAR);
    let info = VirtioPciDevice::probe(&bus, at).unwrap();
    let t: PciTransport<FakePciRegion> =
        PciTransport::new(&bus, &info, &mut FakeBarMapper::new(fake.device(), BAR)).unwrap();
    let mut net = VirtIONet::new(&hal, t).unwrap();
    assert_eq!(net.mac(), Some(FakeNet::MAC));
    assert!(fake.inject(&frame(300, 9)));
    assert_eq!(net.receive(|f| f.to_vec()), Ok(Some(frame(300, 9))));
    net.transmit(&frame(70, 1)).unwrap();
    assert_eq!(fake.take_tx()[0].1, frame(70, 1));
}

#[test]
fn merged_rx_buffers() {
    let (_hal, mut fake, mut net) = setup(ALL, 64);
    for split in [25u32, 100, 700, 1000] {
        fake.set_split(Some(split));
        let f = frame(1514, split as u8);
        let before = fake.rx_buffers();
        assert!(fake.deliver([0; HDR_LEN], &f));
        let used = before - fake.rx_buffers();
        assert_eq!(used, (HDR_LEN + 1514).div_ceil(split as usize), "split {split}");
        assert_eq!(recv(&mut net), Ok(Some(f)), "split {split}");
        // Every buffer of the merged frame came back.
        assert_eq!(fake.rx_buffers(), RX_QUEUE_SIZE, "split {split}");
    }
    assert_eq!(net.stats().rx_errors, 0);
}

#[test]
fn num_buffers_that_lie() {
    let (_hal, mut fake, mut net) = setup(ALL, 16);
    let hdr = |n: u16| NetHdr { num_buffers: n, ..NetHdr::default() }.to_bytes();
    let with = |h: [u8; HDR_LEN], body: &[u8]| {
        let mut v = h.to_vec();
        v.extend_from_slice(body);
        v
    };
    // Claims 5 buffers, publishes 2.
    let a = with(hdr(5), &[1; 100]);
    assert!(fake.inject_raw(&[(&a, a.len() as u32), (&[2; 50], 50)]));
    assert_eq!(recv(&mut net), Err(NetError::Rx(RxError::BadNumBuffers { claimed: 5, returned: 2 })));
    // Claims 0.
    let b = with(hdr(0), &[1; 10]);
    assert!(fake.inject_raw(&[(&b, b.len() as u32)]));
    assert_eq!(recv(&mut net), Err(NetError::Rx(RxError::BadNumBuffers { claimed: 0, returned: 1 })));
    // Claims 2; the continuation is empty.
    let c = with(hdr(2), &[1; 10]);
    assert!(fake.inject_raw(&[(&c, c.len() as u32), (&[], 0)]));
    assert_eq!(recv(&mut net), Err(NetError::Rx(RxError::EmptyContinuation)));
    // Claims 3 whose total exceeds the frame limit.
    let d = with(hdr(3), &[1; 1000]);
    assert!(fake.inject_raw(&[(&d, d.len() as u32), (&[2; 1000], 1000), (&[3; 10], 10)]));
    assert_eq!(recv(&mut net), Err(NetError::Rx(RxError::FrameTooLong { len: 2000 })));
    // Every buffer went back, and a good frame still arrives.
    assert_eq!(recv(&mut net), Ok(None));
    assert_eq!(fake.rx_buffers(), 16);
    assert!(fake.inject(&frame(200, 3)));
    assert_eq!(recv(&mut net), Ok(Some(frame(200, 3))));
    assert_eq!(net.stats().rx_errors, 4);
    assert_eq!(net.stats().resets, 0);
}

#[test]
fn without_mrg_num_buffers_is_ignored() {
    let (_hal, mut fake, mut net) = setup(feature::MAC.bits(), 8);
    // Old vhost-net wrote 0 here; a single buffer is a whole frame anyway.
    let mut b = NetHdr { num_buffers: 0, ..NetHdr::default() }.to_bytes().to_vec();
    b.extend_from_slice(&frame(40, 1));
    assert!(fake.inject_raw(&[(&b, b.len() as u32)]));
    assert_eq!(recv(&mut net), Ok(Some(frame(40, 1))));
}

#[test]
fn malformed_packets_are_dropped() {
    let (_hal, mut fake, mut net) = setup(feature::MAC.bits() | feature::MRG_RXBUF.bits(), 8);
    let one = NetHdr { num_buffers: 1, ..NetHdr::default() };
    let pkt = |h: NetHdr, body: &[u8]| {
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(body);
        v
    };
    let cases: Vec<(Vec<u8>, u32, RxError)> = vec![
        // Header only.
        (one.to_bytes().to_vec(), 12, RxError::TooShort { len: 12 }),
        // Shorter than the header.
        (vec![0; 5], 5, RxError::TooShort { len: 5 }),
        (vec![], 0, RxError::TooShort { len: 0 }),
        // Longer than an Ethernet frame, in one buffer.
        (pkt(one, &[7; 1600]), 1612, RxError::FrameTooLong { len: 1600 }),
        // Segmentation offload that was never negotiated.
        (pkt(NetHdr { gso_type: 1, ..one }, &[1; 60]), 72, RxError::Gso(1)),
        // A partial checksum without GUEST_CSUM.
        (pkt(NetHdr { flags: hdr::F_NEEDS_CSUM, ..one }, &[1; 60]), 72, RxError::UnexpectedPartialChecksum),
    ];
    for (bytes, len, err) in cases {
        assert!(fake.inject_raw(&[(&bytes, len)]));
        assert_eq!(recv(&mut net), Err(NetError::Rx(err)));
        assert_eq!(fake.rx_buffers(), 8, "buffers recycled after {err:?}");
        assert!(fake.inject(&frame(64, 5)));
        assert_eq!(recv(&mut net), Ok(Some(frame(64, 5))), "device usable after {err:?}");
    }
    assert_eq!(net.stats().resets, 0);
}

#[test]
fn virtqueue_violations_reset_the_device() {
    let (_hal, mut fake, mut net) = setup(ALL, 8);
    // A used length longer than the buffer.
    assert!(fake.inject_raw(&[(&[0; 20], BUF_SIZE as u32 + 1)]));
    match recv(&mut net) {
        Err(NetError::Reset(QueueError::UsedLenTooLong { len, writable, .. })) => {
            assert_eq!((len, writable), (BUF_SIZE as u32 + 1, BUF_SIZE as u32));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(net.stats().resets, 1);
    assert_eq!(fake.device().status(), 0x0f, "brought up again");
    assert_eq!(fake.rx_buffers(), 8, "the new rx queue is full again");
    assert!(fake.inject(&frame(99, 2)));
    assert_eq!(recv(&mut net), Ok(Some(frame(99, 2))));

    // A used id that is not in flight, on the tx queue.
    net.transmit(&frame(60, 0)).unwrap();
    let sent = fake.pop_tx();
    fake.complete_tx(&[sent[0].0 ^ 1]);
    assert!(matches!(net.reclaim_tx(), Err(NetError::Reset(QueueError::UsedIdNotInFlight(_)))));
    assert_eq!(net.tx_in_flight(), 0);
    net.transmit(&frame(61, 0)).unwrap();
    assert_eq!(fake.take_tx()[0].1, frame(61, 0));

    // A used index jump on rx.
    fake.device().with_queue(0, |q| {
        let i = q.used_idx();
        q.set_used_idx(i.wrapping_add(100)).unwrap();
    });
    assert!(matches!(recv(&mut net), Err(NetError::Reset(QueueError::UsedIndexJump { .. }))));
    assert!(fake.inject(&frame(10, 1)));
    assert_eq!(recv(&mut net), Ok(Some(frame(10, 1))));
    assert_eq!(net.stats().resets, 3);
}

#[test]
fn device_that_refuses_reinit_breaks_the_driver() {
    let (_hal, mut fake, mut net) = setup(ALL, 8);
    fake.device().set_reject_features(true);
    assert!(fake.inject_raw(&[(&[0; 20], 5000)]));
    assert_eq!(recv(&mut net), Err(NetError::Broken));
    assert_eq!(net.transmit(&[1; 60]), Err(NetError::Broken));
    assert_eq!(recv(&mut net), Err(NetError::Broken));
}

/// RFC 1071 ones'-complement sum over `parts` (an independent check of the
/// driver's checksum completion).
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(p);
    }
    if all.len() % 2 == 1 {
        all.push(0);
    }
    let mut s: u64 = all.chunks(2).map(|c| u64::from(c[0]) << 8 | u64::from(c[1])).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// An Ethernet/IPv4/UDP frame whose UDP checksum field holds only the
/// pseudo-header sum (what a device hands over with NEEDS_CSUM).
fn partial_udp(payload: &[u8]) -> (Vec<u8>, [u8; 12]) {
    let mut f = vec![0u8; 14 + 20 + 8];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (20 + 8 + payload.len()) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 2, 2]);
    f[30..34].copy_from_slice(&[10, 0, 2, 15]);
    let udp_len = (8 + payload.len()) as u16;
    f[34..36].copy_from_slice(&1234u16.to_be_bytes());
    f[36..38].copy_from_slice(&5555u16.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(payload);
    let mut pseudo = [0u8; 12];
    pseudo[0..8].copy_from_slice(&f[26..34]);
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&udp_len.to_be_bytes());
    // Not complemented: the partial sum the device leaves in the field.
    let partial = ones_sum(&[&pseudo]);
    f[40..42].copy_from_slice(&partial.to_be_bytes());
    (f, pseudo)
}

#[test]
fn partial_checksums_are_completed() {
    let (_hal, mut fake, mut net) = setup(ALL, 8);
    for len in [0usize, 1, 2, 17, 1000] {
        let payload = frame(len, 3);
        let (f, pseudo) = partial_udp(&payload);
        let h = NetHdr { flags: hdr::F_NEEDS_CSUM, csum_start: 34, csum_offset: 6, ..NetHdr::default() };
        assert!(fake.deliver(h.to_bytes(), &f));
        let got = recv(&mut net).unwrap().unwrap();
        assert_eq!(got.len(), f.len());
        assert_eq!(got[..40], f[..40]);
        assert_eq!(got[42..], f[42..]);
        // The pseudo-header and the datagram with its checksum sum to all ones.
        assert_eq!(ones_sum(&[&pseudo, &got[34..]]), 0xffff, "payload {len}");
    }
    // Offsets outside the frame.
    let (f, _) = partial_udp(&[1; 10]);
    for (start, offset) in [(f.len() as u16, 0), (34, 100), (u16::MAX, u16::MAX)] {
        let h =
            NetHdr { flags: hdr::F_NEEDS_CSUM, csum_start: start, csum_offset: offset, ..NetHdr::default() };
        assert!(fake.deliver(h.to_bytes(), &f));
        assert_eq!(
            recv(&mut net),
            Err(NetError::Rx(RxError::BadChecksumOffsets { start, offset, len: f.len() }))
        );
    }
    // DATA_VALID is passed through untouched.
    let h = NetHdr { flags: hdr::F_DATA_VALID, ..NetHdr::default() };
    assert!(fake.deliver(h.to_bytes(), &f));
    assert_eq!(recv(&mut net), Ok(Some(f)));
}

#[test]
fn transmit_with_checksum_offload() {
    let (_hal, mut fake, mut net) = setup(ALL, 8);
    let (f, _) = partial_udp(&[9; 33]);
    net.transmit_with_checksum(&f, 34, 6).unwrap();
    let sent = fake.take_tx();
    let h = NetHdr::parse(&sent[0].0);
    assert_eq!(
        h,
        NetHdr { flags: hdr::F_NEEDS_CSUM, csum_start: 34, csum_offset: 6, ..NetHdr::default() },
        "§5.1.6.2 header"
    );
    assert_eq!(sent[0].1, f);
    assert_eq!(net.transmit_with_checksum(&f, 34, f.len() as u16), Err(NetError::ChecksumOffload));
    let (_hal, _fake, mut plain) = setup(feature::MAC.bits(), 8);
    assert_eq!(plain.transmit_with_checksum(&f, 34, 6), Err(NetError::ChecksumOffload));
}

#[test]
fn many_transmits_in_flight() {
    let (_hal, mut fake, mut net) = setup(ALL, 16);
    for i in 0..16u8 {
        net.transmit(&frame(60 + usize::from(i), i)).unwrap();
    }
    assert_eq!(net.tx_in_flight(), 16);
    assert_eq!(net.transmit(&[1; 60]), Err(NetError::TxFull));
    let sent = fake.pop_tx();
    assert_eq!(sent.len(), 16);
    for (i, s) in sent.iter().enumerate() {
        assert_eq!(s.2, frame(60 + i, i as u8), "in order, intact");
    }
    // Complete them out of order, a few at a time.
    let heads: Vec<u16> = sent.iter().map(|s| s.0).collect();
    fake.complete_tx(&[heads[5], heads[0], heads[15]]);
    assert_eq!(net.reclaim_tx(), Ok(3));
    assert_eq!(net.tx_in_flight(), 13);
    for i in 0..3u8 {
        net.transmit(&frame(200, i)).unwrap();
    }
    assert_eq!(net.transmit(&[1; 60]), Err(NetError::TxFull));
    let more = fake.pop_tx();
    assert_eq!(more.len(), 3);
    let rest: Vec<u16> =
        heads.iter().copied().filter(|h| ![heads[5], heads[0], heads[15]].contains(h)).collect();
    fake.complete_tx(&rest);
    fake.complete_tx(&more.iter().map(|s| s.0).collect::<Vec<_>>());
    assert_eq!(net.reclaim_tx(), Ok(16));
    assert_eq!(net.tx_in_flight(), 0);
    let s = net.stats();
    assert_eq!((s.tx_packets, s.tx_completed), (19, 19));
}

#[test]
fn buffers_are_recycled_over_10k_packets() {
    let (hal, mut fake, mut net) = setup(ALL, 32);
    let dma = hal.memory().live_allocations();
    let mut sum = 0u64;
    for i in 0..10_000u32 {
        let len = 60 + (i as usize * 7) % 1400;
        let f = frame(len, i as u8);
        if i % 3 == 0 {
            fake.set_split(Some(500));
        } else {
            fake.set_split(None);
        }
        assert!(fake.inject(&f), "the device ran out of rx buffers at packet {i}");
        let got = net.receive(|g| {
            sum += g.len() as u64;
            g == f.as_slice()
        });
        assert_eq!(got, Ok(Some(true)), "packet {i}");
        net.transmit(&f).unwrap();
        if i % 4 == 3 {
            assert_eq!(fake.take_tx().len(), 4);
        }
    }
    assert_eq!(fake.rx_buffers(), 32, "all rx buffers back on the ring");
    assert_eq!(hal.memory().live_allocations(), dma, "no DMA allocation per packet");
    let s = net.stats();
    assert_eq!((s.rx_packets, s.tx_packets, s.rx_errors, s.resets), (10_000, 10_000, 0, 0));
    assert!(sum > 0);
    drop(net);
    assert_eq!(fake.device().status(), 0, "dropping the driver resets the device");
}

#[test]
fn fuzz_seeds_run_clean() {
    let seeds: &[&[u8]] = &[
        b"",
        &[0xff; 300],
        &[0; 300],
        // MRG, queue 8: a good frame, a raw header-only buffer, a raw used
        // element with a bogus id, then a transmit.
        &[
            1, 7, 2, 60, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 1, 99, 0, 0, 0, 5, 0, 0,
            0, 1, 3, 60, 0, 0,
        ],
    ];
    for s in seeds {
        crate::fake::fuzz_net_rx(s);
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/virtio_net_rx");
    // The corpus lives in the workspace (absent from a packaged crate).
    let Ok(entries) = std::fs::read_dir(dir) else {
        std::println!("skipped: no seed corpus at {dir}");
        return;
    };
    for e in entries.flatten() {
        crate::fake::fuzz_net_rx(&std::fs::read(e.path()).unwrap());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Arbitrary operation streams through the fuzz body: never a panic.
    #[test]
    fn arbitrary_rx_streams(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        crate::fake::fuzz_net_rx(&data);
    }

    /// Well-formed traffic of random sizes and splits always round-trips,
    /// with the rx ring full again after each packet.
    #[test]
    fn well_formed_traffic_round_trips(pkts in proptest::collection::vec((1usize..=MAX_FRAME_LEN, 0u32..1600), 1..40)) {
        let (_hal, mut fake, mut net) = setup(ALL, 16);
        for (i, (len, split)) in pkts.into_iter().enumerate() {
            // At least 96 bytes per buffer: a 1518-byte frame fits 16 buffers.
            fake.set_split((split >= 96).then_some(split));
            let f = frame(len, i as u8);
            prop_assert!(fake.inject(&f));
            prop_assert_eq!(recv(&mut net), Ok(Some(f)));
            prop_assert_eq!(fake.rx_buffers(), 16);
        }
    }
}

#[cfg(feature = "smoltcp")]
mod smoltcp_device {
    use super::*;
    use smoltcp::iface::{Config, Interface, SocketSet};
    use smoltcp::phy::{Device, RxToken, TxToken};
    use smoltcp::time::Instant;
    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr,
        HardwareAddress, IpCidr, Ipv4Address,
    };

    #[test]
    fn tokens_round_trip() {
        let (_hal, mut fake, mut net) = setup(ALL, 8);
        let caps = net.capabilities();
        assert_eq!(caps.max_transmission_unit, 1514);
        assert!(Device::receive(&mut net, Instant::ZERO).is_none());
        assert!(fake.inject(&frame(300, 1)));
        let (rx, tx) = Device::receive(&mut net, Instant::ZERO).unwrap();
        let got = rx.consume(|f| f.to_vec());
        assert_eq!(got, frame(300, 1));
        tx.consume(100, |b| b.copy_from_slice(&frame(100, 2)));
        assert_eq!(fake.take_tx()[0].1, frame(100, 2));
        // The consumed rx buffer is re-posted (and kicked on the next call).
        assert!(Device::receive(&mut net, Instant::ZERO).is_none());
        assert_eq!(fake.rx_buffers(), 8);
        // With every tx buffer in flight, transmit() has no token, and a
        // frame built through an rx pair's tx token is dropped and counted.
        for _ in 0..8 {
            Device::transmit(&mut net, Instant::ZERO).unwrap().consume(60, |b| b.fill(1));
        }
        assert!(Device::transmit(&mut net, Instant::ZERO).is_none());
        assert!(fake.inject(&frame(60, 3)));
        let (rx, tx) = Device::receive(&mut net, Instant::ZERO).unwrap();
        rx.consume(|_| ());
        tx.consume(60, |b| b.fill(2));
        assert_eq!(net.stats().tx_dropped, 1);
        assert_eq!(fake.take_tx().len(), 8);
        assert!(Device::transmit(&mut net, Instant::ZERO).is_some());
        // Malformed packets are skipped by receive().
        assert!(fake.inject_raw(&[(&[0; 12], 12)]));
        assert!(fake.inject(&frame(61, 4)));
        let (rx, _tx) = Device::receive(&mut net, Instant::ZERO).unwrap();
        assert_eq!(rx.consume(|f| f.to_vec()), frame(61, 4));
        assert_eq!(net.stats().rx_errors, 1);
    }

    #[test]
    fn interface_answers_arp() {
        let (_hal, mut fake, mut net) = setup(ALL, 16);
        let mac = EthernetAddress(net.mac().unwrap());
        let mut iface = Interface::new(Config::new(HardwareAddress::Ethernet(mac)), &mut net, Instant::ZERO);
        let ours = Ipv4Address::new(10, 0, 2, 15);
        iface.update_ip_addrs(|a| a.push(IpCidr::new(ours.into(), 24)).unwrap());
        let peer_mac = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);
        let peer = Ipv4Address::new(10, 0, 2, 2);
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: peer_mac,
            source_protocol_addr: peer,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: ours,
        };
        let eth = EthernetRepr {
            src_addr: peer_mac,
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        };
        let mut buf = vec![0u8; eth.buffer_len() + arp.buffer_len()];
        let mut f = EthernetFrame::new_unchecked(&mut buf);
        eth.emit(&mut f);
        arp.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
        assert!(fake.inject(&buf));
        let mut storage: [smoltcp::iface::SocketStorage<'_>; 1] = Default::default();
        let mut sockets = SocketSet::new(&mut storage[..]);
        iface.poll(Instant::from_millis(1), &mut net, &mut sockets);
        let sent = fake.take_tx();
        assert_eq!(sent.len(), 1, "one ARP reply");
        let f = EthernetFrame::new_checked(&sent[0].1[..]).unwrap();
        assert_eq!(f.dst_addr(), peer_mac);
        let reply = ArpRepr::parse(&ArpPacket::new_checked(f.payload()).unwrap()).unwrap();
        assert_eq!(
            reply,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: mac,
                source_protocol_addr: ours,
                target_hardware_addr: peer_mac,
                target_protocol_addr: peer,
            }
        );
    }
}
