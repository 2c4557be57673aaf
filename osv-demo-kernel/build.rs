//! Links the kernel binary (and only the binary) as a static, non-PIE ELF
//! with osv-boot's linker script. Host tests never see these flags.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Set by osv-boot's build script through its `links` key.
    let Ok(script) = std::env::var("DEP_OSV_BOOT_LINKER_SCRIPT") else {
        panic!("osv-boot did not export its linker script (DEP_OSV_BOOT_LINKER_SCRIPT)");
    };
    println!("cargo:rerun-if-changed={script}");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,-z,norelro",
        "-Wl,-z,max-page-size=4096",
        &format!("-Wl,-T,{script}"),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
