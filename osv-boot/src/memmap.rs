//! The boot memory map: PVH's `hvm_memmap_table_entry` list turned into a
//! typed, sorted list of usable physical ranges.
//!
//! The table comes from the hypervisor, so it is parsed as untrusted bytes:
//! entries may be unsorted, overlapping, zero-sized or wrapping, and RAM may
//! overlap reserved ranges. The result is page-aligned inward, reserved space
//! always wins over RAM, and nothing here can panic.

use core::fmt;

/// Size of one `struct hvm_memmap_table_entry` (Xen `public/arch-x86/hvm/start_info.h`:
/// `u64 addr; u64 size; u32 type; u32 reserved;`).
pub const ENTRY_SIZE: usize = 24;

/// The page granule usable ranges are aligned to.
pub const PAGE: u64 = 4096;

/// How many disjoint usable ranges a [`MemoryMap`] holds.
pub const CAPACITY: usize = 64;

/// Memory types of `hvm_memmap_table_entry.type` (Xen `start_info.h`,
/// `XEN_HVM_MEMMAP_TYPE_*`, which follow the E820 numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryType {
    /// Usable RAM (1).
    Ram,
    /// Reserved (2).
    Reserved,
    /// ACPI tables, reclaimable (3).
    Acpi,
    /// ACPI non-volatile storage (4).
    Nvs,
    /// Unusable (5).
    Unusable,
    /// Disabled (6).
    Disabled,
    /// Persistent memory (7).
    Pmem,
    /// A type this crate does not know; treated as reserved.
    Other(u32),
}

impl MemoryType {
    /// Decodes the raw type field.
    pub const fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::Ram,
            2 => Self::Reserved,
            3 => Self::Acpi,
            4 => Self::Nvs,
            5 => Self::Unusable,
            6 => Self::Disabled,
            7 => Self::Pmem,
            other => Self::Other(other),
        }
    }
}

/// A half-open range of physical addresses `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysRange {
    start: u64,
    end: u64,
}

impl PhysRange {
    /// The range `[start, end)`, or `None` when `end < start`.
    pub const fn new(start: u64, end: u64) -> Option<Self> {
        if end < start {
            None
        } else {
            Some(Self { start, end })
        }
    }
    /// First address in the range.
    pub const fn start(self) -> u64 {
        self.start
    }
    /// One past the last address.
    pub const fn end(self) -> u64 {
        self.end
    }
    /// Length in bytes.
    pub const fn len(self) -> u64 {
        self.end - self.start
    }
    /// Whether the range is empty.
    pub const fn is_empty(self) -> bool {
        self.end == self.start
    }
    /// Whether `addr` lies in the range.
    pub const fn contains(self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
    /// Whether the two ranges share at least one address.
    pub const fn overlaps(self, other: PhysRange) -> bool {
        self.start < other.end && other.start < self.end
    }
}

impl fmt::Debug for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start, self.end)
    }
}

/// One raw entry of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The range the entry covers (clamped at the top of the address space).
    pub range: PhysRange,
    /// Its type.
    pub kind: MemoryType,
}

/// Why a memory map could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemMapError {
    /// The table's byte length is not a multiple of [`ENTRY_SIZE`].
    BadLength,
    /// More disjoint usable ranges than [`CAPACITY`].
    TooManyRanges,
}

impl fmt::Display for MemMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadLength => f.write_str("memory map length is not a multiple of 24 bytes"),
            Self::TooManyRanges => write!(f, "more than {CAPACITY} usable memory ranges"),
        }
    }
}

impl core::error::Error for MemMapError {}

/// Iterates the entries of a raw `hvm_memmap_table_entry` table.
///
/// # Errors
/// [`MemMapError::BadLength`] when `bytes` is not a whole number of entries.
pub fn entries(bytes: &[u8]) -> Result<impl Iterator<Item = Entry> + '_, MemMapError> {
    if !bytes.len().is_multiple_of(ENTRY_SIZE) {
        return Err(MemMapError::BadLength);
    }
    Ok(bytes.chunks_exact(ENTRY_SIZE).map(|e| {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&e[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let addr = word(0);
        let size = word(8);
        let kind = u32::from_le_bytes([e[16], e[17], e[18], e[19]]);
        let end = addr.saturating_add(size);
        Entry { range: PhysRange { start: addr, end }, kind: MemoryType::from_raw(kind) }
    }))
}

