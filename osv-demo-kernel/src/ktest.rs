//! The in-kernel test runner: one line per test, then `N passed, N failed`.

use alloc::string::String;
use osv_boot::{println, BootInfo};

/// Why a test did not pass.
pub enum NotPassed {
    /// It failed, for this reason.
    Failed(String),
    /// It could not run here (for example, QEMU was started without the
    /// device it tests), for this reason. The runner passes `expect=...` on
    /// the command line for what it provides, and those tests never skip.
    Skipped(String),
}

impl From<String> for NotPassed {
    fn from(s: String) -> Self {
        Self::Failed(s)
    }
}

impl From<&str> for NotPassed {
    fn from(s: &str) -> Self {
        Self::Failed(s.into())
    }
}

/// What a test returns.
pub type Outcome = Result<(), NotPassed>;

/// One in-kernel test.
pub struct Test {
    pub name: &'static str,
    pub run: fn(&'static BootInfo) -> Outcome,
}

/// Fails the test with a formatted reason unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr) => {
        if !$cond {
            return Err(alloc::format!("check failed: {} ({}:{})", stringify!($cond), file!(), line!()).into());
        }
    };
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(alloc::format!("check failed: {}: {} ({}:{})",
                stringify!($cond), alloc::format!($($fmt)+), file!(), line!()).into());
        }
    };
}

/// Runs the selected tests; `true` when none failed (and at least one ran).
pub fn run(boot: &'static BootInfo) -> bool {
    let filter = boot.cmdline.value("tests");
    let selected = |name: &str| filter.is_none_or(|f| f.split(',').any(|p| name.contains(p)));
    let extra: &[Test] =
        if boot.cmdline.has_flag("test.fail") { crate::tests::DELIBERATE_FAILURE } else { &[] };
    let (mut passed, mut failed, mut skipped) = (0u32, 0u32, 0u32);
    println!("running in-kernel tests");
    for t in crate::tests::SUITES.iter().flat_map(|s| s.iter()).chain(extra).filter(|t| selected(t.name)) {
        let start = osv_boot::rt::now_ns();
        let r = (t.run)(boot);
        let us = (osv_boot::rt::now_ns() - start) / 1000;
        match r {
            Ok(()) => {
                passed += 1;
                println!("test {} ... ok ({} us)", t.name, us);
            }
            Err(NotPassed::Failed(why)) => {
                failed += 1;
                println!("test {} ... FAILED: {}", t.name, why);
            }
            Err(NotPassed::Skipped(why)) => {
                skipped += 1;
                println!("test {} ... skipped: {}", t.name, why);
            }
        }
    }
    if skipped > 0 {
        println!("{skipped} skipped");
    }
    println!("{passed} passed, {failed} failed");
    failed == 0 && passed > 0
}
