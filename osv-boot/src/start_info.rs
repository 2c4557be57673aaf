//! `struct hvm_start_info`: what a PVH loader hands the kernel in `%ebx`.
//!
//! Layout from Xen `public/arch-x86/hvm/start_info.h` (version 1 adds the
//! memory map):
//!
//! | offset | field            |
//! |--------|------------------|
//! | 0      | `u32 magic` (`0x336ec578`) |
//! | 4      | `u32 version`    |
//! | 8      | `u32 flags`      |
//! | 12     | `u32 nr_modules` |
//! | 16     | `u64 modlist_paddr` |
//! | 24     | `u64 cmdline_paddr` |
//! | 32     | `u64 rsdp_paddr` |
//! | 40     | `u64 memmap_paddr` (version ≥ 1) |
//! | 48     | `u32 memmap_entries` (version ≥ 1) |
//! | 52     | `u32 reserved`   |

use core::fmt;

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const MAGIC: u32 = 0x336e_c578;
/// Bytes of a version-0 structure.
pub const V0_SIZE: usize = 40;
/// Bytes of a version-1 structure.
pub const V1_SIZE: usize = 56;

/// The decoded start info. Physical addresses are as the loader gave them;
/// `0` means "absent" for each of them, as in the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartInfo {
    /// Structure version.
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Number of modules.
    pub nr_modules: u32,
    /// Physical address of the module list.
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line.
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP.
    pub rsdp_paddr: u64,
    /// Physical address of the memory map (version ≥ 1).
    pub memmap_paddr: u64,
    /// Entries in the memory map (version ≥ 1).
    pub memmap_entries: u32,
}

/// Why a start-info block was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    /// Fewer bytes than the version needs.
    Truncated,
    /// The magic value is wrong: not a PVH start.
    BadMagic(u32),
}

impl fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("hvm_start_info is truncated"),
            Self::BadMagic(m) => write!(f, "hvm_start_info magic is {m:#x}, not {MAGIC:#x}"),
        }
    }
}

impl core::error::Error for StartInfoError {}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

impl StartInfo {
    /// Parses the structure from its bytes (at least [`V0_SIZE`], and
    /// [`V1_SIZE`] when the version says 1 or more).
    ///
    /// # Errors
    /// [`StartInfoError`] for a wrong magic or too few bytes.
    pub fn parse(b: &[u8]) -> Result<Self, StartInfoError> {
        let magic = u32_at(b, 0).ok_or(StartInfoError::Truncated)?;
        if magic != MAGIC {
            return Err(StartInfoError::BadMagic(magic));
        }
        let t = StartInfoError::Truncated;
        let version = u32_at(b, 4).ok_or(t)?;
        if b.len() < if version >= 1 { V1_SIZE } else { V0_SIZE } {
            return Err(t);
        }
        let (memmap_paddr, memmap_entries) =
            if version >= 1 { (u64_at(b, 40).ok_or(t)?, u32_at(b, 48).ok_or(t)?) } else { (0, 0) };
        Ok(Self {
            version,
            flags: u32_at(b, 8).ok_or(t)?,
            nr_modules: u32_at(b, 12).ok_or(t)?,
            modlist_paddr: u64_at(b, 16).ok_or(t)?,
            cmdline_paddr: u64_at(b, 24).ok_or(t)?,
            rsdp_paddr: u64_at(b, 32).ok_or(t)?,
            memmap_paddr,
            memmap_entries,
        })
    }
}

/// A kernel command line: space-separated words, `key=value` or flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cmdline<'a>(&'a str);

impl<'a> Cmdline<'a> {
    /// Wraps a command line.
    pub const fn new(s: &'a str) -> Self {
        Self(s)
    }
    /// The whole line.
    pub const fn as_str(&self) -> &'a str {
        self.0
    }
    /// Whether the line is empty or blank.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
    /// The words of the line.
    pub fn words(&self) -> impl Iterator<Item = &'a str> {
        self.0.split_ascii_whitespace()
    }
    /// The value of the last `key=value` word, if any.
    pub fn value(&self, key: &str) -> Option<&'a str> {
        self.words().filter_map(|w| w.split_once('=')).filter(|(k, _)| *k == key).map(|(_, v)| v).last()
    }
    /// Whether the bare word `flag` appears.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.words().any(|w| w == flag)
    }
}

/// Decodes a NUL-terminated command line from at most `bytes.len()` bytes:
/// everything up to the first NUL, cut at the last whole UTF-8 character.
pub fn cmdline_from_bytes(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let b = &bytes[..end];
    match core::str::from_utf8(b) {
        Ok(s) => s,
        // `valid_up_to` is always a char boundary of `b`.
        Err(e) => core::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v1(memmap: u64, entries: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&0x7000u64.to_le_bytes());
        b.extend_from_slice(&0xf_5000u64.to_le_bytes());
        b.extend_from_slice(&memmap.to_le_bytes());
        b.extend_from_slice(&entries.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b
    }

    #[test]
    fn parses_version_1() {
        let si = StartInfo::parse(&v1(0x6000, 5)).unwrap();
        assert_eq!(si.version, 1);
        assert_eq!(si.cmdline_paddr, 0x7000);
        assert_eq!(si.rsdp_paddr, 0xf_5000);
        assert_eq!((si.memmap_paddr, si.memmap_entries), (0x6000, 5));
    }

    #[test]
    fn rejects_bad_magic_and_truncation() {
        let mut b = v1(0, 0);
        assert_eq!(StartInfo::parse(&b[..V1_SIZE - 1]), Err(StartInfoError::Truncated));
        b[0] ^= 1;
        assert!(matches!(StartInfo::parse(&b), Err(StartInfoError::BadMagic(_))));
    }

    #[test]
    fn cmdline_words() {
        let c = Cmdline::new(" test.fail  crash=pagefault crash=panic ");
        assert!(c.has_flag("test.fail"));
        assert_eq!(c.value("crash"), Some("panic"));
        assert_eq!(c.value("none"), None);
        assert!(Cmdline::new("  ").is_empty());
        assert_eq!(cmdline_from_bytes(b"abc\0def"), "abc");
        assert_eq!(cmdline_from_bytes(b"ab\xffc"), "ab");
    }

    proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = StartInfo::parse(&b);
            let _ = cmdline_from_bytes(&b);
        }
    }
}
