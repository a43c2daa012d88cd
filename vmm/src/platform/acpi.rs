//! The ACPI tables kvm-unit-tests reads, laid out as QEMU's `pc` machine
//! lays them out for it: an RSDP (revision 0) found by scanning
//! 0xE0000-0xFFFFF, an RSDT listing the FADT and the MADT, a FADT whose PM
//! timer block is the PIIX4 one (port 0x608) and which points at a FACS and
//! a DSDT holding only the sleep packages (`\_S3`, `\_S4`, `\_S5`, QEMU's
//! values), and a MADT with one local APIC per vCPU, the IOAPIC, and
//! QEMU's interrupt source overrides; with a VT-d unit, a DMAR table
//! describing it, as QEMU's q35 has.

use ktvmm_abi::{layout, ports};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

/// Where the tables go: the BIOS area, where an RSDP is looked for.
pub const BASE: u64 = 0xe_0000;
/// First byte after the area the tables may use.
pub const END: u64 = 0x10_0000;
/// Where the FACS is (its waking vectors are read on a resume from S3).
pub const FACS_ADDR: u64 = BASE + FACS as u64;

// Fixed offsets inside the area; the MADT, which grows with the CPU count,
// comes last.
const RSDP: usize = 0x0;
const RSDT: usize = 0x40;
const FACS: usize = 0x80; // 64-byte aligned, as ACPI requires
const DSDT: usize = 0xc0;
const FADT: usize = 0x110;
const DMAR: usize = 0x190;
const MADT: usize = 0x200;

const OEM_ID: &[u8; 6] = b"KTVMM ";
const OEM_TABLE_ID: &[u8; 8] = b"KTVMMPC ";
const CREATOR_ID: &[u8; 4] = b"KTVM";

/// SCI interrupt (QEMU's PIIX4 uses 9).
const SCI_IRQ: u16 = 9;
/// ISA IRQs QEMU declares level-triggered, active-high (the PCI links and
/// the SCI).
const LEVEL_IRQS: [u8; 4] = [5, 9, 10, 11];

/// Writes the tables for `cpus` vCPUs (and a VT-d unit, if `iommu`);
/// returns the RSDP's address.
pub fn write_tables(
    memory: &GuestMemory,
    cpus: u32,
    iommu: bool,
) -> Result<u64, vm_memory::GuestMemoryError> {
    let tables = build(cpus, iommu);
    memory.write_slice(&tables, GuestAddress(BASE))?;
    Ok(BASE)
}

