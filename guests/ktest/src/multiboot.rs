//! Booting from a multiboot (v1) loader: QEMU's `-kernel`, GRUB, or
//! `ktvmm run --boot multiboot`.
//!
//! Every ktest image carries a multiboot header with load addresses (the
//! "a.out kludge"): that is what lets QEMU load an ELF64 file at all. The
//! loader enters `ktest_multiboot_entry` in 32-bit protected mode with
//! paging off and the other CPUs waiting for INIT/SIPI. From there this
//! module builds, inside the guest, the machine ktvmm's ELF64 protocol
//! would have built: boot information, a 4 GiB identity map, the GDT and
//! TSSs, one stack per CPU, and the entry registers. It then starts the
//! other CPUs with INIT/SIPI through a real-mode trampoline and sends every
//! CPU to `_start`, so the rest of ktest, and every test, runs unchanged
//! whichever way the guest was booted.
//!
//! What it reads to get there: the multiboot information (memory map,
//! command line, module 0 as the initrd), fw_cfg (how many CPUs) and the
//! ACPI MADT (that they are numbered 0..n, as ktest's CPU index is the APIC
//! ID).
//!
//! Everything here lives in `.ktest_boot`, a section the loader zeroes and
//! the boot CPU's BSS clearing leaves alone, because the other CPUs read it
//! while the boot CPU clears the BSS.

use core::mem::offset_of;

use ktvmm_abi::layout::{CMDLINE_MAX, LAPIC_ADDR, STACK_SIZE};
use ktvmm_abi::{BOOT_INFO_MAGIC, BOOT_INFO_VERSION, BootInfo, gdt};

use crate::lapic::{self, reg};
use crate::percpu::MAX_CPUS;
use crate::{acpi, console, fw_cfg, x86};

/// In EAX at entry when a multiboot loader started us.
const LOADER_MAGIC: u32 = 0x2bad_b002;
/// Where the AP trampoline is copied: page 8, so the SIPI vector is 8.
const TRAMPOLINE_ADDR: u64 = 0x8000;
/// The identity map the entry code builds.
const IDENTITY_MAP_END: u64 = 4 << 30;
const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// A 64-bit TSS's size, and the distance between ours (as ktvmm's).
const TSS_LEN: usize = 104;
const TSS_STRIDE: usize = 128;
const GDT_ENTRIES: usize = gdt::TSS_BASE as usize / 8 + 2 * MAX_CPUS;

// Multiboot information: flags and field offsets (multiboot spec 3.3).
const INFO_MEM: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const MMAP_RAM: u32 = 1;

/// What the boot CPU prepares for all of them. Zeroed by the loader.
#[repr(C, align(16))]
struct BootArea {
    info: BootInfo,
    /// The operand of `lgdt`: limit, then base.
    gdtr: [u16; 5],
    gdt: [u64; GDT_ENTRIES],
    tss: [[u8; TSS_STRIDE]; MAX_CPUS],
    cmdline: [u8; CMDLINE_MAX],
}

#[unsafe(link_section = ".ktest_boot.area")]
static mut BOOT: BootArea = unsafe { core::mem::zeroed() };

/// The boot area, which only the boot CPU writes (through [`put`]), before
/// any other CPU runs.
fn area() -> *mut BootArea {
    &raw mut BOOT
}

unsafe extern "C" {
    #[link_name = "__image_start"]
    static IMAGE_START: u8;
    #[link_name = "__image_end"]
    static IMAGE_END: u8;
    static ktest_mb_trampoline: u8;
    static ktest_mb_trampoline_end: u8;
}

