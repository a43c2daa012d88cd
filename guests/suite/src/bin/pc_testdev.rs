//! pc-testdev, QEMU's ISA test device:
//!
//! - the 32-bit register at ports 0xe0-0xe3: dword, word and byte accesses
//!   read and update their own byte lanes, and the byte-access window at
//!   0xe8-0xeb is the same register;
//! - string I/O: `rep outsb` of 4 bytes leaves the last in lane 0 (every
//!   element processed), `rep insb` reads lane 0 into every element;
//! - IRQ ports 0x2000 + n: ISA IRQ 14 through the IOAPIC, edge-triggered
//!   (an interrupt on the rising edge, none on the falling one) and
//!   level-triggered (the handler lowers the line before EOI, so one
//!   interrupt, or two on hosts whose LAPIC ends interrupts at delivery,
//!   see `ktest::lapic::eoi_at_delivery`; while masked the asserted line
//!   waits for unmask), ISA IRQ 0 on IOAPIC pin 2, and delivery to another
//!   CPU;
//! - the 64 KiB iomem buffer at 0xff000000: byte to quadword accesses,
//!   little-endian, both ends, `rep movsb` in and out, and all-ones past its
//!   end;
//! - the flush-page port 0xe4: after flushing a page (of free RAM, and of
//!   the guest image) its data is still there, readable and writable, and
//!   the port reads 0.
//!
//! Run: `ktvmm run pc-testdev -smp 2` (the other-CPU part skips with one).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use ktest::abi::layout::{PC_TESTDEV_IOMEM, PC_TESTDEV_IOMEM_SIZE};
use ktest::abi::ports::{
    PC_TESTDEV_FLUSH_PAGE, PC_TESTDEV_IRQ_BASE, PC_TESTDEV_REGISTER, PC_TESTDEV_REGISTER_BYTES,
};
use ktest::ioapic::{self, Route};
use ktest::{
    InterruptFrame, alloc_pages, cpu_count, cpu_id, delay_ms, mmio, report, report_skip,
    wait_until_timeout, x86,
};

ktest::main!(main);

const EDGE_VECTOR: u8 = 0x70;
const LEVEL_VECTOR: u8 = 0x71;
/// The ISA IRQ the interrupt checks use (free on a PC: the secondary IDE
/// channel's, and on IOAPIC pin 14).
const TEST_IRQ: u8 = 14;
/// Where ISA IRQ 0 arrives on the IOAPIC.
const IRQ0_PIN: u32 = 2;
const TIMEOUT_MS: u32 = 1000;
const QUIET_MS: u32 = 10;

static EDGES: AtomicU32 = AtomicU32::new(0);
static LEVELS: AtomicU32 = AtomicU32::new(0);
static LAST_CPU: AtomicU32 = AtomicU32::new(u32::MAX);
/// The ISA IRQ line the level handler lowers.
static LEVEL_IRQ: AtomicU32 = AtomicU32::new(TEST_IRQ as u32);

fn set_irq_line(irq: u8, high: bool) {
    // SAFETY: pc-testdev's IRQ port only moves that ISA IRQ line.
    unsafe { x86::outb(PC_TESTDEV_IRQ_BASE + u16::from(irq), u8::from(high)) };
}

fn edge_handler(_frame: &InterruptFrame) {
    LAST_CPU.store(cpu_id(), Ordering::Relaxed);
    EDGES.fetch_add(1, Ordering::Release);
    if cpu_id() != 0 {
        ktest::wake(0);
    }
}

/// Lowers the line before the dispatcher's EOI, like a driver acknowledging
/// its device.
fn level_handler(_frame: &InterruptFrame) {
    set_irq_line(LEVEL_IRQ.load(Ordering::Relaxed) as u8, false);
    LAST_CPU.store(cpu_id(), Ordering::Relaxed);
    LEVELS.fetch_add(1, Ordering::Release);
    if cpu_id() != 0 {
        ktest::wake(0);
    }
}

fn main() -> u8 {
    ktest::report_prefix_push("pc-testdev");
    register();
    string_io();
    irq();
    iomem();
    flush_page();
    ktest::report_prefix_pop();
    ktest::report_summary()
}

