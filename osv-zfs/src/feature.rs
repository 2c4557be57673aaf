//! Pool feature flags (module/zcommon/zfeature_common.c).
//!
//! A pool of version 5000 (`SPA_VERSION_FEATURES`) lists its features in
//! three ZAP objects named from the MOS object directory:
//! `features_for_read`, `features_for_write` and `feature_descriptions`
//! (`DMU_POOL_FEATURES_FOR_READ`, include/sys/dmu.h). Each entry maps a
//! feature guid (`com.delphix:hole_birth`) to a reference count; a count
//! above zero means the feature is *active*: blocks on disk use it. A reader
//! must refuse a pool with an active read feature it does not understand
//! (`spa_check_features`, spa.c): the pool holds structures it would
//! misread.

use core::fmt;

/// Longest feature guid kept in full; longer ones are cut and end in `...`.
pub const FEATURE_NAME_MAX: usize = 56;

/// A feature guid, held inline so [`crate::Error`] stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeatureName {
    bytes: [u8; FEATURE_NAME_MAX],
    len: u8,
    cut: bool,
}

impl FeatureName {
    /// Keeps up to [`FEATURE_NAME_MAX`] bytes of `name`.
    pub fn new(name: &[u8]) -> FeatureName {
        let mut bytes = [0u8; FEATURE_NAME_MAX];
        let len = name.len().min(FEATURE_NAME_MAX);
        bytes[..len].copy_from_slice(&name[..len]);
        FeatureName { bytes, len: len as u8, cut: name.len() > FEATURE_NAME_MAX }
    }

    /// The kept bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(FEATURE_NAME_MAX)]
    }
}

impl fmt::Display for FeatureName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.as_bytes() {
            if b.is_ascii_graphic() {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        if self.cut {
            f.write_str("...")?;
        }
        Ok(())
    }
}

impl fmt::Debug for FeatureName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FeatureName({self})")
    }
}

/// The read features this reader understands, by guid
/// (`spa_feature_table`, zfeature_common.c). Features that are
/// read-only compatible (`ZFEATURE_FLAG_READONLY_COMPAT`) never appear in
/// `features_for_read` and need no entry here.
pub const SUPPORTED_READ_FEATURES: &[&str] = &[
    // Block births of holes: only changes what a hole's birth means.
    "com.delphix:hole_birth",
    // Data inside the block pointer (BPE): `blkptr::embedded_payload`.
    "com.delphix:embedded_data",
    // The lz4 compression function.
    "org.illumos:lz4_compress",
    // The zstd compression function (with its `zfs_zstd_header`).
    "org.freebsd:zstd_compress",
    // Blocks above 128 KiB: sizes come from the block pointer.
    "org.open-zfs:large_blocks",
    // Dnodes of several 512-byte slots (`dn_extra_slots`).
    "org.zfsonlinux:large_dnode",
    // DSL objects with ZAP-backed extra fields (`DS_FLAG_...`).
    "com.delphix:extensible_dataset",
    // Bookmarks with more fields: not read here.
    "com.datto:bookmark_v2",
    "com.delphix:bookmarks",
    // Encrypted datasets: their objsets are authenticated, not encrypted, so
    // the dataset list is readable; their contents are not (reported later).
    "com.datto:encryption",
];

/// Whether the read feature `guid` is understood.
pub fn is_supported(guid: &[u8]) -> bool {
    SUPPORTED_READ_FEATURES.iter().any(|s| s.as_bytes() == guid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_and_cut() {
        let n = FeatureName::new(b"com.example:thing");
        assert_eq!(std::format!("{n}"), "com.example:thing");
        let long = [b'a'; 80];
        let n = FeatureName::new(&long);
        assert_eq!(n.as_bytes().len(), FEATURE_NAME_MAX);
        assert!(std::format!("{n}").ends_with("a..."));
        assert!(is_supported(b"org.illumos:lz4_compress"));
        assert!(!is_supported(b"org.illumos:skein"));
    }
}
