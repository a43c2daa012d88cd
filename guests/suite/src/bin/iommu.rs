//! The VT-d unit (`ktvmm run --iommu`, QEMU's `-device intel-iommu,
//! intremap=on`) in front of edu: it is found and switched on the way a
//! driver does it, edu's DMA goes through second-level page tables we
//! build, and its MSIs through the interrupt remapping table.
//!
//! Checks: the capability registers; each global command shows in the
//! status; a queued-invalidation wait descriptor completes; DMA reaches the
//! page an IOVA maps to, both ways; DMA to an unmapped IOVA, or a write to
//! a read-only mapping, changes nothing; a remappable MSI arrives
//! with the vector and on the CPU its table entry names; one whose entry is
//! not present arrives nowhere.
//!
//! Run: `ktvmm run iommu --iommu -smp 2`.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use ktest::driver::edu::{
    self, DMA_BUFFER, DMA_ERROR, DMA_START, DMA_TO_RAM, Edu, VENDOR_ID, reg as edu_reg,
};
use ktest::pci;
use ktest::{InterruptFrame, cpu_count, cpu_id, delay_ms, mmio, report, report_info, report_skip};

ktest::main!(main);

/// Where q35 (and ktvmm) put the remapping unit.
const VTD: u64 = 0xfed9_0000;
const VER: u64 = 0x00;
const CAP: u64 = 0x08;
const ECAP: u64 = 0x10;
const GCMD: u64 = 0x18;
const GSTS: u64 = 0x1c;
const RTADDR: u64 = 0x20;
const FSTS: u64 = 0x34;
const IQH: u64 = 0x80;
const IQT: u64 = 0x88;
const IQA: u64 = 0x90;
const IRTA: u64 = 0xb8;

const TE: u32 = 1 << 31;
const SRTP: u32 = 1 << 30;
const QIE: u32 = 1 << 26;
const IRE: u32 = 1 << 25;
const SIRTP: u32 = 1 << 24;

const READ: u64 = 1;
const WRITE: u64 = 2;
const PAGE: u64 = 4096;
/// IOVAs: one read-write page, one read-only page, nothing else.
const IOVA_RW: u64 = 0;
const IOVA_RO: u64 = 0x1000;

const MSI_VECTOR: u8 = 0x71;
/// Interrupt remapping table entries used.
const IRTE_PRESENT: u64 = 5;
const IRTE_ABSENT: u64 = 6;

static MSI_COUNT: AtomicU32 = AtomicU32::new(0);
static MSI_CPU: AtomicU32 = AtomicU32::new(u32::MAX);
static EDU_BASE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn edu() -> Edu {
    // SAFETY: set from edu's BAR0 before any interrupt is routed here.
    unsafe { Edu::new(EDU_BASE.load(Ordering::Relaxed)) }
}

fn on_msi(_frame: &InterruptFrame) {
    let edu = edu();
    edu.ack_irq(edu.irq_status());
    MSI_CPU.store(cpu_id(), Ordering::Relaxed);
    MSI_COUNT.fetch_add(1, Ordering::Release);
}

fn read32(offset: u64) -> u32 {
    // SAFETY: the unit's registers, identity-mapped; reads have no effect.
    unsafe { mmio::read32(VTD + offset) }
}

fn read64(offset: u64) -> u64 {
    u64::from(read32(offset)) | u64::from(read32(offset + 4)) << 32
}

fn write32(offset: u64, value: u32) {
    // SAFETY: the caller programs the unit with tables it owns.
    unsafe { mmio::write32(VTD + offset, value) }
}

fn write64(offset: u64, value: u64) {
    write32(offset, value as u32);
    write32(offset + 4, (value >> 32) as u32);
}

/// Sets one global command bit, keeping the others (as drivers do).
fn command(bit: u32) -> bool {
    const ONE_SHOT: u32 = SRTP | SIRTP;
    let status = read32(GSTS) & !ONE_SHOT;
    write32(GCMD, status | bit);
    read32(GSTS) & bit != 0
}

/// A zeroed page of guest RAM (also its address: the identity map).
fn page() -> u64 {
    let at = ktest::alloc_pages(1);
    for i in 0..PAGE / 8 {
        // SAFETY: a page just allocated to us.
        unsafe { core::ptr::write_volatile((at + i * 8) as *mut u64, 0) };
    }
    at
}

