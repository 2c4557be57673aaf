//! The device writes the rx buffers and the used rings: arbitrary headers,
//! lengths, `num_buffers` values, ids and index jumps must give a frame or a
//! typed error (a dropped packet, a device reset), never a panic, a frame
//! longer than the limit, or a well-formed frame lost before the first bad
//! one. The body lives in `osv_virtio::fake` so the unit tests run the seed
//! corpus through it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    osv_virtio::fake::fuzz_net_rx(data);
});