/// The whole table area, starting at [`BASE`].
pub fn build(cpus: u32, iommu: bool) -> Vec<u8> {
    let at = |offset: usize| (BASE + offset as u64) as u32;

    let madt = madt(cpus);
    let mut area = vec![0u8; MADT + madt.len()];
    let mut put =
        |offset: usize, bytes: &[u8]| area[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(RSDP, &rsdp(at(RSDT)));
    let mut listed = vec![at(FADT), at(MADT)];
    if iommu {
        listed.push(at(DMAR));
        put(DMAR, &dmar());
    }
    put(
        RSDT,
        &table(
            b"RSDT",
            1,
            &listed
                .iter()
                .flat_map(|a| a.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
    );
    put(FACS, &facs());
    put(DSDT, &table(b"DSDT", 1, &SLEEP_PACKAGES));
    put(FADT, &fadt(at(FACS), at(DSDT)));
    put(MADT, &madt);
    area
}

fn rsdp(rsdt: u32) -> [u8; 20] {
    let mut r = [0u8; 20];
    r[..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(OEM_ID);
    r[15] = 0; // revision 0: ACPI 1.0, RSDT only
    r[16..20].copy_from_slice(&rsdt.to_le_bytes());
    r[8] = checksum(&r);
    r
}

/// A table: the 36-byte header, then `body`, checksummed.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = 36 + body.len();
    let mut t = vec![0u8; len];
    t[..4].copy_from_slice(signature);
    t[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    t[8] = revision;
    t[10..16].copy_from_slice(OEM_ID);
    t[16..24].copy_from_slice(OEM_TABLE_ID);
    t[24..28].copy_from_slice(&1u32.to_le_bytes());
    t[28..32].copy_from_slice(CREATOR_ID);
    t[32..36].copy_from_slice(&1u32.to_le_bytes());
    t[36..].copy_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// `Name (_S3, Package (4) {1, 1, 0, 0})`, and likewise `_S4` (2) and
/// `_S5` (0): the SLP_TYP values QEMU's DSDT gives, which
/// `devices::pm` carries out.
const SLEEP_PACKAGES: [u8; 38] = [
    0x08, b'_', b'S', b'3', b'_', 0x12, 0x06, 0x04, 0x01, 0x01, 0x00, 0x00, //
    0x08, b'_', b'S', b'4', b'_', 0x12, 0x08, 0x04, 0x0a, 0x02, 0x0a, 0x02, 0x00, 0x00, //
    0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
];

// FACS fields (ACPI 6.5, table 5.14).
const FACS_WAKING_VECTOR: usize = 12;
const FACS_X_WAKING_VECTOR: usize = 24;
const FACS_VERSION: usize = 32;
/// Version 2: the X_Firmware_Waking_Vector and the OSPM flags are there.
/// The flags leave 64BIT_WAKE_SUPPORTED_F clear, so an OSPM's 64BIT_WAKE_F
/// is ignored and an X_Firmware_Waking_Vector is entered in 32-bit mode,
/// as ACPI says of firmware without 64-bit wake.
const FACS_REVISION: u8 = 2;

fn facs() -> [u8; 64] {
    let mut f = [0u8; 64];
    f[..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[FACS_VERSION] = FACS_REVISION;
    f
}

/// Where and how the boot CPU resumes from S3, as the FACS says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeEntry {
    /// Firmware_Waking_Vector: real mode at `segment:offset`
    /// (vector >> 4 : vector & 0xf).
    RealMode {
        /// CS.
        segment: u16,
        /// IP.
        offset: u16,
    },
    /// X_Firmware_Waking_Vector: 32-bit protected mode, paging off, flat
    /// 4 GiB segments, at this address.
    Flat32 {
        /// EIP.
        eip: u32,
    },
}

/// Why the guest cannot be resumed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WakeError {
    /// Both vectors are zero: firmware would boot from scratch.
    #[error(
        "the FACS has no waking vector (both Firmware_Waking_Vector and \
         X_Firmware_Waking_Vector are 0): firmware would boot the machine afresh, \
         and ktvmm has none"
    )]
    NoVector,
    /// X_Firmware_Waking_Vector beyond what 32-bit mode reaches.
    #[error(
        "X_Firmware_Waking_Vector {0:#x} is above 4 GiB, beyond a 32-bit wake \
         environment (ktvmm does not offer 64-bit wake)"
    )]
    XAbove4G(u64),
    /// Firmware_Waking_Vector beyond what real mode reaches.
    #[error("Firmware_Waking_Vector {0:#x} is above 1 MiB, beyond real mode")]
    Above1M(u32),
    /// The FACS could not be read.
    #[error("reading the FACS at {FACS_ADDR:#x}: {0}")]
    Read(String),
}

/// Reads the waking vector the guest left in the FACS: the 64-bit
/// X_Firmware_Waking_Vector when it is not zero, else the 32-bit
/// Firmware_Waking_Vector, as ACPI has firmware do.
pub fn wake_entry(memory: &GuestMemory) -> Result<WakeEntry, WakeError> {
    let mut f = [0u8; 64];
    memory
        .read_slice(&mut f, GuestAddress(FACS_ADDR))
        .map_err(|e| WakeError::Read(e.to_string()))?;
    wake_entry_of(&f)
}

fn wake_entry_of(facs: &[u8; 64]) -> Result<WakeEntry, WakeError> {
    let u32_at =
        |at: usize| u32::from_le_bytes([facs[at], facs[at + 1], facs[at + 2], facs[at + 3]]);
    // The guest may have rewritten the version; the field is there in ours.
    let x = u64::from(u32_at(FACS_X_WAKING_VECTOR))
        | (u64::from(u32_at(FACS_X_WAKING_VECTOR + 4)) << 32);
    if facs[FACS_VERSION] >= 1 && x != 0 {
        return u32::try_from(x)
            .map(|eip| WakeEntry::Flat32 { eip })
            .map_err(|_| WakeError::XAbove4G(x));
    }
    match u32_at(FACS_WAKING_VECTOR) {
        0 => Err(WakeError::NoVector),
        vector if vector >= 0x10_0000 => Err(WakeError::Above1M(vector)),
        vector => Ok(WakeEntry::RealMode {
            segment: (vector >> 4) as u16,
            offset: (vector & 0xf) as u16,
        }),
    }
}

/// FADT revision 1 (116 bytes), as QEMU gives the `pc` machine.
fn fadt(facs: u32, dsdt: u32) -> Vec<u8> {
    let mut b = vec![0u8; 116 - 36];
    let mut put = |offset: usize, bytes: &[u8]| {
        let o = offset - 36;
        b[o..o + bytes.len()].copy_from_slice(bytes);
    };
    put(36, &facs.to_le_bytes());
    put(40, &dsdt.to_le_bytes());
    put(46, &SCI_IRQ.to_le_bytes());
    // smi_cmd 0: ACPI mode is always on, nothing to enable.
    put(56, &u32::from(ports::PM_BASE).to_le_bytes()); // PM1a event block
    put(64, &u32::from(ports::PM_BASE + 4).to_le_bytes()); // PM1a control block
    put(76, &u32::from(ports::PM_TIMER).to_le_bytes());
    put(88, &[4, 2, 0, 4]); // PM1 event, PM1 control, PM2 control, timer lengths
    put(96, &0x0fffu16.to_le_bytes()); // C2 latency: not supported
    put(98, &0x0fffu16.to_le_bytes()); // C3 latency: not supported
    // WBINVD, C1 on all processors, sleep button as a control method,
    // RTC wake from S4.
    put(
        112,
        &((1u32 << 0) | (1 << 2) | (1 << 5) | (1 << 7)).to_le_bytes(),
    );
    table(b"FACP", 1, &b)
}

