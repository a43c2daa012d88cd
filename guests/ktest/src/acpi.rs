//! Just enough ACPI to find the CPUs: the RSDP in the BIOS area, the RSDT
//! and the MADT's processor entries.
//!
//! Tables are read where the platform put them (identity-mapped physical
//! memory); every length is checked against the table that contains it, so
//! a corrupt table ends the walk instead of sending it through memory.

/// Where the RSDP lies, 16-byte aligned (ACPI 5.2.5.1).
const BIOS_AREA: core::ops::Range<u64> = 0xe0000..0x10_0000;
/// Length of a system description table's header.
const HEADER_LEN: u32 = 36;
/// MADT entry types.
const MADT_LOCAL_APIC: u8 = 0;
const MADT_LOCAL_X2APIC: u8 = 9;

fn byte(addr: u64) -> u8 {
    // SAFETY: ACPI tables are in RAM or ROM below 4 GiB, which the identity
    // map covers; reading them has no side effects.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

fn u32_at(addr: u64) -> u32 {
    u32::from_le_bytes([byte(addr), byte(addr + 1), byte(addr + 2), byte(addr + 3)])
}

fn checksum_ok(addr: u64, len: u32) -> bool {
    (0..u64::from(len)).fold(0u8, |sum, i| sum.wrapping_add(byte(addr + i))) == 0
}

/// The RSDP's address, if the BIOS area has a valid one.
pub fn rsdp() -> Option<u64> {
    BIOS_AREA.step_by(16).find(|&addr| {
        (0..8).all(|i| byte(addr + i) == b"RSD PTR "[i as usize]) && checksum_ok(addr, 20)
    })
}

/// A system description table: its address and its length (header
/// included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// Physical address of the header.
    pub addr: u64,
    /// Length from the header, at least the header's own.
    pub len: u32,
}

fn table_at(addr: u64) -> Option<Table> {
    let len = u32_at(addr + 4);
    (len >= HEADER_LEN && checksum_ok(addr, len)).then_some(Table { addr, len })
}

/// The table with `signature`, found through the RSDT.
pub fn find_table(signature: &[u8; 4]) -> Option<Table> {
    let rsdt = table_at(u64::from(u32_at(rsdp()? + 16)))?;
    let entries = (rsdt.len - HEADER_LEN) / 4;
    (0..entries)
        .map(|i| u64::from(u32_at(rsdt.addr + u64::from(HEADER_LEN + 4 * i))))
        .find(|&addr| (0..4).all(|i| byte(addr + i) == signature[i as usize]))
        .and_then(table_at)
}

/// A processor the MADT lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Processor {
    /// Its APIC ID.
    pub apic_id: u32,
    /// Whether it is enabled (may be started).
    pub enabled: bool,
}

/// Calls `f` for every processor (local APIC and local x2APIC entry) in the
/// MADT; returns false when there is no MADT.
pub fn for_each_processor(mut f: impl FnMut(Processor)) -> bool {
    let Some(madt) = find_table(b"APIC") else {
        return false;
    };
    let end = madt.addr + u64::from(madt.len);
    // Entries follow the header, the LAPIC address and the flags.
    let mut entry = madt.addr + u64::from(HEADER_LEN) + 8;
    while entry + 2 <= end {
        let (kind, len) = (byte(entry), u64::from(byte(entry + 1)));
        if len < 2 || entry + len > end {
            break;
        }
        match kind {
            MADT_LOCAL_APIC if len >= 8 => f(Processor {
                apic_id: u32::from(byte(entry + 3)),
                enabled: u32_at(entry + 4) & 1 != 0,
            }),
            MADT_LOCAL_X2APIC if len >= 16 => f(Processor {
                apic_id: u32_at(entry + 4),
                enabled: u32_at(entry + 8) & 1 != 0,
            }),
            _ => {}
        }
        entry += len;
    }
    true
}
