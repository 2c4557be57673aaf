//! `osv-zfs`: inspect OpenZFS pools from the host.
//!
//! ```text
//! osv-zfs labels FILE...               each label's status and config, and the active uberblock
//! osv-zfs datasets DIR_OR_FILE...       the datasets of the pool on these vdevs
//! osv-zfs ls [-R] POOLDIR DATASET [PATH] a directory's entries (TYPE SIZE PATH)
//! osv-zfs cat POOLDIR DATASET PATH      a file's content
//! osv-zfs manifest POOLDIR              every object of every ZPL dataset
//! osv-zfs verify DIR_OR_FILE...         every block read and checked (zdb -bcc)
//! ```

use osv_zfs::fs::{Inode, Zpl};
use osv_zfs::label::VdevLabels;
use osv_zfs::pool::{DatasetKind, Pool};
use osv_zfs::zpl::FileType;
use osv_zfs::FileDevice;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

const USAGE: &str = "usage: osv-zfs labels FILE...\n       \
    osv-zfs datasets DIR_OR_FILE...\n       \
    osv-zfs ls [-R] POOLDIR DATASET [PATH]\n       \
    osv-zfs cat POOLDIR DATASET PATH\n       \
    osv-zfs manifest POOLDIR\n       \
    osv-zfs verify DIR_OR_FILE...\n\
    \n\
    commands:\n  \
      labels FILE...  print each vdev label (status and config nvlist) and the\n                  \
                      active uberblock of every vdev file\n  \
      datasets DIR_OR_FILE...\n                  \
                      open the pool on these vdev files (a directory: every file\n                  \
                      in it) and list its datasets, one per line, sorted:\n                  \
                      NAME TYPE OBJSET ID CR_TXG OBJECTS ORIGIN (tab-separated)\n  \
      ls [-R] POOLDIR DATASET [PATH]\n                  \
                      list a directory (default /), with -R recursively:\n                  \
                      TYPE SIZE PATH (tab-separated); a file lists itself\n  \
      cat POOLDIR DATASET PATH\n                  \
                      write a regular file's content to stdout\n  \
      manifest POOLDIR\n                  \
                      one line per object of every ZPL dataset (snapshots too,\n                  \
                      volumes skipped), sorted: DATASET PATH TYPE SIZE SHA256\n                  \
                      (tab-separated; an encrypted dataset: DATASET - encrypted - -)\n  \
      verify DIR_OR_FILE...\n                  \
                      read every block reachable from the active uberblock and\n                  \
                      check every copy (zdb -bcc): block counts and sizes by\n                  \
                      type, checksum and compression, then one line per\n                  \
                      repaired or bad block; exits 1 on any bad block\n";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("labels") if args.len() > 1 => labels(&args[1..]),
        Some("datasets") if args.len() > 1 => datasets(&args[1..]),
        Some("ls") if args.len() > 2 => finish(ls(&args[1..])),
        Some("cat") if args.len() == 4 => finish(cat(&args[1..])),
        Some("manifest") if args.len() == 2 => finish(manifest(&args[1])),
        Some("verify") if args.len() > 1 => verify(&args[1..]),
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

