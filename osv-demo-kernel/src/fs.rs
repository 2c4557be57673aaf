//! The kernel's filesystem namespace (osv-vfs): ramfs as `/`, devfs on
//! `/dev` (with the virtio devices behind `/dev/random` and `/dev/vblkN`),
//! procfs on `/proc`. ZFS joins it with issue #6's kernel part.

use crate::virtio::{Blk, Devices, Rng};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use osv_boot::{arch, BootInfo};
use osv_vfs::{
    BlockDev, Clock, ConsoleSink, CpuInfo, DevFs, EntropySource, Errno, MemInfo, ProcFs, ProcSource, RamFs,
    Sector, Timespec, Vfs,
};

/// File times from the TSC: time since boot (there is no wall clock yet).
struct BootClock;

impl Clock for BootClock {
    fn now(&self) -> Timespec {
        let ns = osv_boot::rt::now_ns();
        Timespec { sec: (ns / 1_000_000_000) as i64, nsec: (ns % 1_000_000_000) as u32 }
    }
}

/// `/dev/console` writes go to the serial console.
struct SerialConsole;

impl ConsoleSink for SerialConsole {
    fn write(&self, bytes: &[u8]) {
        osv_boot::print!("{}", String::from_utf8_lossy(bytes));
    }
}

/// `/dev/random` and `/dev/urandom`: the virtio-rng device, or `EIO` when
/// the machine has none.
struct VirtioEntropy(Option<spin::Mutex<Rng>>);

// SAFETY: the driver is only reached through the mutex; its register window
// and DMA buffers belong to it alone (one driver per device), so moving it
// between threads is sound.
unsafe impl Send for VirtioEntropy {}
// SAFETY: as above: every access goes through the mutex.
unsafe impl Sync for VirtioEntropy {}

impl EntropySource for VirtioEntropy {
    fn fill(&self, buf: &mut [u8]) -> osv_vfs::Result {
        let Some(rng) = &self.0 else { return Err(Errno::EIO) };
        rng.lock().fill_all(buf).map_err(|_| Errno::EIO)
    }
}

/// A virtio-blk device as devfs's block device.
struct VirtioBlock {
    dev: spin::Mutex<Blk>,
    sector_size: u32,
    size: u64,
}

// SAFETY: as for `VirtioEntropy`: one driver per device, reached only
// through the mutex.
unsafe impl Send for VirtioBlock {}
// SAFETY: as above.
unsafe impl Sync for VirtioBlock {}

impl VirtioBlock {
    /// devfs sectors (`sector_size` bytes) to virtio's 512-byte sectors.
    fn virtio_sector(&self, s: Sector) -> osv_vfs::Result<u64> {
        s.0.checked_mul(u64::from(self.sector_size / 512)).ok_or(Errno::EINVAL)
    }
}

impl BlockDev for VirtioBlock {
    fn sector_size(&self) -> u32 {
        self.sector_size
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, sector: Sector, buf: &mut [u8]) -> osv_vfs::Result {
        let s = self.virtio_sector(sector)?;
        self.dev.lock().read(s, buf).map_err(|_| Errno::EIO)
    }
    fn write_at(&self, sector: Sector, buf: &[u8]) -> osv_vfs::Result {
        let s = self.virtio_sector(sector)?;
        self.dev.lock().write(s, buf).map_err(|_| Errno::EIO)
    }
    fn flush(&self) -> osv_vfs::Result {
        self.dev.lock().flush().map_err(|_| Errno::EIO)
    }
}

/// `/proc` from the boot information, the heap and CPUID.
struct KernelProc {
    boot: &'static BootInfo,
}

