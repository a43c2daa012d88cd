//! edu (PCI 1234:11e8), QEMU's educational device, driven directly:
//!
//! - registers: identification, liveness, access sizes (below 0x80 only
//!   4-byte accesses count: 8-byte reads all-ones, 1- and 2-byte reads 0,
//!   as QEMU's memory core refuses them), DMA registers of 4 and 8 bytes;
//! - factorial by polling (0!, 10!, 13! wrapping to 32 bits);
//! - DMA with bus mastering off leaves RAM alone; DMA RAM -> device
//!   buffer -> RAM with the data verified (whole buffer, and an unaligned
//!   slice with guard bytes around it), the 28-bit address mask;
//! - DMA out of range (device side outside the 4 KiB buffer, RAM side
//!   beyond or across the end of RAM, a count larger than the buffer)
//!   touches no memory and completes as ktvmm documents: start bit clear,
//!   the completion interrupt if asked, and ktvmm's error bit 31 set in the
//!   command register;
//! - INTx through the IOAPIC (level-triggered on the GSI in the Interrupt
//!   Line register): delivered to the programmed vector, once (twice on
//!   hosts whose LAPIC ends interrupts at delivery, see
//!   `ktest::lapic::eoi_at_delivery`), Remote IRR cleared by the EOI, held
//!   while masked and delivered on unmask, factorial and DMA completion
//!   interrupts, and to another CPU;
//! - MSI to the programmed vector (INTx stays quiet), on every CPU in turn,
//!   factorial and DMA completion by MSI, no MSI without bus mastering.
//!
//! Run: `ktvmm run edu -smp 2` (the per-CPU parts skip with one CPU; with
//! `-m` of 256 MiB or more the beyond-RAM DMA checks skip, as every 28-bit
//! address is RAM then).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ktest::driver::edu::{
    self, DMA_BUFFER, DMA_BUFFER_SIZE, DMA_ERROR, DMA_IRQ, DMA_IRQ_ENABLE, DMA_TO_RAM, Edu,
    FACTORIAL_IRQ, reg,
};
use ktest::ioapic::{self, Route};
use ktest::pci::{self, PciDevice};
use ktest::{
    InterruptFrame, alloc_pages, cpu_count, cpu_id, delay_ms, mmio, report, report_info,
    report_skip, wait_until_timeout,
};

ktest::main!(main);

const INTX_VECTOR: u8 = 0x60;
const MSI_VECTOR: u8 = 0x61;
/// How long to wait for an interrupt.
const TIMEOUT_MS: u32 = 1000;
/// How long to watch for an interrupt that must not come.
const QUIET_MS: u32 = 10;
const PAGE: u64 = 4096;
/// What RAM that DMA must not touch is filled with.
const CANARY: u8 = 0xcc;

/// The edu's BAR0, for the interrupt handler.
static EDU_BASE: AtomicU64 = AtomicU64::new(0);

/// What one interrupt vector saw.
struct IrqLog {
    count: AtomicU32,
    cpu: AtomicU32,
    status: AtomicU32,
}

impl IrqLog {
    const fn new() -> Self {
        Self {
            count: AtomicU32::new(0),
            cpu: AtomicU32::new(u32::MAX),
            status: AtomicU32::new(0),
        }
    }

    fn count(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }

    /// Forgets the CPU and status of earlier interrupts.
    fn clear(&self) {
        self.cpu.store(u32::MAX, Ordering::Relaxed);
        self.status.store(0, Ordering::Relaxed);
    }

    fn cpu(&self) -> u32 {
        self.cpu.load(Ordering::Relaxed)
    }

    fn status(&self) -> u32 {
        self.status.load(Ordering::Relaxed)
    }

    /// Waits until `count` reaches `target`; false on timeout.
    fn wait_for(&self, target: u32) -> bool {
        wait_until_timeout(TIMEOUT_MS, || self.count() >= target)
    }

    /// Waits until a handler has seen all of interrupt status `bits`;
    /// false on timeout.
    fn wait_status(&self, bits: u32) -> bool {
        wait_until_timeout(TIMEOUT_MS, || self.status() & bits == bits)
    }
}

static INTX: IrqLog = IrqLog::new();
static MSI: IrqLog = IrqLog::new();

