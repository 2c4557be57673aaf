//! `cargo xtask`: build the demo kernel, boot it, and run every test layer.
//!
//! - `cargo xtask build [--debug]`: the kernel ELF (prints its path and size).
//! - `cargo xtask run [--machine microvm|q35|pc] [--append "..."] [--smp N] [--timeout SECS]`:
//!   boots the kernel under QEMU with the serial console on the terminal.
//! - `cargo xtask test [--fuzz-seconds N] [--skip STAGE,...]`: formatting,
//!   clippy, host tests, loom models, no_std link checks, in-kernel tests on
//!   every machine type, the runner's own checks, and fuzz smoke runs.
//! - `cargo xtask boot-time [--runs N] [--machine M]`: wall time from QEMU's
//!   start to the demo app's first line, and the kernel's own entry-to-main.

mod qemu;
mod stages;
mod tools;
mod zfsdisks;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds the kernel; returns the ELF's path.
pub fn build_kernel(release: bool) -> Result<PathBuf, String> {
    let root = workspace_root();
    let mut c = Command::new(cargo());
    c.current_dir(&root).args([
        "build",
        "-p",
        "osv-demo-kernel",
        "--features",
        "kernel",
        "--bin",
        "osv-demo-kernel",
    ]);
    if release {
        c.arg("--release");
    }
    let st = c.status().map_err(|e| format!("cargo build: {e}"))?;
    if !st.success() {
        return Err("building the kernel failed".into());
    }
    // Where cargo put it: CARGO_TARGET_DIR if set (absolute), else target/.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| root.join("target"));
    let elf = target.join(if release { "release" } else { "debug" }).join("osv-demo-kernel");
    if elf.exists() {
        Ok(elf)
    } else {
        Err(format!("{} is missing after the build", elf.display()))
    }
}

