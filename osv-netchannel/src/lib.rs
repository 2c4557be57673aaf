//! Van Jacobson net channels for unikernels: a flow classifier feeding per-socket SPSC rings
#![cfg_attr(not(test), no_std)]