// The header, the 32-bit entry, the AP trampoline and the common way into
// `_start`. Selectors of the boot GDT (`ktest_mb_gdt`): 0x08 64-bit code,
// 0x10 data, 0x18 32-bit code.
core::arch::global_asm!(
    ".pushsection .text.ktest_multiboot,\"ax\",@progbits",
    ".balign 4",
    "ktest_mb_header:",
    ".long 0x1badb002",
    // Page-aligned modules, memory information, load addresses here.
    ".long 0x00010003",
    ".long -(0x1badb002 + 0x00010003)",
    ".long ktest_mb_header",
    ".long __image_start",
    ".long __load_end",
    ".long __image_end",
    ".long ktest_multiboot_entry",
    //
    ".code32",
    ".global ktest_multiboot_entry",
    "ktest_multiboot_entry:",
    "cli",
    "cld",
    "mov edi, eax",
    "mov esi, ebx",
    "mov esp, offset ktest_mb_stack_top",
    // PML4[0] -> PDPT, PDPT[0..4] -> four page directories of 2 MiB pages.
    "mov eax, offset ktest_mb_pdpt",
    "or eax, 3",
    "mov dword ptr [ktest_mb_pml4], eax",
    "mov eax, offset ktest_mb_pd",
    "or eax, 3",
    "xor ecx, ecx",
    "2:",
    "mov dword ptr [ktest_mb_pdpt + ecx * 8], eax",
    "add eax, 4096",
    "inc ecx",
    "cmp ecx, 4",
    "jne 2b",
    "mov eax, 0x83",
    "xor ecx, ecx",
    "3:",
    "mov dword ptr [ktest_mb_pd + ecx * 8], eax",
    "add eax, 0x200000",
    "inc ecx",
    "cmp ecx, 2048",
    "jne 3b",
    "lgdt [ktest_mb_gdtr]",
    "mov ebp, offset ktest_mb_bsp_compat",
    "jmp ktest_mb_long_mode",
    "ktest_mb_bsp_compat:",
    "push 0x08",
    // push ktest_mb_bsp_long (as a 32-bit immediate, which the assembler
    // would shorten to 16 bits), then a far return to it: 64-bit mode.
    ".byte 0x68",
    ".long ktest_mb_bsp_long",
    "retf",
    //
    // Paging and long mode on (leaves the CPU in compatibility mode), then
    // back to EBP. Shared by the boot CPU and the trampoline, whose CPUs
    // have no stack of their own yet: hence no call.
    "ktest_mb_long_mode:",
    "mov eax, 0x620",
    "mov cr4, eax",
    "mov eax, offset ktest_mb_pml4",
    "mov cr3, eax",
    "mov ecx, 0xc0000080",
    "mov eax, 0x100",
    "xor edx, edx",
    "wrmsr",
    "mov eax, 0x80010033",
    "mov cr0, eax",
    "jmp ebp",
    //
    ".code64",
    "ktest_mb_bsp_long:",
    "mov ax, 0x10",
    "mov ds, ax",
    "mov es, ax",
    "mov ss, ax",
    "lea rsp, [rip + ktest_mb_stack_top]",
    "mov edi, edi",
    "mov esi, esi",
    "call {prepare}",
    "mov edi, eax",
    "jmp ktest_mb_enter",
    //
    // The trampoline, copied to TRAMPOLINE_ADDR: real mode, CS = 0x800.
    ".code16",
    ".global ktest_mb_trampoline",
    "ktest_mb_trampoline:",
    // A local twin: differences between global symbols are left to the
    // linker, which cannot fit them in 16 bits.
    ".Lktest_mb_tramp:",
    "cli",
    "mov ax, cs",
    "mov ds, ax",
    // lgdt [ktest_mb_tramp_gdtr], relative to CS (the assembler only
    // takes one symbol in a memory operand)
    ".byte 0x0f, 0x01, 0x16",
    ".word ktest_mb_tramp_gdtr - .Lktest_mb_tramp",
    "mov eax, cr0",
    "or al, 1",
    "mov cr0, eax",
    // ljmp 0x18:(address of ktest_mb_tramp32 once copied)
    ".byte 0xea",
    ".word {tramp} + ktest_mb_tramp32 - .Lktest_mb_tramp",
    ".word 0x18",
    ".code32",
    "ktest_mb_tramp32:",
    "mov ax, 0x10",
    "mov ds, ax",
    "mov es, ax",
    "mov ss, ax",
    // Addresses outside the trampoline are absolute: it runs from a copy.
    // mov ebp, (address of ktest_mb_tramp_compat once copied)
    ".byte 0xbd",
    ".long {tramp} + ktest_mb_tramp_compat - .Lktest_mb_tramp",
    "mov eax, offset ktest_mb_long_mode",
    "jmp eax",
    "ktest_mb_tramp_compat:",
    // ljmp 0x08:ktest_mb_ap_long
    ".byte 0xea",
    ".long ktest_mb_ap_long",
    ".word 0x08",
    ".balign 4",
    // The boot GDT's base must fit the 24 bits a 16-bit lgdt loads; the
    // linker script checks it does.
    "ktest_mb_tramp_gdtr:",
    ".word ktest_mb_gdt_end - ktest_mb_gdt - 1",
    ".long ktest_mb_gdt",
    ".global ktest_mb_trampoline_end",
    "ktest_mb_trampoline_end:",
    //
    ".code64",
    "ktest_mb_ap_long:",
    "mov ax, 0x10",
    "mov ds, ax",
    "mov es, ax",
    "mov ss, ax",
    "mov rax, {lapic_id}",
    "mov edi, dword ptr [rax]",
    "shr edi, 24",
    //
    // EDI = this CPU's APIC ID, which is its index: the state ktvmm's ELF64
    // protocol promises at `_start`.
    "ktest_mb_enter:",
    "lea rbx, [rip + {boot}]",
    "cmp edi, dword ptr [rbx + {cpu_count}]",
    "jae 9f",
    "mov eax, edi",
    "inc rax",
    "imul rax, qword ptr [rbx + {stack_size}]",
    "add rax, qword ptr [rbx + {stacks_base}]",
    "mov rsp, rax",
    "lgdt [rbx + {gdtr}]",
    "lidt [rip + ktest_mb_null_idtr]",
    "mov ax, {kernel_data}",
    "mov ds, ax",
    "mov es, ax",
    "mov ss, ax",
    "mov fs, ax",
    "mov gs, ax",
    "lea rax, [rip + 4f]",
    "push {kernel_code}",
    "push rax",
    // retfq
    ".byte 0x48, 0xcb",
    "4:",
    "mov eax, edi",
    "shl eax, 4",
    "add eax, {tss_base}",
    "ltr ax",
    "fninit",
    "mov esi, edi",
    "mov rdi, rbx",
    "xor eax, eax",
    "xor ebx, ebx",
    "xor ecx, ecx",
    "xor edx, edx",
    "xor ebp, ebp",
    "xor r8d, r8d",
    "xor r9d, r9d",
    "xor r10d, r10d",
    "xor r11d, r11d",
    "xor r12d, r12d",
    "xor r13d, r13d",
    "xor r14d, r14d",
    "xor r15d, r15d",
    // Last, as the XORs set flags.
    "push 2",
    "popfq",
    "jmp _start",
    // A CPU the boot information does not count: park it.
    "9:",
    "cli",
    "hlt",
    "jmp 9b",
    ".popsection",
    //
    ".pushsection .rodata.ktest_multiboot,\"a\",@progbits",
    ".balign 16",
    ".global ktest_mb_gdt",
    "ktest_mb_gdt:",
    ".quad 0",
    ".quad 0x00af9a000000ffff",
    ".quad 0x00cf92000000ffff",
    ".quad 0x00cf9a000000ffff",
    "ktest_mb_gdt_end:",
    ".balign 4",
    "ktest_mb_gdtr:",
    ".word ktest_mb_gdt_end - ktest_mb_gdt - 1",
    ".long ktest_mb_gdt",
    ".balign 4",
    "ktest_mb_null_idtr:",
    ".quad 0, 0",
    ".popsection",
    //
    ".pushsection .ktest_boot.tables,\"aw\",@nobits",
    ".balign 4096",
    "ktest_mb_pml4: .skip 4096",
    "ktest_mb_pdpt: .skip 4096",
    "ktest_mb_pd: .skip 4 * 4096",
    "ktest_mb_stack: .skip 16384",
    "ktest_mb_stack_top:",
    ".popsection",
    prepare = sym prepare,
    boot = sym BOOT,
    tramp = const TRAMPOLINE_ADDR,
    lapic_id = const LAPIC_ADDR + reg::ID as u64,
    cpu_count = const offset_of!(BootInfo, cpu_count),
    stack_size = const offset_of!(BootInfo, stack_size),
    stacks_base = const offset_of!(BootInfo, stacks_base),
    gdtr = const offset_of!(BootArea, gdtr),
    kernel_data = const gdt::KERNEL_DATA,
    kernel_code = const gdt::KERNEL_CODE,
    tss_base = const gdt::TSS_BASE,
);

