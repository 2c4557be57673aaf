//! Finding the CPUs in ACPI's tables: RSDP → XSDT (or RSDT) → MADT, for SMP
//! bring-up. The tables come from firmware (QEMU): untrusted bytes, so every
//! read is bounds-checked, checksums are verified, and a malformed table is
//! a typed error, never a panic (fuzz target `acpi_madt`).
//!
//! Layouts from the ACPI specification 6.5: §5.2.5.3 "Root System
//! Description Pointer (RSDP) Structure", §5.2.6 "System Description Table
//! Header", §5.2.7 RSDT, §5.2.8 XSDT, §5.2.12 "Multiple APIC Description
//! Table (MADT)", §5.2.12.2 "Processor Local APIC Structure", §5.2.12.8
//! "Local APIC Address Override Structure", §5.2.12.12 "Processor Local
//! x2APIC Structure".

/// Why the tables could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// A structure is shorter than its fixed part or its stated length.
    Truncated,
    /// The RSDP does not start with `"RSD PTR "`.
    BadRsdpSignature,
    /// A checksum does not sum to zero.
    BadChecksum,
    /// A table's header names another table than expected.
    UnexpectedSignature,
    /// The table's physical range could not be read.
    Unmapped,
    /// No MADT is listed in the root table.
    NoMadt,
    /// A MADT entry's length is below its type's size (or zero).
    BadEntryLength,
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            Self::Truncated => "ACPI structure truncated",
            Self::BadRsdpSignature => "RSDP signature is not \"RSD PTR \"",
            Self::BadChecksum => "ACPI checksum mismatch",
            Self::UnexpectedSignature => "ACPI table has an unexpected signature",
            Self::Unmapped => "ACPI table outside readable memory",
            Self::NoMadt => "no MADT in the ACPI root table",
            Self::BadEntryLength => "MADT entry with a bad length",
        };
        f.write_str(s)
    }
}

impl core::error::Error for AcpiError {}

/// The crate's result type for ACPI parsing.
pub type Result<T> = core::result::Result<T, AcpiError>;

fn u8_at(b: &[u8], off: usize) -> Result<u8> {
    b.get(off).copied().ok_or(AcpiError::Truncated)
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b.get(off..off.checked_add(4).ok_or(AcpiError::Truncated)?).ok_or(AcpiError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64> {
    let s = b.get(off..off.checked_add(8).ok_or(AcpiError::Truncated)?).ok_or(AcpiError::Truncated)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

fn checksum_ok(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x)) == 0
}

/// Where the root table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootTable {
    /// ACPI 1.0: 32-bit entries.
    Rsdt(u64),
    /// ACPI 2.0+: 64-bit entries.
    Xsdt(u64),
}

/// Parses the RSDP (§5.2.5.3): signature, the ACPI 1.0 checksum over the
/// first 20 bytes and, for revision ≥ 2, the extended checksum over its
/// stated length; returns the root table's address.
pub fn parse_rsdp(b: &[u8]) -> Result<RootTable> {
    let sig = b.get(..8).ok_or(AcpiError::Truncated)?;
    if sig != b"RSD PTR " {
        return Err(AcpiError::BadRsdpSignature);
    }
    if !checksum_ok(b.get(..20).ok_or(AcpiError::Truncated)?) {
        return Err(AcpiError::BadChecksum);
    }
    let revision = u8_at(b, 15)?;
    if revision >= 2 {
        let len = u32_at(b, 20)? as usize;
        if len < 36 {
            return Err(AcpiError::Truncated);
        }
        if !checksum_ok(b.get(..len).ok_or(AcpiError::Truncated)?) {
            return Err(AcpiError::BadChecksum);
        }
        let x = u64_at(b, 24)?;
        if x != 0 {
            return Ok(RootTable::Xsdt(x));
        }
    }
    Ok(RootTable::Rsdt(u64::from(u32_at(b, 16)?)))
}

/// Bytes of the System Description Table Header (§5.2.6).
pub const SDT_HEADER: usize = 36;