fn register() {
    ktest::report_prefix_push("register");
    let port = PC_TESTDEV_REGISTER;
    let bytes_port = PC_TESTDEV_REGISTER_BYTES;
    // SAFETY: pc-testdev's scratch register: no effect beyond itself.
    unsafe {
        x86::outl(port, 0x1234_5678);
        let dword = x86::inl(port);
        report!(dword == 0x1234_5678, "dword write/read ({:#010x})", dword);
        let lanes = [0, 1, 2, 3].map(|lane| x86::inb(port + lane));
        report!(
            lanes == [0x78, 0x56, 0x34, 0x12],
            "byte reads at 0xe0-0xe3 see their lanes ({:02x?})",
            lanes
        );
        let words = [x86::inw(port), x86::inw(port + 2)];
        report!(
            words == [0x5678, 0x1234],
            "word reads at 0xe0 and 0xe2 ({:04x?})",
            words
        );
        x86::outb(port + 1, 0xab);
        let after_byte = x86::inl(port);
        x86::outw(port + 2, 0xcdef);
        let after_word = x86::inl(port);
        report!(
            after_byte == 0x1234_ab78 && after_word == 0xcdef_ab78,
            "byte write at 0xe1 and word write at 0xe2 update only their lanes ({:#010x}, {:#010x})",
            after_byte,
            after_word
        );
        let lane1 = x86::inb(bytes_port + 1);
        x86::outb(bytes_port + 3, 0x01);
        let after = x86::inl(port);
        report!(
            lane1 == 0xab && after == 0x01ef_ab78,
            "0xe8-0xeb is the same register, byte by byte ({:#x}, {:#010x})",
            lane1,
            after
        );
        let whole = x86::inl(bytes_port);
        report!(
            whole == after,
            "a dword read at 0xe8 reads the four lanes ({:#010x})",
            whole
        );
    }
    ktest::report_prefix_pop();
}

fn string_io() {
    ktest::report_prefix_push("string io");
    let port = PC_TESTDEV_REGISTER;
    // SAFETY: pc-testdev's scratch register.
    unsafe {
        x86::outl(port, 0x1122_3344);
        x86::outsb(port, b"WXYZ");
        let value = x86::inl(port);
        report!(
            value == 0x1122_3300 | u32::from(b'Z'),
            "rep outsb of \"WXYZ\" to 0xe0: each byte written to lane 0, the last stays ({:#010x})",
            value
        );
        let mut buf = [1u8, 2, 3, 4];
        x86::insb(port, &mut buf);
        report!(
            buf == [b'Z'; 4],
            "rep insb of 4 bytes from 0xe0 ({:02x?})",
            buf
        );
        let mut buf = [1u8, 2, 3];
        x86::insb(port + 2, &mut buf);
        report!(
            buf == [0x22; 3],
            "rep insb of 3 bytes from 0xe2 ({:02x?})",
            buf
        );
    }
    ktest::report_prefix_pop();
}

fn wait_count(counter: &AtomicU32, target: u32) -> bool {
    wait_until_timeout(TIMEOUT_MS, || counter.load(Ordering::Acquire) >= target)
}

