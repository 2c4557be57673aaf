//! `cargo xtask test`: every test layer, one stage after another, with a
//! closing `N passed, N failed` over the stages.

use crate::qemu::{self, judge, Boot, Machine, Symbolizer, Verdict};
use crate::{build_kernel, cargo, elf_sizes, tools, workspace_root, Args};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The library crates (each must build `no_std` and package).
pub const LIBRARIES: &[&str] =
    &["osv-boot", "osv-mm", "osv-sched", "osv-vfs", "osv-zfs", "osv-netchannel", "osv-virtio"];

type StageResult = Result<String, String>;

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().map_err(|e| format!("{shown}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({st})"))
    }
}

fn cargo_cmd(root: &Path) -> Command {
    let mut c = Command::new(cargo());
    c.current_dir(root);
    c
}

pub fn cmd_test(mut args: Args) -> Result<(), String> {
    let fuzz_seconds: u64 = args
        .value("--fuzz-seconds")
        .map(|s| s.parse().map_err(|_| "bad --fuzz-seconds"))
        .transpose()?
        .unwrap_or(20);
    let skip: Vec<String> =
        args.value("--skip").map(|s| s.split(',').map(String::from).collect()).unwrap_or_default();
    args.finish()?;
    let root = workspace_root();
    let mut results: Vec<(String, StageResult, Duration)> = Vec::new();
    let mut stage = |name: &str, f: &mut dyn FnMut() -> StageResult| {
        if skip.iter().any(|s| name.starts_with(s.as_str())) {
            println!("\n==> stage {name}: skipped (--skip)");
            return;
        }
        println!("\n==> stage {name}");
        let t = Instant::now();
        let r = f();
        let d = t.elapsed();
        match &r {
            Ok(note) => println!("==> stage {name}: ok ({:.1} s) {note}", d.as_secs_f64()),
            Err(e) => println!("==> stage {name}: FAILED ({:.1} s): {e}", d.as_secs_f64()),
        }
        results.push((name.to_string(), r, d));
    };

    stage("tools", &mut || {
        tools::ensure_qemu()?;
        tools::ensure_zdb()?;
        tools::ensure_cargo_fuzz(&cargo())?;
        tools::ensure_virtiofsd(&cargo())?;
        Ok(String::new())
    });
    stage("fmt", &mut || run(cargo_cmd(&root).args(["fmt", "--all", "--check"])).map(|_| String::new()));
    stage("clippy", &mut || {
        run(cargo_cmd(&root).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
        // The kernel binary (and osv-boot's runtime) only build with `kernel`.
        run(cargo_cmd(&root).args([
            "clippy",
            "-p",
            "osv-demo-kernel",
            "--features",
            "kernel",
            "--bins",
            "--",
            "-D",
            "warnings",
        ]))?;
        Ok(String::new())
    });
    stage("host-tests", &mut || {
        run(cargo_cmd(&root).args(["test", "--workspace"]))?;
        // Host-only features (`std`, a `cli` tool) carry tests of their own,
        // such as osv-zfs against OpenZFS's zdb.
        let mut extra = Vec::new();
        for lib in LIBRARIES {
            let features = crate_features(&root, lib)?;
            let wanted: Vec<&str> =
                ["std", "cli", "vfs"].into_iter().filter(|f| features.iter().any(|x| x == f)).collect();
            if !wanted.is_empty() {
                run(cargo_cmd(&root).args(["test", "-p", lib, "--features", &wanted.join(",")]))?;
                extra.push(format!("{lib} [{}]", wanted.join(",")));
            }
        }
        Ok(format!("also with host features: {}", extra.join(", ")))
    });
    stage("loom", &mut || loom(&root));
    stage("no-std", &mut || no_std_check(&root));
    stage("package", &mut || {
        // All in one command: a crate whose optional dependency is an
        // unpublished sibling (osv-vfs for osv-virtio's and osv-zfs's `vfs`)
        // verifies against the siblings packaged with it.
        let mut c = cargo_cmd(&root);
        c.args(["package", "--allow-dirty"]);
        for lib in LIBRARIES {
            c.args(["-p", lib]);
        }
        run(&mut c)?;
        Ok(format!("{} crates packaged and verified", LIBRARIES.len()))
    });

    let mut kernel: Option<PathBuf> = None;
    stage("kernel-build", &mut || {
        let elf = build_kernel(true)?;
        let (size, _, mem) = elf_sizes(&elf)?;
        kernel = Some(elf);
        Ok(format!("kernel ELF {} KiB file, {} KiB loaded", size / 1024, mem / 1024))
    });
    let elf = kernel.unwrap_or_default();
    let sym = Symbolizer::new(&elf);
    for machine in [Machine::Microvm, Machine::Q35] {
        stage(&format!("kernel-tests-{}", machine.name()), &mut || {
            kernel_tests(&elf, machine, false, sym.as_ref())
        });
    }
    stage("kernel-tests-plain-command", &mut || kernel_tests(&elf, Machine::Pc, true, sym.as_ref()));
    for machine in [Machine::Microvm, Machine::Q35] {
        stage(&format!("kernel-tests-smp4-{}", machine.name()), &mut || {
            kernel_tests_smp(&elf, machine, 4, sym.as_ref())
        });
    }
    for machine in [Machine::Q35, Machine::Microvm] {
        stage(&format!("kernel-tests-virtiofs-{}", machine.name()), &mut || {
            virtiofs_tests(&elf, machine, sym.as_ref())
        });
    }
    stage("kernel-bench-icount", &mut || kernel_bench_icount(&elf, sym.as_ref()));
    stage("runner-self-test", &mut || runner_self_test(&elf, sym.as_ref()));
    stage("fuzz", &mut || fuzz_smoke(&root, fuzz_seconds));

    println!("\n==> summary");
    let mut failed = 0;
    for (name, r, d) in &results {
        match r {
            Ok(_) => println!("  ok      {name} ({:.1} s)", d.as_secs_f64()),
            Err(e) => {
                failed += 1;
                println!("  FAILED  {name} ({:.1} s): {e}", d.as_secs_f64());
            }
        }
    }
    println!("xtask: {} passed, {} failed", results.len() - failed, failed);
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} stage(s) failed"))
    }
}