/// Checks a table's header: signature, stated length within `b`, checksum;
/// returns the table cut to its stated length.
pub fn check_table<'a>(b: &'a [u8], signature: &[u8; 4]) -> Result<&'a [u8]> {
    if b.get(..4).ok_or(AcpiError::Truncated)? != signature {
        return Err(AcpiError::UnexpectedSignature);
    }
    let len = u32_at(b, 4)? as usize;
    if len < SDT_HEADER {
        return Err(AcpiError::Truncated);
    }
    let t = b.get(..len).ok_or(AcpiError::Truncated)?;
    if !checksum_ok(t) {
        return Err(AcpiError::BadChecksum);
    }
    Ok(t)
}

/// Read access to physical memory, so the table walk runs against fakes in
/// tests and fuzzing.
pub trait PhysMem {
    /// The `len` bytes at physical address `paddr`, if readable.
    fn read(&self, paddr: u64, len: usize) -> Option<&[u8]>;
}

/// A table at `paddr`: reads its header for the length, then the whole
/// table, and checks it.
fn table_at<'m>(mem: &'m impl PhysMem, paddr: u64, signature: &[u8; 4]) -> Result<&'m [u8]> {
    let head = mem.read(paddr, SDT_HEADER).ok_or(AcpiError::Unmapped)?;
    let len = u32_at(head, 4)? as usize;
    if len < SDT_HEADER {
        return Err(AcpiError::Truncated);
    }
    let t = mem.read(paddr, len).ok_or(AcpiError::Unmapped)?;
    check_table(t, signature)
}

/// Follows the RSDP at `rsdp_paddr` to the MADT.
pub fn find_madt<'m>(mem: &'m impl PhysMem, rsdp_paddr: u64) -> Result<Madt<'m>> {
    // The longest RSDP is 36 bytes; a revision-0 one is 20.
    let rsdp = mem.read(rsdp_paddr, 36).or_else(|| mem.read(rsdp_paddr, 20)).ok_or(AcpiError::Unmapped)?;
    let (root, entry) = match parse_rsdp(rsdp)? {
        RootTable::Xsdt(a) => (table_at(mem, a, b"XSDT")?, 8),
        RootTable::Rsdt(a) => (table_at(mem, a, b"RSDT")?, 4),
    };
    let entries = &root[SDT_HEADER..];
    for e in entries.chunks_exact(entry) {
        let pa = if entry == 8 { u64_at(e, 0)? } else { u64::from(u32_at(e, 0)?) };
        let Some(head) = mem.read(pa, 4) else { continue };
        if head == b"APIC" {
            return Madt::parse(table_at(mem, pa, b"APIC")?);
        }
    }
    Err(AcpiError::NoMadt)
}

/// One CPU the MADT lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// Its local APIC (or x2APIC) ID: the INIT/SIPI target.
    pub apic_id: u32,
    /// The ACPI processor UID.
    pub uid: u32,
    /// Enabled now (flag bit 0); otherwise only if online-capable (bit 1).
    pub enabled: bool,
}

/// One I/O APIC the MADT lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicEntry {
    /// Its I/O APIC ID.
    pub id: u8,
    /// Physical address of its registers.
    pub address: u32,
    /// The first GSI it serves.
    pub gsi_base: u32,
}

/// A checked MADT (§5.2.12).
#[derive(Clone, Copy, Debug)]
pub struct Madt<'a> {
    table: &'a [u8],
}

/// Offset of the first interrupt-controller structure.
const MADT_ENTRIES: usize = SDT_HEADER + 8;

impl<'a> Madt<'a> {
    /// Checks the table (signature, length, checksum) and every entry's
    /// length, so iteration cannot fail later.
    pub fn parse(b: &'a [u8]) -> Result<Self> {
        let table = check_table(b, b"APIC")?;
        if table.len() < MADT_ENTRIES {
            return Err(AcpiError::Truncated);
        }
        let m = Madt { table };
        let mut off = MADT_ENTRIES;
        while off < table.len() {
            let (_, len) = m.entry_at(off)?;
            off += len;
        }
        Ok(m)
    }

    /// `(type, length)` of the entry at `off`, checked against the table
    /// and the type's minimum size.
    fn entry_at(&self, off: usize) -> Result<(u8, usize)> {
        let ty = u8_at(self.table, off)?;
        let len = usize::from(u8_at(self.table, off + 1)?);
        let min = match ty {
            0 => 8,
            5 => 12,
            9 => 16,
            _ => 2,
        };
        if len < min || off + len > self.table.len() {
            return Err(AcpiError::BadEntryLength);
        }
        Ok((ty, len))
    }

