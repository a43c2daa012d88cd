//! Checks the boot contract ktvmm promises (see `ktvmm_abi`): boot
//! information, command line, memory layout, initrd, and the CPU state every
//! vCPU starts with.
//!
//! Arguments (`-append`): `smp=N` checks the CPU count, `mem=M` the RAM size
//! in MiB, `cpu=MODEL,+flag,-flag,vendor=V` (QEMU's `-cpu` spelling) that
//! CPUID shows the vendor and the flags it knows as set or clear; every
//! other word is checked to be in the argument list.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use ktest::abi::layout::{CMDLINE_MAX, MMIO_HOLE_END, MMIO_HOLE_START, RESERVED_END};
use ktest::abi::{BOOT_INFO_MAGIC, BOOT_INFO_VERSION, BootInfo, gdt};
use ktest::x86::{self, cr0, cr4, efer, msr};
use ktest::{Vector, catch_exception, cpu_count, cpu_id, on_cpus, report, report_skip};

ktest::main!(main);

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;
/// IA32_APIC_BASE: this CPU is the bootstrap processor.
const APIC_BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE: xAPIC enabled.
const APIC_BASE_ENABLE: u64 = 1 << 11;

unsafe extern "C" {
    #[link_name = "__image_start"]
    static IMAGE_START: u8;
    #[link_name = "__image_end"]
    static IMAGE_END: u8;
}

/// CPUs (bit masks) for which a per-CPU check held.
static ENTRY_RSP_OK: AtomicU64 = AtomicU64::new(0);
static ENTRY_RFLAGS_OK: AtomicU64 = AtomicU64::new(0);
static TR_OK: AtomicU64 = AtomicU64::new(0);
static SEGMENTS_OK: AtomicU64 = AtomicU64::new(0);
static CONTROL_REGISTERS_OK: AtomicU64 = AtomicU64::new(0);
static APIC_OK: AtomicU64 = AtomicU64::new(0);

fn set_if(mask: &AtomicU64, ok: bool) {
    if ok {
        mask.fetch_or(1 << cpu_id(), Ordering::Relaxed);
    }
}

fn all_cpus() -> u64 {
    u64::MAX >> (64 - cpu_count())
}

fn report_every_cpu(mask: &AtomicU64, what: &str) {
    let mask = mask.load(Ordering::Relaxed);
    report!(
        mask == all_cpus(),
        "{} on every CPU (mask {:#x})",
        what,
        mask
    );
}

fn check_boot_info(boot: &BootInfo) {
    report!(
        boot.magic == BOOT_INFO_MAGIC,
        "boot info magic {:#x}",
        boot.magic
    );
    report!(
        boot.version == BOOT_INFO_VERSION,
        "boot info version {}",
        boot.version
    );
    report!(
        boot.size as usize >= core::mem::size_of::<BootInfo>(),
        "boot info size {} covers the structure",
        boot.size
    );
    report!(boot.cpu_count >= 1, "at least one CPU ({})", boot.cpu_count);
}

fn check_args() {
    let cmdline = ktest::cmdline();
    let boot = ktest::boot_info();
    if cmdline.is_empty() {
        report_skip!("no command line given");
        return;
    }
    // SAFETY: the VMM puts a NUL right after the command line, inside the
    // command-line area (identity-mapped).
    let terminator =
        unsafe { core::ptr::read_volatile((boot.cmdline_addr + boot.cmdline_len) as *const u8) };
    report!(
        terminator == 0 && (boot.cmdline_len as usize) < CMDLINE_MAX,
        "command line present, NUL-terminated ({} bytes)",
        boot.cmdline_len
    );
    for arg in ktest::args() {
        if let Some(value) = arg.strip_prefix("smp=") {
            match value.parse::<u32>() {
                Ok(n) => {
                    report!(cpu_count() == n, "smp={}: cpu count is {}", n, cpu_count());
                }
                Err(_) => {
                    report!(false, "smp={}: not a number", value);
                }
            }
        } else if let Some(value) = arg.strip_prefix("cpu=") {
            check_cpu_model(value);
        } else if let Some(value) = arg.strip_prefix("mem=") {
            match value.parse::<u64>() {
                Ok(m) => {
                    let size = ktest::mem_size();
                    report!(
                        size == m * MIB,
                        "mem={}: memory size is {} MiB ({:#x})",
                        m,
                        size / MIB,
                        size
                    );
                }
                Err(_) => {
                    report!(false, "mem={}: not a number", value);
                }
            }
        } else {
            // The word was split off the raw command line: it must be there
            // as a whole word.
            let present =
                cmdline.split_ascii_whitespace().any(|word| word == arg) && ktest::has_arg(arg);
            report!(present, "argv contains '{}'", arg);
        }
    }
}

