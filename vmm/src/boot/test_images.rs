//! Minimal guest images built in memory, for tests of the loader and of
//! `ktvmm` itself (no toolchain needed to make a guest that exits with 3).

/// An ELF64 x86-64 executable with one RWX `PT_LOAD` segment holding `code`
/// at `addr` (entry at its start), plus `bss` zero bytes.
pub fn elf64(addr: u64, code: &[u8], bss: u64) -> Vec<u8> {
    const EHDR: usize = 0x40;
    const PHDR: usize = 0x38;
    let mut f = vec![0u8; EHDR + PHDR];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // ELFCLASS64
    f[5] = 1; // little-endian
    f[6] = 1; // EV_CURRENT
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&addr.to_le_bytes()); // e_entry
    f[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    f[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    f[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = &mut f[EHDR..];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&7u32.to_le_bytes()); // RWX
    ph[8..16].copy_from_slice(&((EHDR + PHDR) as u64).to_le_bytes()); // p_offset
    ph[16..24].copy_from_slice(&addr.to_le_bytes()); // p_vaddr
    ph[24..32].copy_from_slice(&addr.to_le_bytes()); // p_paddr
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[40..48].copy_from_slice(&(code.len() as u64 + bss).to_le_bytes());
    ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
    f.extend_from_slice(code);
    f
}

/// An ELF32 i386 multiboot kernel: one RWX `PT_LOAD` segment holding the
/// multiboot header (flags 0) followed by `code`, which starts at `addr`
/// (the entry point), plus `bss` zero bytes.
pub fn elf32_multiboot(addr: u32, code: &[u8], bss: u32) -> Vec<u8> {
    const EHDR: usize = 52;
    const PHDR: usize = 32;
    const MB: u32 = 12;
    let magic: u32 = 0x1bad_b002;
    let mut f = vec![0u8; EHDR + PHDR];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 1; // ELFCLASS32
    f[5] = 1; // little-endian
    f[6] = 1; // EV_CURRENT
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..28].copy_from_slice(&addr.to_le_bytes()); // e_entry
    f[28..32].copy_from_slice(&(EHDR as u32).to_le_bytes()); // e_phoff
    f[40..42].copy_from_slice(&(EHDR as u16).to_le_bytes());
    f[42..44].copy_from_slice(&(PHDR as u16).to_le_bytes());
    f[44..46].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let size = MB + code.len() as u32;
    let ph = &mut f[EHDR..];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&((EHDR + PHDR) as u32).to_le_bytes()); // p_offset
    ph[8..12].copy_from_slice(&(addr - MB).to_le_bytes()); // p_vaddr
    ph[12..16].copy_from_slice(&(addr - MB).to_le_bytes()); // p_paddr
    ph[16..20].copy_from_slice(&size.to_le_bytes());
    ph[20..24].copy_from_slice(&(size + bss).to_le_bytes());
    ph[24..28].copy_from_slice(&7u32.to_le_bytes()); // RWX
    ph[28..32].copy_from_slice(&0x1000u32.to_le_bytes());
    for word in [magic, 0, 0u32.wrapping_sub(magic)] {
        f.extend_from_slice(&word.to_le_bytes());
    }
    f.extend_from_slice(code);
    f
}

/// A multiboot header that gives the load addresses itself (flag 16):
/// `[header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr]`.
pub fn multiboot_header_with_addresses(addresses: [u32; 5]) -> Vec<u8> {
    let (magic, flags) = (0x1bad_b002u32, 1u32 << 16);
    [magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags)]
        .into_iter()
        .chain(addresses)
        .flat_map(u32::to_le_bytes)
        .collect()
}

/// Machine code that writes `code` to isa-debug-exit and halts:
/// `mov $code, %eax; out %eax, $0xf4; 1: hlt; jmp 1b`.
pub fn exit_with(code: u32) -> Vec<u8> {
    let mut bytes = vec![0xb8];
    bytes.extend_from_slice(&code.to_le_bytes());
    bytes.extend_from_slice(&[0xe7, 0xf4, 0xf4, 0xeb, 0xfd]);
    bytes
}

/// Machine code that spins forever with interrupts disabled: `cli; 1: jmp 1b`.
pub const SPIN_WITH_INTERRUPTS_OFF: [u8; 3] = [0xfa, 0xeb, 0xfe];

/// Machine code that reads the 32-bit PCI configuration register selected
/// by `address` (the value for port 0xcf8) and exits with it:
/// `mov $address, %eax; mov $0xcf8, %dx; out %eax, %dx; mov $0xcfc, %dx;
/// in %dx, %eax; out %eax, $0xf4; 1: hlt; jmp 1b`.
pub fn exit_with_pci_config(address: u32) -> Vec<u8> {
    let mut bytes = vec![0xb8];
    bytes.extend_from_slice(&address.to_le_bytes());
    bytes.extend_from_slice(&[0x66, 0xba, 0xf8, 0x0c, 0xef, 0x66, 0xba, 0xfc, 0x0c, 0xed]);
    bytes.extend_from_slice(&[0xe7, 0xf4, 0xf4, 0xeb, 0xfd]);
    bytes
}

