//! The one place this crate takes its atomics from (see STYLE.md: a `sync`
//! facade per crate). The virtqueue only needs fences today; the ring indices
//! themselves live in DMA memory and are accessed with volatile operations.

pub(crate) use core::sync::atomic::{fence, Ordering};