/// Ends the boot with a reason, the way a test fails.
fn fail(reason: core::fmt::Arguments<'_>) -> ! {
    console::with_console_dying(|w| {
        use core::fmt::Write;
        let _ = writeln!(w, "FAIL: ktest multiboot entry: {reason}");
    });
    crate::exit(1)
}

fn read_u32(addr: u64) -> u32 {
    // SAFETY: the multiboot information lies in RAM below 4 GiB, inside the
    // identity map; the loader wrote it and nothing else uses it.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn read_u64(addr: u64) -> u64 {
    u64::from(read_u32(addr)) | u64::from(read_u32(addr + 4)) << 32
}

/// Writes through a pointer into `BOOT` without letting the compiler merge
/// stores into SSE ones, which KVM's instruction emulator may not execute.
fn put<T>(field: *mut T, value: T) {
    // SAFETY: callers pass fields of `BOOT`, which only the boot CPU writes,
    // before any other CPU runs.
    unsafe { core::ptr::write_volatile(field, value) }
}

/// The memory the loader describes.
struct Memory {
    low_end: u64,
    high_end: u64,
    /// The RAM range holding the image.
    region_end: u64,
    /// First byte after everything the loader put above 1 MiB.
    occupied_end: u64,
    initrd: (u64, u64),
}