/// The usable physical memory: disjoint, sorted, page-aligned ranges.
#[derive(Clone, PartialEq, Eq)]
pub struct MemoryMap {
    ranges: [PhysRange; CAPACITY],
    len: usize,
}

impl Default for MemoryMap {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.ranges()).finish()
    }
}

impl MemoryMap {
    /// An empty map.
    pub const fn new() -> Self {
        Self { ranges: [PhysRange { start: 0, end: 0 }; CAPACITY], len: 0 }
    }

    /// Builds the usable map from a raw PVH memory-map table: the union of
    /// the RAM entries, minus every non-RAM entry, aligned inward to pages.
    ///
    /// # Errors
    /// [`MemMapError::BadLength`] for a truncated table,
    /// [`MemMapError::TooManyRanges`] when the result does not fit.
    pub fn from_pvh_table(bytes: &[u8]) -> Result<Self, MemMapError> {
        let mut map = Self::new();
        for e in entries(bytes)? {
            if e.kind == MemoryType::Ram {
                map.add(e.range)?;
            }
        }
        for e in entries(bytes)? {
            if e.kind != MemoryType::Ram {
                map.remove(e.range)?;
            }
        }
        Ok(map)
    }

    /// The usable ranges, sorted by address.
    pub fn ranges(&self) -> &[PhysRange] {
        &self.ranges[..self.len]
    }

    /// Total usable bytes.
    pub fn total(&self) -> u64 {
        self.ranges().iter().map(|r| r.len()).sum()
    }

    /// The largest range, if any.
    pub fn largest(&self) -> Option<PhysRange> {
        self.ranges().iter().copied().max_by_key(|r| r.len())
    }

    /// Whether `addr` is usable.
    pub fn contains(&self, addr: u64) -> bool {
        self.ranges().iter().any(|r| r.contains(addr))
    }

    /// Adds a range (aligned inward to pages), merging with neighbours.
    ///
    /// # Errors
    /// [`MemMapError::TooManyRanges`] when it does not fit; the map is unchanged then.
    pub fn add(&mut self, range: PhysRange) -> Result<(), MemMapError> {
        let start = align_up(range.start);
        let end = range.end & !(PAGE - 1);
        if start >= end {
            return Ok(());
        }
        let mut new = PhysRange { start, end };
        // Absorb every range that overlaps or touches the new one.
        let mut out = [PhysRange::default(); CAPACITY];
        let mut n = 0;
        let mut placed = false;
        for &r in self.ranges() {
            if r.end < new.start {
                out[n] = r;
                n += 1;
            } else if new.end < r.start {
                if !placed {
                    if n == CAPACITY {
                        return Err(MemMapError::TooManyRanges);
                    }
                    out[n] = new;
                    n += 1;
                    placed = true;
                }
                if n == CAPACITY {
                    return Err(MemMapError::TooManyRanges);
                }
                out[n] = r;
                n += 1;
            } else {
                new = PhysRange { start: new.start.min(r.start), end: new.end.max(r.end) };
            }
        }
        if !placed {
            if n == CAPACITY {
                return Err(MemMapError::TooManyRanges);
            }
            out[n] = new;
            n += 1;
        }
        self.ranges = out;
        self.len = n;
        Ok(())
    }

    /// Removes a range (every page it touches).
    ///
    /// # Errors
    /// [`MemMapError::TooManyRanges`] when removing splits a range and the
    /// halves do not fit; the map is unchanged then.
    pub fn remove(&mut self, range: PhysRange) -> Result<(), MemMapError> {
        if range.is_empty() {
            return Ok(());
        }
        let start = range.start & !(PAGE - 1);
        let end = align_up(range.end);
        if start >= end {
            return Ok(());
        }
        let mut out = [PhysRange::default(); CAPACITY];
        let mut n = 0;
        for &r in self.ranges() {
            let pieces = [
                PhysRange { start: r.start, end: r.end.min(start) },
                PhysRange { start: r.start.max(end), end: r.end },
            ];
            for p in pieces {
                if p.start < p.end {
                    if n == CAPACITY {
                        return Err(MemMapError::TooManyRanges);
                    }
                    out[n] = p;
                    n += 1;
                }
            }
        }
        self.ranges = out;
        self.len = n;
        Ok(())
    }
}

