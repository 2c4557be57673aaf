//! Thread-local storage blocks for kernel threads: one per thread, laid out
//! by osv-boot's `tls` module from the kernel's `.tdata`/`.tbss`, its thread
//! pointer loaded into `FS` by the context switch.

use core::alloc::Layout;

/// One thread's TLS block (heap memory, freed with the thread).
pub struct TlsBlock {
    base: *mut u8,
    layout: Layout,
    tp: u64,
}

// SAFETY: owned memory; only its thread touches the contents.
unsafe impl Send for TlsBlock {}
// SAFETY: as above (the struct itself is immutable).
unsafe impl Sync for TlsBlock {}

impl TlsBlock {
    /// A fresh block: `.tdata`'s values, `.tbss` zeroed. `None` when the heap
    /// is out of memory or the kernel's TLS segment is unusable (checked
    /// once at boot by `threads::init`).
    pub fn new() -> Option<TlsBlock> {
        let l = osv_boot::rt::tls::layout().ok()?;
        let layout = Layout::from_size_align(l.block_size(), l.align).ok()?;
        // SAFETY: non-zero size (the TCB alone is 64 bytes).
        let base = unsafe { alloc::alloc::alloc(layout) };
        if base.is_null() {
            return None;
        }
        // SAFETY: `base` is ours, `block_size` bytes, aligned as the layout asks.
        match unsafe { osv_boot::rt::tls::fill_block(&l, base) } {
            Some(tp) => Some(TlsBlock { base, layout, tp }),
            None => {
                // SAFETY: allocated just above with `layout`.
                unsafe { alloc::alloc::dealloc(base, layout) };
                None
            }
        }
    }

    /// The thread pointer (`FS` base) of this block.
    pub fn thread_pointer(&self) -> u64 {
        self.tp
    }
}

impl Drop for TlsBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with `layout`; the thread that used it
        // has ended (the block is dropped with its `Thread`).
        unsafe { alloc::alloc::dealloc(self.base, self.layout) }
    }
}

/// The in-kernel tests of thread-local storage.
pub static ALL: &[Test] = &[
    Test { name: "tls::template_copied_per_thread", run: template_copied },
    Test { name: "tls::locals_are_per_thread_across_switches_and_cpus", run: per_thread },
];

use crate::check;
use crate::ktest::{Outcome, Test};
use alloc::vec::Vec;
use osv_boot::rt::tls::PROBE_MARKER;
use osv_boot::BootInfo;

osv_boot::local_u64!(static TLS_TEST_COUNTER = 0x1234_5678;);

// A `.tbss` object (zero-initialised per thread) of 64 bytes, read and
// written through `%fs` like compiled local-exec code does.
core::arch::global_asm!(
    ".pushsection .tbss.osv_tls_test_bss,\"awT\",@nobits",
    ".balign 64",
    ".globl osv_tls_test_bss",
    ".hidden osv_tls_test_bss",
    ".type osv_tls_test_bss, @tls_object",
    ".size osv_tls_test_bss, 64",
    "osv_tls_test_bss:",
    ".zero 64",
    ".popsection",
);

/// Word `i` (0..8) of this thread's `.tbss` test object.
fn bss_word(i: usize) -> u64 {
    let p: u64;
    // SAFETY: reads %fs:0 (the self pointer) and adds the link-time offset.
    unsafe {
        core::arch::asm!("movq %fs:0, {0}", "leaq osv_tls_test_bss@tpoff({0}), {0}", out(reg) p,
                         options(att_syntax, nostack, readonly, preserves_flags));
    }
    // SAFETY: inside this thread's TLS block (64 bytes, 8-aligned, i < 8).
    unsafe { (p as *const u64).add(i % 8).read_volatile() }
}

fn set_bss_word(i: usize, v: u64) {
    let p: u64;
    // SAFETY: as in `bss_word`.
    unsafe {
        core::arch::asm!("movq %fs:0, {0}", "leaq osv_tls_test_bss@tpoff({0}), {0}", out(reg) p,
                         options(att_syntax, nostack, readonly, preserves_flags));
    }
    // SAFETY: as in `bss_word`; only this thread uses its block.
    unsafe { (p as *mut u64).add(i % 8).write_volatile(v) }
}

