//! The OpenZFS on-disk format in Rust: read real pools (no_std core, host tool with std)
#![cfg_attr(not(test), no_std)]