    /// The local APIC's physical address: the header's 32-bit field, or a
    /// Local APIC Address Override entry's 64-bit one.
    pub fn lapic_address(&self) -> u64 {
        let mut addr = u64::from(u32_at(self.table, SDT_HEADER).unwrap_or(0));
        for (ty, e) in self.entries() {
            if ty == 5 {
                addr = u64_at(e, 4).unwrap_or(addr);
            }
        }
        addr
    }

    /// Whether legacy 8259 PICs are present (flags bit 0, PCAT_COMPAT).
    pub fn has_8259(&self) -> bool {
        u32_at(self.table, SDT_HEADER + 4).is_ok_and(|f| f & 1 != 0)
    }

    fn entries(&self) -> impl Iterator<Item = (u8, &'a [u8])> + '_ {
        let mut off = MADT_ENTRIES;
        core::iter::from_fn(move || {
            let (ty, len) = self.entry_at(off).ok()?;
            let e = self.table.get(off..off + len)?;
            off += len;
            Some((ty, e))
        })
    }

    /// Every I/O APIC entry (type 1, §5.2.12.3 "I/O APIC Structure": ID at
    /// byte 2, 32-bit address at 4, GSI base at 8), in table order; an
    /// entry shorter than its 12 bytes is skipped.
    pub fn io_apics(&self) -> impl Iterator<Item = IoApicEntry> + '_ {
        self.entries().filter_map(|(ty, e)| {
            (ty == 1).then_some(())?;
            Some(IoApicEntry { id: *e.get(2)?, address: u32_at(e, 4).ok()?, gsi_base: u32_at(e, 8).ok()? })
        })
    }

    /// Every processor entry (local APIC and x2APIC), in table order,
    /// enabled or online-capable; others (bit 0 and bit 1 clear) are left
    /// out, as the specification says to ignore them.
    pub fn cpus(&self) -> impl Iterator<Item = Cpu> + '_ {
        self.entries().filter_map(|(ty, e)| {
            let (apic_id, uid, flags) = match ty {
                0 => (u32::from(e[3]), u32::from(e[2]), u32_at(e, 4).ok()?),
                9 => (u32_at(e, 4).ok()?, u32_at(e, 12).ok()?, u32_at(e, 8).ok()?),
                _ => return None,
            };
            (flags & 3 != 0).then_some(Cpu { apic_id, uid, enabled: flags & 1 != 0 })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn fix_checksum(t: &mut [u8], at: usize) {
        t[at] = 0;
        let s = t.iter().fold(0u8, |a, &x| a.wrapping_add(x));
        t[at] = 0u8.wrapping_sub(s);
    }

    fn table(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(sig);
        t.extend_from_slice(&((SDT_HEADER + body.len()) as u32).to_le_bytes());
        t.extend_from_slice(&[1, 0]);
        t.extend_from_slice(b"OSVTST");
        t.extend_from_slice(&[0; 8 + 4 + 4 + 4]);
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    fn madt(cpus: &[(u8, u8, u32)], x2: &[(u32, u32)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        for &(uid, id, flags) in cpus {
            body.extend_from_slice(&[0, 8, uid, id]);
            body.extend_from_slice(&flags.to_le_bytes());
        }
        for &(id, uid) in x2 {
            body.extend_from_slice(&[9, 16, 0, 0]);
            body.extend_from_slice(&id.to_le_bytes());
            body.extend_from_slice(&1u32.to_le_bytes());
            body.extend_from_slice(&uid.to_le_bytes());
        }
        // An I/O APIC entry (type 1, 12 bytes), skipped.
        body.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]);
        table(b"APIC", &body)
    }

    struct Fake(Vec<(u64, Vec<u8>)>);
    impl PhysMem for Fake {
        fn read(&self, paddr: u64, len: usize) -> Option<&[u8]> {
            self.0.iter().find_map(|(a, b)| {
                let off = usize::try_from(paddr.checked_sub(*a)?).ok()?;
                b.get(off..off.checked_add(len)?)
            })
        }
    }

    fn rsdp(xsdt: u64) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(b"RSD PTR ");
        r.push(0);
        r.extend_from_slice(b"OSVTST");
        r.push(2);
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&36u32.to_le_bytes());
        r.extend_from_slice(&xsdt.to_le_bytes());
        r.extend_from_slice(&[0; 4]);
        fix_checksum(&mut r[..20], 8);
        fix_checksum(&mut r, 32);
        r
    }

