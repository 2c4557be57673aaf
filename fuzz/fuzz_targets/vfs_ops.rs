//! The descriptor API under arbitrary operation sequences and paths: a fresh
//! ramfs-backed `Vfs`, with devfs on `/dev` and procfs on `/proc`, must
//! return a result or an errno for every call, never panic, and free every
//! ramfs vnode once dropped.
//!
//! Input: a sequence of operations, each an opcode byte followed by its
//! operands (paths are token lists over a small alphabet with `.`, `..`,
//! empty components, over-long names and the names in `/dev` and `/proc`;
//! numbers are little-endian bytes).
//! Running out of input ends the sequence.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use osv_vfs::{
    ConsoleSink, CpuInfo, DevFs, EntropySource, Fd, MemInfo, MountList, OpenFlags, PollEvents, ProcFs, ProcSource,
    RamFs, Vfs, Whence, ZeroClock,
};

struct Kernel;
impl ProcSource for Kernel {
    fn meminfo(&self) -> MemInfo {
        MemInfo { total: 64 << 20, free: 1 << 20, available: 1 << 20 }
    }
    fn uptime_ns(&self) -> u64 {
        123_456_789
    }
    fn cpuinfo(&self) -> CpuInfo {
        CpuInfo { count: 2, vendor: "V".into(), model_name: "M".into(), khz: 1 }
    }
}
struct Sink;
impl ConsoleSink for Sink {
    fn write(&self, _bytes: &[u8]) {}
}
struct Entropy;
impl EntropySource for Entropy {
    fn fill(&self, buf: &mut [u8]) -> osv_vfs::Result {
        buf.fill(7);
        Ok(())
    }
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    /// A signed offset: small, page-scaled, or huge.
    fn off(&mut self) -> Option<i64> {
        let kind = self.byte()?;
        let v = i64::from(self.u16()?);
        Some(match kind % 5 {
            0 => v,
            1 => v * 4096,
            2 => -v,
            3 => i64::MAX - v,
            _ => v << 40,
        })
    }
    fn fd(&mut self) -> Option<Fd> {
        let b = self.byte()?;
        Some(Fd::new(if b >= 0xf0 { u32::from(b) * 5 } else { u32::from(b % 8) }))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = usize::from(self.byte()? % 64).min(self.0.len());
        let (d, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(d.to_vec())
    }
    fn path(&mut self) -> Option<String> {
        const TOKENS: [&str; 20] = [
            "a", "b", "c", "/", "/", ".", "..", "d", "/", "e", "dev", "proc", "null", "zero", "self", "mounts",
            "random", "console", "uptime", "meminfo",
        ];
        let n = self.byte()?;
        let mut s = String::new();
        for _ in 0..n % 10 {
            let t = self.byte()?;
            match t {
                0xfe => s.push_str(&"L".repeat(255)),
                0xff => s.push_str(&"M".repeat(256)),
                0xfd => s.push_str(&"/".repeat(4096)),
                0xfc => s.push_str("/dev/"),
                0xfb => s.push_str("/proc/"),
                _ => s.push_str(TOKENS[usize::from(t) % TOKENS.len()]),
            }
        }
        Some(s)
    }
}

fn step(vfs: &Vfs, inp: &mut Input<'_>, extra: &mut Vec<Arc<RamFs>>) -> Option<()> {
    let op = inp.byte()?;
    let mut buf = [0u8; 64];
    match op % 34 {
        0 => drop(vfs.mkdir(&inp.path()?, 0o755)),
        1 => {
            let p = inp.path()?;
            let bits = u32::from(inp.byte()?);
            // Spread the byte over the flag bits that matter.
            let flags = (bits & 3)
                | ((bits >> 2) & 1) * 0o100
                | ((bits >> 3) & 1) * 0o200
                | ((bits >> 4) & 1) * 0o1000
                | ((bits >> 5) & 1) * 0o2000
                | ((bits >> 6) & 1) * 0o200000
                | ((bits >> 7) & 1) * 0o400000;
            drop(vfs.open(&p, OpenFlags::from_bits(flags), 0o644));
        }
        2 => drop(vfs.close(inp.fd()?)),
        3 => {
            let n = usize::from(inp.byte()? % 64);
            drop(vfs.read(inp.fd()?, &mut buf[..n]));
        }
        4 => {
            let fd = inp.fd()?;
            drop(vfs.write(fd, &inp.bytes()?));
        }
        5 => {
            let fd = inp.fd()?;
            let off = inp.off()?;
            drop(vfs.pread(fd, &mut buf, off));
        }
        6 => {
            let fd = inp.fd()?;
            let d = inp.bytes()?;
            drop(vfs.pwrite(fd, &d, inp.off()?));
        }
        7 => {
            let fd = inp.fd()?;
            let (a, b) = buf.split_at_mut(7);
            drop(vfs.readv(fd, &mut [a, b]));
        }
        8 => {
            let fd = inp.fd()?;
            let (a, b) = (inp.bytes()?, inp.bytes()?);
            drop(vfs.writev(fd, &[&a, &b]));
        }
        9 => {
            let fd = inp.fd()?;
            let off = inp.off()?;
            if let Ok(w) = Whence::from_raw(i32::from(inp.byte()? % 6)) {
                drop(vfs.lseek(fd, off, w));
            }
        }
        10 => drop(vfs.dup(inp.fd()?)),
        11 => {
            let a = inp.fd()?;
            drop(vfs.dup2(a, inp.fd()?));
        }
        12 => drop(vfs.fstat(inp.fd()?)),
        13 => drop(vfs.stat(&inp.path()?)),
        14 => drop(vfs.lstat(&inp.path()?)),
        15 => {
            let fd = inp.fd()?;
            drop(vfs.getdents(fd, usize::from(inp.byte()? % 8)));
        }
        16 => drop(vfs.unlink(&inp.path()?)),
        17 => {
            let a = inp.path()?;
            drop(vfs.rename(&a, &inp.path()?));
        }
        18 => drop(vfs.rmdir(&inp.path()?)),
        19 => {
            let p = inp.path()?;
            drop(vfs.truncate(&p, inp.off()?));
        }
        20 => {
            let fd = inp.fd()?;
            drop(vfs.ftruncate(fd, inp.off()?));
        }
        21 => drop(vfs.fsync(inp.fd()?)),
        22 => drop(vfs.chdir(&inp.path()?)),
        23 => drop(vfs.getcwd()),
        24 => {
            let t = inp.path()?;
            drop(vfs.symlink(&t, &inp.path()?));
        }
        25 => drop(vfs.readlink(&inp.path()?)),
        26 => {
            let a = inp.path()?;
            drop(vfs.link(&a, &inp.path()?));
        }
        27 => {
            let fs = RamFs::new(Arc::new(ZeroClock));
            extra.push(fs.clone());
            drop(vfs.mount(&inp.path()?, fs));
        }
        28 => drop(vfs.umount(&inp.path()?)),
        29 => {
            let a = inp.path()?;
            drop(vfs.pivot_root(&a, &inp.path()?));
        }
        30 => {
            vfs.evict_unused();
        }
        31 => vfs.drop_caches(),
        32 => {
            let fd = inp.fd()?;
            drop(vfs.poll(fd, PollEvents::IN.union(PollEvents::OUT)));
            drop(vfs.ioctl(fd, 0x5401, 0));
            drop(vfs.mmap_check(fd, 0, 4096, false));
        }
        _ => {
            drop(vfs.fchdir(inp.fd()?));
            drop(vfs.statfs("/"));
            drop(vfs.sync());
        }
    }
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let root = RamFs::new(Arc::new(ZeroClock));
    let mut counters = vec![root.live_counter()];
    let vfs = Arc::new(Vfs::new(root).expect("mounting a fresh ramfs"));
    vfs.mkdir("/dev", 0o755).expect("mkdir /dev");
    vfs.mkdir("/proc", 0o555).expect("mkdir /proc");
    vfs.mount("/dev", DevFs::new(Arc::new(Sink), Arc::new(Entropy))).expect("mounting devfs");
    let mounts: Arc<dyn MountList> = Arc::new(Arc::downgrade(&vfs));
    vfs.mount("/proc", ProcFs::new(Arc::new(Kernel), mounts)).expect("mounting procfs");
    let mut extra = Vec::new();
    let mut inp = Input(data);
    while step(&vfs, &mut inp, &mut extra).is_some() {}
    counters.extend(extra.iter().map(|fs| fs.live_counter()));
    drop(extra);
    drop(vfs);
    for c in counters {
        assert_eq!(c.get(), 0, "vnodes outlived the VFS");
    }
});