fn memory(info: u64, image_start: u64, image_end: u64, has_fw_cfg: bool) -> Memory {
    let flags = read_u32(info);
    if flags & INFO_MEM == 0 {
        fail(format_args!("the loader gave no memory sizes"));
    }
    let mut region_end = 0;
    let mut low_end = MIB + u64::from(read_u32(info + 8)) * 1024;
    let mut high_end = 0;
    let mut occupied_end = image_end.max(info + 88);
    if flags & INFO_CMDLINE != 0 {
        occupied_end = occupied_end.max(u64::from(read_u32(info + 16)) + CMDLINE_MAX as u64);
    }
    if flags & INFO_MMAP != 0 {
        let (len, start) = (
            u64::from(read_u32(info + 44)),
            u64::from(read_u32(info + 48)),
        );
        occupied_end = occupied_end.max(start + len);
        let mut entry = start;
        while entry + 24 <= start + len {
            let (base, size, kind) = (
                read_u64(entry + 4),
                read_u64(entry + 12),
                read_u32(entry + 20),
            );
            if kind == MMAP_RAM && (base..base.saturating_add(size)).contains(&image_start) {
                region_end = base.saturating_add(size);
            }
            if kind == MMAP_RAM && base == IDENTITY_MAP_END {
                high_end = base.saturating_add(size);
            }
            entry += u64::from(read_u32(entry)) + 4;
        }
    }
    if region_end == 0 {
        region_end = low_end;
    }
    // mem_upper stops at the first hole (QEMU's BIOS keeps the top of RAM
    // for its tables); fw_cfg has the size as configured.
    if has_fw_cfg {
        let high = high_end.saturating_sub(IDENTITY_MAP_END);
        low_end = fw_cfg::read_u64(fw_cfg::key::RAM_SIZE).saturating_sub(high);
    }
    region_end = region_end.min(low_end);
    let mut initrd = (0, 0);
    if flags & INFO_MODS != 0 && read_u32(info + 20) > 0 {
        let mods = u64::from(read_u32(info + 24));
        let (start, end) = (u64::from(read_u32(mods)), u64::from(read_u32(mods + 4)));
        initrd = (start, end.saturating_sub(start));
        occupied_end = occupied_end.max(mods + 16).max(end);
    }
    Memory {
        low_end,
        high_end,
        region_end,
        occupied_end,
        initrd,
    }
}

/// Copies the command line, dropping its first word: multiboot loaders
/// put the kernel's path there (kvm-unit-tests reads it as argv[0]), while
/// ktvmm's ELF64 protocol passes the arguments alone.
fn copy_cmdline(info: u64) -> u64 {
    if read_u32(info) & INFO_CMDLINE == 0 {
        return 0;
    }
    let source = u64::from(read_u32(info + 16));
    let byte = |i: u64| {
        // SAFETY: as in `read_u32`; the string is NUL-terminated.
        unsafe { core::ptr::read_volatile((source + i) as *const u8) }
    };
    let mut i = 0;
    while !matches!(byte(i), 0 | b' ') {
        i += 1;
    }
    while byte(i) == b' ' {
        i += 1;
    }
    // SAFETY: a field of the boot area (see `area`).
    let cmdline = unsafe { &raw mut (*area()).cmdline };
    let mut len = 0;
    while len < CMDLINE_MAX - 1 && byte(i) != 0 {
        put(cmdline.cast::<u8>().wrapping_add(len), byte(i));
        i += 1;
        len += 1;
    }
    len as u64
}

