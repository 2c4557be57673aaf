//! OSv's memory design as a `no_std` crate.
//!
//! OSv runs the kernel and the application in one address space. Memory is
//! managed in layers, each usable on its own:
//!
//! 1. **Addresses** ([`PhysAddr`], [`VirtAddr`]): newtypes, never bare `u64`.
//! 2. **Typed page tables** (`hw_ptep<L>` in OSv): the level is a type, so a
//!    2 MiB entry cannot be written where a 4 KiB one belongs (issue #3).
//! 3. **Page allocators and VMAs**: demand paging, huge pages, guard pages
//!    (issue #3).
//!
//! Status: only the address layer exists today; the rest is tracked in issue #3.
//!
//! ```
//! use osv_mm::{PhysAddr, PAGE_SIZE};
//!
//! let a = PhysAddr::new(0x20_1234);
//! assert_eq!(a.align_down(PAGE_SIZE), PhysAddr::new(0x20_1000));
//! assert!(PhysAddr::new(0x20_0000).is_aligned(2 * 1024 * 1024));
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

/// The size of a small (level-0) page: 4 KiB.
pub const PAGE_SIZE: u64 = 4096;

macro_rules! address {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw address.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }
            /// The raw address.
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            /// Rounds down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                debug_assert!(align.is_power_of_two());
                Self(self.0 & !(align - 1))
            }
            /// Whether the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                debug_assert!(align.is_power_of_two());
                self.0 & (align - 1) == 0
            }
            /// Adds `bytes`, or `None` on overflow.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }
    };
}

address!(
    /// A physical memory address.
    PhysAddr
);
address!(
    /// A virtual memory address in the single shared address space.
    VirtAddr
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_and_overflow() {
        assert_eq!(VirtAddr::new(0x1fff).align_down(PAGE_SIZE), VirtAddr::new(0x1000));
        assert!(!VirtAddr::new(0x1001).is_aligned(PAGE_SIZE));
        assert_eq!(PhysAddr::new(u64::MAX).checked_add(1), None);
        assert_eq!(format!("{:?}", PhysAddr::new(0x10)), "PhysAddr(0x10)");
    }
}
