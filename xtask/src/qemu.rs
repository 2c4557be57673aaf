//! Booting the kernel under QEMU: the command line, a watchdog, serial
//! capture, the verdict, and symbolized stack traces.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// QEMU machine types the kernel supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// `-machine microvm`: no PCI, no firmware tables beyond the minimum.
    Microvm,
    /// `-machine q35`: PCIe.
    Q35,
    /// QEMU's default machine (`pc`), used for the plain-command check.
    Pc,
}

impl Machine {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "microvm" => Some(Self::Microvm),
            "q35" => Some(Self::Q35),
            "pc" => Some(Self::Pc),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Microvm => "microvm",
            Self::Q35 => "q35",
            Self::Pc => "pc",
        }
    }
}

/// One boot.
#[derive(Clone, Debug)]
pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub machine: Machine,
    pub append: String,
    pub memory_mib: u32,
    pub smp: u32,
    pub timeout: Duration,
    /// Echo serial lines to our stdout as they arrive.
    pub echo: bool,
    /// Boot exactly as the README's plain command does (no -machine, no -m).
    pub plain: bool,
    /// A raw disk image to attach as a virtio-blk device, with a virtio-rng
    /// device beside it (virtio-mmio on `microvm`, modern virtio-pci
    /// otherwise); the kernel is told to expect both.
    pub disk: Option<&'a Path>,
    /// More raw images attached read-only as virtio-blk devices after
    /// `disk` (the ZFS pool's vdev files, the expectation disk).
    pub ro_disks: Vec<std::path::PathBuf>,
    /// More names for the kernel's `expect=` list (devices or data the
    /// runner attached, so a test that cannot find them fails, not skips).
    pub expect: Vec<String>,
    /// Extra QEMU arguments, appended last (e.g. `-icount shift=0`).
    pub qemu_args: Vec<String>,
    /// With `disk`: the host TCP port forwarded (on 127.0.0.1 only) to the
    /// guest's [`GUEST_TCP_PORT`]; [`boot`] picks a free one and runs the
    /// host side of the kernel's TCP test on it ([`tcp_peer`]).
    pub net_port: Option<u16>,
}

impl<'a> Boot<'a> {
    pub fn new(kernel: &'a Path, machine: Machine) -> Self {
        Self {
            kernel,
            machine,
            append: String::new(),
            memory_mib: 256,
            smp: 1,
            timeout: Duration::from_secs(300),
            echo: true,
            plain: false,
            disk: None,
            ro_disks: Vec::new(),
            expect: Vec::new(),
            qemu_args: Vec::new(),
            net_port: None,
        }
    }

