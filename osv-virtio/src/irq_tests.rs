//! Interrupt-driven completion on the host: a test thread plays the device
//! and its interrupt (process the queue, then run the handler body
//! [`on_interrupt`] through the virtio-mmio status/ack registers and unpark
//! the registered waiter), while the driver waits through a parking
//! [`Wait`] with a deadline, as the kernel's does.

use std::boxed::Box;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};
use std::vec;

use crate::blk::{BlkError, VirtIOBlk};
use crate::fake::{BlkBackend, FakeDevice, FakeHal, FakeMmioRegs};
use crate::irq::{on_interrupt, InterruptSource, MmioInterrupt, Wait, WaitSlot};
use crate::transport::mmio::MmioTransport;

/// The waiting side: registers in the slot, parks with a deadline.
struct ParkWait {
    slot: Arc<WaitSlot>,
    me: NonZeroUsize,
    deadline: Instant,
    parks: u32,
}

impl Wait for ParkWait {
    fn prepare(&mut self) {
        self.slot.register(self.me);
    }
    fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        self.parks += 1;
        thread::park_timeout(self.deadline - now);
        true
    }
    fn done(&mut self) {
        self.slot.unregister();
    }
}

/// The "interrupt controller": waiter ids to threads.
struct Threads(Mutex<Vec<Thread>>);
impl Threads {
    fn id_of_current(&self) -> NonZeroUsize {
        let mut v = self.0.lock().unwrap();
        v.push(thread::current());
        NonZeroUsize::new(v.len()).unwrap()
    }
    fn unpark(&self, id: NonZeroUsize) {
        if let Some(t) = self.0.lock().unwrap().get(id.get() - 1) {
            t.unpark();
        }
    }
}

struct Rig {
    _hal: FakeHal,
    dev: FakeDevice,
    blk: VirtIOBlk<FakeHal, MmioTransport<FakeMmioRegs>>,
    slot: Arc<WaitSlot>,
    threads: Arc<Threads>,
}

fn rig() -> Rig {
    let hal = FakeHal::new();
    let dev = FakeDevice::new(&hal, Box::new(BlkBackend::new(64)), 1, 32);
    let blk = VirtIOBlk::new(&hal, MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap()).unwrap();
    // The device does nothing on notify: the test's device thread works.
    dev.set_auto(false);
    Rig {
        _hal: hal,
        dev,
        blk,
        slot: Arc::new(WaitSlot::new()),
        threads: Arc::new(Threads(Mutex::new(vec![]))),
    }
}

/// What the device thread does.
#[derive(Clone, Copy)]
enum Play {
    /// Complete the request, then interrupt.
    Complete,
    /// First an interrupt with nothing used (spurious, status 0), then a
    /// wakeup with nothing in the used ring, then complete and interrupt.
    NoiseThenComplete,
}

fn device_thread(
    r: &Rig,
    play: Play,
    interrupts_seen: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    let (dev, slot, threads) = (r.dev.clone(), r.slot.clone(), r.threads.clone());
    thread::spawn(move || {
        let mut irq = MmioInterrupt::new(FakeMmioRegs::new(&dev));
        // Wait until the driver has submitted something.
        while dev.notifies() == 0 && !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
        if let Play::NoiseThenComplete = play {
            let o = on_interrupt(&mut irq, &slot);
            assert!(o.spurious() && o.wake.is_none(), "no status bit: nobody is woken");
            // A wakeup with nothing in the used ring.
            thread::sleep(Duration::from_millis(5));
            if let Some(w) = slot.notify() {
                threads.unpark(w);
            }
            thread::sleep(Duration::from_millis(5));
        }
        dev.process(0);
        let o = on_interrupt(&mut irq, &slot);
        assert!(o.status.queue(), "the device set InterruptStatus bit 0");
        interrupts_seen.fetch_add(1, Ordering::SeqCst);
        if let Some(w) = o.wake {
            threads.unpark(w);
        }
        // Acknowledged: a second read finds nothing (the line is low).
        assert_eq!(irq.ack().bits(), 0);
    })
}

fn waiter(r: &Rig, timeout: Duration) -> ParkWait {
    ParkWait {
        slot: r.slot.clone(),
        me: r.threads.id_of_current(),
        deadline: Instant::now() + timeout,
        parks: 0,
    }
}

#[test]
fn interrupt_wakes_the_parked_reader() {
    let mut r = rig();
    let seen = Arc::new(AtomicU32::new(0));
    let dev = device_thread(&r, Play::Complete, seen.clone(), Arc::new(AtomicBool::new(false)));
    let mut w = waiter(&r, Duration::from_secs(20));
    let mut buf = [0xaau8; 512];
    r.blk.read_blocks_with(3, &mut buf, &mut w).unwrap();
    dev.join().unwrap();
    assert_eq!(buf, [0u8; 512], "the fake disk starts zeroed");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(r.slot.interrupts(), 1);
    assert!(w.parks >= 1, "the reader parked instead of spinning");
    assert_eq!(r.slot.notify(), None, "done() unregistered the waiter");
}