/// CPUID leaf 1 ECX bits of the flags `cpu=` edits this guest checks.
const LEAF1_ECX_FLAGS: [(&str, u32); 4] =
    [("pcid", 17), ("x2apic", 21), ("aes", 25), ("rdrand", 30)];

/// The vendor and flag edits of a `-cpu` spelling, as CPUID shows them.
fn check_cpu_model(spec: &str) {
    for edit in spec.split(',').skip(1) {
        if let Some(vendor) = edit.strip_prefix("vendor=") {
            let id = x86::cpuid(0, 0);
            let mut name = [0u8; 12];
            for (i, reg) in [id.ebx, id.edx, id.ecx].iter().enumerate() {
                name[i * 4..i * 4 + 4].copy_from_slice(&reg.to_le_bytes());
            }
            let seen = core::str::from_utf8(&name).unwrap_or("?");
            report!(
                seen == vendor,
                "cpu: vendor {} (CPUID says {})",
                vendor,
                seen
            );
            continue;
        }
        let (on, flag) = match edit.split_at_checked(1) {
            Some(("+", flag)) => (true, flag),
            Some(("-", flag)) => (false, flag),
            _ => continue,
        };
        match LEAF1_ECX_FLAGS.iter().find(|(name, _)| *name == flag) {
            Some(&(_, bit)) => {
                let set = x86::cpuid(1, 0).ecx & (1 << bit) != 0;
                report!(
                    set == on,
                    "cpu: {} is {}",
                    flag,
                    if set { "set" } else { "clear" }
                );
            }
            None => report_skip!("cpu: {}: not a flag this guest checks", flag),
        }
    }
}

fn check_memory(boot: &BootInfo) {
    let image_start = &raw const IMAGE_START as u64;
    let image_end = &raw const IMAGE_END as u64;
    report!(
        boot.kernel_start == image_start && boot.kernel_start >= RESERVED_END,
        "kernel starts at {:#x}, at or above {:#x}",
        boot.kernel_start,
        RESERVED_END
    );
    report!(
        boot.kernel_end >= image_end - PAGE,
        "kernel end {:#x} covers the image (BSS included)",
        boot.kernel_end
    );
    let high = if boot.high_mem_end != 0 {
        boot.high_mem_end - MMIO_HOLE_END
    } else {
        0
    };
    report!(
        boot.low_mem_end <= MMIO_HOLE_START && boot.low_mem_end + high == boot.mem_size,
        "RAM is [0, {:#x}) plus {:#x} above 4 GiB = mem_size {:#x}",
        boot.low_mem_end,
        high,
        boot.mem_size
    );
    report!(
        boot.free_start >= boot.kernel_end
            && boot.free_start % PAGE == 0
            && boot.free_start <= boot.free_end
            && boot.free_end <= boot.stacks_base,
        "free RAM [{:#x}, {:#x}) lies between the image and the stacks",
        boot.free_start,
        boot.free_end
    );
    if boot.free_end - boot.free_start >= 2 * PAGE {
        let first = boot.free_start as *mut u64;
        let last = (boot.free_end - 8) as *mut u64;
        // SAFETY: free RAM is unused by anyone, identity-mapped and writable.
        let readback = unsafe {
            core::ptr::write_volatile(first, 0x5a5a_0123_4567_89ab);
            core::ptr::write_volatile(last, !0x5a5a_0123_4567_89ab);
            (
                core::ptr::read_volatile(first),
                core::ptr::read_volatile(last),
            )
        };
        report!(
            readback == (0x5a5a_0123_4567_89ab, !0x5a5a_0123_4567_89ab),
            "free RAM is writable at both ends"
        );
    } else {
        report_skip!("free RAM too small to probe");
    }
    let stacks_end = boot.stacks_base + u64::from(boot.cpu_count) * boot.stack_size;
    report!(
        boot.stack_size >= 16 * 1024 && stacks_end <= boot.low_mem_end,
        "{} stacks of {:#x} bytes at {:#x} fit in low RAM",
        boot.cpu_count,
        boot.stack_size,
        boot.stacks_base
    );
    report!(
        boot.identity_map_end >= 4 * GIB,
        "identity map covers at least 4 GiB ({} GiB)",
        boot.identity_map_end / GIB
    );
    let fault = catch_exception(|| {
        // SAFETY: the address is above the identity map: the read faults,
        // which is what is being tested.
        unsafe { core::ptr::read_volatile(boot.identity_map_end as *const u64) };
    });
    report!(
        fault.map(|f| (f.vector, f.cr2)) == Some((Vector::PF, boot.identity_map_end)),
        "a read at the end of the identity map ({:#x}) page-faults",
        boot.identity_map_end
    );
    report!(
        x86::read_cr3() & !0xfff == boot.page_table_root,
        "CR3 is the page-table root {:#x}",
        boot.page_table_root
    );
    report!(
        x86::sgdt().base == boot.gdt_addr,
        "GDTR base is the GDT address {:#x}",
        boot.gdt_addr
    );
}