fn edu() -> Edu {
    // SAFETY: set from edu's BAR0 before any interrupt is routed here.
    unsafe { Edu::new(EDU_BASE.load(Ordering::Relaxed)) }
}

/// INTx and MSI handler: acknowledges what the device raised (which drops
/// INTx before the EOI the dispatcher sends) and records it.
fn edu_irq(frame: &InterruptFrame) {
    let edu = edu();
    let status = edu.irq_status();
    edu.ack_irq(status);
    let log = if frame.vector() == INTX_VECTOR {
        &INTX
    } else {
        &MSI
    };
    log.status.fetch_or(status, Ordering::Relaxed);
    log.cpu.store(cpu_id(), Ordering::Relaxed);
    log.count.fetch_add(1, Ordering::Release);
    if cpu_id() != 0 {
        // The test waits on CPU 0.
        ktest::wake(0);
    }
}

fn main() -> u8 {
    ktest::report_prefix_push("edu");
    let Some(device) = pci::find(edu::VENDOR_ID, edu::DEVICE_ID) else {
        report!(false, "edu (1234:11e8) is on bus 0");
        ktest::report_prefix_pop();
        return ktest::report_summary();
    };
    // Where it sits is the platform's business (pci-enum checks ktvmm's
    // layout); this guest tests the device wherever it is.
    report_info!("{}", device);
    device.enable_decoding();
    let Some(edu) = Edu::from_device(&device) else {
        report!(false, "BAR0 is a memory BAR");
        ktest::report_prefix_pop();
        return ktest::report_summary();
    };
    EDU_BASE.store(edu.base(), Ordering::Relaxed);
    ktest::set_irq_handler(INTX_VECTOR, edu_irq);
    ktest::set_irq_handler(MSI_VECTOR, edu_irq);

    registers(&edu);
    factorial(&edu);
    let buffers = Buffers::new();
    dma_without_bus_master(&edu, &buffers);
    // SAFETY: the device only DMAs to the buffers this test gives it.
    unsafe { device.enable_bus_master() };
    dma(&edu, &buffers);
    dma_out_of_range(&edu, &buffers);
    intx(&device, &edu, &buffers);
    msi(&device, &edu, &buffers);
    device.disable_bus_master();

    ktest::report_prefix_pop();
    ktest::report_summary()
}

fn registers(edu: &Edu) {
    ktest::report_prefix_push("registers");
    let id = edu.id();
    report!(
        id == edu::ID_VALUE,
        "identification {:#010x} (version {}.{}, {:#x})",
        id,
        id >> 24,
        (id >> 16) & 0xff,
        id & 0xff
    );
    let mut alive = true;
    for value in [0x1234_5678, 0, 0xffff_ffff, 0xa5a5_5a5a] {
        let read = edu.liveness(value);
        alive &= report!(
            read == !value,
            "liveness: {:#010x} reads back inverted ({:#010x})",
            value,
            read
        );
    }
    // SAFETY: accesses below 0x80 of the wrong size, which edu ignores,
    // and DMA address registers (nothing starts a transfer).
    unsafe {
        // QEMU's memory core refuses 1- and 2-byte accesses to edu's region
        // (it takes 4 and 8): reads give 0, writes go nowhere. edu itself
        // refuses 8-byte accesses below 0x80: all-ones, writes ignored.
        let wide = mmio::read64(edu.base() + reg::ID);
        let narrow = mmio::read16(edu.base() + reg::ID);
        let byte = mmio::read8(edu.base() + reg::ID);
        report!(
            wide == u64::MAX && narrow == 0 && byte == 0,
            "below 0x80, an 8-byte read reads all-ones ({:#x}), 2- and 1-byte reads 0 ({:#x}, {:#x})",
            wide,
            narrow,
            byte
        );
        edu.liveness(0x1111_1111);
        mmio::write16(edu.base() + reg::ALIVE, 0x2222);
        mmio::write8(edu.base() + reg::ALIVE, 0x22);
        mmio::write64(edu.base() + reg::ID, 0x3333_3333_3333_3333);
        let read = edu.read32(reg::ALIVE);
        report!(
            read == !0x1111_1111,
            "below 0x80, 1-, 2- and 8-byte writes are ignored ({:#010x})",
            read
        );
        let unknown = edu.read32(0x0c);
        report!(
            unknown == 0xffff_ffff,
            "an unknown register reads all-ones ({:#x})",
            unknown
        );
        edu.write64(reg::DMA_SRC, 0x0123_4567_89ab_cdef);
        let read64 = edu.read64(reg::DMA_SRC);
        edu.write32(reg::DMA_DST, 0x89ab_cdef);
        let read32 = edu.read32(reg::DMA_DST);
        report!(
            read64 == 0x0123_4567_89ab_cdef && read32 == 0x89ab_cdef,
            "DMA registers take 8- and 4-byte accesses ({:#x}, {:#x})",
            read64,
            read32
        );
    }
    if !alive {
        report_info!("the device does not answer: later checks will fail too");
    }
    ktest::report_prefix_pop();
}