fn poke(addr: u64, value: u64) {
    // SAFETY: only called on pages `page` gave us.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

fn peek(addr: u64) -> u64 {
    // SAFETY: as for `poke`.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Runs one edu transfer and waits for it; returns edu's error bit.
/// Checks look at memory rather than at that bit: QEMU's edu does not
/// report a DMA the IOMMU refused.
fn dma(src: u64, dst: u64, len: u64, to_ram: bool) -> bool {
    let edu = edu();
    let command = DMA_START | if to_ram { DMA_TO_RAM } else { 0 };
    // SAFETY: the addresses are IOVAs the test mapped (or, for the negative
    // cases, did not map: the unit must refuse them).
    unsafe {
        edu.write64(edu_reg::DMA_SRC, src);
        edu.write64(edu_reg::DMA_DST, dst);
        edu.write64(edu_reg::DMA_COUNT, len);
        edu.write32(edu_reg::DMA_CMD, command);
    }
    let done = edu.wait_dma();
    report!(done, "transfer {:#x} -> {:#x} ends", src, dst);
    edu.read32(edu_reg::DMA_CMD) & DMA_ERROR != 0
}

fn main() -> u8 {
    ktest::report_prefix_push("iommu");
    let Some(device) = pci::find(VENDOR_ID, edu::DEVICE_ID) else {
        report!(false, "edu is on bus 0");
        return ktest::report_summary();
    };
    device.enable_decoding();
    // SAFETY: every DMA below goes through tables this test builds.
    unsafe { device.enable_bus_master() };
    let Some(edu_regs) = Edu::from_device(&device) else {
        report!(false, "edu's BAR0 is a memory BAR");
        return ktest::report_summary();
    };
    EDU_BASE.store(edu_regs.base(), Ordering::Relaxed);

    let version = read32(VER);
    if version == u32::MAX || version == 0 {
        report_skip!("no VT-d unit at {:#x}: run with --iommu", VTD);
        return ktest::report_summary();
    }
    report!(
        (version >> 4) & 0xf >= 1,
        "a VT-d unit at {:#x}: version {}.{}",
        VTD,
        (version >> 4) & 0xf,
        version & 0xf
    );
    let (cap, ecap) = (read64(CAP), read64(ECAP));
    report!(
        cap & (2 << 8) != 0 && ecap & (1 << 1) != 0 && ecap & (1 << 3) != 0,
        "capabilities: 39-bit guest addresses, queued invalidation, interrupt remapping (cap {:#x}, ecap {:#x})",
        cap,
        ecap
    );
    let tables = tables(&device);
    report!(command(SRTP), "the root table is taken (GSTS.RTPS)");
    report!(command(SIRTP), "the interrupt table is taken (GSTS.IRTPS)");
    invalidation_queue();
    report!(command(TE), "translation enabled (GSTS.TES)");
    report!(command(IRE), "interrupt remapping enabled (GSTS.IRES)");
    report!(read32(FSTS) == 0, "no fault recorded");

    dma_checks(&tables);
    msi_checks(&device, &tables);

    // Leave the unit off: translation and remapping.
    write32(GCMD, 0);
    report!(
        read32(GSTS) & (TE | IRE | QIE) == 0,
        "everything off again (GSTS {:#x})",
        read32(GSTS)
    );
    device.disable_bus_master();
    ktest::report_prefix_pop();
    ktest::report_summary()
}

struct Tables {
    rw: u64,
    ro: u64,
    interrupts: u64,
}

/// Root and context entries for edu, a 3-level table mapping the two
/// IOVAs, and a 256-entry interrupt table.
fn tables(device: &pci::PciDevice) -> Tables {
    let (root, context, l3, l2, l1) = (page(), page(), page(), page(), page());
    let (rw, ro, interrupts) = (page(), page(), page());
    let address = device.address;
    let devfn = u64::from(address.device) << 3 | u64::from(address.function);
    poke(root + u64::from(address.bus) * 16, context | 1);
    poke(context + devfn * 16, l3 | 1);
    // Address width 39 bits (3 levels), domain 1.
    poke(context + devfn * 16 + 8, 1 | 1 << 8);
    poke(l3, l2 | READ | WRITE);
    poke(l2, l1 | READ | WRITE);
    poke(l1 + (IOVA_RW / PAGE) * 8, rw | READ | WRITE);
    poke(l1 + (IOVA_RO / PAGE) * 8, ro | READ);
    write64(RTADDR, root);
    // 2^(7+1) = 256 entries.
    write64(IRTA, interrupts | 7);
    report_info!(
        "edu at {}: root table {:#x}, context {:#x}, pages rw {:#x} ro {:#x}",
        address,
        root,
        context,
        rw,
        ro
    );
    Tables { rw, ro, interrupts }
}

/// A wait descriptor that writes a status word: what drivers wait on
/// after every invalidation.
fn invalidation_queue() {
    let (queue, status) = (page(), page());
    const WAIT: u64 = 5;
    const STATUS_WRITE: u64 = 1 << 5;
    poke(queue, WAIT | STATUS_WRITE | 0x600d << 32);
    poke(queue + 8, status);
    write64(IQA, queue);
    report!(command(QIE), "queued invalidation enabled (GSTS.QIES)");
    write64(IQT, 1 << 4);
    let done = ktest::wait_until_timeout(1000, || peek(status) as u32 == 0x600d);
    report!(
        done && read64(IQH) == 1 << 4,
        "a wait descriptor completes: status {:#x}, queue head {:#x}",
        peek(status),
        read64(IQH)
    );
}

fn dma_checks(tables: &Tables) {
    ktest::report_prefix_push("dma");
    const RW_DATA: u64 = 0x1122_3344_5566_7788;
    const RO_DATA: u64 = 0x0bad_c0de_0bad_c0de;
    poke(tables.rw, RW_DATA);
    poke(tables.ro, RO_DATA);
    dma(IOVA_RW, DMA_BUFFER, 8, false);
    dma(DMA_BUFFER, IOVA_RW + 8, 8, true);
    report!(
        peek(tables.rw + 8) == RW_DATA,
        "IOVA {:#x} reaches page {:#x} both ways (read back {:#x})",
        IOVA_RW,
        tables.rw,
        peek(tables.rw + 8)
    );
    dma(IOVA_RO, DMA_BUFFER + 16, 8, false);
    dma(DMA_BUFFER + 16, IOVA_RW + 16, 8, true);
    report!(
        peek(tables.rw + 16) == RO_DATA,
        "a read-only mapping can be read"
    );
    let error = dma(DMA_BUFFER, IOVA_RO + 8, 8, true);
    report!(
        peek(tables.ro + 8) == 0,
        "a write to a read-only mapping changes nothing (edu error bit {})",
        error
    );
    // IOVAs equal to the guest-physical addresses of pages we own, but
    // not mapped: were the unit to let them through, these pages would
    // be read or written.
    let canary = page();
    poke(canary, 0x5a5a_5a5a_5a5a_5a5a);
    let error = dma(DMA_BUFFER, canary, 8, true);
    report!(
        peek(canary) == 0x5a5a_5a5a_5a5a_5a5a,
        "a write to an unmapped IOVA ({:#x}) changes nothing (edu error bit {})",
        canary,
        error
    );
    let error = dma(tables.ro, DMA_BUFFER + 32, 8, false);
    dma(DMA_BUFFER + 32, IOVA_RW + 24, 8, true);
    report!(
        peek(tables.rw + 24) != RO_DATA,
        "a read from an unmapped IOVA ({:#x}) does not read that RAM (edu error bit {})",
        tables.ro,
        error
    );
    ktest::report_prefix_pop();
}

fn msi_checks(device: &pci::PciDevice, tables: &Tables) {
    ktest::report_prefix_push("msi");
    let Some(msi) = device.msi() else {
        report!(false, "edu has an MSI capability");
        ktest::report_prefix_pop();
        return;
    };
    ktest::set_irq_handler(MSI_VECTOR, on_msi);
    let target = cpu_count() - 1;
    // Present, fixed, edge, physical; the APIC ID in bits 47:40 (xAPIC).
    poke(
        tables.interrupts + IRTE_PRESENT * 16,
        1 | u64::from(MSI_VECTOR) << 16 | u64::from(target) << 40,
    );
    let remappable = |index: u64| 0xfee0_0000 | 1 << 4 | index << 5;
    let program = |address: u64| {
        // SAFETY: the message goes to the LAPIC window through the
        // remapping table; data 0 (no subhandle).
        unsafe {
            device.write32(msi.offset() + 4, address as u32);
            if msi.is_64bit() {
                device.write32(msi.offset() + 8, 0);
                device.write16(msi.offset() + 12, 0);
            } else {
                device.write16(msi.offset() + 8, 0);
            }
        }
    };
    program(remappable(IRTE_PRESENT));
    msi.enable();
    let edu = edu();
    let before = MSI_COUNT.load(Ordering::Acquire);
    edu.raise_irq(0x1);
    let arrived = ktest::wait_until_timeout(1000, || MSI_COUNT.load(Ordering::Acquire) > before);
    delay_ms(20);
    report!(
        arrived
            && MSI_COUNT.load(Ordering::Acquire) == before + 1
            && MSI_CPU.load(Ordering::Relaxed) == target,
        "entry {} sends vector {:#x} to CPU {} once (count {}, on CPU {})",
        IRTE_PRESENT,
        MSI_VECTOR,
        target,
        MSI_COUNT.load(Ordering::Acquire) - before,
        MSI_CPU.load(Ordering::Relaxed)
    );

    program(remappable(IRTE_ABSENT));
    let before = MSI_COUNT.load(Ordering::Acquire);
    edu.raise_irq(0x2);
    delay_ms(50);
    report!(
        MSI_COUNT.load(Ordering::Acquire) == before,
        "an MSI through an entry that is not present arrives nowhere"
    );
    edu.ack_irq(u32::MAX);
    msi.disable();
    ktest::report_prefix_pop();
}
