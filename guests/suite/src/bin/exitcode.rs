//! Exits with a code chosen on the command line, to test how the VMM and the
//! runner pass exit codes through:
//!
//! - no argument or `pass`: one passing report, exit 0 (the smallest guest:
//!   the benchmark boots this one, so the path is kept minimal);
//! - `fail`: one failing report, exit 1;
//! - `skip`: one skipped report, exit 77;
//! - `code=N`: `exit(N)` directly, without a summary;
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
