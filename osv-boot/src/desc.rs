//! Descriptor encodings: GDT entries, the 64-bit TSS and IDT gates
//! (Intel SDM vol. 3A §3.4.5 "Segment Descriptors", §7.7 "Task Management in
//! 64-bit Mode", §6.14.1 "64-Bit Mode IDT").

/// Selector of the 64-bit kernel code segment.
pub const KERNEL_CS: u16 = 0x08;
/// Selector of the kernel data segment.
pub const KERNEL_DS: u16 = 0x10;
/// Selector of the TSS (a 16-byte system descriptor in slots 3 and 4).
pub const TSS_SEL: u16 = 0x18;

/// 64-bit code: present, DPL 0, code, readable, long mode (L), 4 KiB granular.
pub const CODE64: u64 = 0x00af_9a00_0000_ffff;
/// Data: present, DPL 0, writable, 32-bit default, 4 KiB granular.
pub const DATA: u64 = 0x00cf_9200_0000_ffff;

/// The 64-bit task-state segment (SDM vol. 3A, figure 7-11).
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Tss {
    reserved0: u32,
    /// Stack pointers for privilege levels 0-2.
    pub rsp: [u64; 3],
    reserved1: u64,
    /// Interrupt stack table: `ist[0]` is IST1.
    pub ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    /// Offset of the I/O permission bitmap (past the limit: none).
    pub iomap_base: u16,
}

/// Size of [`Tss`].
pub const TSS_SIZE: usize = 104;
const _: () = assert!(core::mem::size_of::<Tss>() == TSS_SIZE);

impl Tss {
    /// An all-zero TSS (placeholder until [`Tss::with_ist`] fills it).
    pub const EMPTY: Self = Self {
        reserved0: 0,
        rsp: [0; 3],
        reserved1: 0,
        ist: [0; 7],
        reserved2: 0,
        reserved3: 0,
        iomap_base: 0,
    };

    /// A TSS with no I/O bitmap and the given IST stack tops.
    pub const fn with_ist(ist: [u64; 7]) -> Self {
        Self {
            reserved0: 0,
            rsp: [0; 3],
            reserved1: 0,
            ist,
            reserved2: 0,
            reserved3: 0,
            iomap_base: TSS_SIZE as u16,
        }
    }
}

/// The two GDT words of an available 64-bit TSS descriptor at `base`.
pub const fn tss_descriptor(base: u64) -> [u64; 2] {
    let limit = (TSS_SIZE - 1) as u64;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, DPL 0, type 9: available 64-bit TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    [low, base >> 32]
}

/// One 16-byte IDT gate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdtGate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const _: () = assert!(core::mem::size_of::<IdtGate>() == 16);

impl IdtGate {
    /// A not-present gate.
    pub const EMPTY: Self =
        Self { offset_low: 0, selector: 0, ist: 0, type_attr: 0, offset_mid: 0, offset_high: 0, reserved: 0 };

    /// A present, DPL-0 interrupt gate (interrupts stay off in the handler)
    /// to `handler` in the kernel code segment, on IST stack `ist` (1..=7).
    pub const fn interrupt(handler: u64, ist: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist: ist & 7,
            type_attr: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
    /// The handler address the gate points at.
    pub const fn handler(&self) -> u64 {
        self.offset_low as u64 | (self.offset_mid as u64) << 16 | (self.offset_high as u64) << 32
    }
    /// The IST index.
    pub const fn ist(&self) -> u8 {
        self.ist
    }
}

/// The operand of `lgdt`/`lidt`.
#[repr(C, packed(2))]
#[derive(Clone, Copy, Debug)]
pub struct DescriptorTablePointer {
    /// Size of the table minus one.
    pub limit: u16,
    /// Linear address of the table.
    pub base: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_round_trips_the_handler() {
        let g = IdtGate::interrupt(0xffff_8000_1234_5678, 3);
        assert_eq!(g.handler(), 0xffff_8000_1234_5678);
        assert_eq!(g.ist(), 3);
    }

    #[test]
    fn tss_descriptor_fields() {
        let [lo, hi] = tss_descriptor(0x1234_5678_9abc_def0);
        assert_eq!(lo & 0xffff, 103);
        assert_eq!((lo >> 16) & 0xff_ffff, 0xbc_def0);
        assert_eq!((lo >> 56) & 0xff, 0x9a);
        assert_eq!((lo >> 40) & 0xff, 0x89);
        assert_eq!(hi, 0x1234_5678);
    }

    #[test]
    fn tss_layout() {
        let t = Tss::with_ist([1, 2, 3, 4, 5, 6, 7]);
        let ist = t.ist;
        assert_eq!(ist[6], 7);
        assert_eq!(core::mem::offset_of!(Tss, ist), 36);
        assert_eq!(core::mem::offset_of!(Tss, iomap_base), 102);
    }
}
