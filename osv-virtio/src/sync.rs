//! The one place this crate takes its atomics from (see STYLE.md: a `sync`
//! facade per crate). The virtqueue only needs fences (its ring indices live
//! in DMA memory and are accessed with volatile operations); the interrupt
//! rendezvous ([`crate::irq::WaitSlot`]) needs atomics, which are loom's
//! under `--cfg loom` so `tests/loom_irq.rs` can model it.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

/// The virtqueue's DMA fences order accesses to device memory, which loom
/// does not model: always `core`'s, with `core`'s orderings.
pub(crate) use core::sync::atomic::{fence as dma_fence, Ordering as DmaOrdering};