/// The vdev files named by `args`: files as given, directories expanded to
/// the regular files under them (sorted, a few levels deep) that carry a
/// valid label.
fn vdev_files(args: &[String]) -> Result<Vec<std::path::PathBuf>, String> {
    fn walk(dir: &std::path::Path, depth: usize, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                if depth < 4 {
                    walk(&p, depth + 1, out)?;
                }
            } else if p.is_file() {
                let has_label = FileDevice::open(&p)
                    .ok()
                    .and_then(|mut d| VdevLabels::read(&mut d).ok())
                    .is_some_and(|l| l.config().is_some());
                if has_label {
                    out.push(p);
                }
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for arg in args {
        let p = std::path::PathBuf::from(arg);
        if p.is_dir() {
            walk(&p, 0, &mut files).map_err(|e| format!("{arg}: cannot read directory: {e}"))?;
        } else {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(format!("no vdev file with a valid label in {}", args.join(" ")));
    }
    Ok(files)
}

/// Opens the pool and prints its datasets.
fn datasets(args: &[String]) -> ExitCode {
    match render_datasets(args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("osv-zfs: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn render_datasets(args: &[String]) -> Result<String, String> {
    let files = vdev_files(args)?;
    let mut devs = Vec::new();
    for f in &files {
        devs.push(FileDevice::open(f).map_err(|e| format!("{}: cannot open: {e}", f.display()))?);
    }
    let mut pool = Pool::open(devs).map_err(|e| format!("cannot open pool: {e}"))?;
    let list = pool.datasets().map_err(|e| format!("pool {}: {e}", pool.name))?;
    let mut out = String::new();
    for d in &list {
        let ty = match (d.kind, d.os_type) {
            (DatasetKind::Snapshot, _) => "snapshot",
            (DatasetKind::Head, 2) => "filesystem",
            (DatasetKind::Head, 3) => "volume",
            (DatasetKind::Head, _) => "other",
        };
        let origin = d.origin.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "{}\t{ty}\t{}\t{}\t{}\t{}\t{origin}",
            d.name,
            d.os_type_name(),
            d.id,
            d.creation_txg,
            d.objects
        );
    }
    Ok(out)
}

/// Prints an error and maps it to the exit code.
fn finish(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("osv-zfs: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn open_pool(dir: &str) -> Result<Pool<FileDevice>, String> {
    let files = vdev_files(&[dir.to_string()])?;
    let mut devs = Vec::new();
    for f in &files {
        devs.push(FileDevice::open(f).map_err(|e| format!("{}: cannot open: {e}", f.display()))?);
    }
    Pool::open(devs).map_err(|e| format!("cannot open pool: {e}"))
}

/// Opens the filesystem of dataset `name`.
fn open_fs(pool: &mut Pool<FileDevice>, name: &str) -> Result<Zpl, String> {
    let list = pool.datasets().map_err(|e| format!("pool {}: {e}", pool.name))?;
    let d = list.iter().find(|d| d.name == name).ok_or_else(|| format!("no dataset {name}"))?;
    pool.zpl_open(d.id).map_err(|e| format!("dataset {name} (object {}): {e}", d.id))
}

fn lookup(pool: &mut Pool<FileDevice>, fs: &Zpl, name: &str, path: &str) -> Result<Inode, String> {
    pool.zpl_lookup(fs, path.as_bytes()).map_err(|e| format!("{name}: {path}: {e}"))
}

fn ls(args: &[String]) -> Result<(), String> {
    let (recursive, args) = match args.first().map(String::as_str) {
        Some("-R") => (true, &args[1..]),
        _ => (false, args),
    };
    let (dir, name, path) = match args {
        [dir, name] => (dir, name, "/"),
        [dir, name, path] => (dir, name, path.as_str()),
        _ => return Err(String::from("usage: osv-zfs ls [-R] POOLDIR DATASET [PATH]")),
    };
    let mut pool = open_pool(dir)?;
    let fs = open_fs(&mut pool, name)?;
    let start = lookup(&mut pool, &fs, name, path)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let line = |out: &mut dyn std::io::Write, p: &str, inode: &Inode| {
        let size = match inode.file_type() {
            FileType::Dir | FileType::Other => String::from("-"),
            FileType::File => inode.attrs.size.to_string(),
            FileType::Symlink => inode.target.as_ref().map_or(0, Vec::len).to_string(),
        };
        let target = match &inode.target {
            Some(t) => format!(" -> {}", String::from_utf8_lossy(t)),
            None => String::new(),
        };
        writeln!(out, "{}\t{size}\t{p}{target}", inode.file_type().as_str()).map_err(|e| e.to_string())
    };
    if start.file_type() != FileType::Dir {
        return line(&mut out, path, &start);
    }
    let base = path.trim_end_matches('/');
    if recursive {
        let sub = Zpl { root: start.object, ..fs.clone() };
        let mut err = None;
        pool.zpl_walk(&sub, &mut |_, p, inode| {
            let rel = String::from_utf8_lossy(p);
            let full = if rel == "/" { format!("{base}/") } else { format!("{base}{rel}") };
            if let Err(e) = line(&mut out, &full, inode) {
                err.get_or_insert(e);
            }
            Ok(())
        })
        .map_err(|e| format!("{name}: {e}"))?;
        if let Some(e) = err {
            return Err(e);
        }
    } else {
        for (entry, e) in pool.zpl_readdir(&start).map_err(|e| format!("{name}: {path}: {e}"))? {
            let inode =
                pool.zpl_inode(&fs, e.object).map_err(|err| format!("{name}: object {}: {err}", e.object))?;
            line(&mut out, &format!("{base}/{}", String::from_utf8_lossy(&entry)), &inode)?;
        }
    }
    std::io::Write::flush(&mut out).map_err(|e| e.to_string())
}

fn cat(args: &[String]) -> Result<(), String> {
    let [dir, name, path] = args else {
        return Err(String::from("usage: osv-zfs cat POOLDIR DATASET PATH"));
    };
    let mut pool = open_pool(dir)?;
    let fs = open_fs(&mut pool, name)?;
    let file = lookup(&mut pool, &fs, name, path)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut buf = vec![0u8; 128 << 10];
    let mut off = 0u64;
    loop {
        let n = pool.zpl_read(&file, off, &mut buf).map_err(|e| format!("{name}: {path}: {e}"))?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut out, &buf[..n]).map_err(|e| e.to_string())?;
        off += n as u64;
    }
    std::io::Write::flush(&mut out).map_err(|e| e.to_string())
}

fn manifest(dir: &str) -> Result<(), String> {
    let mut pool = open_pool(dir)?;
    let lines = pool.manifest().map_err(|e| format!("pool {}: {e}", pool.name))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for l in lines {
        writeln!(out, "{l}").map_err(|e| e.to_string())?;
    }
    std::io::Write::flush(&mut out).map_err(|e| e.to_string())
}

/// Opens the pool on the given vdev files and checks every block.
fn verify(args: &[String]) -> ExitCode {
    let files = match vdev_files(args) {
        Ok(f) => f,
        Err(msg) => {
            eprintln!("osv-zfs: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let mut devs = Vec::new();
    for f in &files {
        match FileDevice::open(f) {
            Ok(d) => devs.push(d),
            Err(e) => {
                eprintln!("osv-zfs: {}: cannot open: {e}", f.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let mut pool = match Pool::open(devs) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("osv-zfs: cannot open pool: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = osv_zfs::verify::verify(&mut pool, osv_zfs::traverse::Limits::default());
    println!("pool {}: every block reachable from txg {}", pool.name, pool.uberblock.txg.0);
    print!("{report}");
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
