//! The block I/O this crate reads through.
//!
//! osv-zfs owns this trait so it depends on no other crate: the host tool
//! implements it over files (`FileDevice`, with `std`), a kernel over its
//! virtio-blk driver, tests and fuzzers over memory ([`MemDevice`]).

use crate::{Error, Result};

/// A readable device holding one vdev (a disk, a partition, a file).
pub trait BlockDevice {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from byte `offset`. Reads past [`size`](Self::size) fail
    /// with [`Error::OutOfRange`]; device failures with [`Error::Io`].
    /// Offsets and lengths need no alignment; a sector-based implementation
    /// reads the covering sectors.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result;
}

impl<D: BlockDevice + ?Sized> BlockDevice for &mut D {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result {
        (**self).read_at(offset, buf)
    }
}

/// A device in memory: any byte container.
#[derive(Debug, Clone)]
pub struct MemDevice<T: AsRef<[u8]>>(pub T);

impl<T: AsRef<[u8]>> BlockDevice for MemDevice<T> {
    fn size(&self) -> u64 {
        self.0.as_ref().len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result {
        let data = self.0.as_ref();
        let start = usize::try_from(offset).map_err(|_| Error::OutOfRange)?;
        let end = start.checked_add(buf.len()).ok_or(Error::OutOfRange)?;
        buf.copy_from_slice(data.get(start..end).ok_or(Error::OutOfRange)?);
        Ok(())
    }
}

/// A device over a host file (`std` only).
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct FileDevice {
    file: std::fs::File,
    size: u64,
}

#[cfg(feature = "std")]
impl FileDevice {
    /// Opens `path` read-only.
    pub fn open<P: AsRef<std::path::Path>>(path: P) -> std::io::Result<FileDevice> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(FileDevice { file, size })
    }
}

#[cfg(feature = "std")]
impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result {
        use std::io::{Read, Seek, SeekFrom};
        let end = offset.checked_add(buf.len() as u64).ok_or(Error::OutOfRange)?;
        if end > self.size {
            return Err(Error::OutOfRange);
        }
        self.file.seek(SeekFrom::Start(offset)).and_then(|_| self.file.read_exact(buf)).map_err(|_| Error::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_device_bounds() {
        let mut d = MemDevice([1u8, 2, 3, 4]);
        let mut b = [0u8; 2];
        d.read_at(2, &mut b).unwrap();
        assert_eq!(b, [3, 4]);
        assert_eq!(d.read_at(3, &mut b), Err(Error::OutOfRange));
        assert_eq!(d.read_at(u64::MAX, &mut b), Err(Error::OutOfRange));
        assert_eq!(d.size(), 4);
    }
}