/// 32-bit code (for [`elf32_multiboot`]) that exits with the 32-bit word at
/// `[ebx + offset]`, a field of the multiboot information:
/// `mov eax, [ebx + offset]; out 0xf4, eax; 1: hlt; jmp 1b`.
pub fn exit_with_multiboot_field(offset: u32) -> Vec<u8> {
    let mut bytes = vec![0x8b, 0x83];
    bytes.extend_from_slice(&offset.to_le_bytes());
    bytes.extend_from_slice(&[0xe7, 0xf4, 0xf4, 0xeb, 0xfd]);
    bytes
}

/// 32-bit code that exits with the entry value of EAX: `out 0xf4, eax`.
pub const EXIT_WITH_EAX: [u8; 5] = [0xe7, 0xf4, 0xf4, 0xeb, 0xfd];

/// 32-bit code that exits with the 32-bit word at physical `address`:
/// `mov eax, [address]; out 0xf4, eax; 1: hlt; jmp 1b`.
pub fn exit_with_word_at(address: u32) -> Vec<u8> {
    let mut bytes = vec![0xa1];
    bytes.extend_from_slice(&address.to_le_bytes());
    bytes.extend_from_slice(&[0xe7, 0xf4, 0xf4, 0xeb, 0xfd]);
    bytes
}

/// 32-bit code that reads the first byte of fw_cfg item `key` and exits
/// with it: `mov dx, 0x510; mov ax, key; out dx, ax; inc edx; in al, dx;
/// movzx eax, al; out 0xf4, eax; 1: hlt; jmp 1b`.
pub fn exit_with_fw_cfg_byte(key: u16) -> Vec<u8> {
    let mut bytes = vec![0x66, 0xba, 0x10, 0x05, 0x66, 0xb8];
    bytes.extend_from_slice(&key.to_le_bytes());
    bytes.extend_from_slice(&[0x66, 0xef, 0x42, 0xec, 0x0f, 0xb6, 0xc0]);
    bytes.extend_from_slice(&[0xe7, 0xf4, 0xf4, 0xeb, 0xfd]);
    bytes
}

/// 32-bit code that exits with the first byte of the multiboot command
/// line: `mov eax, [ebx + 16]; movzx eax, byte [eax]; out 0xf4, eax; ...`.
pub const EXIT_WITH_CMDLINE_BYTE: [u8; 14] = [
    0x8b, 0x43, 0x10, 0x0f, 0xb6, 0x00, 0xe7, 0xf4, 0xf4, 0xeb, 0xfd, 0x90, 0x90, 0x90,
];

/// 32-bit code that starts the APs the way kvm-unit-tests does (INIT and
/// SIPI to all but itself, a real-mode trampoline at 0x8000) and exits with
/// how many of them checked in once `aps` have (it spins until then).
///
/// The trampoline, written to 0x8000 first: `xor ax, ax; mov ds, ax;
/// lock inc word [0x7000]; cli; 1: hlt; jmp 1b`.
pub fn start_aps_and_count(aps: u8) -> Vec<u8> {
    let mut code = Vec::new();
    for (i, word) in [0xd88e_c031u32, 0x0006_fff0, 0xebf4_fa70, 0x9090_90fd]
        .into_iter()
        .enumerate()
    {
        code.extend(mov_to(0x8000 + 4 * i as u32, word));
    }
    code.extend(mov_to(0x7000, 0));
    code.extend(mov_to(0xfee0_00f0, 0x1ff)); // LAPIC software-enabled
    code.extend(mov_to(0xfee0_0300, 0x000c_4500)); // INIT, all but self
    code.extend(mov_to(0xfee0_0300, 0x000c_4608)); // SIPI, vector 0x08
    // 1: mov eax, [0x7000]; pause; cmp eax, aps; jb 1b
    code.extend_from_slice(&[
        0xa1, 0x00, 0x70, 0x00, 0x00, 0xf3, 0x90, 0x83, 0xf8, aps, 0x72, 0xf4,
    ]);
    code.extend_from_slice(&[0xe7, 0xf4, 0xf4, 0xeb, 0xfd]);
    code
}

/// `mov dword [addr], value` (32-bit code).
fn mov_to(addr: u32, value: u32) -> Vec<u8> {
    let mut v = vec![0xc7, 0x05];
    v.extend_from_slice(&addr.to_le_bytes());
    v.extend_from_slice(&value.to_le_bytes());
    v
}

/// Where [`sleep_and_resume`] keeps its marker.
pub const SLEEP_MARKER: u32 = 0x7000;

