//! Host memory for tests: a [`FakeMemory`] arena of 4 KiB frames that is both the
//! [`FrameAllocator`] and the [`PhysMapper`], and [`FakeRam`], contiguous host memory posing
//! as physical RAM for the page allocator and the heap.
//!
//! It is adversarial like virtio-drivers' fake HAL: freshly allocated frames are filled with a
//! junk pattern (code that forgets to zero a table sees garbage entries), freeing a frame
//! twice or one it never handed out panics, and an optional limit makes allocation fail on
//! demand.
//!
//! Implementing the unsafe traits is why `unsafe` is allowed here.
#![allow(unsafe_code)]

use std::boxed::Box;
use std::collections::BTreeSet;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::vec::Vec;

use crate::hw::{FrameAllocator, LinearMap, PhysMapper};
use crate::sync::{AtomicU64, Ordering};
use crate::PhysAddr;

/// The physical address of frame 0 (not zero, so a stray null frame is caught).
pub const FAKE_PHYS_BASE: u64 = 0x1000_0000;
/// What a freshly allocated frame is filled with (present, writable, PS: the worst junk).
pub const JUNK: u64 = 0xdead_beef_dead_b0e3;

#[repr(C, align(4096))]
struct Frame([AtomicU64; 512]);

struct State {
    free: Vec<usize>,
    used: BTreeSet<usize>,
    limit: Option<usize>,
    allocations: u64,
    huge_enabled: bool,
}

/// A fixed arena of frames at physical addresses `FAKE_PHYS_BASE + i * 4096`.
pub struct FakeMemory {
    frames: Box<[Frame]>,
    state: Mutex<State>,
}

