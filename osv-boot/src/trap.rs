//! The trap frame every interrupt entry stub builds, and how to print it.

use core::fmt;

/// Registers saved by the entry stub (`osv_trap_common`), lowest address
/// first, followed by the vector, the error code (0 where the CPU pushes
/// none) and the frame the CPU pushed (Intel SDM vol. 3A §6.14.2, "64-Bit Mode
/// Stack Frame"). The FXSAVE area sits below this structure.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// The interrupt vector.
    pub vector: u64,
    /// The CPU's error code, or 0.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Size of [`TrapFrame`]; the entry stub's layout depends on it.
pub const TRAP_FRAME_SIZE: usize = 22 * 8;
const _: () = assert!(core::mem::size_of::<TrapFrame>() == TRAP_FRAME_SIZE);

/// Exception vectors (Intel SDM vol. 3A, table 6-1).
pub mod vector {
    /// #DE divide error.
    pub const DIVIDE: u8 = 0;
    /// #DB debug.
    pub const DEBUG: u8 = 1;
    /// NMI.
    pub const NMI: u8 = 2;
    /// #BP breakpoint (`int3`).
    pub const BREAKPOINT: u8 = 3;
    /// #UD invalid opcode.
    pub const INVALID_OPCODE: u8 = 6;
    /// #DF double fault.
    pub const DOUBLE_FAULT: u8 = 8;
    /// #GP general protection.
    pub const GENERAL_PROTECTION: u8 = 13;
    /// #PF page fault.
    pub const PAGE_FAULT: u8 = 14;
    /// #MC machine check.
    pub const MACHINE_CHECK: u8 = 18;
    /// First vector not reserved for exceptions.
    pub const FIRST_IRQ: u8 = 32;
}

/// The name of an exception vector, or `"interrupt"`.
pub const fn vector_name(v: u64) -> &'static str {
    match v {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        2 => "non-maskable interrupt",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "bound range exceeded (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        9 => "coprocessor segment overrun",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack-segment fault (#SS)",
        13 => "general protection (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 floating-point error (#MF)",
        17 => "alignment check (#AC)",
        18 => "machine check (#MC)",
        19 => "SIMD floating-point exception (#XM)",
        20 => "virtualization exception (#VE)",
        21 => "control protection (#CP)",
        15 | 22..=31 => "reserved exception",
        _ => "interrupt",
    }
}

/// Which interrupt stack (IST index 1..=7) each vector runs on. Every vector
/// has one: the prebuilt `core` assumes a red zone below `rsp`, which the CPU
/// does not skip when it pushes an interrupt frame on the current stack.
pub const fn ist_for(vector: u8) -> u8 {
    match vector {
        vector::DOUBLE_FAULT => 2,
        vector::NMI | vector::MACHINE_CHECK => 3,
        0..=31 => 1,
        _ => 4,
    }
}

/// The decoded page-fault error code (Intel SDM vol. 3A §4.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFaultCode(pub u64);

impl PageFaultCode {
    /// The page was present (a protection violation) rather than not present.
    pub const fn present(self) -> bool {
        self.0 & 1 != 0
    }
    /// The access was a write.
    pub const fn write(self) -> bool {
        self.0 & 2 != 0
    }
    /// The access was an instruction fetch.
    pub const fn fetch(self) -> bool {
        self.0 & 16 != 0
    }
}

impl fmt::Display for PageFaultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.fetch() {
            "fetch"
        } else if self.write() {
            "write"
        } else {
            "read"
        };
        let why = if self.present() { "protection violation" } else { "page not present" };
        write!(f, "{what}, {why}")
    }
}

impl fmt::Display for TrapFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rip={:#018x} rsp={:#018x} rflags={:#010x} cs={:#x} ss={:#x}",
            self.rip, self.rsp, self.rflags, self.cs, self.ss
        )?;
        writeln!(
            f,
            "rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}",
            self.rax, self.rbx, self.rcx, self.rdx
        )?;
        writeln!(
            f,
            "rsi={:#018x} rdi={:#018x} rbp={:#018x} r8 ={:#018x}",
            self.rsi, self.rdi, self.rbp, self.r8
        )?;
        writeln!(
            f,
            "r9 ={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}",
            self.r9, self.r10, self.r11, self.r12
        )?;
        write!(f, "r13={:#018x} r14={:#018x} r15={:#018x}", self.r13, self.r14, self.r15)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vector_has_an_ist() {
        for v in 0..=255u8 {
            assert!((1..=7).contains(&ist_for(v)), "vector {v}");
        }
        assert_eq!(ist_for(vector::DOUBLE_FAULT), 2);
    }

    #[test]
    fn names_and_codes() {
        assert_eq!(vector_name(14), "page fault (#PF)");
        assert_eq!(vector_name(200), "interrupt");
        assert_eq!(PageFaultCode(0b10).to_string(), "write, page not present");
        assert_eq!(PageFaultCode(0b10001).to_string(), "fetch, protection violation");
    }

    #[test]
    fn frame_prints_every_register() {
        let f = TrapFrame { rip: 0x1234, r15: 0xfeed, ..Default::default() };
        let s = f.to_string();
        assert!(s.contains("rip=0x0000000000001234"));
        assert!(s.contains("r15=0x000000000000feed"));
        assert_eq!(s.lines().count(), 5);
    }
}
