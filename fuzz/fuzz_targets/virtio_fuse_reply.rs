//! The virtio-fs device writes FUSE replies: arbitrary bytes there must give
//! typed errors from every reply parser (headers, entries, attributes,
//! directory records), never a panic, and a FUSE-level error must leave the
//! driver usable. The body lives in `osv_virtio::fake` so the unit tests run
//! the seed corpus through it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    osv_virtio::fake::fuzz_fuse_reply(data);
});
