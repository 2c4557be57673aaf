//! End-to-end host tests: the real transports, queue and drivers against
//! the fake device of [`crate::fake`].
// The submit/poll API is `unsafe` (buffer lifetimes).
#![allow(unsafe_code)]

use std::boxed::Box;
use std::vec;
use std::vec::Vec;

use crate::blk::{self, BlkError, BlockDevice, VirtIOBlk};
use crate::fake::{
    BlkBackend, FakeBarMapper, FakeDevice, FakeHal, FakeMmioRegs, FakePciBus, FakePciRegion, Misbehave,
    RngBackend,
};
use crate::queue::QueueError;
use crate::rng::VirtIORng;
use crate::transport::mmio::MmioTransport;
use crate::transport::pci::{Bdf, PciEnumerator, PciTransport, VirtioPciDevice};
use crate::transport::{DeviceStatus, Features, Transport, TransportError};
use crate::DeviceType;

type MmioBlk = VirtIOBlk<FakeHal, MmioTransport<FakeMmioRegs>>;

fn mmio_blk(sectors: u64) -> (FakeHal, FakeDevice, MmioBlk) {
    let hal = FakeHal::new();
    let dev = FakeDevice::new(&hal, Box::new(BlkBackend::new(sectors)), 1, 32);
    let t = MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap();
    assert_eq!(t.device_type(), Some(DeviceType::Block));
    let blk = VirtIOBlk::new(&hal, t).unwrap();
    (hal, dev, blk)
}

fn disk(dev: &FakeDevice) -> Vec<u8> {
    dev.with_backend(|b| {
        // The backend is a BlkBackend in these tests; read its disk back
        // through a read request instead of downcasting.
        let mut resp = vec![0u8; 64 * 512 + 1];
        let mut req = vec![0u8; 16];
        req[0] = 0;
        b.handle(0, &req, &mut resp);
        resp.truncate(64 * 512);
        resp
    })
}

#[test]
fn mmio_blk_init_negotiates() {
    let (_hal, dev, blk) = mmio_blk(64);
    assert_eq!(dev.status(), 0x0f, "ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK");
    let want = Features::VERSION_1
        .union(blk::feature::FLUSH)
        .union(blk::feature::DISCARD)
        .union(blk::feature::BLK_SIZE);
    assert_eq!(dev.driver_features(), want.bits());
    assert_eq!(blk.features(), want);
    assert_eq!(blk.capacity(), 64);
    assert_eq!(blk.size_bytes(), 64 * 512);
    assert_eq!(blk.sector_size(), 512);
    assert!(!blk.readonly());
}