fn irq() {
    ktest::report_prefix_push("irq");
    ioapic::mask_legacy_pic();
    ktest::set_irq_handler(EDGE_VECTOR, edge_handler);
    ktest::set_irq_handler(LEVEL_VECTOR, level_handler);
    let pin = u32::from(TEST_IRQ);
    set_irq_line(TEST_IRQ, false);

    // Edge: one interrupt per rising edge.
    ioapic::route(pin, Route::edge(EDGE_VECTOR, 0));
    let before = EDGES.load(Ordering::Acquire);
    set_irq_line(TEST_IRQ, true);
    let first = wait_count(&EDGES, before + 1);
    report!(
        first && LAST_CPU.load(Ordering::Relaxed) == 0,
        "IRQ {} raised: edge interrupt on vector {:#x} on CPU 0",
        TEST_IRQ,
        EDGE_VECTOR
    );
    // KVM's IOAPIC takes every "high" of an edge-triggered line as an
    // edge (QEMU behaves the same), so only the falling edge is checked.
    set_irq_line(TEST_IRQ, false);
    delay_ms(QUIET_MS);
    let lowered = EDGES.load(Ordering::Acquire) - before;
    set_irq_line(TEST_IRQ, true);
    let second = wait_count(&EDGES, before + 2);
    set_irq_line(TEST_IRQ, false);
    report!(
        lowered == 1 && second,
        "lowering the line interrupts nothing ({} so far), the next rising edge interrupts again",
        lowered
    );

    // Level: the handler lowers the line before its EOI, so one interrupt
    // (two where the LAPIC ends the interrupt at delivery: see
    // `lapic::eoi_at_delivery`).
    let early_eoi = ktest::lapic::eoi_at_delivery();
    if early_eoi {
        ktest::report_info!(
            "this host's LAPIC ends an interrupt's in-service state at delivery (KVM's PVM backend does): a level-triggered line still asserted then is delivered once more"
        );
    }
    let expected = 1 + u32::from(early_eoi);
    ioapic::route(pin, Route::level(LEVEL_VECTOR, 0));
    let before = LEVELS.load(Ordering::Acquire);
    set_irq_line(TEST_IRQ, true);
    let arrived = wait_count(&LEVELS, before + 1);
    delay_ms(QUIET_MS);
    let count = LEVELS.load(Ordering::Acquire) - before;
    report!(
        arrived && count == expected && !ioapic::remote_irr(pin),
        "level-triggered: {} interrupt(s) on vector {:#x} ({}), Remote IRR cleared by EOI",
        expected,
        LEVEL_VECTOR,
        count
    );
    ioapic::mask(pin);
    let before = LEVELS.load(Ordering::Acquire);
    set_irq_line(TEST_IRQ, true);
    delay_ms(QUIET_MS);
    let while_masked = LEVELS.load(Ordering::Acquire) - before;
    ioapic::unmask(pin);
    let arrived = wait_count(&LEVELS, before + 1);
    delay_ms(QUIET_MS);
    report!(
        while_masked == 0 && arrived,
        "level-triggered while masked: nothing ({}), delivered on unmask",
        while_masked
    );
    ioapic::mask(pin);
    set_irq_line(TEST_IRQ, false);

    // ISA IRQ 0 is wired to IOAPIC pin 2.
    set_irq_line(0, false);
    ioapic::route(IRQ0_PIN, Route::edge(EDGE_VECTOR, 0));
    let before = EDGES.load(Ordering::Acquire);
    set_irq_line(0, true);
    let arrived = wait_count(&EDGES, before + 1);
    set_irq_line(0, false);
    ioapic::mask(IRQ0_PIN);
    report!(arrived, "ISA IRQ 0 arrives on IOAPIC pin {}", IRQ0_PIN);

    // Another CPU.
    let last = cpu_count() - 1;
    if last == 0 {
        report_skip!("delivery to another CPU needs -smp 2 or more");
    } else {
        ioapic::route(pin, Route::edge(EDGE_VECTOR, last as u8));
        LAST_CPU.store(u32::MAX, Ordering::Relaxed);
        let before = EDGES.load(Ordering::Acquire);
        set_irq_line(TEST_IRQ, true);
        let arrived = wait_count(&EDGES, before + 1);
        set_irq_line(TEST_IRQ, false);
        let cpu = LAST_CPU.load(Ordering::Relaxed);
        report!(
            arrived && cpu == last,
            "IRQ {} routed to CPU {} arrives there (on CPU {})",
            TEST_IRQ,
            last,
            cpu as i32
        );
        ioapic::mask(pin);
    }
    ktest::report_prefix_pop();
}