fn factorial(edu: &Edu) {
    ktest::report_prefix_push("factorial");
    edu.set_factorial_irq(false);
    for (n, expected) in [(0, 1), (1, 1), (10, 3_628_800), (13, 1_932_053_504)] {
        let result = edu.compute_factorial(n);
        report!(
            result == Some(expected),
            "{}! = {} by polling the status ({:?})",
            n,
            expected,
            result
        );
    }
    ktest::report_prefix_pop();
}

/// The RAM this test lets the device DMA to and from.
struct Buffers {
    /// One page of source data.
    src: u64,
    /// One page the device writes.
    dst: u64,
    /// Two pages that out-of-range transfers aim at.
    canary: u64,
}

impl Buffers {
    fn new() -> Self {
        Self {
            src: alloc_pages(1),
            dst: alloc_pages(1),
            canary: alloc_pages(2),
        }
    }
}

/// Word `i` of pattern `seed`.
fn pattern(seed: u64, i: u64) -> u64 {
    (i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

/// Fills `len` bytes (a multiple of 8) at `address` with pattern `seed`.
fn fill_pattern(address: u64, len: u64, seed: u64) {
    for i in 0..len / 8 {
        // SAFETY: test-owned RAM (from `alloc_pages`), no device on it now.
        unsafe { mmio::write64(address + 8 * i, pattern(seed, i)) };
    }
}

/// The first word of `len` bytes at `address` that is not pattern `seed`.
fn pattern_mismatch(address: u64, len: u64, seed: u64) -> Option<u64> {
    (0..len / 8)
        // SAFETY: test-owned RAM; volatile, since a device wrote it.
        .find(|&i| unsafe { mmio::read64(address + 8 * i) } != pattern(seed, i))
        .map(|i| 8 * i)
}

fn fill_bytes(address: u64, len: u64, byte: u8) {
    // SAFETY: test-owned RAM, no device on it now.
    unsafe { ktest::mem::memset(address as *mut u8, i32::from(byte), len as usize) };
}

/// The first of `len` bytes at `address` that is not `byte`.
fn byte_mismatch(address: u64, len: u64, byte: u8) -> Option<u64> {
    // SAFETY: test-owned RAM; volatile, since a device may have written it.
    (0..len).find(|&i| unsafe { mmio::read8(address + i) } != byte)
}

/// Waits for the running transfer and reports whether it completed.
fn dma_completes(edu: &Edu, what: &str) -> bool {
    let done = edu.wait_dma();
    if !done {
        report!(
            false,
            "{}: the transfer completes (command still {:#x})",
            what,
            edu.read32(reg::DMA_CMD)
        );
    }
    done
}

/// Copies the whole device buffer to `dst`, polled.
fn read_buffer(edu: &Edu, dst: u64) -> bool {
    // SAFETY: `dst` is a test-owned page.
    unsafe { edu.start_dma_to_ram(0, dst, DMA_BUFFER_SIZE, false) };
    edu.wait_dma()
}

/// Fills the whole device buffer with pattern `seed` (through `src`).
fn load_buffer(edu: &Edu, src: u64, seed: u64) -> bool {
    fill_pattern(src, DMA_BUFFER_SIZE, seed);
    // SAFETY: `src` is a test-owned page.
    unsafe { edu.start_dma_to_device(src, 0, DMA_BUFFER_SIZE, false) };
    edu.wait_dma()
}

fn dma_without_bus_master(edu: &Edu, buffers: &Buffers) {
    ktest::report_prefix_push("dma");
    fill_bytes(buffers.dst, PAGE, CANARY);
    // SAFETY: `dst` is a test-owned page.
    unsafe { edu.start_dma_to_ram(0, buffers.dst, DMA_BUFFER_SIZE, false) };
    if dma_completes(edu, "bus mastering off") {
        let changed = byte_mismatch(buffers.dst, PAGE, CANARY);
        report!(
            changed.is_none(),
            "with bus mastering off, a buffer -> RAM transfer leaves RAM alone (first change at {:x?})",
            changed
        );
    }
    ktest::report_prefix_pop();
}

fn dma(edu: &Edu, buffers: &Buffers) {
    ktest::report_prefix_push("dma");
    let seed = 0x1234;
    fill_pattern(buffers.src, PAGE, seed);
    fill_bytes(buffers.dst, PAGE, CANARY);
    // SAFETY: test-owned pages.
    unsafe { edu.start_dma_to_device(buffers.src, 0, DMA_BUFFER_SIZE, false) };
    report!(
        edu.read64(reg::DMA_SRC) == buffers.src
            && edu.read64(reg::DMA_DST) == DMA_BUFFER
            && edu.read64(reg::DMA_COUNT) == DMA_BUFFER_SIZE,
        "DMA registers hold source {:#x}, destination {:#x}, count {:#x}",
        buffers.src,
        DMA_BUFFER,
        DMA_BUFFER_SIZE
    );
    if dma_completes(edu, "RAM -> buffer") {
        // SAFETY: test-owned page.
        unsafe { edu.start_dma_to_ram(0, buffers.dst, DMA_BUFFER_SIZE, false) };
        if dma_completes(edu, "buffer -> RAM") {
            let mismatch = pattern_mismatch(buffers.dst, PAGE, seed);
            report!(
                mismatch.is_none(),
                "4 KiB RAM -> device buffer -> RAM arrives intact (first difference at {:x?})",
                mismatch
            );
            let command = edu.read32(reg::DMA_CMD);
            report!(
                command & DMA_ERROR == 0,
                "a transfer in range does not set the error bit (command {:#x})",
                command
            );
        }
    }

    // An unaligned slice into the middle of the buffer and back to an
    // unaligned address, with guard bytes on both sides.
    let (from, offset, to, len) = (3, 0x800, 5, 100);
    fill_bytes(buffers.dst, PAGE, CANARY);
    // SAFETY: test-owned pages.
    unsafe { edu.start_dma_to_device(buffers.src + from, offset, len, false) };
    if dma_completes(edu, "slice RAM -> buffer") {
        // SAFETY: test-owned page.
        unsafe { edu.start_dma_to_ram(offset, buffers.dst + to, len, false) };
        if dma_completes(edu, "slice buffer -> RAM") {
            // SAFETY: test-owned pages.
            let copied = (0..len).all(|i| unsafe {
                mmio::read8(buffers.dst + to + i) == mmio::read8(buffers.src + from + i)
            });
            let below = byte_mismatch(buffers.dst, to, CANARY);
            let above = byte_mismatch(buffers.dst + to + len, 64, CANARY);
            report!(
                copied && below.is_none() && above.is_none(),
                "{} bytes from RAM+{} via buffer offset {:#x} to RAM+{}: copied {}, guard bytes intact {}",
                len,
                from,
                offset,
                to,
                copied,
                below.is_none() && above.is_none()
            );
        }
    }

    // QEMU's edu keeps 28 bits of a RAM address.
    if load_buffer(edu, buffers.src, 0x28) {
        fill_bytes(buffers.dst, PAGE, CANARY);
        let aliased = buffers.dst | 1 << 28;
        // SAFETY: masked to 28 bits, this is the test-owned `dst` page.
        unsafe { edu.start_dma_to_ram(0, aliased, 256, false) };
        if dma_completes(edu, "masked address") {
            let mismatch = pattern_mismatch(buffers.dst, 256, 0x28);
            report!(
                mismatch.is_none(),
                "RAM addresses are masked to 28 bits: a transfer to {:#x} lands at {:#x}",
                aliased,
                buffers.dst
            );
        }
    }
    ktest::report_prefix_pop();
}

fn dma_out_of_range(edu: &Edu, buffers: &Buffers) {
    ktest::report_prefix_push("dma out of range");
    let canary = buffers.canary;
    let canary_len = 2 * PAGE;

    // Device side outside the buffer, towards RAM: RAM must stay as it is.
    let to_ram: [(&str, u64, u64); 3] = [
        (
            "buffer end crossed",
            DMA_BUFFER + DMA_BUFFER_SIZE - 0x80,
            0x100,
        ),
        ("below the buffer", DMA_BUFFER - 0x80, 0x100),
        (
            "count larger than the buffer",
            DMA_BUFFER,
            2 * DMA_BUFFER_SIZE,
        ),
    ];
    for (i, (what, src, count)) in to_ram.into_iter().enumerate() {
        fill_bytes(canary, canary_len, CANARY);
        edu.ack_irq(u32::MAX);
        // The first one asks for the completion interrupt too.
        let irq = if i == 0 { DMA_IRQ_ENABLE } else { 0 };
        // SAFETY: at worst the device writes the two canary pages.
        unsafe { edu.start_dma(src, canary, count, DMA_TO_RAM | irq) };
        if dma_completes(edu, what) {
            let changed = byte_mismatch(canary, canary_len, CANARY);
            let command = edu.read32(reg::DMA_CMD);
            let status = edu.irq_status();
            report!(
                changed.is_none()
                    && command & DMA_ERROR != 0
                    && (irq == 0 || status & DMA_IRQ != 0),
                "{} (device {:#x}, {:#x} bytes) -> RAM: RAM untouched (first change at {:x?}), error bit set (command {:#x}){}",
                what,
                src,
                count,
                changed,
                command,
                if irq != 0 {
                    ", completion interrupt raised"
                } else {
                    ""
                }
            );
        }
    }

    // Towards the device buffer: its contents must stay as they are.
    let boot = ktest::boot_info();
    let ram_end = boot.low_mem_end;
    let beyond_ram = boot.high_mem_end == 0 && ram_end + PAGE <= 1 << 28;
    let seed = 0x0b0b;
    let to_device: [(&str, u64, u64, u64, bool); 4] = [
        (
            "buffer end crossed",
            buffers.src,
            DMA_BUFFER + DMA_BUFFER_SIZE - 0x40,
            0x80,
            true,
        ),
        ("RAM beyond its end", ram_end, DMA_BUFFER, 0x100, beyond_ram),
        (
            "RAM end crossed",
            ram_end - 0x80,
            DMA_BUFFER,
            0x100,
            beyond_ram,
        ),
        (
            "count larger than the buffer",
            buffers.canary,
            DMA_BUFFER,
            2 * DMA_BUFFER_SIZE,
            true,
        ),
    ];
    for (what, src, dst, count, possible) in to_device {
        if !possible {
            report_skip!(
                "{}: every 28-bit address is RAM with this much memory",
                what
            );
            continue;
        }
        if !load_buffer(edu, buffers.src, seed) {
            report!(false, "{}: loading the buffer completes", what);
            continue;
        }
        fill_bytes(buffers.src, PAGE, !CANARY);
        fill_bytes(buffers.canary, canary_len, !CANARY);
        // SAFETY: RAM -> device only reads RAM.
        unsafe { edu.start_dma(src, dst, count, 0) };
        if !dma_completes(edu, what) {
            continue;
        }
        let command = edu.read32(reg::DMA_CMD);
        if read_buffer(edu, buffers.dst) {
            let changed = pattern_mismatch(buffers.dst, DMA_BUFFER_SIZE, seed);
            report!(
                changed.is_none() && command & DMA_ERROR != 0,
                "{} (RAM {:#x}, device {:#x}, {:#x} bytes) -> buffer: buffer untouched (first change at {:x?}), error bit set (command {:#x})",
                what,
                src,
                dst,
                count,
                changed,
                command
            );
        }
    }
    edu.ack_irq(u32::MAX);
    ktest::report_prefix_pop();
}

fn intx(device: &PciDevice, edu: &Edu, buffers: &Buffers) {
    ktest::report_prefix_push("intx");
    let gsi = u32::from(device.interrupt_line());
    let expected_gsi = ktest::abi::pci::intx_gsi(device.address.device, device.interrupt_pin());
    report!(
        gsi == expected_gsi,
        "Interrupt Line holds GSI {} ({})",
        expected_gsi,
        gsi
    );
    if gsi >= ioapic::pins() {
        report!(
            false,
            "GSI {} is an IOAPIC pin (there are {})",
            gsi,
            ioapic::pins()
        );
        ktest::report_prefix_pop();
        return;
    }
    if let Some(msi) = device.msi() {
        msi.disable();
    }
    edu.ack_irq(u32::MAX);
    INTX.clear();
    ioapic::route(gsi, Route::level(INTX_VECTOR, 0));
    // Where the LAPIC ends an interrupt at delivery, the IOAPIC sees the
    // EOI while the line is still up and delivers it once more (the
    // handler then finds nothing to acknowledge).
    let early_eoi = ktest::lapic::eoi_at_delivery();
    if early_eoi {
        report_info!(
            "this host's LAPIC ends an interrupt's in-service state at delivery (KVM's PVM backend does): each INTx interrupt is delivered once more"
        );
    }
    let expected = 1 + u32::from(early_eoi);

    // Raise, deliver, acknowledged by the handler before its EOI.
    let before = INTX.count();
    edu.raise_irq(0x1_0000);
    let arrived = INTX.wait_status(0x1_0000);
    report!(
        arrived && INTX.cpu() == 0,
        "raised interrupt arrives on vector {:#x} on CPU 0 (status {:#x})",
        INTX_VECTOR,
        INTX.status()
    );
    delay_ms(QUIET_MS);
    let count = INTX.count() - before;
    report!(
        count == expected,
        "acknowledged before EOI, the line stays low: {} interrupt(s) ({})",
        expected,
        count
    );
    report!(
        !ioapic::remote_irr(gsi) && edu.irq_status() == 0,
        "EOI cleared Remote IRR (entry {:#x}), interrupt status {:#x}",
        ioapic::redirection(gsi),
        edu.irq_status()
    );

    // Masked: the level stays asserted and is delivered on unmask.
    ioapic::mask(gsi);
    INTX.clear();
    let before = INTX.count();
    edu.raise_irq(0x2_0000);
    delay_ms(QUIET_MS);
    let while_masked = INTX.count() - before;
    ioapic::unmask(gsi);
    let arrived = INTX.wait_status(0x2_0000);
    delay_ms(QUIET_MS);
    report!(
        while_masked == 0 && arrived,
        "while masked nothing arrives ({}); unmasking delivers the asserted line",
        while_masked
    );

    // Factorial completion.
    INTX.clear();
    edu.set_factorial_irq(true);
    edu.start_factorial(12);
    let arrived = INTX.wait_status(FACTORIAL_IRQ);
    edu.set_factorial_irq(false);
    let result = edu.factorial();
    report!(
        arrived && result == 479_001_600,
        "factorial interrupt (status {:#x}), 12! = {}",
        INTX.status(),
        result
    );
    delay_ms(QUIET_MS);

    // DMA completion.
    INTX.clear();
    fill_pattern(buffers.src, PAGE, 0x1717);
    // SAFETY: test-owned page.
    unsafe { edu.start_dma_to_device(buffers.src, 0, DMA_BUFFER_SIZE, true) };
    let arrived = INTX.wait_status(DMA_IRQ);
    report!(
        arrived && !edu.dma_busy(),
        "DMA completion interrupt (status {:#x})",
        INTX.status()
    );
    delay_ms(QUIET_MS);

    // Another CPU.
    let last = cpu_count() - 1;
    if last == 0 {
        report_skip!("delivery to another CPU needs -smp 2 or more");
    } else {
        ioapic::route(gsi, Route::level(INTX_VECTOR, last as u8));
        INTX.clear();
        edu.raise_irq(0x4_0000);
        let arrived = INTX.wait_status(0x4_0000);
        report!(
            arrived && INTX.cpu() == last,
            "routed to CPU {}: arrives there (on CPU {})",
            last,
            INTX.cpu() as i32
        );
        delay_ms(QUIET_MS);
    }
    ioapic::mask(gsi);
    edu.ack_irq(u32::MAX);
    ktest::report_prefix_pop();
}

fn msi(device: &PciDevice, edu: &Edu, buffers: &Buffers) {
    ktest::report_prefix_push("msi");
    let Some(msi) = device.msi() else {
        report!(false, "edu has an MSI capability");
        ktest::report_prefix_pop();
        return;
    };
    // INTx stays routed and unmasked: with MSI enabled it must stay quiet.
    let gsi = u32::from(device.interrupt_line());
    let watch_intx = gsi < ioapic::pins();
    if watch_intx {
        ioapic::route(gsi, Route::level(INTX_VECTOR, 0));
    }
    let intx_before = INTX.count();
    msi.configure(0, MSI_VECTOR);
    msi.enable();
    let (address, data) = msi.message();
    report!(
        msi.enabled() && address == pci::msi_address(0) && data == pci::msi_data(MSI_VECTOR),
        "programmed: address {:#x}, data {:#x}, enabled",
        address,
        data
    );

    MSI.clear();
    let before = MSI.count();
    edu.raise_irq(0x1_0000);
    let arrived = MSI.wait_status(0x1_0000);
    delay_ms(QUIET_MS);
    report!(
        arrived && MSI.cpu() == 0 && MSI.count() == before + 1,
        "raised interrupt arrives once on vector {:#x} on CPU 0 (count {})",
        MSI_VECTOR,
        MSI.count() - before
    );

    // Every CPU in turn.
    let mut reached = 0u64;
    for cpu in 0..cpu_count() {
        msi.configure(cpu, MSI_VECTOR);
        MSI.clear();
        let before = MSI.count();
        edu.raise_irq(0x2_0000);
        if MSI.wait_for(before + 1) && MSI.cpu() == cpu && MSI.status() & 0x2_0000 != 0 {
            reached |= 1 << cpu;
        }
    }
    let all = u64::MAX >> (64 - cpu_count());
    if cpu_count() > 1 {
        report!(
            reached == all,
            "MSI to each of the {} CPUs arrives there (mask {:#x})",
            cpu_count(),
            reached
        );
    } else {
        report!(
            reached == 1,
            "MSI to CPU 0 by APIC ID (mask {:#x})",
            reached
        );
        report_skip!("MSI on more than one CPU needs -smp 2 or more");
    }
    msi.configure(0, MSI_VECTOR);

    // Factorial completion.
    MSI.clear();
    edu.set_factorial_irq(true);
    edu.start_factorial(5);
    let arrived = MSI.wait_status(FACTORIAL_IRQ);
    edu.set_factorial_irq(false);
    let result = edu.factorial();
    report!(
        arrived && result == 120,
        "factorial interrupt (status {:#x}), 5! = {}",
        MSI.status(),
        result
    );

    // A DMA round trip, each half completed by MSI.
    let seed = 0x3535;
    fill_pattern(buffers.src, PAGE, seed);
    fill_bytes(buffers.dst, PAGE, CANARY);
    MSI.clear();
    let before = MSI.count();
    // SAFETY: test-owned pages.
    unsafe { edu.start_dma_to_device(buffers.src, 0, DMA_BUFFER_SIZE, true) };
    let first = MSI.wait_for(before + 1);
    // SAFETY: test-owned page.
    unsafe { edu.start_dma_to_ram(0, buffers.dst, DMA_BUFFER_SIZE, true) };
    let second = MSI.wait_for(before + 2);
    let mismatch = pattern_mismatch(buffers.dst, PAGE, seed);
    report!(
        first && second && MSI.status() & DMA_IRQ != 0 && mismatch.is_none(),
        "DMA round trip with completion by MSI ({} interrupts), data intact (first difference at {:x?})",
        MSI.count() - before,
        mismatch
    );

    if watch_intx {
        report!(
            INTX.count() == intx_before,
            "INTx stays quiet while MSI is enabled ({} INTx interrupts)",
            INTX.count() - intx_before
        );
    }

    // An MSI is a memory write: no bus mastering, no message.
    device.disable_bus_master();
    let before = MSI.count();
    edu.raise_irq(0x4_0000);
    delay_ms(QUIET_MS);
    let without = MSI.count() - before;
    // SAFETY: back to what `main` enabled.
    unsafe { device.enable_bus_master() };
    report!(
        without == 0,
        "with bus mastering off, no MSI is delivered ({})",
        without
    );

    edu.ack_irq(u32::MAX);
    msi.disable();
    if watch_intx {
        ioapic::mask(gsi);
    }
    ktest::report_prefix_pop();
}
