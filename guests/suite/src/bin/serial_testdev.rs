//! The postfix serial testdev on COM2 (port 0x2f8): writing the text
//! `"<N>q"` ends the VM with exit code N, as kvm-unit-tests' `exit()` does
//! through it on architectures without isa-debug-exit.
//!
//! Arguments: `code=N` (default 0) is the exit code asked for; `mode=`
//! chooses how the text is written:
//! - `string` (default): `"Nq"` in one `rep outsb`;
//! - `bytes`: one `outb` per byte;
//! - `split`: `"N"` and `"q"` in two writes, with a liveness line between
//!   (a partial token waits for more bytes);
//! - `noise`: `"  12x 3y "` first (unknown commands, consumed and
//!   ignored), then `" N q"` with blanks around the argument.
//!
//! If the VM is still running 100 ms after the write, the guest reports a
//! failure and exits through isa-debug-exit with 1 (so `code=1` alone does
//! not prove the device works: check the output for the FAIL line).
//!
//! Run: `ktvmm run serial-testdev -append "code=77"` (exit code 77).
#![no_std]
#![no_main]

use ktest::abi::ports::COM2;
use ktest::{delay_ms, report, report_info, x86};

ktest::main!(main);

/// Room for "<u32>q" and the noise.
const TEXT_MAX: usize = 32;

/// A small text buffer (no allocator).
struct Text {
    buf: [u8; TEXT_MAX],
    len: usize,
}

impl core::fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        if end > TEXT_MAX {
            return Err(core::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn write_string(bytes: &[u8]) {
    // SAFETY: COM2 is the serial testdev; text is its input.
    unsafe { x86::outsb(COM2, bytes) }
}

fn write_bytes(bytes: &[u8]) {
    for &byte in bytes {
        // SAFETY: as above.
        unsafe { x86::outb(COM2, byte) }
    }
}

fn main() -> u8 {
    use core::fmt::Write;
    ktest::report_prefix_push("serial-testdev");
    let code = match ktest::arg_value("code").map(str::parse::<u32>) {
        None => 0,
        Some(Ok(code)) => code,
        Some(Err(_)) => {
            report!(false, "code=N takes a decimal number");
            return ktest::report_summary();
        }
    };
    let mode = ktest::arg_value("mode").unwrap_or("string");
    let mut text = Text {
        buf: [0; TEXT_MAX],
        len: 0,
    };
    let _ = write!(text, "{code}");
    let number = &text.buf[..text.len];
    report_info!("asking COM2 for exit code {} ({} mode)", code, mode);
    match mode {
        "string" => {
            let _ = text.write_str("q");
            write_string(&text.buf[..text.len]);
        }
        "bytes" => {
            let _ = text.write_str("q");
            write_bytes(&text.buf[..text.len]);
        }
        "split" => {
            write_string(number);
            delay_ms(1);
            report_info!("argument written, the VM still runs");
            write_string(b"q");
        }
        "noise" => {
            write_string(b"  12x 3y ");
            write_string(b" ");
            write_string(number);
            write_string(b" q");
        }
        other => {
            report!(
                false,
                "unknown mode '{}' (string, bytes, split or noise)",
                other
            );
            return ktest::report_summary();
        }
    }
    delay_ms(100);
    report!(false, "the VM ends after \"{}q\" is written to COM2", code);
    ktest::report_prefix_pop();
    ktest::report_summary()
}