impl ProcSource for KernelProc {
    fn meminfo(&self) -> MemInfo {
        let total = self.boot.memory.total();
        let (heap_size, heap_used) = crate::heap::usage();
        // RAM not handed to the heap is free too (nothing else uses it yet).
        let free = total.saturating_sub(heap_size as u64) + (heap_size - heap_used) as u64;
        MemInfo { total, free, available: free }
    }
    fn uptime_ns(&self) -> u64 {
        osv_boot::rt::now_ns()
    }
    fn cpuinfo(&self) -> CpuInfo {
        // CPUID leaf 0: vendor in EBX, EDX, ECX; leaves 0x80000002-4: the
        // brand string (Intel SDM vol. 2A, CPUID).
        let v = arch::cpuid(0, 0);
        let mut vendor = Vec::new();
        for r in [v.ebx, v.edx, v.ecx] {
            vendor.extend_from_slice(&r.to_le_bytes());
        }
        let mut brand = Vec::new();
        if arch::cpuid(0x8000_0000, 0).eax >= 0x8000_0004 {
            for leaf in 0x8000_0002..=0x8000_0004 {
                let r = arch::cpuid(leaf, 0);
                for x in [r.eax, r.ebx, r.ecx, r.edx] {
                    brand.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim_matches(char::from(0)).trim().into();
        CpuInfo { count: 1, vendor: text(&vendor), model_name: text(&brand), khz: self.boot.tsc.hz() / 1000 }
    }
}

static VFS: spin::Once<Vfs> = spin::Once::new();
static ROOT: spin::Once<Arc<RamFs>> = spin::Once::new();
static DEVFS: spin::Once<Arc<DevFs>> = spin::Once::new();

/// What `init` set up, for the banner and the tests.
pub struct Mounted {
    pub block_devices: Vec<(String, String)>,
    pub entropy: Option<String>,
}

static MOUNTED: spin::Once<Mounted> = spin::Once::new();

pub fn init(boot: &'static BootInfo, devices: Devices) -> &'static Mounted {
    let root = ROOT.call_once(|| RamFs::new(Arc::new(BootClock)));
    let vfs = VFS.call_once(|| match Vfs::new(root.clone()) {
        Ok(v) => v,
        Err(e) => panic!("mounting ramfs as / failed: {e}"),
    });
    let (rng, entropy) = match devices.rng {
        Some((r, at)) => (Some(spin::Mutex::new(r)), Some(at)),
        None => (None, None),
    };
    let devfs = DEVFS.call_once(|| DevFs::new(Arc::new(SerialConsole), Arc::new(VirtioEntropy(rng))));
    let mut block_devices = Vec::new();
    for (blk, at) in devices.blk {
        let (sector_size, size) = (blk.sector_size(), blk.size_bytes());
        let dev = Arc::new(VirtioBlock { dev: spin::Mutex::new(blk), sector_size, size });
        match devfs.register_block(dev) {
            Ok(name) => block_devices.push((name, at)),
            Err(e) => osv_boot::println!("devfs: virtio-blk at {at}: {e}"),
        }
    }
    let mounts = [
        ("/dev", devfs.clone() as Arc<dyn osv_vfs::FsOps>),
        ("/proc", ProcFs::new(Arc::new(KernelProc { boot }), Arc::new(vfs)) as Arc<dyn osv_vfs::FsOps>),
    ];
    for (path, fs) in mounts {
        if let Err(e) = vfs.mkdir(path, 0o755).and_then(|()| vfs.mount(path, fs)) {
            panic!("mounting {path} failed: {e}");
        }
    }
    MOUNTED.call_once(|| Mounted { block_devices, entropy })
}

/// The namespace (after `init`).
pub fn vfs() -> &'static Vfs {
    VFS.get().expect("fs::init runs before anything uses the VFS")
}

/// The root ramfs, for leak checks.
pub fn root() -> &'static Arc<RamFs> {
    ROOT.get().expect("fs::init runs before anything uses the VFS")
}

/// What was mounted and registered.
pub fn mounted() -> &'static Mounted {
    MOUNTED.get().expect("fs::init runs before anything uses the VFS")
}
