//! Stack traces by walking the frame-pointer chain.
//!
//! With frame pointers (`-C force-frame-pointers=yes`, set in the workspace's
//! `.cargo/config.toml`) every frame starts with `[saved rbp][return address]`.
//! The walker reads memory through a closure so it runs on the host against a
//! fake stack; it stops at the first frame pointer that is null, misaligned,
//! outside the stack bounds or not moving up the stack, so a corrupt chain ends
//! the trace instead of faulting.

/// At most this many frames are reported.
pub const MAX_FRAMES: usize = 32;

/// Iterator over return addresses, innermost first.
pub struct Frames<R> {
    rbp: u64,
    lo: u64,
    hi: u64,
    read: R,
    left: usize,
}

/// Walks the chain starting at frame pointer `rbp`, accepting frame pointers
/// only inside `[lo, hi)`. `read(addr)` returns the `u64` at `addr`.
pub fn walk<R: FnMut(u64) -> Option<u64>>(rbp: u64, lo: u64, hi: u64, read: R) -> Frames<R> {
    Frames { rbp, lo, hi, read, left: MAX_FRAMES }
}

impl<R: FnMut(u64) -> Option<u64>> Iterator for Frames<R> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.left == 0 {
            return None;
        }
        let rbp = self.rbp;
        let in_bounds = rbp >= self.lo && rbp.checked_add(16).is_some_and(|e| e <= self.hi);
        if rbp == 0 || !rbp.is_multiple_of(8) || !in_bounds {
            self.left = 0;
            return None;
        }
        let saved = (self.read)(rbp)?;
        let ret = (self.read)(rbp + 8)?;
        if ret == 0 {
            self.left = 0;
            return None;
        }
        // The caller's frame must be above this one, or the chain loops.
        self.rbp = if saved > rbp { saved } else { 0 };
        self.left -= 1;
        Some(ret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake stack: `mem[i]` is the word at `base + 8 * i`.
    fn reader(base: u64, mem: &[u64]) -> impl FnMut(u64) -> Option<u64> + '_ {
        move |a| mem.get(usize::try_from((a - base) / 8).ok()?).copied()
    }

    #[test]
    fn follows_the_chain() {
        let base = 0x1000;
        // frame at 0x1000 -> saved 0x1020, ret 0xa; frame at 0x1020 -> saved 0, ret 0xb
        let mem = [0x1020, 0xa, 0, 0, 0, 0xb];
        let v: Vec<_> = walk(0x1000, base, base + 48, reader(base, &mem)).collect();
        assert_eq!(v, [0xa, 0xb]);
    }

    #[test]
    fn stops_on_loops_and_bad_pointers() {
        let base = 0x1000;
        let looping = [0x1000, 0xa];
        assert_eq!(walk(0x1000, base, base + 16, reader(base, &looping)).count(), 1);
        let mem = [0x1003, 0xa];
        assert_eq!(walk(0x1000, base, base + 16, reader(base, &mem)).count(), 1);
        assert_eq!(walk(0x0ff8, base, base + 16, reader(base, &mem)).count(), 0);
        assert_eq!(walk(u64::MAX - 7, 0, u64::MAX, |_| Some(1)).count(), 0);
    }

    #[test]
    fn bounded_depth() {
        // An endless upward chain is cut at MAX_FRAMES.
        let n = walk(8, 0, u64::MAX, |a| Some(if a % 16 == 8 { a + 16 } else { 1 })).count();
        assert_eq!(n, MAX_FRAMES);
    }
}