fn check_initrd(boot: &BootInfo) {
    let initrd = ktest::initrd();
    if initrd.is_empty() {
        report_skip!("no initrd");
        return;
    }
    let end = boot.initrd_addr + boot.initrd_len;
    // ktvmm's ELF64 protocol puts it below the stacks, multiboot loaders
    // right after the image: either way it must not share memory with
    // anything else the guest was given.
    let stacks_end = boot.stacks_base + u64::from(boot.cpu_count) * boot.stack_size;
    let apart = |start: u64, stop: u64| end <= start || boot.initrd_addr >= stop;
    report!(
        apart(boot.kernel_start, boot.kernel_end)
            && apart(boot.free_start, boot.free_end)
            && apart(boot.stacks_base, stacks_end)
            && end <= boot.low_mem_end,
        "initrd [{:#x}, {:#x}) overlaps neither the image, free RAM nor the stacks",
        boot.initrd_addr,
        end
    );
    report!(boot.initrd_addr % PAGE == 0, "initrd is page-aligned");
    // Only a peek: reading a large initrd would take long under emulation.
    let head = &initrd[..initrd.len().min(8)];
    ktest::report_info!("initrd: {} bytes, starting {:02x?}", initrd.len(), head);
}

/// Runs on every CPU: the state the VMM promises at entry.
fn check_this_cpu() {
    let cpu = cpu_id();
    let boot = ktest::boot_info();
    let entry = ktest::boot::entry_state(cpu);
    let stack_top = boot.stacks_base + u64::from(cpu + 1) * boot.stack_size;
    set_if(&ENTRY_RSP_OK, entry.rsp == stack_top && entry.rsp % 16 == 0);
    set_if(&ENTRY_RFLAGS_OK, entry.rflags == 0x2);
    set_if(&TR_OK, x86::read_tr() == gdt::tss_selector(cpu));
    set_if(
        &SEGMENTS_OK,
        x86::read_cs() == gdt::KERNEL_CODE
            && x86::read_ds() == gdt::KERNEL_DATA
            && x86::read_ss() == gdt::KERNEL_DATA,
    );
    let cr0_expected = cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG;
    let cr4_expected = cr4::PAE | cr4::OSFXSR | cr4::OSXMMEXCPT;
    let efer_expected = efer::LME | efer::LMA;
    set_if(
        &CONTROL_REGISTERS_OK,
        x86::read_cr0() == cr0_expected
            && x86::read_cr4() == cr4_expected
            && x86::rdmsr(msr::EFER) == efer_expected,
    );
    let apic_base = x86::rdmsr(msr::APIC_BASE);
    let bsp = if cpu == 0 { APIC_BASE_BSP } else { 0 };
    let cpuid_apic_id = x86::cpuid(1, 0).ebx >> 24;
    set_if(
        &APIC_OK,
        ktest::lapic::id() == cpu
            && cpuid_apic_id == cpu
            && apic_base & !0xfff == ktest::abi::layout::LAPIC_ADDR
            && apic_base & (APIC_BASE_ENABLE | APIC_BASE_BSP) == APIC_BASE_ENABLE | bsp,
    );
}

fn main() -> u8 {
    ktest::report_prefix_push("selftest");
    let boot = ktest::boot_info();
    check_boot_info(boot);
    check_args();
    check_memory(boot);
    check_initrd(boot);

    on_cpus(check_this_cpu);
    report_every_cpu(
        &ENTRY_RSP_OK,
        "entry RSP is the top of the CPU's own 16-byte-aligned stack",
    );
    report_every_cpu(&ENTRY_RFLAGS_OK, "entry RFLAGS is 0x2");
    report_every_cpu(&TR_OK, "TR is the CPU's own TSS selector");
    report_every_cpu(&SEGMENTS_OK, "CS/DS/SS are the kernel selectors");
    report_every_cpu(&CONTROL_REGISTERS_OK, "CR0, CR4 and EFER are as specified");
    report_every_cpu(
        &APIC_OK,
        "APIC ID (LAPIC and CPUID) is the CPU index, xAPIC enabled at 0xfee00000, BSP flag on CPU 0 only",
    );

    ktest::report_prefix_pop();
    ktest::report_summary()
}