#[test]
fn mmio_blk_round_trip() {
    let (hal, dev, mut blk) = mmio_blk(64);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    blk.write_blocks(8, &data).unwrap();
    let mut back = vec![0u8; 4096];
    blk.read_blocks(8, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(&disk(&dev)[8 * 512..8 * 512 + 4096], &data[..]);
    blk.flush().unwrap();
    blk.discard_with(4, 2, &mut || true).unwrap();
    dev.with_backend(|_| ());
    // Through the BlockDevice trait.
    let mut one = [0u8; 512];
    BlockDevice::read_at(&mut blk, 8 * 512, &mut one).unwrap();
    assert_eq!(&one[..], &data[..512]);
    BlockDevice::write_at(&mut blk, 63 * 512, &one).unwrap();
    BlockDevice::flush(&mut blk).unwrap();
    assert_eq!(dev.faults(), 0);
    drop(blk);
    assert_eq!(dev.status(), 0, "dropping the driver resets the device");
    assert_eq!(hal.memory().live_allocations(), 0, "all DMA freed");
}

#[test]
fn blk_large_transfer_is_chunked() {
    let (_hal, dev, mut blk) = mmio_blk(1024);
    let data: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();
    blk.write_blocks(3, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    blk.read_blocks(3, &mut back).unwrap();
    assert_eq!(back, data);
    assert!(dev.completions() >= 10);
}

#[test]
fn blk_argument_errors() {
    let (_hal, _dev, mut blk) = mmio_blk(16);
    let mut b = [0u8; 100];
    assert_eq!(blk.read_blocks(0, &mut b), Err(BlkError::Unaligned));
    assert_eq!(blk.read_blocks(0, &mut []), Err(BlkError::Unaligned));
    let mut b = [0u8; 1024];
    assert_eq!(blk.read_blocks(15, &mut b), Err(BlkError::OutOfRange));
    assert_eq!(blk.read_blocks(u64::MAX, &mut b), Err(BlkError::OutOfRange));
    assert_eq!(blk.write_blocks(u64::MAX / 2, &b), Err(BlkError::OutOfRange));
    assert_eq!(BlockDevice::read_at(&mut blk, 100, &mut b), Err(BlkError::Unaligned));
    assert_eq!(blk.submit_discard(0, 0), Err(BlkError::Unaligned));
    // Still healthy.
    blk.read_blocks(14, &mut b).unwrap();
}

#[test]
fn blk_without_flush_or_discard() {
    let hal = FakeHal::new();
    let mut backend = BlkBackend::new(8);
    backend.features = blk::feature::RO.bits();
    let dev = FakeDevice::new(&hal, Box::new(backend), 1, 8);
    let mut blk = VirtIOBlk::new(&hal, MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap()).unwrap();
    assert!(blk.readonly());
    assert_eq!(blk.flush(), Ok(()), "no flush feature: writes are durable, flush is a no-op");
    assert_eq!(blk.submit_flush(), Err(BlkError::NotSupported));
    assert_eq!(blk.submit_discard(0, 1), Err(BlkError::NotSupported));
    assert_eq!(blk.write_blocks(0, &[0u8; 512]), Err(BlkError::NotSupported));
    let mut b = [1u8; 512];
    blk.read_blocks(0, &mut b).unwrap();
    assert_eq!(b, [0u8; 512]);
}

#[test]
fn blk_bigger_block_size() {
    let hal = FakeHal::new();
    let mut backend = BlkBackend::new(64);
    backend.blk_size = 4096;
    let dev = FakeDevice::new(&hal, Box::new(backend), 1, 8);
    let mut blk = VirtIOBlk::new(&hal, MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap()).unwrap();
    assert_eq!(blk.sector_size(), 4096);
    let mut b = [0u8; 512];
    assert_eq!(blk.read_blocks(0, &mut b), Err(BlkError::Unaligned));
    let mut b = [0u8; 4096];
    assert_eq!(blk.read_blocks(1, &mut b), Err(BlkError::Unaligned));
    blk.read_blocks(8, &mut b).unwrap();
    // An implausible blk_size from the device falls back to 512.
    let mut backend = BlkBackend::new(64);
    backend.blk_size = 3;
    let dev = FakeDevice::new(&hal, Box::new(backend), 1, 8);
    let blk = VirtIOBlk::new(&hal, MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap()).unwrap();
    assert_eq!(blk.sector_size(), 512);
}

#[test]
fn blk_requests_in_flight_complete_out_of_order() {
    let (_hal, dev, mut blk) = mmio_blk(64);
    dev.set_auto(false);
    let w = [0x5au8; 1024];
    let mut r1 = [0u8; 512];
    let mut r2 = [0u8; 2048];
    // SAFETY: the buffers live until the end of the test and are not
    // touched until their completions are polled below.
    let (tw, t1, t2) = unsafe {
        (
            blk.submit_write(2, &w).unwrap(),
            blk.submit_read(0, &mut r1).unwrap(),
            blk.submit_read(10, &mut r2).unwrap(),
        )
    };
    let tf = blk.submit_flush().unwrap();
    assert!(blk.poll().is_none());
    // The device completes them newest first.
    dev.with_queue(0, |dq| {
        let mut chains = Vec::new();
        while let Some(c) = dq.pop_avail().unwrap() {
            chains.push(c);
        }
        assert_eq!(chains.len(), 4);
        for c in chains.iter().rev() {
            // A real device would do the I/O; write status OK and report a
            // plausible length.
            let len = c.writable_len();
            let mut data = vec![0u8; len as usize];
            data[len as usize - 1] = 0;
            dq.write_chain(c, &data).unwrap();
            dq.push_used(u32::from(c.head), len).unwrap();
        }
    });
    let mut order = Vec::new();
    while let Some(c) = blk.poll() {
        let c = c.unwrap();
        assert_eq!(c.result, Ok(()));
        order.push(c.token);
    }
    assert_eq!(order, vec![tf, t2, t1, tw]);
    // Back to automatic processing: the blocking API still works.
    dev.set_auto(true);
    let mut b = [0u8; 512];
    blk.read_blocks(0, &mut b).unwrap();
}

#[test]
fn blk_blocking_call_stashes_other_completions() {
    let (_hal, dev, mut blk) = mmio_blk(64);
    dev.set_auto(false);
    let mut r1 = [0u8; 512];
    // SAFETY: `r1` outlives the request and is untouched until polled.
    let t1 = unsafe { blk.submit_read(0, &mut r1).unwrap() };
    // The blocking flush's wait hook plays the device.
    let d2 = dev.clone();
    blk.flush_with(&mut || {
        d2.process(0);
        true
    })
    .unwrap();
    let c = blk.poll().unwrap().unwrap();
    assert_eq!((c.token, c.result), (t1, Ok(())));
    assert!(blk.poll().is_none());
}

fn adversarial(m: Misbehave) -> (FakeDevice, MmioBlk, Result<(), BlkError>) {
    let (_hal, dev, mut blk) = mmio_blk(64);
    let mut b = [0u8; 1024];
    blk.read_blocks(0, &mut b).unwrap();
    dev.misbehave(m);
    let r = blk.read_blocks(2, &mut b);
    (dev, blk, r)
}

#[test]
fn adversarial_used_id_out_of_range() {
    let (dev, mut blk, r) = adversarial(Misbehave::UsedId(1000));
    assert_eq!(r, Err(BlkError::Queue(QueueError::UsedIdOutOfRange(1000))));
    assert!(blk.is_broken());
    assert_eq!(dev.status(), 0, "the driver reset the device");
    let mut b = [0u8; 512];
    assert_eq!(blk.read_blocks(0, &mut b), Err(BlkError::Broken));
    assert!(matches!(blk.poll(), Some(Err(BlkError::Broken))));
}

#[test]
fn adversarial_used_id_not_a_head() {
    // Descriptor 1 is the data descriptor of the chain headed by 0... or
    // another free one: either way it is not a head in flight.
    let (_dev, _blk, r) = adversarial(Misbehave::UsedId(31));
    assert_eq!(r, Err(BlkError::Queue(QueueError::UsedIdNotInFlight(31))));
}

#[test]
fn adversarial_duplicate_completion() {
    // Both copies are published at once: two used entries for one request
    // in flight.
    let (_dev, blk, r) = adversarial(Misbehave::Duplicate);
    assert_eq!(r, Err(BlkError::Queue(QueueError::UsedIndexJump { advance: 2, in_flight: 1 })));
    assert!(blk.is_broken());
}

#[test]
fn adversarial_duplicate_completion_later() {
    // The device completes request A, then repeats A's used entry while B
    // is still in flight: A's id is no longer in flight.
    let (_hal, dev, mut blk) = mmio_blk(64);
    dev.set_auto(false);
    let mut a = [0u8; 512];
    let mut b = [0u8; 512];
    // SAFETY: both buffers outlive the driver's use (the device is reset on
    // the error below, and they live to the end of the test).
    let (ta, _tb) = unsafe { (blk.submit_read(0, &mut a).unwrap(), blk.submit_read(1, &mut b).unwrap()) };
    let chain_a = dev.with_queue(0, |d| d.pop_avail().unwrap().unwrap()).unwrap();
    assert_eq!(chain_a.head, ta.index());
    dev.with_queue(0, |d| {
        let mut ok = vec![0u8; 513];
        ok[512] = 0;
        d.write_chain(&chain_a, &ok).unwrap();
        d.push_used(u32::from(chain_a.head), 513).unwrap();
    });
    assert_eq!(blk.poll(), Some(Ok(blk::Completion { token: ta, result: Ok(()) })));
    dev.with_queue(0, |d| d.push_used(u32::from(chain_a.head), 513).unwrap());
    assert_eq!(blk.poll(), Some(Err(BlkError::Queue(QueueError::UsedIdNotInFlight(u32::from(ta.index()))))));
    assert_eq!(dev.status(), 0, "reset: B's buffer is released");
    assert_eq!(blk.poll(), Some(Err(BlkError::Broken)));
}

#[test]
fn adversarial_length_too_long() {
    let (_dev, blk, r) = adversarial(Misbehave::ExtraLen(1));
    assert!(
        matches!(r, Err(BlkError::Queue(QueueError::UsedLenTooLong { len: 1026, writable: 1025, .. }))),
        "{r:?}"
    );
    assert!(blk.is_broken());
    let (_dev, _blk, r) = adversarial(Misbehave::Len(u32::MAX));
    assert!(matches!(r, Err(BlkError::Queue(QueueError::UsedLenTooLong { .. }))), "{r:?}");
}

#[test]
fn adversarial_short_length() {
    let (_dev, mut blk, r) = adversarial(Misbehave::Len(1));
    assert_eq!(r, Err(BlkError::BadLength { len: 1, expected: 1025 }));
    // A bad length on one request does not break the queue.
    let mut b = [0u8; 512];
    blk.read_blocks(0, &mut b).unwrap();
}

#[test]
fn adversarial_used_index_jump() {
    let (_dev, mut blk, r) = adversarial(Misbehave::IdxJump(5));
    assert_eq!(r, Err(BlkError::Queue(QueueError::UsedIndexJump { advance: 6, in_flight: 1 })));
    let mut b = [0u8; 512];
    assert_eq!(blk.read_blocks(0, &mut b), Err(BlkError::Broken));
}

#[test]
fn adversarial_status_bytes() {
    let (_dev, mut blk, r) = adversarial(Misbehave::Status(blk::status::IOERR));
    assert_eq!(r, Err(BlkError::IoError));
    let mut b = [0u8; 512];
    blk.read_blocks(0, &mut b).unwrap();
    let (_dev, _blk, r) = adversarial(Misbehave::Status(blk::status::UNSUPP));
    assert_eq!(r, Err(BlkError::Unsupported));
    let (_dev, _blk, r) = adversarial(Misbehave::Status(0x77));
    assert_eq!(r, Err(BlkError::BadStatus(0x77)));
}

#[test]
fn swallowed_request_times_out_and_resets() {
    let (_hal, dev, mut blk) = mmio_blk(64);
    dev.misbehave(Misbehave::Swallow);
    let mut polls = 0;
    let mut b = [0u8; 512];
    let r = blk.read_blocks_with(0, &mut b, &mut || {
        polls += 1;
        polls < 100
    });
    assert_eq!(r, Err(BlkError::TimedOut));
    assert_eq!(dev.status(), 0);
    assert_eq!(blk.read_blocks(0, &mut b), Err(BlkError::Broken));
}

#[test]
fn mmio_probe_errors() {
    let hal = FakeHal::new();
    let dev = FakeDevice::new(&hal, Box::new(RngBackend::default()), 1, 8);
    dev.set_mmio_version(1);
    assert_eq!(
        MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap_err(),
        TransportError::UnsupportedVersion(1)
    );
    dev.set_mmio_version(2);
    dev.set_magic(0x1234);
    assert_eq!(MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap_err(), TransportError::BadMagic(0x1234));

    struct Empty;
    impl crate::fake::Backend for Empty {
        fn device_id(&self) -> u32 {
            0
        }
        fn features(&self) -> u64 {
            0
        }
        fn config(&self) -> Vec<u8> {
            Vec::new()
        }
        fn handle(&mut self, _: u16, _: &[u8], _: &mut [u8]) -> u32 {
            0
        }
    }
    let empty = FakeDevice::new(&hal, Box::new(Empty), 0, 0);
    assert_eq!(MmioTransport::new(FakeMmioRegs::new(&empty)).unwrap_err(), TransportError::NoDevice);
}

#[test]
fn negotiation_failures() {
    let hal = FakeHal::new();
    let dev = FakeDevice::new(&hal, Box::new(BlkBackend::new(8)), 1, 8);
    dev.set_offered_features(blk::feature::FLUSH.bits());
    let r = VirtIOBlk::new(&hal, MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap());
    assert_eq!(r.unwrap_err(), BlkError::Transport(TransportError::NoVersion1));
    assert!(DeviceStatus::from_bits(dev.status()).contains(DeviceStatus::FAILED));

    let dev = FakeDevice::new(&hal, Box::new(BlkBackend::new(8)), 1, 8);
    dev.set_reject_features(true);
    let r = VirtIOBlk::new(&hal, MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap());
    assert_eq!(r.unwrap_err(), BlkError::Transport(TransportError::FeaturesRejected));
    assert!(DeviceStatus::from_bits(dev.status()).contains(DeviceStatus::FAILED));

    // A device without queues.
    let dev = FakeDevice::new(&hal, Box::new(BlkBackend::new(8)), 0, 8);
    let r = VirtIOBlk::new(&hal, MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap());
    assert_eq!(r.unwrap_err(), BlkError::Queue(QueueError::Transport(TransportError::NoSuchQueue(0))));
    assert_eq!(hal.memory().live_allocations(), 0);
}

#[test]
fn config_generation_retry() {
    let hal = FakeHal::new();
    let dev = FakeDevice::new(&hal, Box::new(BlkBackend::new(8)), 1, 8);
    dev.set_unstable_config(5);
    let blk = VirtIOBlk::new(&hal, MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap()).unwrap();
    assert_eq!(blk.capacity(), 8);
    drop(blk);
    dev.set_unstable_config(u32::MAX);
    let r = VirtIOBlk::new(&hal, MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap());
    assert_eq!(r.unwrap_err(), BlkError::Transport(TransportError::ConfigUnstable));
}

#[test]
fn config_space_bounds() {
    let hal = FakeHal::new();
    let dev = FakeDevice::new(&hal, Box::new(BlkBackend::new(8)), 1, 8);
    let mut t = MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap();
    assert_eq!(t.config_len(), 0x100);
    assert_eq!(t.read_config_u64(0), Ok(8));
    assert_eq!(t.read_config_u32(0x100), Err(TransportError::ConfigOutOfRange));
    assert_eq!(t.read_config_u32(2), Err(TransportError::ConfigOutOfRange));
    assert_eq!(t.read_config_u16(usize::MAX), Err(TransportError::ConfigOutOfRange));
    assert_eq!(t.write_config_u8(0xff, 1), Ok(()));
    assert_eq!(t.write_config_u32(0xfe, 1), Err(TransportError::ConfigOutOfRange));
    assert_eq!(t.read_config_u8(32), Ok(0));
    t.write_config_u8(32, 1).unwrap();
    assert_eq!(t.read_config_u8(32), Ok(1));
}

#[test]
fn rng_fill_mmio() {
    let hal = FakeHal::new();
    let dev = FakeDevice::new(&hal, Box::new(RngBackend { next: 10, max_per_request: 0 }), 1, 8);
    let t = MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap();
    assert_eq!(t.device_type(), Some(DeviceType::Rng));
    let mut rng = VirtIORng::new(&hal, t).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(rng.fill(&mut b), Ok(8));
    assert_eq!(b, [10, 11, 12, 13, 14, 15, 16, 17]);
    assert_eq!(rng.fill(&mut []), Ok(0));
    let mut big = vec![0u8; 3 * 4096 + 5];
    assert_eq!(rng.fill(&mut big), Ok(big.len()));
    drop(rng);
    assert_eq!(hal.memory().live_allocations(), 0);
}

#[test]
fn rng_partial_and_adversarial() {
    let hal = FakeHal::new();
    let dev = FakeDevice::new(&hal, Box::new(RngBackend { next: 0, max_per_request: 3 }), 1, 8);
    let mut rng = VirtIORng::new(&hal, MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap()).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(rng.fill(&mut b), Ok(3));
    dev.misbehave(Misbehave::Len(9));
    assert!(matches!(
        rng.fill(&mut b),
        Err(crate::RngError::Queue(QueueError::UsedLenTooLong { len: 9, .. }))
    ));
    assert_eq!(rng.fill(&mut b), Err(crate::RngError::Broken));
    assert_eq!(dev.status(), 0);
}

const BAR: u64 = 0x8_0000_0000; // above 4 GiB: a 64-bit BAR

fn pci_bus(hal: &FakeHal) -> (FakePciBus, FakeDevice, FakeDevice, Bdf, Bdf) {
    let bus = FakePciBus::new();
    bus.add_other(Bdf::new(0, 0, 0).unwrap(), 0x8086, 0x29c0);
    bus.add_bridge(Bdf::new(0, 0x1e, 0).unwrap(), 1, 1);
    let blk_at = Bdf::new(0, 3, 0).unwrap();
    let rng_at = Bdf::new(1, 2, 0).unwrap();
    bus.add_virtio(blk_at, 2, false, BAR);
    bus.add_virtio(rng_at, 4, true, BAR + 0x10_0000);
    let blk = FakeDevice::new(hal, Box::new(BlkBackend::new(32)), 1, 128);
    let rng = FakeDevice::new(hal, Box::new(RngBackend::default()), 1, 8);
    (bus, blk, rng, blk_at, rng_at)
}

#[test]
fn pci_enumerate_probe_and_drive() {
    let hal = FakeHal::new();
    let (bus, blk_dev, rng_dev, blk_at, rng_at) = pci_bus(&hal);
    let found: Vec<_> = PciEnumerator::new(&bus).collect();
    assert_eq!(found.len(), 4, "{found:?}");
    let virtio: Vec<_> = found.iter().filter(|f| f.is_virtio()).map(|f| f.bdf).collect();
    assert_eq!(virtio, vec![blk_at, rng_at], "the device behind the bridge is found");

    let info = VirtioPciDevice::probe(&bus, blk_at).unwrap();
    assert_eq!(info.device_id, 2);
    assert_eq!(info.common.phys.as_u64(), BAR);
    assert_eq!(info.notify.phys.as_u64(), BAR + 0x3000);
    assert_eq!(info.notify_off_multiplier, 4);
    assert_eq!(info.isr.phys.as_u64(), BAR + 0x1000);
    assert_eq!(info.device.unwrap().phys.as_u64(), BAR + 0x2000);
    // The BAR was restored after sizing, and decoding is enabled again.
    let mut mapper = FakeBarMapper::new(&blk_dev, BAR);
    let t: PciTransport<FakePciRegion> = PciTransport::new(&bus, &info, &mut mapper).unwrap();
    assert_eq!(crate::transport::pci::PciConfig::read32(&bus, blk_at, 0x20) & !0xf, BAR as u32);
    assert_eq!(crate::transport::pci::PciConfig::read32(&bus, blk_at, 0x04) & 0x6, 0x6);
    assert_eq!(t.device_type(), Some(DeviceType::Block));
    let mut blk = VirtIOBlk::new(&hal, t).unwrap();
    assert_eq!(blk_dev.status(), 0x0f);
    assert_eq!(blk.capacity(), 32);
    let data = [0xa5u8; 2048];
    blk.write_blocks(4, &data).unwrap();
    let mut back = [0u8; 2048];
    blk.read_blocks(4, &mut back).unwrap();
    assert_eq!(back, data);
    blk.flush().unwrap();
    assert_eq!(blk_dev.faults(), 0);

    // The transitional rng behind the bridge.
    let info = VirtioPciDevice::probe(&bus, rng_at).unwrap();
    assert_eq!(info.device_id, 4);
    let mut mapper = FakeBarMapper::new(&rng_dev, BAR + 0x10_0000);
    let t = PciTransport::new(&bus, &info, &mut mapper).unwrap();
    let mut rng = VirtIORng::new(&hal, t).unwrap();
    let mut b = [0u8; 4];
    assert_eq!(rng.fill(&mut b), Ok(4));
    assert_eq!(b, [0, 1, 2, 3]);
    let mut t = PciTransport::new(&bus, &info, &mut FakeBarMapper::new(&rng_dev, BAR + 0x10_0000)).unwrap();
    assert_eq!(t.max_queue_size(1), Ok(0));
    assert!(t.ack_interrupt().queue());
    assert_eq!(t.ack_interrupt().bits(), 0, "reading the ISR clears it");
}

#[test]
fn pci_probe_rejects_bad_capabilities() {
    let hal = FakeHal::new();
    let (bus, _blk, _rng, blk_at, _) = pci_bus(&hal);
    assert_eq!(
        VirtioPciDevice::probe(&bus, Bdf::new(0, 0, 0).unwrap()).unwrap_err(),
        TransportError::NotVirtio
    );
    // The common structure pointing past the end of the BAR.
    bus.poke(blk_at, 0x48, 0x7ff0); // the fake BAR is 0x8000 bytes
    assert_eq!(VirtioPciDevice::probe(&bus, blk_at).unwrap_err(), TransportError::MissingCapability(1));
    // Offset + length overflowing.
    bus.poke(blk_at, 0x48, u32::MAX);
    assert_eq!(VirtioPciDevice::probe(&bus, blk_at).unwrap_err(), TransportError::MissingCapability(1));
    bus.poke(blk_at, 0x48, 0);
    // A capability list that loops forever.
    bus.poke(blk_at, 0x74, 0x0410_7409);
    assert!(VirtioPciDevice::probe(&bus, blk_at).is_ok());
    // A BAR index out of range.
    bus.poke(blk_at, 0x54, 9);
    assert_eq!(VirtioPciDevice::probe(&bus, blk_at).unwrap_err(), TransportError::MissingCapability(2));
    bus.poke(blk_at, 0x54, 4);
    // A too-short common structure.
    bus.poke(blk_at, 0x4c, 8);
    assert_eq!(VirtioPciDevice::probe(&bus, blk_at).unwrap_err(), TransportError::BadCapability);
    bus.poke(blk_at, 0x4c, 0x38);
    // A notify multiplier that puts queue 0's doorbell outside the region
    // only matters for queues with notify_off > 0; a huge one for queue 0
    // is fine, the check is per queue.
    assert!(VirtioPciDevice::probe(&bus, blk_at).is_ok());
    // No capability list at all.
    bus.poke(blk_at, 0x04, 0);
    assert_eq!(VirtioPciDevice::probe(&bus, blk_at).unwrap_err(), TransportError::MissingCapability(1));
}

#[test]
fn pci_bad_notify_offset() {
    let hal = FakeHal::new();
    let (bus, _blk, rng_dev, _, rng_at) = pci_bus(&hal);
    let rng_dev2 = FakeDevice::new(&hal, Box::new(RngBackend::default()), 2, 8);
    let _ = rng_dev;
    // Queue 1 (notify_off 1) with multiplier 0x1000: outside the 0x1000-byte region.
    bus.poke(rng_at, 0x60, 0x1000);
    let info = VirtioPciDevice::probe(&bus, rng_at).unwrap();
    let mut t = PciTransport::new(&bus, &info, &mut FakeBarMapper::new(&rng_dev2, BAR + 0x10_0000)).unwrap();
    t.begin_init(Features::VERSION_1).unwrap();
    let q0 = crate::queue::VirtQueue::<FakeHal, 4>::new(&hal, &mut t, 0);
    assert!(q0.is_ok());
    let q1 = crate::queue::VirtQueue::<FakeHal, 4>::new(&hal, &mut t, 1);
    assert_eq!(q1.unwrap_err(), QueueError::Transport(TransportError::BadNotifyOffset));
}

#[test]
fn pci_map_failure() {
    struct NoMap;
    impl crate::transport::pci::BarMapper for NoMap {
        type Region = FakePciRegion;
        fn map(&mut self, _: crate::PhysAddr, _: usize) -> Option<FakePciRegion> {
            None
        }
    }
    let hal = FakeHal::new();
    let (bus, _blk, _rng, blk_at, _) = pci_bus(&hal);
    let info = VirtioPciDevice::probe(&bus, blk_at).unwrap();
    assert_eq!(PciTransport::new(&bus, &info, &mut NoMap).unwrap_err(), TransportError::MapFailed);
}

#[test]
fn fuzz_seeds_run_clean() {
    let seeds: &[&[u8]] =
        &[b"", &[0xff; 200], &[0; 300], &[1, 2, 3, 7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0]];
    for s in seeds {
        crate::fake::fuzz_used_ring(s);
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/virtio_used_ring");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            crate::fake::fuzz_used_ring(&std::fs::read(e.path()).unwrap());
        }
    }
}