#[test]
fn spurious_and_empty_wakeups_are_survived() {
    let mut r = rig();
    let seen = Arc::new(AtomicU32::new(0));
    let dev = device_thread(&r, Play::NoiseThenComplete, seen.clone(), Arc::new(AtomicBool::new(false)));
    let mut w = waiter(&r, Duration::from_secs(20));
    r.blk.write_blocks_with(5, &[0x5a; 1024], &mut w).unwrap();
    dev.join().unwrap();
    assert!(w.parks >= 2, "woken with nothing in the used ring, parked again ({} parks)", w.parks);
    assert!(!r.blk.is_broken());
    // The data landed.
    r.dev.set_auto(true);
    let mut back = [0u8; 1024];
    r.blk.read_blocks(5, &mut back).unwrap();
    assert_eq!(back, [0x5a; 1024]);
}

#[test]
fn a_device_that_never_interrupts_times_out() {
    let mut r = rig();
    let mut w = waiter(&r, Duration::from_millis(50));
    let start = Instant::now();
    let mut buf = [0u8; 512];
    let e = r.blk.read_blocks_with(0, &mut buf, &mut w);
    assert_eq!(e, Err(BlkError::TimedOut));
    assert!(start.elapsed() < Duration::from_secs(10), "no hang");
    assert!(r.blk.is_broken(), "the device was reset so it drops the buffer");
    assert_eq!(r.dev.status(), 0, "reset");
    assert_eq!(r.slot.notify(), None, "the waiter unregistered on the way out");
}

#[test]
fn mmio_status_bits_and_ack() {
    let r = rig();
    let mut irq = MmioInterrupt::new(FakeMmioRegs::new(&r.dev));
    assert_eq!(irq.ack().bits(), 0, "nothing pending");
    let slot = WaitSlot::new();
    assert!(on_interrupt(&mut irq, &slot).spurious());
    assert_eq!(slot.interrupts(), 0);
}

#[test]
fn pci_msix_table_and_queue_vectors() {
    use crate::fake::{FakeBarMapper, FakePciBus, FakePciRegion, MSIX_ENTRIES};
    use crate::transport::pci::{Bdf, MsiMessage, Msix, MsixError, PciConfig, PciTransport, VirtioPciDevice};
    const BAR: u64 = 0x8_0000_0000;
    let hal = FakeHal::new();
    let bus = FakePciBus::new();
    let at = Bdf::new(0, 3, 0).unwrap();
    bus.add_virtio(at, 2, false, BAR);
    let dev = FakeDevice::new(&hal, Box::new(BlkBackend::new(32)), 1, 64);
    let info = VirtioPciDevice::probe(&bus, at).unwrap();
    let cap = info.msix.expect("the fake has an MSI-X capability");
    assert_eq!((cap.cap, u32::from(cap.table_size)), (0x84, MSIX_ENTRIES));
    assert_eq!(cap.table.phys.as_u64(), BAR + 0x4000);
    let mut mapper = FakeBarMapper::new(&dev, BAR);
    let t: PciTransport<FakePciRegion> = PciTransport::new(&bus, &info, &mut mapper).unwrap();
    assert_eq!(bus.read32(at, 0x84) >> 31, 0, "MSI-X stays off until asked");
    let msix = Msix::enable(&bus, &info, &mut mapper).unwrap();
    assert_eq!(bus.read32(at, 0x84) >> 30, 0b10, "enabled, function not masked");
    assert!((0..MSIX_ENTRIES as usize).all(|i| dev.msix_entry(i).unwrap().2), "all entries masked first");
    msix.set(1, MsiMessage::x86(2, 0x41)).unwrap();
    assert_eq!(dev.msix_entry(1), Some((0xfee0_2000, 0x41, false)));
    assert_eq!(msix.set(MSIX_ENTRIES as u16, MsiMessage::x86(0, 0x41)), Err(MsixError::NoSuchEntry(4)));
    msix.mask(1).unwrap();
    assert!(dev.msix_entry(1).unwrap().2);

    let mut blk = VirtIOBlk::new(&hal, t).unwrap();
    let t = blk.transport_mut();
    t.set_queue_msix_vector(0, 1).unwrap();
    assert_eq!(dev.queue_msix_vector(0), Some(1));
    t.set_config_msix_vector(0).unwrap();
    assert_eq!(dev.config_msix_vector(), Some(0));
    assert_eq!(t.set_queue_msix_vector(0, 9), Err(MsixError::Rejected(9)), "the device reads back NO_VECTOR");
    assert_eq!(t.set_queue_msix_vector(1, 0), Err(MsixError::NoSuchQueue(1)));
    // Requests still complete (polled here).
    let mut buf = [1u8; 512];
    blk.read_blocks(0, &mut buf).unwrap();
    assert_eq!(buf, [0; 512]);
}

#[test]
fn pci_probe_fuzz_body_and_seeds() {
    use crate::fake::fuzz_pci_probe;
    for s in [&[][..], &[0xff; 252][..], &[0; 252][..]] {
        let _ = fuzz_pci_probe(s);
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/virtio_pci_probe");
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("seed corpus").flatten() {
        let with_msix = fuzz_pci_probe(&std::fs::read(e.path()).unwrap());
        let name = e.file_name().into_string().unwrap();
        match name.as_str() {
            "well_formed" => assert!(with_msix, "the well-formed seed reaches the MSI-X code"),
            "msix_table_too_big" | "msix_table_past_bar" | "msix_bad_bir" => {
                assert!(!with_msix, "{name}: a table outside its BAR is not used")
            }
            _ => {}
        }
        n += 1;
    }
    assert!(n > 0, "no seeds in {dir}");
}

proptest::proptest! {
    #[test]
    fn pci_probe_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        let _ = crate::fake::fuzz_pci_probe(&data);
    }
}
