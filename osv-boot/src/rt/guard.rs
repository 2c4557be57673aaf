//! Guard pages: unmapped pages below stacks, registered here so that a page
//! fault inside one is reported as a stack overflow of the stack's owner
//! rather than as a stray access (OSv reports the same from its fault
//! handler).
//!
//! The registry is a fixed table behind a spin lock. The fault path only
//! `try_lock`s it (a fault while the table is being changed is reported
//! without the name), so reporting can never deadlock.

use core::ops::Range;

/// How many guard ranges can be registered at once.
pub const MAX_GUARDS: usize = 256;
/// Bytes of a guard's name kept for the report.
pub const NAME_LEN: usize = 32;

#[derive(Clone, Copy)]
struct Guard {
    start: u64,
    end: u64,
    name: [u8; NAME_LEN],
    name_len: u8,
}

static GUARDS: spin::Mutex<[Option<Guard>; MAX_GUARDS]> = spin::Mutex::new([None; MAX_GUARDS]);

/// A registered guard range; pass it to [`unregister`] when the stack is
/// freed.
#[derive(Debug, PartialEq, Eq)]
pub struct GuardId(usize);

/// Registers `range` (the unmapped guard page(s) of a stack) under `name`
/// (cut to [`NAME_LEN`] bytes); `None` when the table is full.
pub fn register(range: Range<u64>, name: &str) -> Option<GuardId> {
    let mut bytes = [0u8; NAME_LEN];
    let mut len = name.len().min(NAME_LEN);
    while !name.is_char_boundary(len) {
        len -= 1;
    }
    bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
    let g = Guard { start: range.start, end: range.end, name: bytes, name_len: len as u8 };
    crate::arch::without_interrupts(|| {
        let mut t = GUARDS.lock();
        let i = t.iter().position(Option::is_none)?;
        t[i] = Some(g);
        Some(GuardId(i))
    })
}

/// Forgets a guard range.
pub fn unregister(id: GuardId) {
    crate::arch::without_interrupts(|| GUARDS.lock()[id.0] = None);
}

/// The name of the stack whose guard holds `addr`, written into `out`;
/// `Some("")` if a guard holds it but the table is busy.
pub fn owner(addr: u64, out: &mut [u8; NAME_LEN]) -> Option<&str> {
    let Some(t) = GUARDS.try_lock() else { return Some("") };
    let g = t.iter().flatten().find(|g| (g.start..g.end).contains(&addr))?;
    let n = usize::from(g.name_len);
    out[..n].copy_from_slice(&g.name[..n]);
    core::str::from_utf8(&out[..n]).ok()
}