impl core::fmt::Debug for FakeMemory {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FakeMemory")
            .field("frames", &self.frames.len())
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl FakeMemory {
    /// An arena of `frames` frames, all free.
    pub fn new(frames: usize) -> Self {
        let frames: Box<[Frame]> =
            (0..frames).map(|_| Frame(core::array::from_fn(|_| AtomicU64::new(JUNK)))).collect();
        let free = (0..frames.len()).rev().collect();
        Self {
            frames,
            state: Mutex::new(State {
                free,
                used: BTreeSet::new(),
                limit: None,
                allocations: 0,
                huge_enabled: true,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails allocations once `limit` frames are in use (`None`: only the arena size limits).
    pub fn set_limit(&self, limit: Option<usize>) {
        self.state().limit = limit;
    }

    /// Whether [`FrameAllocator::allocate_huge`] may hand out 2 MiB runs (default: yes). Off
    /// models an allocator that cannot (or a fragmented one).
    pub fn set_huge(&self, enabled: bool) {
        self.state().huge_enabled = enabled;
    }

    /// Frames currently handed out.
    pub fn in_use(&self) -> usize {
        self.state().used.len()
    }

    /// Successful allocations so far.
    pub fn allocations(&self) -> u64 {
        self.state().allocations
    }

    /// Whether `frame` is currently handed out.
    pub fn is_allocated(&self, frame: PhysAddr) -> bool {
        self.index(frame).is_some_and(|i| self.state().used.contains(&i))
    }

    /// The frames currently handed out.
    pub fn allocated(&self) -> Vec<PhysAddr> {
        self.state().used.iter().map(|&i| Self::addr(i)).collect()
    }

    /// Reads the `word`-th `u64` of `frame`.
    pub fn read_u64(&self, frame: PhysAddr, word: usize) -> u64 {
        let i = self.index(frame).expect("not a fake frame");
        self.frames[i].0[word].load(Ordering::Relaxed)
    }

    fn addr(i: usize) -> PhysAddr {
        PhysAddr::new(FAKE_PHYS_BASE + i as u64 * 4096)
    }

    fn index(&self, frame: PhysAddr) -> Option<usize> {
        let off = frame.as_u64().checked_sub(FAKE_PHYS_BASE)?;
        let i = usize::try_from(off / 4096).ok()?;
        (frame.is_aligned(4096) && i < self.frames.len()).then_some(i)
    }
}

// SAFETY: frames are distinct, 4 KiB-aligned elements of `frames` at distinct addresses; a
// frame is in `used` from allocation to free, so it is never handed out twice.
unsafe impl FrameAllocator for FakeMemory {
    fn allocate_frame(&self) -> Option<PhysAddr> {
        let mut s = self.state();
        if s.limit.is_some_and(|l| s.used.len() >= l) {
            return None;
        }
        let i = s.free.pop()?;
        s.used.insert(i);
        s.allocations += 1;
        drop(s);
        for w in &self.frames[i].0 {
            w.store(JUNK, Ordering::Relaxed);
        }
        Some(Self::addr(i))
    }

    unsafe fn free_frame(&self, frame: PhysAddr) {
        let i = self.index(frame).unwrap_or_else(|| panic!("freeing {frame:?}, not a fake frame"));
        let mut s = self.state();
        assert!(s.used.remove(&i), "double free of {frame:?}");
        s.free.push(i);
    }

    /// The lowest 2 MiB-aligned run of 512 free frames (the arena's base is 2 MiB aligned),
    /// subject to the limit; its frames are junk-filled and freeable one by one.
    fn allocate_huge(&self) -> Option<PhysAddr> {
        let mut s = self.state();
        if s.limit.is_some_and(|l| s.used.len() + 512 > l) || !s.huge_enabled {
            return None;
        }
        let k =
            (0..self.frames.len() / 512).find(|k| (k * 512..k * 512 + 512).all(|i| !s.used.contains(&i)))?;
        s.free.retain(|i| !(k * 512..k * 512 + 512).contains(i));
        s.used.extend(k * 512..k * 512 + 512);
        s.allocations += 512;
        drop(s);
        for f in &self.frames[k * 512..k * 512 + 512] {
            for w in &f.0 {
                w.store(JUNK, Ordering::Relaxed);
            }
        }
        Some(Self::addr(k * 512))
    }
}

// SAFETY: every fake frame is a 4096-byte, 4096-aligned `Frame` owned by `self` for its whole
// life, distinct frames do not overlap, and `Frame` is atomics only, so writes through the
// pointer (made from a shared reference) are permitted interior mutation.
unsafe impl PhysMapper for FakeMemory {
    fn frame_ptr(&self, frame: PhysAddr) -> NonNull<u8> {
        let i = self.index(frame).unwrap_or_else(|| panic!("{frame:?} is not a fake frame"));
        NonNull::from(&self.frames[i]).cast()
    }
}

/// Where [`FakeRam`] puts its first frame by default.
pub const FAKE_RAM_BASE: u64 = 0x1_0000_0000;

/// A contiguous arena of host memory posing as physical RAM at a chosen base address: the
/// backing store for the page allocator and the heap in tests and benchmarks. Frame `i` is
/// physical address `base + i * 4096`, and consecutive frames are consecutive in host memory,
/// so it is a [`LinearMap`] too. Fresh memory holds [`JUNK`].
pub struct FakeRam {
    frames: NonNull<Frame>,
    len: usize,
    base: u64,
}

// SAFETY: the arena is plain memory of atomics owned by the value.
unsafe impl Send for FakeRam {}
// SAFETY: all access goes through atomics or through pointers whose users synchronise.
unsafe impl Sync for FakeRam {}

/// Host alignment of the arena: virtual and physical addresses agree modulo this.
pub const FAKE_RAM_ALIGN: usize = 2 << 20;

impl core::fmt::Debug for FakeRam {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "FakeRam({:#x}, {} frames)", self.base, self.len)
    }
}

impl FakeRam {
    /// `frames` frames (at least one) from physical address `base` (2 MiB aligned, so that
    /// virtual and physical addresses agree modulo 2 MiB, as [`LinearMap`] promises).
    pub fn new(base: PhysAddr, frames: usize) -> Self {
        assert!(base.is_aligned(FAKE_RAM_ALIGN as u64), "FakeRam base must be 2 MiB aligned");
        assert!(frames > 0);
        let layout =
            std::alloc::Layout::from_size_align(frames * 4096, FAKE_RAM_ALIGN).expect("FakeRam too big");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) }.cast::<Frame>();
        let Some(ptr) = NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        for i in 0..frames {
            // SAFETY: frame `i` is inside the fresh allocation, suitably aligned.
            unsafe { ptr.as_ptr().add(i).write(Frame(core::array::from_fn(|_| AtomicU64::new(JUNK)))) };
        }
        Self { frames: ptr, len: frames, base: base.as_u64() }
    }

    fn frame(&self, i: usize) -> &Frame {
        assert!(i < self.len);
        // SAFETY: `i` is in bounds of the initialised arena, which lives as long as `self`.
        unsafe { &*self.frames.as_ptr().add(i) }
    }

    /// The physical range the arena covers.
    pub fn range(&self) -> core::ops::Range<PhysAddr> {
        PhysAddr::new(self.base)..PhysAddr::new(self.base + self.len as u64 * 4096)
    }

    fn index(&self, frame: PhysAddr) -> usize {
        let off = frame.as_u64().wrapping_sub(self.base);
        let i = usize::try_from(off / 4096).unwrap_or(usize::MAX);
        assert!(i < self.len, "{frame:?} is outside the fake RAM");
        i
    }

    /// Reads the `word`-th `u64` of the page at `frame`.
    pub fn read_u64(&self, frame: PhysAddr, word: usize) -> u64 {
        self.frame(self.index(frame)).0[word].load(Ordering::Relaxed)
    }
}

// SAFETY: frame `i` is the 4096-byte, 4096-aligned `frames[i]`, owned by `self` for its whole
// life; frames do not overlap, and they are atomics, so writes through the pointer (made from
// a shared reference) are permitted interior mutation.
unsafe impl PhysMapper for FakeRam {
    fn frame_ptr(&self, frame: PhysAddr) -> NonNull<u8> {
        let i = self.index(frame.align_down(4096));
        NonNull::from(self.frame(i)).cast()
    }
}

// SAFETY: `frames` is one allocation of 4096-byte elements, so frame `i + k` is `k * 4096`
// bytes after frame `i` in host memory; the arena is 2 MiB aligned in host memory and `base`
// in physical memory; and `phys_of` inverts `frame_ptr`.
unsafe impl LinearMap for FakeRam {
    fn phys_of(&self, ptr: NonNull<u8>) -> PhysAddr {
        let off = (ptr.as_ptr() as usize).wrapping_sub(self.frames.as_ptr() as usize);
        PhysAddr::new(self.base + off as u64)
    }
}

impl Drop for FakeRam {
    fn drop(&mut self) {
        let layout =
            std::alloc::Layout::from_size_align(self.len * 4096, FAKE_RAM_ALIGN).expect("made in new");
        // SAFETY: allocated in `new` with this layout; `Frame` needs no drop.
        unsafe { std::alloc::dealloc(self.frames.as_ptr().cast(), layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_distinct_junk_frames_and_limits() {
        let mem = FakeMemory::new(4);
        let a = mem.allocate_frame().unwrap();
        let b = mem.allocate_frame().unwrap();
        assert_ne!(a, b);
        assert_eq!(mem.read_u64(a, 17), JUNK);
        mem.set_limit(Some(2));
        assert_eq!(mem.allocate_frame(), None);
        // SAFETY: `a` came from this allocator and is not used.
        unsafe { mem.free_frame(a) };
        assert_eq!(mem.in_use(), 1);
        assert!(mem.is_allocated(b) && !mem.is_allocated(a));
        assert_eq!(mem.frame_ptr(b).as_ptr() as usize % 4096, 0);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let mem = FakeMemory::new(1);
        let a = mem.allocate_frame().unwrap();
        // SAFETY: first free is legitimate; the second is the bug under test (the fake only
        // does bookkeeping, so it is caught without touching memory).
        unsafe {
            mem.free_frame(a);
            mem.free_frame(a);
        }
    }
}