/// Each thread starts from the template: `.tdata` values, zeroed `.tbss`,
/// and a self pointer equal to the `FS` base; writes by one thread do not
/// show in the next one's copy.
fn template_copied(_: &'static BootInfo) -> Outcome {
    crate::threads::init().map_err(alloc::string::String::from)?;
    let l = osv_boot::rt::tls::layout().map_err(|e| alloc::format!("{e:?}"))?;
    osv_boot::println!(
        "  TLS block: {} bytes below the thread pointer ({} of .tdata), {} of TCB, aligned {}",
        l.static_size,
        l.tdata_len,
        osv_boot::tls::TCB_SIZE,
        l.align
    );
    check!(osv_boot::rt::tls::probe() == PROBE_MARKER, "main's probe {:#x}", osv_boot::rt::tls::probe());
    // main dirties its copies; a new thread must still see the template.
    TLS_TEST_COUNTER.set(7);
    set_bss_word(3, 0xdead);
    let seen = crate::threads::spawn("tls-fresh", || {
        let tp = osv_boot::rt::tls::thread_pointer();
        let selfp: u64;
        // SAFETY: reads the self pointer at %fs:0.
        unsafe {
            core::arch::asm!("movq %fs:0, {0}", out(reg) selfp, options(att_syntax, nostack, readonly, preserves_flags));
        }
        let words: Vec<u64> = (0..8).map(bss_word).collect();
        SEEN.lock().replace((tp, selfp, osv_boot::rt::tls::probe(), TLS_TEST_COUNTER.get(), words));
    });
    seen.join();
    let (tp, selfp, probe, counter, words) = SEEN.lock().take().ok_or("the thread did not report")?;
    check!(tp != 0 && tp == selfp, "FS base {tp:#x}, self pointer {selfp:#x}");
    check!(tp != osv_boot::rt::tls::thread_pointer(), "the new thread shares main's block");
    check!(probe == PROBE_MARKER, "probe {probe:#x}");
    check!(counter == 0x1234_5678, "counter {counter:#x}: not the template's value");
    check!(words.iter().all(|&w| w == 0), ".tbss not zeroed: {words:x?}");
    check!(TLS_TEST_COUNTER.get() == 7 && bss_word(3) == 0xdead, "main's copies changed");
    TLS_TEST_COUNTER.set(0x1234_5678);
    set_bss_word(3, 0);
    Ok(())
}

type Seen = (u64, u64, u64, u64, Vec<u64>);
static SEEN: spin::Mutex<Option<Seen>> = spin::Mutex::new(None);

/// Threads on every CPU keep their own values across many switches
/// (yields, sleeps, preemption, migration), and each local's address lies
/// inside the thread's own block.
fn per_thread(_: &'static BootInfo) -> Outcome {
    crate::threads::init().map_err(alloc::string::String::from)?;
    const THREADS: u64 = 6;
    const ROUNDS: u64 = 200;
    static BAD: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    static CPUS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    BAD.store(0, core::sync::atomic::Ordering::Relaxed);
    CPUS.store(0, core::sync::atomic::Ordering::Relaxed);
    let mine = TLS_TEST_COUNTER.get();
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            crate::threads::spawn(&alloc::format!("tls-{i}"), move || {
                let tag = 0xa000_0000 + i * 0x1000;
                let tp = osv_boot::rt::tls::thread_pointer();
                let at = TLS_TEST_COUNTER.as_ptr() as u64;
                // The local lies below this thread's pointer, in its block.
                if !(at < tp && tp - at < 1 << 20) {
                    BAD.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                }
                for r in 0..ROUNDS {
                    TLS_TEST_COUNTER.set(tag + r);
                    set_bss_word(r as usize, tag + r);
                    if r % 3 == 0 {
                        crate::threads::yield_now();
                    } else if r % 7 == 0 {
                        crate::threads::sleep(osv_sched::time::Nanos::from_micros(50));
                    } else {
                        // Spin a little so the timer can preempt mid-round.
                        for _ in 0..2000 {
                            core::hint::spin_loop();
                        }
                    }
                    CPUS.fetch_or(1 << crate::threads::cpu_index(), core::sync::atomic::Ordering::Relaxed);
                    if TLS_TEST_COUNTER.get() != tag + r || bss_word(r as usize) != tag + r {
                        BAD.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join();
    }
    let bad = BAD.load(core::sync::atomic::Ordering::Relaxed);
    let cpus = CPUS.load(core::sync::atomic::Ordering::Relaxed);
    osv_boot::println!(
        "  {THREADS} threads x {ROUNDS} rounds of yield/sleep/spin: {bad} wrong values; ran on CPUs {cpus:#b}"
    );
    check!(bad == 0, "{bad} rounds saw another thread's value or a misplaced local");
    check!(TLS_TEST_COUNTER.get() == mine, "main's value changed");
    let online = crate::threads::online_cpus();
    check!(online < 2 || cpus.count_ones() >= 2, "{online} CPUs online, threads ran only on {cpus:#b}");
    Ok(())
}