/// Rounds up to a page, saturating at the last page boundary.
const fn align_up(addr: u64) -> u64 {
    match addr.checked_add(PAGE - 1) {
        Some(v) => v & !(PAGE - 1),
        None => !(PAGE - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn table(entries: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(addr, size, kind) in entries {
            v.extend_from_slice(&addr.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&kind.to_le_bytes());
            v.extend_from_slice(&0u32.to_le_bytes());
        }
        v
    }

    /// The layout QEMU's PVH loader reports for `-m 128M` on q35.
    #[test]
    fn qemu_like_table() {
        let t = table(&[
            (0, 0x9fc00, 1),
            (0x9fc00, 0x400, 2),
            (0xf0000, 0x10000, 2),
            (0x10_0000, 0x7f0_0000, 1),
            (0xfffc_0000, 0x4_0000, 2),
        ]);
        let m = MemoryMap::from_pvh_table(&t).unwrap();
        assert_eq!(
            m.ranges(),
            &[PhysRange::new(0, 0x9f000).unwrap(), PhysRange::new(0x10_0000, 0x800_0000).unwrap()]
        );
        assert_eq!(m.total(), 0x9f000 + 0x7f0_0000);
        assert_eq!(m.largest(), PhysRange::new(0x10_0000, 0x800_0000));
    }

    #[test]
    fn truncated_table_is_an_error() {
        assert_eq!(MemoryMap::from_pvh_table(&[0; 23]).unwrap_err(), MemMapError::BadLength);
    }

    #[test]
    fn wrapping_entry_is_clamped() {
        let t = table(&[(u64::MAX - 0x1fff, 0x10_0000, 1)]);
        let m = MemoryMap::from_pvh_table(&t).unwrap();
        assert_eq!(m.ranges(), &[PhysRange::new(u64::MAX - 0x1fff, u64::MAX - 0xfff).unwrap()]);
    }

    #[test]
    fn too_many_ranges_is_an_error() {
        let v: Vec<_> = (0..=CAPACITY as u64).map(|i| (i * 2 * PAGE, PAGE, 1)).collect();
        assert_eq!(MemoryMap::from_pvh_table(&table(&v)).unwrap_err(), MemMapError::TooManyRanges);
    }

    /// The model: a set of usable page numbers.
    fn model(entries: &[(u64, u64, u32)]) -> BTreeSet<u64> {
        let mut ram = BTreeSet::new();
        for &(a, s, k) in entries {
            if k == 1 {
                let first = a.div_ceil(PAGE);
                let last = (a + s) / PAGE; // exclusive
                ram.extend(first..last.max(first));
            }
        }
        for &(a, s, k) in entries {
            if k != 1 && s > 0 {
                let first = a / PAGE;
                let last = (a + s).div_ceil(PAGE);
                for p in first..last {
                    ram.remove(&p);
                }
            }
        }
        ram
    }

    proptest! {
        #[test]
        fn matches_page_model(
            raw in proptest::collection::vec((0u64..0x40_0000, 0u64..0x10_0000, 1u32..4), 0..12)
        ) {
            let t = table(&raw);
            let m = MemoryMap::from_pvh_table(&t).unwrap();
            let mut pages = BTreeSet::new();
            let mut prev_end = None;
            for r in m.ranges() {
                prop_assert!(r.start() < r.end());
                prop_assert_eq!(r.start() % PAGE, 0);
                prop_assert_eq!(r.end() % PAGE, 0);
                if let Some(e) = prev_end {
                    // Sorted, disjoint and not touching (touching ranges merge).
                    prop_assert!(e < r.start());
                }
                prev_end = Some(r.end());
                pages.extend(r.start() / PAGE..r.end() / PAGE);
            }
            prop_assert_eq!(pages, model(&raw));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = MemoryMap::from_pvh_table(&bytes);
        }
    }
}
