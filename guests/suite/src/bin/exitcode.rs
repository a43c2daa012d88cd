//! Exits with a code chosen on the command line, to test how the VMM and the
//! runner pass exit codes through:
//!
//! - no argument or `pass`: one passing report, exit 0 (the smallest guest:
//!   the benchmark boots this one, so the path is kept minimal);
//! - `fail`: one failing report, exit 1;
//! - `skip`: one skipped report, exit 77;
//! - `code=N`: `exit(N)` directly, without a summary;
//! - `io=N`: N writes to port 0x80 (N exits to the VMM, which KVM counts),
//!   then one passing report: a workload of a known size for tests of
//!   KVM's counters;
//! - `exception`: an unexpected #UD, which ktest reports and exits 1 for;
//! - `panic`: a Rust panic, which ktest reports and exits 1 for.
#![no_std]
#![no_main]

use ktest::{report, report_skip};

ktest::main!(main);

fn main() -> u8 {
    match ktest::args().next() {
        None | Some("pass") => {
            report!(true, "exitcode: pass");
        }
        Some("fail") => {
            report!(false, "exitcode: fail (requested)");
        }
        Some("skip") => report_skip!("exitcode: skip (requested)"),
        Some("exception") => {
            // SAFETY: ud2 only raises #UD, which ends the test.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) }
        }
        Some("panic") => panic!("exitcode: panic (requested)"),
        Some(arg) if arg.starts_with("io=") => match arg[3..].parse::<u32>() {
            Ok(n) => {
                for _ in 0..n {
                    // SAFETY: port 0x80 is the POST port, which ignores writes.
                    unsafe { ktest::x86::outb(0x80, 0) };
                }
                report!(true, "exitcode: {} writes to port 0x80", n);
            }
            Err(_) => {
                report!(false, "exitcode: io=N wants a number, not '{}'", arg);
            }
        },
        Some(arg) => match arg.strip_prefix("code=").map(str::parse::<u32>) {
            Some(Ok(code)) => ktest::exit(code),
            _ => {
                report!(
                    false,
                    "exitcode: unknown argument '{}' (want pass, fail, skip or code=N)",
                    arg
                );
            }
        },
    }
    ktest::report_summary()
}