fn iomem() {
    ktest::report_prefix_push("iomem");
    let base = PC_TESTDEV_IOMEM;
    let last = base + PC_TESTDEV_IOMEM_SIZE;
    // SAFETY: pc-testdev's buffer; it holds whatever the test writes.
    unsafe {
        mmio::write32(base, 0x1122_3344);
        let bytes = [0, 1, 2, 3].map(|i| mmio::read8(base + i));
        let words = [mmio::read16(base), mmio::read16(base + 2)];
        report!(
            bytes == [0x44, 0x33, 0x22, 0x11] && words == [0x3344, 0x1122],
            "a dword reads back little-endian as bytes {:02x?} and words {:04x?}",
            bytes,
            words
        );
        mmio::write8(base + 1, 0xaa);
        mmio::write16(base + 2, 0xbbcc);
        let dword = mmio::read32(base);
        report!(
            dword == 0xbbcc_aa44,
            "byte and word writes land in their bytes ({:#010x})",
            dword
        );
        mmio::write64(base + 0x1000, 0x0102_0304_0506_0708);
        let quad = mmio::read64(base + 0x1000);
        let high = mmio::read32(base + 0x1004);
        report!(
            quad == 0x0102_0304_0506_0708 && high == 0x0102_0304,
            "quadword write/read ({:#018x}, high half {:#010x})",
            quad,
            high
        );
        mmio::write32(last - 4, 0xdead_beef);
        mmio::write8(last - 5, 0x5a);
        let end = mmio::read32(last - 4);
        let before_end = mmio::read8(last - 5);
        report!(
            end == 0xdead_beef && before_end == 0x5a,
            "the last bytes of the 64 KiB buffer ({:#010x}, {:#x})",
            end,
            before_end
        );
        let past = mmio::read32(last);
        report!(
            past == 0xffff_ffff,
            "the buffer ends at {:#x}: beyond reads all-ones ({:#x})",
            last,
            past
        );

        // String copies in and out, checked byte by byte with single
        // accesses (and a byte changed in between), so that neither side
        // can pass by echoing the other.
        let page = alloc_pages(1);
        let len = 40;
        let at = base + 0x2003;
        for i in 0..len {
            mmio::write8(page + i, (i as u8).wrapping_mul(7) ^ 0x3c);
        }
        mmio::copy(at, page, len as usize);
        let arrived = (0..len).all(|i| mmio::read8(at + i) == mmio::read8(page + i));
        report!(
            arrived,
            "rep movsb of {} bytes into the buffer: every byte arrives",
            len
        );
        mmio::write8(at + 5, !mmio::read8(page + 5));
        mmio::copy(page + 0x100, at, len as usize);
        let back = (0..len).all(|i| {
            let expected = mmio::read8(page + i);
            let expected = if i == 5 { !expected } else { expected };
            mmio::read8(page + 0x100 + i) == expected
        });
        report!(back, "rep movsb of {} bytes out of the buffer", len);
    }
    ktest::report_prefix_pop();
}

/// Page `page` holds pattern `seed`?
fn page_has(page: u64, seed: u64) -> bool {
    // SAFETY: a page of RAM this test owns.
    (0..512).all(|i| unsafe { mmio::read64(page + 8 * i) } == seed ^ i)
}

fn fill_page(page: u64, seed: u64) {
    for i in 0..512 {
        // SAFETY: a page of RAM this test owns.
        unsafe { mmio::write64(page + 8 * i, seed ^ i) };
    }
}

fn flush(address: u64) {
    // SAFETY: pc-testdev drops the host mapping of that page; the guest
    // sees the same data after the re-fault.
    unsafe { x86::outl(PC_TESTDEV_FLUSH_PAGE, address as u32) };
}

/// Data that lives in the guest image (its page is flushed too).
static mut IMAGE_DATA: [u64; 4] = [0x1111, 0x2222, 0x3333, 0x4444];

fn flush_page() {
    ktest::report_prefix_push("flush page");
    let page = alloc_pages(1);
    let seed = 0x0f0f_5a5a_0000_0000;
    fill_page(page, seed);
    flush(page);
    report!(
        page_has(page, seed),
        "after flushing page {:#x}, its data is still there",
        page
    );
    fill_page(page, !seed);
    let written = page_has(page, !seed);
    flush(page + 0x123);
    report!(
        written && page_has(page, !seed),
        "it is writable after the flush, and an unaligned flush address flushes the page too"
    );
    let image = &raw mut IMAGE_DATA;
    // SAFETY: only this CPU uses IMAGE_DATA, through this pointer.
    unsafe {
        core::ptr::write_volatile(&raw mut (*image)[1], 0x5555);
        flush(image as u64);
        let data = core::ptr::read_volatile(image);
        report!(
            data == [0x1111, 0x5555, 0x3333, 0x4444],
            "a flushed page of the guest image keeps its data ({:x?})",
            data
        );
    }
    let repeated = (0..4).all(|_| {
        flush(page);
        page_has(page, !seed)
    });
    report!(repeated, "repeated flushes of the same page");
    // SAFETY: reading the flush port has no effect.
    let read = unsafe { x86::inl(PC_TESTDEV_FLUSH_PAGE) };
    report!(read == 0, "the flush port reads 0 ({:#x})", read);
    ktest::report_prefix_pop();
}
