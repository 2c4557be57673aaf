//! The virtio-net driver allocates nothing per packet: a counting global
//! allocator sees no heap allocation inside `receive`/`transmit`/`reclaim_tx`
//! over 10 000 packets (the fake device, which allocates freely, runs
//! outside the counted windows).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use osv_virtio::fake::{FakeHal, FakeMmioRegs, FakeNet};
use osv_virtio::net::{feature, VirtIONet};
use osv_virtio::MmioTransport;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; the thread-local
// counters are const-initialized `Cell`s, so touching them never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<R>(f: impl FnOnce() -> R) -> R {
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    r
}

#[test]
fn no_allocation_per_packet() {
    let hal = FakeHal::new();
    let features = feature::MAC.bits() | feature::MRG_RXBUF.bits() | feature::GUEST_CSUM.bits();
    let mut fake = FakeNet::new(&hal, features, 64);
    let t = MmioTransport::new(FakeMmioRegs::new(fake.device())).unwrap();
    let mut net = VirtIONet::new(&hal, t).unwrap();
    let frames: Vec<Vec<u8>> = (0..16).map(|i| vec![i as u8; 60 + 90 * i]).collect();
    let mut bytes = 0usize;
    for i in 0..10_000usize {
        let f = &frames[i % frames.len()];
        // Every third packet spans several buffers (the merged path).
        fake.set_split(if i % 3 == 0 { Some(400) } else { None });
        assert!(fake.inject(f));
        let got = counted(|| net.receive(|g| g.len()));
        assert_eq!(got, Ok(Some(f.len())));
        bytes += f.len();
        counted(|| net.transmit(f)).unwrap();
        if i % 8 == 7 {
            assert_eq!(fake.take_tx().len(), 8);
            assert_eq!(counted(|| net.reclaim_tx()), Ok(8));
        }
    }
    assert_eq!(COUNT.with(Cell::get), 0, "heap allocations inside the driver");
    assert_eq!(net.stats().rx_packets, 10_000);
    assert!(bytes > 0);
    // The counter works: an allocation in a counted window is seen.
    counted(|| drop(std::hint::black_box(vec![0u8; 10])));
    assert_eq!(COUNT.with(Cell::get), 1);
}
