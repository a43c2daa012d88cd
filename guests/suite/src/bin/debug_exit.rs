//! isa-debug-exit (ports 0xf4-0xf7): a write ends the VM, and ktvmm passes
//! the value through as the exit code (QEMU would exit with value * 2 + 1).
//!
//! Arguments: `code=N` (default 0), `width=1|2|4` (default 4: `outb`,
//! `outw` or `outl`), `port=0xf4`..`0xf7` (default 0xf4; the access must
//! end by 0xf7, so `width=2` goes up to 0xf6). Before the write
//! the guest checks that a read of the port returns 0. If the VM is still
//! running 100 ms after the write, the guest reports a failure and exits
//! with 1 (so `code=1` alone does not prove the write worked: check the
//! output for the FAIL line).
//!
//! Run: `ktvmm run debug-exit -append "code=77 width=2"` (exit code 77).
#![no_std]
#![no_main]

use ktest::abi::ports::DEBUG_EXIT;
use ktest::{delay_ms, report, report_info, x86};

ktest::main!(main);

fn number(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn main() -> u8 {
    ktest::report_prefix_push("debug-exit");
    let code = ktest::arg_value("code").map_or(Some(0), number);
    let width = ktest::arg_value("width").map_or(Some(4), number);
    let port = ktest::arg_value("port").map_or(Some(u32::from(DEBUG_EXIT)), number);
    let (Some(code), Some(width), Some(port)) = (code, width, port) else {
        report!(
            false,
            "code=N, width=1|2|4 and port=P take numbers (0x for hex)"
        );
        return ktest::report_summary();
    };
    // The whole access inside the device's 4 ports.
    let port_ok = port >= u32::from(DEBUG_EXIT) && port + width <= u32::from(DEBUG_EXIT) + 4;
    let fits = match width {
        1 => code <= 0xff,
        2 => code <= 0xffff,
        _ => true,
    };
    if !matches!(width, 1 | 2 | 4) || !port_ok || !fits {
        report!(
            false,
            "width {} is 1, 2 or 4, {} bytes at port {:#x} lie within 0xf4-0xf7, code {} fits the width",
            width,
            width,
            port,
            code
        );
        return ktest::report_summary();
    }
    let port = port as u16;
    // SAFETY: reading isa-debug-exit has no effect.
    let read = unsafe { x86::inb(port) };
    if !report!(
        read == 0,
        "a read of port {:#x} returns 0 ({:#x})",
        port,
        read
    ) {
        return ktest::report_summary();
    }
    report_info!("writing {} ({} bytes) to port {:#x}", code, width, port);
    // SAFETY: the write ends the VM, which is the point.
    unsafe {
        match width {
            1 => x86::outb(port, code as u8),
            2 => x86::outw(port, code as u16),
            _ => x86::outl(port, code),
        }
    }
    delay_ms(100);
    report!(false, "the VM ends at the write");
    ktest::report_prefix_pop();
    ktest::report_summary()
}
