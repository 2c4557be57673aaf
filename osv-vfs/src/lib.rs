//! A UNIX-style VFS for unikernels: vnodes with operation tables, mounts,
//! path lookup and descriptors.
//!
//! Filesystems (ramfs, devfs, procfs, ZFS, virtio-fs) plug in by filling a
//! table of vnode operations, as in OSv's `struct vnops`. Status: only the
//! error type exists today; the VFS is tracked in issue #5.
//!
//! ```
//! use osv_vfs::Errno;
//!
//! assert_eq!(Errno::ENOENT.as_i32(), 2);
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

/// POSIX error numbers, with the values Linux uses (`asm-generic/errno-base.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
#[non_exhaustive]
pub enum Errno {
    /// Operation not permitted.
    EPERM = 1,
    /// No such file or directory.
    ENOENT = 2,
    /// I/O error.
    EIO = 5,
    /// Bad file descriptor.
    EBADF = 9,
    /// Out of memory.
    ENOMEM = 12,
    /// File exists.
    EEXIST = 17,
    /// Not a directory.
    ENOTDIR = 20,
    /// Is a directory.
    EISDIR = 21,
    /// Invalid argument.
    EINVAL = 22,
    /// File name too long.
    ENAMETOOLONG = 36,
    /// Function not implemented.
    ENOSYS = 38,
}

impl Errno {
    /// The numeric value.
    pub const fn as_i32(self) -> i32 {
        self as i32
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

impl core::error::Error for Errno {}

#[cfg(test)]
mod tests {
    #[test]
    fn values_match_linux() {
        assert_eq!(super::Errno::ENAMETOOLONG.as_i32(), 36);
        assert_eq!(super::Errno::ENOSYS.to_string(), "ENOSYS");
    }
}
