//! Generates the 256 interrupt entry stubs and hands the linker script to
//! dependent kernel binaries (through `links` metadata).

use std::fmt::Write as _;
use std::{env, fs, path::PathBuf};

/// Vectors for which the CPU pushes an error code (Intel SDM vol. 3A,
/// table 6-1 "Protected-Mode Exceptions and Interrupts").
const HAS_ERROR_CODE: [u32; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let mut s = String::new();
    s.push_str(".section .text.osv_vectors,\"ax\",@progbits\n");
    for v in 0..256u32 {
        writeln!(s, ".balign 16\nosv_vector_{v}:").unwrap();
        if !HAS_ERROR_CODE.contains(&v) {
            s.push_str("    pushq $0\n");
        }
        writeln!(s, "    pushq ${v}\n    jmp osv_trap_common").unwrap();
    }
    s.push_str(".section .rodata.osv_vectors,\"a\",@progbits\n.balign 8\n");
    s.push_str(".global osv_vector_table\nosv_vector_table:\n");
    for v in 0..256u32 {
        writeln!(s, "    .quad osv_vector_{v}").unwrap();
    }
    s.push_str(".text\n");
    fs::write(out.join("vectors.s"), s).expect("write vectors.s");

    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let script = manifest.join("linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=linker.ld");
    // Dependents read this as DEP_OSV_BOOT_LINKER_SCRIPT.
    println!("cargo:linker_script={}", script.display());
}
