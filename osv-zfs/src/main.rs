//! `osv-zfs`: inspect OpenZFS pools from the host.
//!
//! ```text
//! osv-zfs labels FILE...   each label's status and config, and the active uberblock
//! ```

use osv_zfs::label::VdevLabels;
use osv_zfs::FileDevice;
use std::fmt::Write as _;
use std::process::ExitCode;

const USAGE: &str = "usage: osv-zfs labels FILE...\n\
    \n\
    commands:\n  \
      labels FILE...  print each vdev label (status and config nvlist) and the\n                  \
                      active uberblock of every vdev file\n";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("labels") if args.len() > 1 => labels(&args[1..]),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Prints every file's labels; fails when a file cannot be read or has no
/// valid label at all. A corrupt copy beside valid ones is reported, not
/// fatal (that is what the four copies are for).
fn labels(files: &[String]) -> ExitCode {
    let mut ok = true;
    for (i, path) in files.iter().enumerate() {
        if i > 0 {
            println!();
        }
        match render_file(path) {
            Ok(text) => print!("{text}"),
            Err(msg) => {
                eprintln!("osv-zfs: {path}: {msg}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn render_file(path: &str) -> Result<String, String> {
    let mut dev = FileDevice::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let labels = VdevLabels::read(&mut dev).map_err(|e| format!("cannot read labels: {e}"))?;
    let mut out = String::new();
    render(&mut out, path, &labels).map_err(|e| e.to_string())?;
    if labels.config().is_none() {
        print!("{out}");
        return Err(String::from("no valid label"));
    }
    Ok(out)
}

fn render(out: &mut String, path: &str, labels: &VdevLabels) -> std::fmt::Result {
    writeln!(out, "{path}: {} bytes", labels.size)?;
    for label in &labels.labels {
        write!(out, "LABEL {} at {:#x}: ", label.index, label.offset)?;
        match &label.config {
            Ok(config) => {
                writeln!(out, "valid")?;
                config.write_zdb(out, 4)?;
            }
            Err(e) => writeln!(out, "CORRUPT ({e})")?,
        }
        let valid = label.valid_uberblocks().count();
        writeln!(
            out,
            "    uberblocks: {valid} valid of {} slots of {} bytes",
            label.uberblocks.len(),
            1u32 << label.uberblock_shift
        )?;
    }
    match labels.active_uberblock() {
        Some(active) => {
            let ub = &active.uberblock;
            writeln!(out, "ACTIVE UBERBLOCK: label {} slot {}", active.label, active.slot)?;
            writeln!(out, "    byte order = {}", ub.endian.as_str())?;
            writeln!(out, "    version = {}", ub.version)?;
            writeln!(out, "    txg = {}", ub.txg)?;
            writeln!(out, "    guid_sum = {}", ub.guid_sum)?;
            writeln!(out, "    timestamp = {} UTC", ub.timestamp)?;
            writeln!(out, "    mmp_magic = {:016x}", ub.mmp_magic)?;
            writeln!(out, "    checkpoint_txg = {}", ub.checkpoint_txg)?;
            writeln!(out, "    rootbp = {}", ub.rootbp)?;
        }
        None => writeln!(out, "ACTIVE UBERBLOCK: none")?,
    }
    Ok(())
}