fn madt(cpus: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(layout::LAPIC_ADDR as u32).to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: there are 8259s
    for cpu in 0..cpus {
        // Processor local APIC: ACPI processor id, APIC id, enabled. IDs
        // above 255 need x2APIC entries, which ktvmm does not give yet.
        let id = cpu.min(255) as u8;
        b.extend_from_slice(&[0, 8, id, id]);
        b.extend_from_slice(&1u32.to_le_bytes());
    }
    // The IOAPIC: id = the CPU count, as QEMU numbers it; GSI base 0.
    b.extend_from_slice(&[1, 12, cpus.min(255) as u8, 0]);
    b.extend_from_slice(&(layout::IOAPIC_ADDR as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    // IRQ 0 (the PIT) arrives on GSI 2.
    b.extend_from_slice(&[2, 10, 0, 0]);
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    for irq in LEVEL_IRQS {
        // Same GSI, active high (01), level-triggered (11).
        b.extend_from_slice(&[2, 10, 0, irq]);
        b.extend_from_slice(&u32::from(irq).to_le_bytes());
        b.extend_from_slice(&0x000du16.to_le_bytes());
    }
    // LINT1 of every processor is NMI.
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    table(b"APIC", 1, &b)
}

/// One remapping unit at [`crate::platform::devices::vtd::BASE`] for every PCI
/// device on segment 0, with interrupt remapping, 39-bit addresses.
fn dmar() -> Vec<u8> {
    const INTERRUPT_REMAPPING: u8 = 1;
    const INCLUDE_PCI_ALL: u8 = 1;
    let mut b = vec![38, INTERRUPT_REMAPPING];
    b.extend_from_slice(&[0; 10]);
    // DRHD: type 0, length 16, flags, reserved, segment 0, register base.
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(&[INCLUDE_PCI_ALL, 0]);
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&crate::platform::devices::vtd::BASE.to_le_bytes());
    table(b"DMAR", 1, &b)
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u32_at(area: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(area[offset..offset + 4].try_into().unwrap())
    }

    /// Follows pointers the way kvm-unit-tests' find_acpi_table_addr does.
    fn find<'a>(area: &'a [u8], signature: &[u8; 4]) -> &'a [u8] {
        assert_eq!(&area[..8], b"RSD PTR ");
        assert_eq!(sum(&area[..20]), 0, "RSDP checksum");
        let rsdt = (u64::from(u32_at(area, 16)) - BASE) as usize;
        let len = u32_at(area, rsdt + 4) as usize;
        assert_eq!(sum(&area[rsdt..rsdt + len]), 0, "RSDT checksum");
        for entry in (rsdt + 36..rsdt + len).step_by(4) {
            let t = (u64::from(u32_at(area, entry)) - BASE) as usize;
            let tlen = u32_at(area, t + 4) as usize;
            if &area[t..t + 4] == signature {
                assert_eq!(sum(&area[t..t + tlen]), 0, "checksum of {signature:?}");
                return &area[t..t + tlen];
            }
        }
        panic!("no {signature:?}")
    }

    #[test]
    fn the_tables_are_found_and_checksummed() {
        let area = build(4, false);
        assert!(BASE + area.len() as u64 <= END);
        let fadt = find(&area, b"FACP");
        assert_eq!(fadt.len(), 116);
        assert_eq!(u32_at(fadt, 76), 0x608, "PM timer block");
        assert_eq!(fadt[91], 4, "PM timer length");
        let facs = (u64::from(u32_at(fadt, 36)) - BASE) as usize;
        assert_eq!(&area[facs..facs + 4], b"FACS");
        assert_eq!((BASE as usize + facs) % 64, 0, "FACS alignment");
        let dsdt = (u64::from(u32_at(fadt, 40)) - BASE) as usize;
        assert_eq!(&area[dsdt..dsdt + 4], b"DSDT");
        let dsdt_len = u32_at(&area, dsdt + 4) as usize;
        assert_eq!(sum(&area[dsdt..dsdt + dsdt_len]), 0);
    }

    #[test]
    fn the_dsdt_holds_qemus_sleep_packages() {
        let area = build(1, false);
        assert!(DSDT + 36 + SLEEP_PACKAGES.len() <= FADT);
        let fadt = find(&area, b"FACP");
        let dsdt = (u64::from(u32_at(fadt, 40)) - BASE) as usize;
        let len = u32_at(&area, dsdt + 4) as usize;
        assert_eq!(sum(&area[dsdt..dsdt + len]), 0);
        let aml = &area[dsdt + 36..dsdt + len];
        // NameOp, the name, PackageOp, its length, 4 elements, SLP_TYPa.
        for (name, slp_typ) in [(b"_S3_", [0x01]), (b"_S5_", [0x00])] {
            let at = aml.windows(4).position(|w| w == name).unwrap();
            assert_eq!(aml[at - 1], 0x08);
            assert_eq!(&aml[at + 4..at + 7], &[0x12, 0x06, 0x04]);
            assert_eq!(aml[at + 7], slp_typ[0]);
        }
        let s4 = aml.windows(4).position(|w| w == b"_S4_").unwrap();
        assert_eq!(&aml[s4 + 4..s4 + 10], &[0x12, 0x08, 0x04, 0x0a, 0x02, 0x0a]);
    }

    #[test]
    fn the_waking_vector_is_the_x_field_if_set_else_the_32_bit_one() {
        let area = build(1, false);
        let at = (FACS_ADDR - BASE) as usize;
        let mut facs: [u8; 64] = area[at..at + 64].try_into().unwrap();
        assert_eq!(facs[32], 2, "FACS version 2");
        assert_eq!(u32_at(&facs, 20), 0, "no 64BIT_WAKE_SUPPORTED_F");
        assert_eq!(wake_entry_of(&facs), Err(WakeError::NoVector));
        facs[12..16].copy_from_slice(&0x1_2345u32.to_le_bytes());
        assert_eq!(
            wake_entry_of(&facs),
            Ok(WakeEntry::RealMode {
                segment: 0x1234,
                offset: 5
            })
        );
        facs[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
        // 64BIT_WAKE_F is ignored: 64-bit wake is not offered.
        facs[36] = 1;
        assert_eq!(
            wake_entry_of(&facs),
            Ok(WakeEntry::Flat32 { eip: 0x20_0000 })
        );
        facs[32] = 0;
        assert!(
            matches!(wake_entry_of(&facs), Ok(WakeEntry::RealMode { .. })),
            "a version 0 FACS has no X field"
        );
        facs[32] = 2;
        facs[24..32].copy_from_slice(&0x1_0000_0000u64.to_le_bytes());
        assert_eq!(
            wake_entry_of(&facs),
            Err(WakeError::XAbove4G(0x1_0000_0000))
        );
        facs[24..32].fill(0);
        facs[12..16].copy_from_slice(&0x10_0000u32.to_le_bytes());
        assert_eq!(wake_entry_of(&facs), Err(WakeError::Above1M(0x10_0000)));
    }

    #[test]
    fn a_dmar_table_describes_the_vtd_unit() {
        let area = build(2, true);
        assert!(BASE + area.len() as u64 <= END);
        let dmar = find(&area, b"DMAR");
        assert_eq!((dmar[36], dmar[37]), (38, 1), "39-bit, interrupt remapping");
        assert_eq!(u16::from_le_bytes([dmar[48], dmar[49]]), 0, "a DRHD");
        assert_eq!(dmar[52], 1, "INCLUDE_PCI_ALL");
        assert_eq!(
            u64::from_le_bytes(dmar[56..64].try_into().unwrap()),
            0xfed9_0000
        );
        // The other tables are still found, and without a unit there is no
        // DMAR.
        find(&area, b"FACP");
        find(&area, b"APIC");
        let plain = build(2, false);
        let rsdt_len = u32_at(&plain, 0x40 + 4);
        assert_eq!(rsdt_len, 36 + 8);
    }

    #[test]
    fn the_madt_has_a_lapic_per_cpu_and_the_ioapic() {
        let area = build(3, false);
        let madt = find(&area, b"APIC");
        assert_eq!(u32_at(madt, 36), 0xfee0_0000);
        let mut lapics = Vec::new();
        let mut ioapics = 0;
        let mut overrides = Vec::new();
        let mut at = 44;
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            assert!(len >= 2, "entry of length {len}");
            match kind {
                0 => lapics.push(madt[at + 3]),
                1 => {
                    ioapics += 1;
                    assert_eq!(u32_at(madt, at + 4), 0xfec0_0000);
                }
                2 => overrides.push((madt[at + 3], u32_at(madt, at + 4))),
                _ => {}
            }
            at += len;
        }
        assert_eq!(at, madt.len());
        assert_eq!(lapics, [0, 1, 2]);
        assert_eq!(ioapics, 1);
        assert!(overrides.contains(&(0, 2)), "{overrides:?}");
    }
}
