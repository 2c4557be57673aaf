//! The device writes the used ring and the configuration space: arbitrary
//! bytes there must give typed errors (and a broken queue), never a panic,
//! a completion of a request that is not in flight, or a length larger than
//! the request's buffers. The body lives in `osv_virtio::fake` so the unit
//! tests run the seed corpus through it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    osv_virtio::fake::fuzz_used_ring(data);
});
