//! virtio-fs (virtio 1.2 §5.11): a host directory shared with the guest,
//! spoken to in FUSE.
//!
//! Three layers:
//! - [`proto`]: the FUSE wire protocol (Linux `include/uapi/linux/fuse.h`,
//!   7.31): request encoding and checked parsing of every reply into typed
//!   values; untrusted bytes give a [`ProtoError`](proto::ProtoError),
//!   never a panic. No heap.
//! - [`device`]: the [`VirtIOFs`] driver over any [`Transport`](crate::Transport):
//!   configuration (`tag`, `num_request_queues`), the high-priority queue
//!   (`FUSE_FORGET`), one request queue with several requests in flight,
//!   and the `FUSE_INIT` handshake. No heap.
//! - `vfs` (feature `vfs`): `VirtioFs`, an [`osv_vfs`] filesystem
//!   (`FsOps`/`VnodeOps`) over the driver, with lookup counts given back by
//!   `FUSE_FORGET` when vnodes go.
//!
//! Not done: the DAX window (a shared memory region the server maps file
//! ranges into with `FUSE_SETUPMAPPING`, §5.11.5), multiple request queues,
//! the notification queue, interrupts (the driver polls).

pub mod device;
#[cfg(any(test, feature = "std"))]
pub mod fake;
pub mod proto;
#[cfg(test)]
mod tests;
#[cfg(feature = "vfs")]
pub mod vfs;
#[cfg(all(test, feature = "vfs"))]
mod vfs_tests;

pub use device::{FsError, Tag, VirtIOFs};
#[cfg(feature = "vfs")]
pub use vfs::VirtioFs;
