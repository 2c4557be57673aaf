//! Finding and installing the host tools the runs need: QEMU and OpenZFS's
//! `zdb` from Debian's backports suite, `cargo-fuzz` and `virtiofsd` from
//! crates.io.
//!
//! The backports source is derived from the system's own apt sources (the
//! same archive URIs, suite `<codename>-backports`, components `main
//! contrib`), so no mirror address is written into this repository.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// Whether `cmd` runs (`cmd args...` exits at all).
pub fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

fn codename() -> Option<String> {
    let s = fs::read_to_string("/etc/os-release").ok()?;
    s.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=")).map(|c| c.trim_matches('"').to_string())
}

const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/osv-backports.sources";

/// Builds a deb822 backports entry from the system's sources: the stanza
/// that serves `codename` itself, with its URIs and signing key.
pub fn backports_stanza(debian_sources: &str, codename: &str) -> Option<String> {
    for stanza in debian_sources.split("\n\n") {
        let field =
            |name: &str| stanza.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
        let suites = field("Suites:")?;
        if !suites.split_whitespace().any(|s| s == codename) {
            continue;
        }
        let uris = field("URIs:")?;
        let mut out =
            format!("Types: deb\nURIs: {uris}\nSuites: {codename}-backports\nComponents: main contrib\n");
        if let Some(key) = field("Signed-By:") {
            out.push_str(&format!("Signed-By: {key}\n"));
        }
        return Some(out);
    }
    None
}

/// The same from a one-line `sources.list`.
pub fn backports_line(sources_list: &str, codename: &str) -> Option<String> {
    sources_list.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        if w.next()? != "deb" {
            return None;
        }
        let mut uri = w.next()?;
        let mut opts = "";
        if uri.starts_with('[') {
            opts = uri;
            uri = w.next()?;
        }
        (w.next()? == codename).then(|| {
            let opts = if opts.is_empty() { String::new() } else { format!("{opts} ") };
            format!("deb {opts}{uri} {codename}-backports main contrib\n")
        })
    })
}

fn add_backports(codename: &str) -> Result<(), String> {
    if Path::new(BACKPORTS_FILE).exists() || Path::new("/etc/apt/sources.list.d/osv-backports.list").exists()
    {
        return Ok(());
    }
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    if let Some(s) = backports_stanza(&deb822, codename) {
        return fs::write(BACKPORTS_FILE, s).map_err(|e| format!("writing {BACKPORTS_FILE}: {e}"));
    }
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Some(l) = backports_line(&list, codename) {
        let path = "/etc/apt/sources.list.d/osv-backports.list";
        return fs::write(path, l).map_err(|e| format!("writing {path}: {e}"));
    }
    Err("no Debian source for this release was found in /etc/apt".into())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let st = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {st}"))
    }
}

/// Installs Debian packages from backports (without recommends: zfsutils
/// would otherwise pull in a kernel module build).
fn apt_install_backports(packages: &[&str]) -> Result<(), String> {
    let manual = format!(
        "add a `<codename>-backports` apt source (components main contrib) and run \
         `apt-get install -t <codename>-backports --no-install-recommends {}`",
        packages.join(" ")
    );
    if !is_root() || !have("apt-get", &["--version"]) {
        return Err(format!("cannot install {} here (not root, or no apt): {manual}", packages.join(" ")));
    }
    let code = codename().ok_or_else(|| format!("no VERSION_CODENAME in /etc/os-release: {manual}"))?;
    add_backports(&code).map_err(|e| format!("{e}: {manual}"))?;
    eprintln!("xtask: installing {} from {code}-backports", packages.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends", "-t", &format!("{code}-backports")])
        .args(packages))
}

/// Makes sure `qemu-system-x86_64` is on the PATH.
pub fn ensure_qemu() -> Result<(), String> {
    if have("qemu-system-x86_64", &["--version"]) {
        return Ok(());
    }
    apt_install_backports(&["qemu-system-x86"])?;
    if have("qemu-system-x86_64", &["--version"]) {
        Ok(())
    } else {
        Err("qemu-system-x86_64 is still missing after the install".into())
    }
}

/// Makes sure OpenZFS's `zdb` is available (the osv-zfs tests compare
/// against it).
pub fn ensure_zdb() -> Result<(), String> {
    if have("zdb", &["-V"]) {
        return Ok(());
    }
    apt_install_backports(&["zfsutils-linux"])?;
    if have("zdb", &["-V"]) {
        Ok(())
    } else {
        Err("zdb is still missing after installing zfsutils-linux".into())
    }
}

/// Makes sure `cargo fuzz` works.
pub fn ensure_cargo_fuzz(cargo: &str) -> Result<(), String> {
    if Command::new(cargo)
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz");
    run(Command::new(cargo).args(["install", "cargo-fuzz", "--locked"]))
}

/// Installs Debian packages from the release's own suites (main).
fn apt_install(packages: &[&str]) -> Result<(), String> {
    let manual = format!("run `apt-get install --no-install-recommends {}`", packages.join(" "));
    if !is_root() || !have("apt-get", &["--version"]) {
        return Err(format!("cannot install {} here (not root, or no apt): {manual}", packages.join(" ")));
    }
    eprintln!("xtask: installing {}", packages.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages))
}

/// Where `virtiofsd` is: on the PATH, or in cargo's bin directory
/// (`$CARGO_HOME/bin`, else `~/.cargo/bin`), where `cargo install` puts it.
pub fn find_virtiofsd() -> Option<std::path::PathBuf> {
    let works = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut candidates = vec![std::path::PathBuf::from("virtiofsd")];
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(Path::new(&home).join("bin").join("virtiofsd"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo").join("bin").join("virtiofsd"));
    }
    candidates.into_iter().find(|p| works(p))
}

/// Makes sure `virtiofsd` (crates.io; the host side of the virtio-fs
/// tests) is installed: `cargo install virtiofsd --locked`, which needs
/// Debian's `libcap-ng-dev` and `libseccomp-dev` to build.
pub fn ensure_virtiofsd(cargo: &str) -> Result<std::path::PathBuf, String> {
    if let Some(p) = find_virtiofsd() {
        return Ok(p);
    }
    apt_install(&["libcap-ng-dev", "libseccomp-dev"])?;
    eprintln!("xtask: installing virtiofsd");
    run(Command::new(cargo).args(["install", "virtiofsd", "--locked"]))?;
    find_virtiofsd().ok_or_else(|| "virtiofsd is still missing after `cargo install virtiofsd`".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\n# comment\nURIs: http://archive.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n";

    #[test]
    fn derives_backports_from_deb822() {
        let s = backports_stanza(DEB822, "bookworm").unwrap();
        assert!(s.contains("URIs: http://archive.example/debian\n"));
        assert!(s.contains("Suites: bookworm-backports\n"));
        assert!(s.contains("Components: main contrib\n"));
        assert!(s.contains("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"));
        assert_eq!(backports_stanza(DEB822, "trixie"), None);
    }

    #[test]
    fn derives_backports_from_sources_list() {
        let l = "# x\ndeb [arch=amd64] http://archive.example/debian bookworm main\n";
        assert_eq!(
            backports_line(l, "bookworm").unwrap(),
            "deb [arch=amd64] http://archive.example/debian bookworm-backports main contrib\n"
        );
        assert_eq!(backports_line("deb http://a/debian bookworm-updates main", "bookworm"), None);
    }
}
