//! The kernel's filesystem namespace: ramfs as `/` (osv-vfs). devfs,
//! procfs and ZFS join it as their issues land.

use alloc::sync::Arc;
use osv_vfs::{Clock, RamFs, Timespec, Vfs};

/// File times from the TSC: time since boot (there is no wall clock yet).
struct BootClock;

impl Clock for BootClock {
    fn now(&self) -> Timespec {
        let ns = osv_boot::rt::now_ns();
        Timespec { sec: (ns / 1_000_000_000) as i64, nsec: (ns % 1_000_000_000) as u32 }
    }
}

static VFS: spin::Once<Vfs> = spin::Once::new();
static ROOT: spin::Once<Arc<RamFs>> = spin::Once::new();

pub fn init() {
    let root = ROOT.call_once(|| RamFs::new(Arc::new(BootClock)));
    VFS.call_once(|| match Vfs::new(root.clone()) {
        Ok(v) => v,
        Err(e) => panic!("mounting ramfs as / failed: {e}"),
    });
}

/// The namespace (after `init`).
pub fn vfs() -> &'static Vfs {
    VFS.get().expect("fs::init runs before anything uses the VFS")
}

/// The root ramfs, for leak checks.
pub fn root() -> &'static Arc<RamFs> {
    ROOT.get().expect("fs::init runs before anything uses the VFS")
}