    /// The QEMU command line.
    pub fn command(&self) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        if !self.plain {
            c.args(["-machine", self.machine.name(), "-cpu", "max"]);
            c.args(["-m", &format!("{}M", self.memory_mib), "-smp", &self.smp.to_string()]);
            c.args(["-nodefaults", "-no-user-config"]);
        }
        c.args(["-display", "none", "-no-reboot"]);
        c.arg("-kernel").arg(self.kernel);
        c.args(["-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        let mut append = self.append.clone();
        if let Some(disk) = self.disk {
            let mut drive = std::ffi::OsString::from("file=");
            drive.push(disk);
            drive.push(",if=none,id=vd0,format=raw,cache=unsafe");
            c.arg("-drive").arg(drive);
            if self.machine == Machine::Microvm {
                // Modern (version 2) virtio-mmio registers.
                c.args(["-global", "virtio-mmio.force-legacy=false"]);
                c.args(["-device", "virtio-blk-device,drive=vd0", "-device", "virtio-rng-device"]);
            } else {
                c.args(["-device", "virtio-blk-pci,drive=vd0,disable-legacy=on"]);
                c.args(["-device", "virtio-rng-pci,disable-legacy=on"]);
            }
            // A virtio-net device on QEMU user networking: restrict=on keeps
            // the guest off the host's and outside networks (slirp still
            // answers on its own address, 10.0.2.2); only the hostfwd rule,
            // bound to 127.0.0.1, reaches in.
            let mut netdev = String::from("user,id=n0,restrict=on");
            if let Some(port) = self.net_port {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:{GUEST_TCP_PORT}"));
            }
            c.args(["-netdev", &netdev]);
            if self.machine == Machine::Microvm {
                c.args(["-device", "virtio-net-device,netdev=n0"]);
            } else {
                // romfile= : no iPXE option ROM (nothing boots from the network).
                c.args(["-device", "virtio-net-pci,netdev=n0,disable-legacy=on,romfile="]);
            }
            if !append.is_empty() {
                append.push(' ');
            }
            if self.net_port.is_some() {
                append.push_str("net.tcp_peer ");
            }
            append.push_str("expect=virtio-blk,virtio-rng,virtio-net");
            for e in &self.expect {
                append.push(',');
                append.push_str(e);
            }
        }
        for (i, disk) in self.ro_disks.iter().enumerate() {
            let mut drive = std::ffi::OsString::from("file=");
            drive.push(disk);
            drive.push(format!(",if=none,id=ro{i},format=raw,readonly=on"));
            c.arg("-drive").arg(drive);
            if self.machine == Machine::Microvm {
                c.args(["-device", &format!("virtio-blk-device,drive=ro{i}")]);
            } else {
                c.args(["-device", &format!("virtio-blk-pci,drive=ro{i},disable-legacy=on")]);
            }
        }
        if !append.is_empty() {
            c.args(["-append", &append]);
        }
        c.args(&self.qemu_args);
        c
    }
}

/// What a boot produced.
#[derive(Debug)]
pub struct Run {
    /// Serial output, one entry per line (without line endings).
    pub lines: Vec<String>,
    /// When each line arrived, since QEMU was started.
    pub times: Vec<Duration>,
    /// QEMU's exit status; `None` if it was killed by the watchdog.
    pub status: Option<i32>,
    pub timed_out: bool,
    pub stderr: String,
    pub wall: Duration,
}

impl Run {
    /// When the first line containing `needle` arrived.
    pub fn time_of(&self, needle: &str) -> Option<Duration> {
        self.lines.iter().position(|l| l.contains(needle)).map(|i| self.times[i])
    }
}

/// The guest TCP port of the kernel's host exchange (osv-demo-kernel
/// src/net.rs, `TCP_PORT`).
pub const GUEST_TCP_PORT: u16 = 5555;

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_tcp_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok().map(|a| a.port())
}

/// The host side of the kernel's `net::tcp_exchange_with_the_host` test:
/// connects to the forwarded port (slirp then connects to the guest; until
/// the guest listens the connection closes at once, so it retries), sends
/// `osv-net-probe <nonce>`, checks the answer (`osv-net-reply` and the
/// nonce reversed) and confirms with `osv-net-ok <nonce>` (or
/// `osv-net-bad ...`); the guest passes only on the confirmation. Runs until
/// `stop`; returns what it saw.
pub fn tcp_peer(port: u16, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Result<String, String> {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let nonce = format!(
        "{:016x}",
        (seed.as_nanos() as u64 ^ u64::from(std::process::id()) << 32).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    );
    let want = format!("osv-net-reply {}", nonce.chars().rev().collect::<String>());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut attempts = 0u32;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(conn) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { continue };
        attempts += 1;
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        if (&conn).write_all(format!("osv-net-probe {nonce}\n").as_bytes()).is_err() {
            continue;
        }
        let mut line = String::new();
        let mut r = BufReader::new(&conn);
        // EOF or a timeout: the guest is not listening yet; try again.
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            continue;
        }
        let got = line.trim_end();
        if got == want {
            let _ = (&conn).write_all(format!("osv-net-ok {nonce}\n").as_bytes());
            // Until the guest closes (it has read the confirmation) or 2 s.
            let _ = r.read_line(&mut line);
            return Ok(format!("guest answered nonce {nonce} correctly (connection attempt {attempts})"));
        }
        let _ = (&conn).write_all(b"osv-net-bad unexpected answer\n");
        return Err(format!("guest answered {got:?}, expected {want:?}"));
    }
    Err(format!("no answer from the guest ({attempts} connections)"))
}