/// How [`sleep_and_resume`] sleeps and resumes.
#[derive(Clone, Copy, Debug)]
pub struct SleepGuest {
    /// The FACS (found from the FADT by a real guest; given here).
    pub facs: u32,
    /// Where the resume code goes, and the waking vector.
    pub vector: u32,
    /// The vector goes in X_Firmware_Waking_Vector (resume in 32-bit
    /// protected mode) instead of Firmware_Waking_Vector (real mode).
    pub x_vector: bool,
    /// Arm the RTC alarm (every second, AIE) and RTC_EN, as
    /// kvm-unit-tests' `s3` does.
    pub rtc_alarm: bool,
    /// SLP_TYP written with SLP_EN (1: S3, 0: S5).
    pub slp_typ: u8,
    /// The value left at [`SLEEP_MARKER`] before sleeping.
    pub marker: u32,
}

/// 32-bit code (for [`elf32_multiboot`]) that sleeps the way
/// kvm-unit-tests' `s3` does: it writes its marker, copies its resume code
/// to the vector and the vector into the FACS, arms the wake, writes
/// PM1a control, and then spins overwriting the marker with 0x99. The resume
/// code exits with `[marker] + CR0.PE + (CS << 8)`: the marker kept, the
/// mode, and the segment it resumed in.
pub fn sleep_and_resume(guest: SleepGuest) -> Vec<u8> {
    // Real mode: mov eax, cr0; and eax, 1; add eax, [0x7000];
    // mov bx, cs; movzx ebx, bx; shl ebx, 8; add eax, ebx; out 0xf4, eax;
    // 1: hlt; jmp 1b.
    const REAL: [u8; 31] = [
        0x0f, 0x20, 0xc0, 0x66, 0x83, 0xe0, 0x01, 0x66, 0x03, 0x06, 0x00, 0x70, 0x8c, 0xcb, 0x66,
        0x0f, 0xb7, 0xdb, 0x66, 0xc1, 0xe3, 0x08, 0x66, 0x01, 0xd8, 0x66, 0xe7, 0xf4, 0xf4, 0xeb,
        0xfd,
    ];
    // The same in 32-bit code.
    const FLAT: [u8; 28] = [
        0x0f, 0x20, 0xc0, 0x83, 0xe0, 0x01, 0x03, 0x05, 0x00, 0x70, 0x00, 0x00, 0x8c, 0xcb, 0x0f,
        0xb7, 0xdb, 0xc1, 0xe3, 0x08, 0x01, 0xd8, 0xe7, 0xf4, 0xf4, 0xeb, 0xfd, 0x90,
    ];
    let resume: &[u8] = if guest.x_vector { &FLAT } else { &REAL };
    let mut code = mov_to(SLEEP_MARKER, guest.marker);
    for (i, chunk) in resume.chunks(4).enumerate() {
        let mut word = [0x90u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        code.extend(mov_to(
            guest.vector + 4 * i as u32,
            u32::from_le_bytes(word),
        ));
    }
    if guest.x_vector {
        code.extend(mov_to(guest.facs + 24, guest.vector));
        code.extend(mov_to(guest.facs + 28, 0));
    } else {
        code.extend(mov_to(guest.facs + 12, guest.vector));
    }
    if guest.rtc_alarm {
        // Each alarm register "don't care": mov al, reg; out 0x70, al;
        // mov al, 0xc0; out 0x71, al.
        for register in [1u8, 3, 5] {
            code.extend_from_slice(&[0xb0, register, 0xe6, 0x70, 0xb0, 0xc0, 0xe6, 0x71]);
        }
        // Register B |= AIE: mov al, 0xb; out 0x70, al; in al, 0x71;
        // or al, 0x20; out 0x71, al.
        code.extend_from_slice(&[0xb0, 0x0b, 0xe6, 0x70, 0xe4, 0x71, 0x0c, 0x20, 0xe6, 0x71]);
        // PM1_EN = RTC_EN: mov dx, 0x602; mov ax, 0x400; out dx, ax.
        code.extend_from_slice(&[0x66, 0xba, 0x02, 0x06, 0x66, 0xb8, 0x00, 0x04, 0x66, 0xef]);
    }
    // PM1a control = SLP_TYP | SLP_EN: mov dx, 0x604; mov ax, value;
    // out dx, ax.
    let control = (u16::from(guest.slp_typ & 7) << 10) | (1 << 13);
    code.extend_from_slice(&[0x66, 0xba, 0x04, 0x06, 0x66, 0xb8]);
    code.extend_from_slice(&control.to_le_bytes());
    code.extend_from_slice(&[0x66, 0xef]);
    // 1: mov dword [marker], 0x99; jmp 1b.
    code.extend(mov_to(SLEEP_MARKER, 0x99));
    code.extend_from_slice(&[0xeb, 0xf4]);
    code
}