    #[test]
    fn walks_rsdp_xsdt_madt() {
        let m = madt(&[(0, 0, 1), (1, 1, 1), (2, 5, 2), (3, 7, 0)], &[(300, 9)]);
        let x = table(b"XSDT", &[0x2000u64.to_le_bytes(), 0x3000u64.to_le_bytes()].concat());
        let mem =
            Fake(vec![(0xe0000, rsdp(0x1000)), (0x1000, x), (0x2000, table(b"FACP", &[0; 8])), (0x3000, m)]);
        let madt = find_madt(&mem, 0xe0000).unwrap();
        let cpus: Vec<_> = madt.cpus().collect();
        assert_eq!(
            cpus,
            [
                Cpu { apic_id: 0, uid: 0, enabled: true },
                Cpu { apic_id: 1, uid: 1, enabled: true },
                Cpu { apic_id: 5, uid: 2, enabled: false },
                Cpu { apic_id: 300, uid: 9, enabled: true },
            ]
        );
        assert_eq!(madt.lapic_address(), 0xfee0_0000);
        assert!(madt.has_8259());
        assert_eq!(
            madt.io_apics().collect::<Vec<_>>(),
            [IoApicEntry { id: 0, address: 0xfec0_0000, gsi_base: 0 }]
        );
    }

    #[test]
    fn rejects_bad_tables() {
        let mut r = rsdp(0x1000);
        r[0] = b'X';
        assert_eq!(parse_rsdp(&r), Err(AcpiError::BadRsdpSignature));
        let mut r = rsdp(0x1000);
        r[30] ^= 1;
        assert_eq!(parse_rsdp(&r), Err(AcpiError::BadChecksum));
        assert_eq!(parse_rsdp(&r[..10]), Err(AcpiError::Truncated));
        let mut m = madt(&[(0, 0, 1)], &[]);
        m[SDT_HEADER + 8 + 1] = 3; // entry length below the type's size
        fix_checksum(&mut m, 9);
        assert_eq!(Madt::parse(&m).err(), Some(AcpiError::BadEntryLength));
        let m = madt(&[(0, 0, 1)], &[]);
        assert_eq!(Madt::parse(&m[..m.len() - 1]).err(), Some(AcpiError::Truncated));
        let mem = Fake(vec![(0xe0000, rsdp(0x1000)), (0x1000, table(b"XSDT", &[]))]);
        assert_eq!(find_madt(&mem, 0xe0000).err(), Some(AcpiError::NoMadt));
        let mem = Fake(vec![(0xe0000, rsdp(0x9000))]);
        assert_eq!(find_madt(&mem, 0xe0000).err(), Some(AcpiError::Unmapped));
    }

    proptest! {
        /// Arbitrary bytes never panic; a table that parses lists CPUs whose
        /// entries lie inside it.
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_rsdp(&b);
            if let Ok(m) = Madt::parse(&b) {
                let _ = (m.cpus().count(), m.lapic_address(), m.has_8259());
            }
        }

        /// Built tables round-trip: the CPUs listed enabled or
        /// online-capable come back in order.
        #[test]
        fn cpus_round_trip(cpus in proptest::collection::vec((any::<u8>(), any::<u8>(), 0u32..4), 0..20)) {
            let m = madt(&cpus, &[]);
            let madt = Madt::parse(&m).unwrap();
            let want: Vec<_> = cpus.iter().filter(|c| c.2 & 3 != 0)
                .map(|&(uid, id, f)| Cpu { apic_id: u32::from(id), uid: u32::from(uid), enabled: f & 1 != 0 })
                .collect();
            prop_assert_eq!(madt.cpus().collect::<Vec<_>>(), want);
        }
    }
}