/// The names in a crate's `[features]` table.
fn crate_features(root: &Path, lib: &str) -> Result<Vec<String>, String> {
    let manifest =
        fs::read_to_string(root.join(lib).join("Cargo.toml")).map_err(|e| format!("{lib}: {e}"))?;
    let mut in_features = false;
    let mut out = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_features = line == "[features]";
        } else if in_features {
            if let Some((name, _)) = line.split_once('=') {
                if !name.trim().starts_with('#') {
                    out.push(name.trim().to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Every `tests/loom_*.rs` of every crate, under `--cfg loom`.
fn loom(root: &Path) -> StageResult {
    let mut ran = Vec::new();
    for lib in LIBRARIES {
        let Ok(dir) = fs::read_dir(root.join(lib).join("tests")) else { continue };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("loom_") && n.ends_with(".rs"))
            .map(|n| n.trim_end_matches(".rs").to_string())
            .collect();
        names.sort();
        for t in names {
            run(cargo_cmd(root)
                .env("RUSTFLAGS", "--cfg loom -Cforce-frame-pointers=yes")
                .env("LOOM_MAX_PREEMPTIONS", "2")
                .args(["test", "--release", "--target-dir", "target/loom", "-p", lib, "--test", &t]))?;
            ran.push(format!("{lib}/{t}"));
        }
    }
    if ran.is_empty() {
        return Err("no loom models found (tests/loom_*.rs)".into());
    }
    Ok(format!("models: {}", ran.join(", ")))
}

/// Links each library crate into a `#![no_std]` kernel-like binary (on
/// osv-boot's runtime) with default features and with `alloc`: if anything
/// pulled in `std`, its lang items would clash with the runtime's.
fn no_std_check(root: &Path) -> StageResult {
    let base = root.join("target").join("nostd-check");
    let mut checked = 0;
    for lib in LIBRARIES.iter().filter(|l| **l != "osv-boot") {
        let has_alloc = crate_features(root, lib)?.iter().any(|f| f == "alloc");
        let mut variants = vec![("core", "")];
        if has_alloc {
            variants.push(("alloc", "\"alloc\""));
        }
        for (variant, features) in variants {
            let dir = base.join(format!("{lib}-{variant}"));
            fs::create_dir_all(dir.join("src")).map_err(|e| e.to_string())?;
            let krate = lib.replace('-', "_");
            let cargo_toml = format!(
                "[package]\nname = \"nostd-check\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
                 [dependencies]\nosv-boot = {{ path = \"{root}/osv-boot\", features = [\"rt\"] }}\n\
                 {lib} = {{ path = \"{root}/{lib}\", default-features = false, features = [{features}] }}\n\n\
                 [workspace]\n\n[profile.dev]\npanic = \"abort\"\n[profile.release]\npanic = \"abort\"\n",
                root = root.display()
            );
            let alloc = if variant == "alloc" {
                "extern crate alloc;\nstruct NoHeap;\n\
                 // SAFETY: never hands out memory, so no contract can be broken.\n\
                 unsafe impl core::alloc::GlobalAlloc for NoHeap {\n\
                     unsafe fn alloc(&self, _: core::alloc::Layout) -> *mut u8 { core::ptr::null_mut() }\n\
                     unsafe fn dealloc(&self, _: *mut u8, _: core::alloc::Layout) {}\n}\n\
                 #[global_allocator]\nstatic HEAP: NoHeap = NoHeap;\n"
            } else {
                ""
            };
            let main = format!(
                "#![no_std]\n#![no_main]\nextern crate {krate};\n{alloc}\
                 osv_boot::entry_point!(main);\n\
                 fn main(_: &'static osv_boot::BootInfo) -> ! {{ osv_boot::rt::exit(osv_boot::rt::ExitCode::Success) }}\n"
            );
            let build = "fn main() {\n    let s = std::env::var(\"DEP_OSV_BOOT_LINKER_SCRIPT\").unwrap();\n    \
                 for a in [\"-nostartfiles\", \"-nostdlib\", \"-static\", \"-no-pie\", &format!(\"-Wl,-T,{s}\")] {\n        \
                 println!(\"cargo:rustc-link-arg-bins={a}\");\n    }\n}\n";
            fs::write(dir.join("Cargo.toml"), cargo_toml).map_err(|e| e.to_string())?;
            fs::write(dir.join("src/main.rs"), main).map_err(|e| e.to_string())?;
            fs::write(dir.join("build.rs"), build).map_err(|e| e.to_string())?;
            run(Command::new(cargo()).current_dir(&dir).env("CARGO_TARGET_DIR", base.join("target")).args([
                "build",
                "--release",
                "--quiet",
            ]))
            .map_err(|e| format!("{lib} ({variant}) does not link without std: {e}"))?;
            checked += 1;
        }
    }
    Ok(format!("{checked} no_std link checks"))
}

fn kernel_tests(elf: &Path, machine: Machine, plain: bool, sym: Option<&Symbolizer>) -> StageResult {
    let disk = crate::scratch_disk(&format!("test-disk-{}.img", machine.name()))?;
    let mut b = Boot::new(elf, machine);
    b.plain = plain;
    let mut zfs_lines = None;
    if !plain {
        b.disk = Some(&disk);
        if let Some((disks, lines)) = crate::zfsdisks::kernel_pool_disks()? {
            b.ro_disks = disks;
            b.expect.push("zfs-pool".into());
            zfs_lines = Some(lines);
        }
    }
    b.timeout = Duration::from_secs(240);
    let run = qemu::boot(&b, sym).map_err(|e| format!("starting QEMU: {e}"))?;
    match judge(run.status, run.timed_out, &run.lines) {
        Verdict::Passed { passed } if !plain => {
            check_disk_sector(&disk)?;
            let zfs = match zfs_lines {
                Some(n) => format!("; ZFS pools read in the guest match the host's {n}-line manifest"),
                None => String::new(),
            };
            Ok(format!(
                "{passed} in-kernel tests passed in {:.1} s; the guest's virtio-blk write is in the image{zfs}",
                run.wall.as_secs_f64()
            ))
        }
        Verdict::Passed { passed } => {
            Ok(format!("{passed} in-kernel tests passed in {:.1} s", run.wall.as_secs_f64()))
        }
        Verdict::Failed(why) => {
            Err(format!("{why}\nlast serial lines:\n{}{}", tail(&run.lines, 20), stderr(&run)))
        }
    }
}

/// The suites whose behaviour depends on the CPU count (scheduler, memory
/// management with its TLB shootdowns), on `cpus` CPUs; the kernel is told
/// how many (`cpus=N`), so its SMP tests fail rather than skip if fewer
/// came up. Everything else runs once, on one CPU, in `kernel-tests-*`.
fn kernel_tests_smp(elf: &Path, machine: Machine, cpus: u32, sym: Option<&Symbolizer>) -> StageResult {
    let mut b = Boot::new(elf, machine);
    b.smp = cpus;
    b.append = format!("tests=sched::,mm::,tls:: cpus={cpus}");
    b.timeout = Duration::from_secs(240);
    let run = qemu::boot(&b, sym).map_err(|e| format!("starting QEMU: {e}"))?;
    match judge(run.status, run.timed_out, &run.lines) {
        Verdict::Passed { passed } => {
            let smp = run
                .lines
                .iter()
                .filter(|l| l.starts_with("test sched::smp_") || l.starts_with("test mm::smp_"));
            let skipped = smp.clone().filter(|l| !l.contains(" ... ok")).count();
            if skipped > 0 || smp.count() == 0 {
                return Err(format!("SMP tests did not all run on {cpus} CPUs\n{}", tail(&run.lines, 20)));
            }
            Ok(format!("{passed} in-kernel tests passed on {cpus} CPUs in {:.1} s", run.wall.as_secs_f64()))
        }
        Verdict::Failed(why) => {
            Err(format!("{why}\nlast serial lines:\n{}{}", tail(&run.lines, 20), stderr(&run)))
        }
    }
}

/// The in-kernel measurements that count guest instructions: QEMU's
/// `-icount shift=0` makes one instruction one nanosecond of virtual time, so
/// the kernel's nanosecond figures are instruction counts, independent of
/// how busy the host is. Each machine type once; the figures go in the note.
fn kernel_bench_icount(elf: &Path, sym: Option<&Symbolizer>) -> StageResult {
    let mut notes = Vec::new();
    for machine in [Machine::Microvm, Machine::Q35] {
        let disk = crate::scratch_disk(&format!("bench-disk-{}.img", machine.name()))?;
        let mut b = Boot::new(elf, machine);
        b.disk = Some(&disk);
        b.append = "tests=bench:: icount".into();
        b.qemu_args = vec!["-icount".into(), "shift=0".into()];
        b.echo = false;
        b.timeout = Duration::from_secs(240);
        let run = qemu::boot(&b, sym).map_err(|e| format!("starting QEMU: {e}"))?;
        match judge(run.status, run.timed_out, &run.lines) {
            Verdict::Passed { .. } => {
                for l in run.lines.iter().filter(|l| l.contains("guest instructions per request")) {
                    println!("  {}: {}", machine.name(), l.trim());
                    notes.push(format!("{}: {}", machine.name(), l.trim()));
                }
            }
            Verdict::Failed(why) => {
                return Err(format!("{why}\nlast serial lines:\n{}{}", tail(&run.lines, 20), stderr(&run)))
            }
        }
    }
    if notes.len() != 8 {
        return Err(format!("expected 8 measurement lines, got {}: {notes:?}", notes.len()));
    }
    Ok(format!("{} figures (printed above)", notes.len()))
}

/// The virtio-fs tests against a real virtiofsd: a fresh shared directory
/// with `from-host.txt` in it, virtiofsd serving it on a vhost-user socket,
/// QEMU with guest RAM in a shared memfd (vhost-user maps it) and a
/// `vhost-user-fs` device tagged `host`; then the file the guest left
/// (`from-guest.txt`, see osv-demo-kernel/src/virtiofs.rs) must hold what
/// the guest wrote, and its scratch files must be gone.
fn virtiofs_tests(elf: &Path, machine: Machine, sym: Option<&Symbolizer>) -> StageResult {
    let virtiofsd = tools::find_virtiofsd().ok_or("virtiofsd is not installed (stage tools)")?;
    let work = workspace_root().join("target").join(format!("virtiofs-{}", machine.name()));
    let _ = fs::remove_dir_all(&work);
    let shared = work.join("shared");
    fs::create_dir_all(&shared).map_err(|e| format!("{}: {e}", shared.display()))?;
    let from_host = b"written by the host for the osv demo kernel\n";
    fs::write(shared.join("from-host.txt"), from_host).map_err(|e| e.to_string())?;
    let sock = work.join("vfs.sock");
    let mut daemon = Command::new(&virtiofsd)
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&shared)
        // Root without namespaces here: no sandbox; no guest page cache.
        .args(["--sandbox", "none", "--cache", "never", "--log-level", "error"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", virtiofsd.display()))?;
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(st)) = daemon.try_wait() {
            return Err(format!("virtiofsd exited at start ({st})"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = (|| {
        if !sock.exists() {
            return Err("virtiofsd did not create its socket".to_string());
        }
        let mut b = Boot::new(elf, machine);
        let ram = format!("memory-backend-memfd,id=mem,size={}M,share=on", b.memory_mib);
        let mut args = vec!["-object".to_string(), ram, "-machine".into(), "memory-backend=mem".into()];
        args.extend(["-chardev".into(), format!("socket,id=vfs,path={}", sock.display())]);
        if machine == Machine::Microvm {
            args.extend(["-global".into(), "virtio-mmio.force-legacy=false".into()]);
            args.extend(["-device".into(), "vhost-user-fs-device,chardev=vfs,tag=host".into()]);
        } else {
            args.extend(["-device".into(), "vhost-user-fs-pci,chardev=vfs,tag=host".into()]);
        }
        b.qemu_args = args;
        b.append = "virtiofs=host tests=virtiofs::".into();
        b.timeout = Duration::from_secs(240);
        let run = qemu::boot(&b, sym).map_err(|e| format!("starting QEMU: {e}"))?;
        let passed = match judge(run.status, run.timed_out, &run.lines) {
            Verdict::Passed { passed } => passed,
            Verdict::Failed(why) => {
                return Err(format!("{why}\nlast serial lines:\n{}{}", tail(&run.lines, 20), stderr(&run)))
            }
        };
        let got = fs::read(shared.join("from-guest.txt")).map_err(|e| format!("from-guest.txt: {e}"))?;
        let sig = b"osv-demo-kernel virtio-fs test file\n";
        let mut want: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        want[..sig.len()].copy_from_slice(sig);
        if got != want {
            return Err(format!("from-guest.txt holds {} bytes, not what the guest wrote", got.len()));
        }
        let mut left: Vec<String> = fs::read_dir(&shared)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        left.sort();
        if left != ["from-guest.txt", "from-host.txt"] {
            return Err(format!("the shared directory holds {left:?} after the run"));
        }
        Ok(format!(
            "{passed} in-kernel tests passed in {:.1} s against virtiofsd; the guest's file is on the host",
            run.wall.as_secs_f64()
        ))
    })();
    // virtiofsd exits when QEMU disconnects; make sure.
    let t = Instant::now();
    while daemon.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    result
}

/// The sector the in-kernel virtio-blk test writes at offset 0
/// (`host_check_sector` in osv-demo-kernel/src/tests.rs).
fn check_disk_sector(disk: &Path) -> Result<(), String> {
    let data = fs::read(disk).map_err(|e| format!("{}: {e}", disk.display()))?;
    let sig = b"osv-demo-kernel virtio-blk test sector\n";
    let mut want: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
    want[..sig.len()].copy_from_slice(sig);
    if data.get(..512) != Some(&want[..]) {
        return Err(format!("{}: sector 0 does not hold what the guest wrote", disk.display()));
    }
    Ok(())
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("  | {l}\n")).collect()
}

fn stderr(run: &qemu::Run) -> String {
    if run.stderr.trim().is_empty() {
        String::new()
    } else {
        format!("QEMU stderr: {}", run.stderr.trim())
    }
}

/// Proves the runner catches what it must: a failing test, a page fault, a
/// #GP and a panic (with symbolized traces), and a hang.
fn runner_self_test(elf: &Path, sym: Option<&Symbolizer>) -> StageResult {
    let sym = sym.ok_or("no symbols in the kernel ELF")?;
    let boot = |append: &str, timeout: u64| {
        let mut b = Boot::new(elf, Machine::Microvm);
        b.append = append.into();
        b.timeout = Duration::from_secs(timeout);
        qemu::boot(&b, Some(sym)).map_err(|e| format!("starting QEMU: {e}"))
    };
    let expect_lines = |run: &qemu::Run, what: &str, needles: &[&str]| -> Result<(), String> {
        for n in needles {
            if !run.lines.iter().any(|l| l.contains(n)) {
                return Err(format!("{what}: no line contains {n:?}\n{}", tail(&run.lines, 30)));
            }
        }
        Ok(())
    };

    // 1. A deliberately failing in-kernel test fails the run.
    let run = boot("test.fail", 240)?;
    if !matches!(judge(run.status, run.timed_out, &run.lines), Verdict::Failed(_)) {
        return Err("a run with a failing in-kernel test was judged a pass".into());
    }
    expect_lines(&run, "test.fail", &["test ktest::deliberate_failure ... FAILED", " 1 failed"])?;
    if run.status != Some(osv_boot::QEMU_EXIT_FAILURE) {
        return Err(format!("test.fail: QEMU exit status {:?}, expected failure", run.status));
    }

    // 2. An unexpected page fault: the report names the fault, the address
    // and the function, through the symbolized trace.
    let run = boot("crash=pagefault", 60)?;
    expect_lines(
        &run,
        "crash=pagefault",
        &[
            "EXCEPTION: page fault (#PF)",
            "cr2=0x1000000000 (read, page not present)",
            "rip=",
            "#0 0x",
            "crash_page_fault",
            "osv_demo_kernel::main",
        ],
    )?;
    if run.status != Some(osv_boot::QEMU_EXIT_FAILURE) {
        return Err(format!("crash=pagefault: QEMU exit status {:?}, expected failure", run.status));
    }

    // 3. A general-protection fault.
    let run = boot("crash=gp", 60)?;
    expect_lines(&run, "crash=gp", &["EXCEPTION: general protection (#GP)", "crash_general_protection"])?;

    // 4. A panic: location, message and a trace through `crash`.
    let run = boot("crash=panic", 60)?;
    expect_lines(
        &run,
        "crash=panic",
        &["panicked at osv-demo-kernel/src/main.rs", "crash requested", "osv_demo_kernel::crash"],
    )?;
    if run.status != Some(osv_boot::QEMU_EXIT_FAILURE) {
        return Err(format!("crash=panic: QEMU exit status {:?}, expected failure", run.status));
    }

    // 5. A kernel thread's stack overflow hits its guard page and is
    // reported as one, naming the thread and the function that overflowed.
    let run = boot("crash=stackoverflow", 60)?;
    expect_lines(
        &run,
        "crash=stackoverflow",
        &[
            "EXCEPTION: page fault (#PF)",
            "(write, page not present)",
            "stack overflow: ",
            "is in the guard page of stack 'overflow-thread'",
            "recurse_forever",
        ],
    )?;
    if run.status != Some(osv_boot::QEMU_EXIT_FAILURE) {
        return Err(format!("crash=stackoverflow: QEMU exit status {:?}, expected failure", run.status));
    }

    // 6. A hung guest is killed and reported.
    let run = boot("crash=hang", 10)?;
    if !run.timed_out {
        return Err(format!("crash=hang: the guest exited ({:?}) instead of hanging", run.status));
    }
    if !matches!(judge(run.status, run.timed_out, &run.lines), Verdict::Failed(_)) {
        return Err("a hung guest was judged a pass".into());
    }
    Ok("failing test, #PF, #GP, panic, stack overflow and hang all detected".into())
}

/// Runs every fuzz target for a bounded time on a copy of its seed corpus.
fn fuzz_smoke(root: &Path, seconds: u64) -> StageResult {
    let fuzz = root.join("fuzz");
    let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).map_err(|e| e.to_string())?;
    let targets: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \""))
        .map(|l| l.trim_end_matches('"'))
        .filter(|n| *n != "osv-fuzz")
        .collect();
    if targets.is_empty() {
        return Err("no fuzz targets".into());
    }
    for t in &targets {
        let seeds = fuzz.join("corpus").join(t);
        let work = root.join("target").join("fuzz-smoke").join(t);
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let mut c = cargo_cmd(&fuzz);
        c.args(["fuzz", "run", "--sanitizer", "none", t]).arg(&work);
        if seeds.is_dir() {
            c.arg(&seeds);
        }
        c.args(["--", &format!("-max_total_time={seconds}"), "-rss_limit_mb=2048"]);
        // Read-only seeds: libFuzzer writes new inputs to the first directory.
        run(&mut c).map_err(|e| format!("fuzz target {t}: {e}"))?;
    }
    Ok(format!("{} targets, {seconds} s each", targets.len()))
}
