//! OSv's scheduler as a `no_std` crate: lock-free, preemptive, tickless, fair
//! and scalable.
//!
//! The policy and the cross-CPU protocols live here so they run in host tests
//! and under loom; the context switch and the timer hardware live in
//! `osv-boot` behind traits. Status: only the CPU identifier exists today; the
//! scheduler is tracked in issue #4.
//!
//! ```
//! use osv_sched::CpuId;
//!
//! let cpu = CpuId::new(3);
//! assert_eq!(cpu.index(), 3);
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

/// The index of a CPU, dense from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuId(u32);

impl CpuId {
    /// Wraps a CPU index.
    pub const fn new(index: u32) -> Self {
        Self(index)
    }
    /// The CPU index as a `usize`, for indexing per-CPU arrays.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn index_round_trips() {
        assert_eq!(super::CpuId::new(7).index(), 7);
    }
}