/// File size, and the bytes the loader places in memory (PT_LOAD file bytes
/// and the zero-filled rest).
pub fn elf_sizes(elf: &Path) -> Result<(u64, u64, u64), String> {
    use object::{Object, ObjectSegment};
    let data = std::fs::read(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    let file = object::File::parse(&*data).map_err(|e| format!("{}: {e}", elf.display()))?;
    let (mut file_bytes, mut mem_bytes) = (0, 0);
    for s in file.segments() {
        file_bytes += s.file_range().1;
        mem_bytes += s.size();
    }
    Ok((data.len() as u64, file_bytes, mem_bytes))
}

/// A fresh 16 MiB zero-filled raw disk image under `target/`, for the
/// virtio-blk device the in-kernel tests write to.
pub fn scratch_disk(name: &str) -> Result<PathBuf, String> {
    let path = workspace_root().join("target").join(name);
    let f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(16 << 20).map_err(|e| format!("{}: {e}", path.display()))?;
    // The in-kernel virtio-blk test writes only to the disk that starts with
    // this (`SCRATCH_MAGIC` in osv-demo-kernel/src/tests.rs).
    std::os::unix::fs::FileExt::write_all_at(&f, b"osv scratch disk, write\n", 0)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

struct Args(Vec<String>);

impl Args {
    fn flag(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|a| a != name);
        before != self.0.len()
    }
    fn value(&mut self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|a| a == name)?;
        if i + 1 >= self.0.len() {
            return None;
        }
        let v = self.0.remove(i + 1);
        self.0.remove(i);
        Some(v)
    }
    fn finish(self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("unknown arguments: {}", self.0.join(" ")))
        }
    }
}

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        argv.push("help".into());
    }
    let cmd = argv.remove(0);
    let args = Args(argv);
    let r = match cmd.as_str() {
        "build" => cmd_build(args),
        "run" => cmd_run(args),
        "test" => stages::cmd_test(args),
        "boot-time" => cmd_boot_time(args),
        _ => {
            println!("usage: cargo xtask build [--debug]");
            println!("       cargo xtask run [--machine microvm|q35|pc] [--append \"...\"] [--smp N] [--timeout SECS]");
            println!("       cargo xtask test [--fuzz-seconds N] [--skip STAGE,...]");
            println!("       cargo xtask boot-time [--runs N] [--machine M]");
            return if cmd == "help" || cmd == "--help" { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_build(mut args: Args) -> Result<(), String> {
    let release = !args.flag("--debug");
    args.finish()?;
    let elf = build_kernel(release)?;
    let (size, _, mem) = elf_sizes(&elf)?;
    println!("{}: {} KiB file, {} KiB loaded", elf.display(), size / 1024, mem / 1024);
    Ok(())
}

fn machine_arg(args: &mut Args) -> Result<qemu::Machine, String> {
    match args.value("--machine") {
        None => Ok(qemu::Machine::Microvm),
        Some(m) => qemu::Machine::parse(&m).ok_or_else(|| format!("unknown machine {m} (microvm, q35, pc)")),
    }
}

fn cmd_run(mut args: Args) -> Result<(), String> {
    let machine = machine_arg(&mut args)?;
    let append = args.value("--append").unwrap_or_default();
    let smp: u32 = args.value("--smp").map(|s| s.parse().map_err(|_| "bad --smp")).transpose()?.unwrap_or(1);
    let timeout: u64 =
        args.value("--timeout").map(|s| s.parse().map_err(|_| "bad --timeout")).transpose()?.unwrap_or(600);
    args.finish()?;
    tools::ensure_qemu()?;
    let elf = build_kernel(true)?;
    let (size, _, mem) = elf_sizes(&elf)?;
    println!(
        "xtask: booting {} ({} KiB file, {} KiB loaded) on {}",
        elf.display(),
        size / 1024,
        mem / 1024,
        machine.name()
    );
    let disk = scratch_disk("run-disk.img")?;
    let mut b = qemu::Boot::new(&elf, machine);
    b.append = append;
    b.smp = smp;
    b.disk = Some(&disk);
    if let Some((disks, _)) = zfsdisks::kernel_pool_disks()? {
        b.ro_disks = disks;
        b.expect.push("zfs-pool".into());
    }
    b.timeout = Duration::from_secs(timeout);
    let sym = qemu::Symbolizer::new(&elf);
    let run = qemu::boot(&b, sym.as_ref()).map_err(|e| format!("starting QEMU: {e}"))?;
    if run.timed_out {
        return Err(format!("the guest did not exit within {timeout} s; killed"));
    }
    match run.status {
        Some(s) if s == osv_boot::QEMU_EXIT_SUCCESS => Ok(()),
        s => Err(format!("the guest exited with status {s:?}{}", stderr_note(&run))),
    }
}

fn stderr_note(run: &qemu::Run) -> String {
    let e = run.stderr.trim();
    if e.is_empty() {
        String::new()
    } else {
        format!("; QEMU said: {e}")
    }
}

fn cmd_boot_time(mut args: Args) -> Result<(), String> {
    let runs: usize =
        args.value("--runs").map(|s| s.parse().map_err(|_| "bad --runs")).transpose()?.unwrap_or(10);
    let machine = machine_arg(&mut args)?;
    args.finish()?;
    tools::ensure_qemu()?;
    let elf = build_kernel(true)?;
    let (size, _, mem) = elf_sizes(&elf)?;
    let mut wall = Vec::new();
    let mut entry = Vec::new();
    for _ in 0..runs {
        let mut b = qemu::Boot::new(&elf, machine);
        b.append = "app=hello".into();
        b.echo = false;
        b.timeout = Duration::from_secs(60);
        let run = qemu::boot(&b, None).map_err(|e| format!("starting QEMU: {e}"))?;
        let t = run.time_of("hello from the OSv demo app").ok_or("the app line never appeared")?;
        wall.push(t.as_secs_f64() * 1000.0);
        let us = run
            .lines
            .iter()
            .find_map(|l| l.split("entry to main ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
            .ok_or("no entry-to-main figure in the banner")?;
        entry.push(us as f64 / 1000.0);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("kernel: {} KiB file, {} KiB loaded", size / 1024, mem / 1024);
    println!(
        "boot-time ({} runs, {}): QEMU start to first app line median {:.1} ms (min {:.1}); PVH entry to main median {:.2} ms",
        runs,
        machine.name(),
        med(&mut wall),
        wall[0],
        med(&mut entry)
    );
    Ok(())
}