/// How many CPUs there are: fw_cfg's count, checked against the MADT.
fn cpu_count(has_fw_cfg: bool) -> u32 {
    let mut enabled = 0u64;
    let mut numbered = 0u64;
    let have_madt = acpi::for_each_processor(|p| {
        if p.enabled {
            enabled += 1;
            if p.apic_id < 64 {
                numbered |= 1 << p.apic_id;
            }
        }
    });
    let count = if has_fw_cfg {
        u32::from(fw_cfg::read_u16(fw_cfg::key::NB_CPUS))
    } else if have_madt {
        enabled as u32
    } else {
        fail(format_args!(
            "neither fw_cfg nor an ACPI MADT says how many CPUs there are"
        ))
    };
    if count == 0 || count as usize > MAX_CPUS {
        fail(format_args!("{count} CPUs: ktest supports 1 to {MAX_CPUS}"));
    }
    let first_n = if count == 64 {
        u64::MAX
    } else {
        (1 << count) - 1
    };
    if have_madt && numbered & first_n != first_n {
        fail(format_args!(
            "the MADT does not list APIC IDs 0..{count} as enabled (enabled mask {numbered:#x}); ktest's CPU index is the APIC ID"
        ));
    }
    count
}

fn build_gdt_and_tss(stacks_base: u64, cpus: u32) {
    // SAFETY: fields of the boot area (see `area`).
    let (gdt, tss_table, gdtr) = unsafe {
        (
            (&raw mut (*area()).gdt).cast::<u64>(),
            (&raw mut (*area()).tss).cast::<u8>(),
            (&raw mut (*area()).gdtr).cast::<u16>(),
        )
    };
    for (i, descriptor) in [
        0,
        0x00af_9a00_0000_ffff, // KERNEL_CODE: 64-bit code, DPL 0
        0x00cf_9200_0000_ffff, // KERNEL_DATA
        0x00cf_fa00_0000_ffff, // USER_CODE32: 32-bit code, DPL 3
        0x00cf_f200_0000_ffff, // USER_DATA
        0x00af_fa00_0000_ffff, // USER_CODE: 64-bit code, DPL 3
    ]
    .into_iter()
    .enumerate()
    {
        put(gdt.wrapping_add(i), descriptor);
    }
    for cpu in 0..cpus as usize {
        let tss = tss_table.wrapping_add(cpu * TSS_STRIDE);
        let rsp0 = stacks_base + (cpu as u64 + 1) * STACK_SIZE;
        // RSP0 at 4 (only 4-byte aligned), the I/O map base at 102: none.
        put(tss.wrapping_add(4).cast::<u32>(), rsp0 as u32);
        put(tss.wrapping_add(8).cast::<u32>(), (rsp0 >> 32) as u32);
        put(tss.wrapping_add(102).cast::<u16>(), TSS_LEN as u16);
        let base = tss as u64;
        // An available 64-bit TSS; `ltr` marks it busy.
        let low = (TSS_LEN as u64 - 1)
            | (base & 0xff_ffff) << 16
            | 0x89 << 40
            | (base >> 24 & 0xff) << 56;
        let slot = usize::from(gdt::tss_selector(cpu as u32)) / 8;
        put(gdt.wrapping_add(slot), low);
        put(gdt.wrapping_add(slot + 1), base >> 32);
    }
    let gdt_base = gdt as u64;
    put(gdtr, (GDT_ENTRIES * 8 - 1) as u16);
    for i in 0..4 {
        put(gdtr.wrapping_add(1 + i), (gdt_base >> (16 * i)) as u16);
    }
}

fn copy_trampoline() {
    let start = &raw const ktest_mb_trampoline;
    let len = &raw const ktest_mb_trampoline_end as usize - start as usize;
    for i in 0..len {
        // SAFETY: the trampoline's bytes are in the image; page 8 is RAM
        // that no loader uses (the information lies after the image, or in
        // pages 1 and 2 under ktvmm).
        unsafe {
            core::ptr::write_volatile(
                (TRAMPOLINE_ADDR as *mut u8).wrapping_add(i),
                core::ptr::read_volatile(start.wrapping_add(i)),
            )
        };
    }
}