/// Boots and collects the serial output, killing QEMU after the timeout.
pub fn boot(b: &Boot<'_>, symbols: Option<&Symbolizer>) -> std::io::Result<Run> {
    let mut b = b.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut peer = None;
    if b.disk.is_some() && b.net_port.is_none() {
        b.net_port = free_tcp_port();
        if let Some(port) = b.net_port {
            let stop = stop.clone();
            peer = Some(std::thread::spawn(move || tcp_peer(port, stop)));
        }
    }
    let run = boot_inner(&b, symbols);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(Ok(r)) = peer.map(|p| p.join()) {
        if b.echo {
            match r {
                Ok(s) => println!("xtask: host TCP peer: {s}"),
                Err(e) => println!("xtask: host TCP peer: {e}"),
            }
        }
    }
    run
}

fn boot_inner(b: &Boot<'_>, symbols: Option<&Symbolizer>) -> std::io::Result<Run> {
    let start = Instant::now();
    let mut child = b.command().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
                    if tx.send((line, start.elapsed())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut lines = Vec::new();
    let mut times = Vec::new();
    let mut record = |line: String, t: Duration| {
        let shown = match symbols {
            Some(s) => s.annotate(&line),
            None => line,
        };
        if b.echo {
            println!("{shown}");
        }
        lines.push(shown);
        times.push(t);
    };
    let mut timed_out = false;
    let status = loop {
        if let Ok((line, t)) = rx.recv_timeout(Duration::from_millis(50)) {
            record(line, t);
            continue;
        }
        if let Some(st) = child.try_wait()? {
            break st.code();
        }
        if start.elapsed() > b.timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
    };
    let _ = reader.join();
    // Lines that arrived after the exit.
    while let Ok((line, t)) = rx.try_recv() {
        record(line, t);
    }
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Run { lines, times, status, timed_out, stderr, wall: start.elapsed() })
}

/// The runner's verdict on an in-kernel test run.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Exit status success, a closing `N passed, 0 failed` with N > 0, and
    /// as many `... ok` lines as N.
    Passed { passed: u32 },
    /// Anything else, with the reason.
    Failed(String),
}

/// Parses a closing line `N passed, M failed`.
pub fn summary_line(line: &str) -> Option<(u32, u32)> {
    let (p, rest) = line.trim().split_once(" passed, ")?;
    let f = rest.strip_suffix(" failed")?;
    Some((p.parse().ok()?, f.parse().ok()?))
}

/// Judges a test run from QEMU's exit status and the serial lines.
pub fn judge(status: Option<i32>, timed_out: bool, lines: &[String]) -> Verdict {
    if timed_out {
        return Verdict::Failed("the guest hung: killed by the watchdog".into());
    }
    let summary = lines.iter().rev().find_map(|l| summary_line(l));
    let oks = lines.iter().filter(|l| l.starts_with("test ") && l.contains(" ... ok")).count() as u32;
    let fails = lines.iter().filter(|l| l.starts_with("test ") && l.contains(" ... FAILED")).count() as u32;
    let Some((passed, failed)) = summary else {
        return Verdict::Failed(format!(
            "no closing `N passed, N failed` line (QEMU exit status {status:?})"
        ));
    };
    if failed > 0 || fails > 0 {
        return Verdict::Failed(format!("{failed} in-kernel test(s) failed"));
    }
    if passed == 0 {
        return Verdict::Failed("no in-kernel test ran".into());
    }
    if passed != oks {
        return Verdict::Failed(format!("summary says {passed} passed but {oks} tests printed ok"));
    }
    if status != Some(osv_boot::QEMU_EXIT_SUCCESS) {
        return Verdict::Failed(format!(
            "QEMU exit status {status:?}, expected {} (isa-debug-exit success)",
            osv_boot::QEMU_EXIT_SUCCESS
        ));
    }
    Verdict::Passed { passed }
}

/// Turns the addresses in the kernel's stack traces into function names and
/// source lines, using the ELF's DWARF line tables.
pub struct Symbolizer {
    loader: addr2line::Loader,
}

impl Symbolizer {
    pub fn new(elf: &Path) -> Option<Self> {
        addr2line::Loader::new(elf).ok().map(|loader| Self { loader })
    }