/// INIT, then a startup IPI to the trampoline, to every other CPU, as
/// kvm-unit-tests does (KVM and QEMU need no delays between them).
fn start_other_cpus() {
    const ALL_BUT_SELF: u32 = 3 << 18;
    const ASSERT: u32 = 1 << 14;
    const INIT: u32 = 5 << 8;
    const STARTUP: u32 = 6 << 8;
    for command in [
        ALL_BUT_SELF | ASSERT | INIT,
        ALL_BUT_SELF | STARTUP | (TRAMPOLINE_ADDR / PAGE) as u32,
    ] {
        // SAFETY: the other CPUs wait for exactly this, and the trampoline
        // is in place.
        unsafe {
            lapic::write(reg::ICR_HIGH, 0);
            lapic::write(reg::ICR_LOW, command);
        }
        while lapic::ipi_busy() {
            x86::pause();
        }
    }
}

/// The boot CPU's work between the loader and `_start`; returns its APIC
/// ID, which must be 0.
extern "C" fn prepare(magic: u32, info: u32) -> u32 {
    if magic != LOADER_MAGIC {
        fail(format_args!(
            "EAX is {magic:#x}, not the multiboot loader magic {LOADER_MAGIC:#x}"
        ));
    }
    // The PIC may have been left unmasked by firmware (QEMU's BIOS), and
    // its vectors would land on exception gates.
    // SAFETY: masking every PIC line only stops legacy interrupts, which
    // ktest does not use.
    unsafe {
        x86::outb(0x21, 0xff);
        x86::outb(0xa1, 0xff);
    }
    let info = u64::from(info);
    let image_start = &raw const IMAGE_START as u64;
    let image_end = &raw const IMAGE_END as u64;
    // Each fw_cfg access is a VM exit: ask once whether it is there.
    let has_fw_cfg = fw_cfg::present();
    let cpus = cpu_count(has_fw_cfg);
    let apic_id = lapic::id();
    if apic_id != 0 {
        fail(format_args!("the boot CPU's APIC ID is {apic_id}, not 0"));
    }
    let mem = memory(info, image_start, image_end, has_fw_cfg);
    let stacks_base = mem
        .region_end
        .min(IDENTITY_MAP_END)
        .saturating_sub(u64::from(cpus) * STACK_SIZE)
        & !(PAGE - 1);
    let free_start = mem.occupied_end.next_multiple_of(PAGE);
    if free_start >= stacks_base {
        fail(format_args!(
            "RAM ends at {:#x}: too small for the image, the loader's data and {cpus} stacks",
            mem.region_end
        ));
    }
    let cmdline_len = copy_cmdline(info);
    build_gdt_and_tss(stacks_base, cpus);

    // SAFETY: field projections of the boot area (see `area`).
    unsafe {
        let boot = &raw mut (*area()).info;
        put(&raw mut (*boot).magic, BOOT_INFO_MAGIC);
        put(&raw mut (*boot).version, BOOT_INFO_VERSION);
        put(&raw mut (*boot).size, size_of::<BootInfo>() as u32);
        put(&raw mut (*boot).cpu_count, cpus);
        let high = mem.high_end.saturating_sub(IDENTITY_MAP_END);
        put(&raw mut (*boot).mem_size, mem.low_end + high);
        put(&raw mut (*boot).low_mem_end, mem.low_end);
        put(&raw mut (*boot).high_mem_end, mem.high_end);
        put(
            &raw mut (*boot).cmdline_addr,
            (&raw const (*area()).cmdline) as u64,
        );
        put(&raw mut (*boot).cmdline_len, cmdline_len);
        put(&raw mut (*boot).initrd_addr, mem.initrd.0);
        put(&raw mut (*boot).initrd_len, mem.initrd.1);
        put(&raw mut (*boot).kernel_start, image_start);
        put(&raw mut (*boot).kernel_end, image_end);
        put(&raw mut (*boot).free_start, free_start);
        put(&raw mut (*boot).free_end, stacks_base);
        put(&raw mut (*boot).stacks_base, stacks_base);
        put(&raw mut (*boot).stack_size, STACK_SIZE);
        put(&raw mut (*boot).gdt_addr, (&raw const (*area()).gdt) as u64);
        put(&raw mut (*boot).tss_addr, (&raw const (*area()).tss) as u64);
        put(&raw mut (*boot).tss_stride, TSS_STRIDE as u64);
        put(
            &raw mut (*boot).page_table_root,
            x86::read_cr3() & !(PAGE - 1),
        );
        put(&raw mut (*boot).identity_map_end, IDENTITY_MAP_END);
    }
    if cpus > 1 {
        copy_trampoline();
        start_other_cpus();
    }
    apic_id
}