    /// `addr` as `function at file:line`, innermost inlined frame first
    /// (joined by ` <- `). The outermost frame is named by the ELF symbol
    /// table (the full path, without the hash) when it has one.
    pub fn describe(&self, addr: u64) -> Option<String> {
        let mut names = Vec::new();
        let mut locs = Vec::new();
        if let Ok(mut frames) = self.loader.find_frames(addr) {
            while let Ok(Some(f)) = frames.next() {
                names.push(
                    f.function
                        .as_ref()
                        .and_then(|n| n.demangle().ok().map(|s| s.into_owned()))
                        .unwrap_or_else(|| "??".into()),
                );
                locs.push(
                    f.location
                        .map(|l| format!(" at {}:{}", short_path(l.file.unwrap_or("?")), l.line.unwrap_or(0)))
                        .unwrap_or_default(),
                );
            }
        }
        let symbol = self.loader.find_symbol(addr).map(|s| format!("{:#}", rustc_demangle::demangle(s)));
        match (names.last_mut(), symbol) {
            (Some(last), Some(sym)) => *last = sym,
            (None, Some(sym)) => {
                names.push(sym);
                locs.push(String::new());
            }
            _ => {}
        }
        if names.is_empty() {
            return None;
        }
        Some(names.iter().zip(&locs).map(|(n, l)| format!("{n}{l}")).collect::<Vec<_>>().join(" <- "))
    }

    /// Appends the symbol to a trace line `    #N 0xADDR`. Return addresses
    /// point after the call, so `ADDR - 1` is looked up for frames past #0.
    pub fn annotate(&self, line: &str) -> String {
        let Some((n, addr)) = trace_entry(line) else {
            return line.to_string();
        };
        let lookup = if n == 0 { addr } else { addr.saturating_sub(1) };
        match self.describe(lookup) {
            Some(d) => format!("{line} {d}"),
            None => line.to_string(),
        }
    }
}

/// Parses `    #N 0xADDR` into (N, ADDR).
pub fn trace_entry(line: &str) -> Option<(u32, u64)> {
    let rest = line.trim_start().strip_prefix('#')?;
    let (n, rest) = rest.split_once(' ')?;
    let hex = rest.trim().strip_prefix("0x")?;
    if hex.len() != 16 {
        return None;
    }
    Some((n.parse().ok()?, u64::from_str_radix(hex, 16).ok()?))
}

fn short_path(p: &str) -> &str {
    // Keep paths relative to the workspace or the toolchain's library.
    for marker in ["/library/", "/osv-", "/.cargo/registry/src/"] {
        if let Some(i) = p.find(marker) {
            return &p[i + 1..];
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(String::from).collect()
    }

    const GOOD: &str = "banner\ntest a ... ok (1 us)\ntest b ... ok (2 us)\n2 passed, 0 failed";

    #[test]
    fn passes_only_a_clean_run() {
        let ok = osv_boot::QEMU_EXIT_SUCCESS;
        assert_eq!(judge(Some(ok), false, &lines(GOOD)), Verdict::Passed { passed: 2 });
    }

    #[test]
    fn failures_are_failures() {
        let ok = Some(osv_boot::QEMU_EXIT_SUCCESS);
        let bad = Some(osv_boot::QEMU_EXIT_FAILURE);
        // A failed test, even if the exit status were success.
        let failed = "test a ... ok (1 us)\ntest b ... FAILED: x\n1 passed, 1 failed";
        assert!(matches!(judge(ok, false, &lines(failed)), Verdict::Failed(_)));
        assert!(matches!(judge(bad, false, &lines(failed)), Verdict::Failed(_)));
        // A failure exit status with a clean-looking summary.
        assert!(matches!(judge(bad, false, &lines(GOOD)), Verdict::Failed(_)));
        // No summary (a crash), a hang, no tests, a summary that lies.
        assert!(matches!(judge(ok, false, &lines("test a ... ok (1 us)")), Verdict::Failed(_)));
        assert!(matches!(judge(None, true, &lines(GOOD)), Verdict::Failed(_)));
        assert!(matches!(judge(ok, false, &lines("0 passed, 0 failed")), Verdict::Failed(_)));
        assert!(matches!(judge(ok, false, &lines("test a ... ok\n2 passed, 0 failed")), Verdict::Failed(_)));
    }

    #[test]
    fn parses_summaries_and_trace_lines() {
        assert_eq!(summary_line("12 passed, 3 failed"), Some((12, 3)));
        assert_eq!(summary_line("12 passed; 3 failed"), None);
        assert_eq!(trace_entry("    #3 0x0000000000101234"), Some((3, 0x101234)));
        assert_eq!(trace_entry("    #3 0x1234"), None);
        assert_eq!(trace_entry("test #3"), None);
    }
}
