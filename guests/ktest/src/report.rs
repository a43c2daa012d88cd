//! Test results in kvm-unit-tests' output format.
//!
//! Each result is one line, `PASS: `, `FAIL: ` or `SKIP: ` followed by the
//! current prefixes (each followed by `: `) and the message; `INFO: ` lines
//! carry no result. [`report_summary`] prints
//! `SUMMARY: N tests[, X unexpected failures][, Y skipped]` and returns the
//! exit code. Tools that parse kvm-unit-tests logs read these lines, so the
//! format must not drift.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU32, Ordering};

use crate::console;
use crate::spinlock::Spinlock;

/// Exit code for a test where everything was skipped (automake's SKIP).
pub const EXIT_SKIP: u8 = 77;

static TESTS: AtomicU32 = AtomicU32::new(0);
static FAILURES: AtomicU32 = AtomicU32::new(0);
static SKIPPED: AtomicU32 = AtomicU32::new(0);

const PREFIX_CAPACITY: usize = 128;
const PREFIX_DEPTH: usize = 8;

/// The pushed prefixes, each stored as "name: ".
struct Prefixes {
    text: [u8; PREFIX_CAPACITY],
    len: usize,
    /// `len` before each push, to pop back to.
    marks: [usize; PREFIX_DEPTH],
    depth: usize,
}

impl Prefixes {
    fn as_str(&self) -> &str {
        // SAFETY: pushes only append whole `&str`s (plus ": ") and pops cut
        // back to where a push started, so the bytes are always UTF-8.
        // Validating them on every report line would cost emulated
        // instructions for nothing.
        unsafe { core::str::from_utf8_unchecked(&self.text[..self.len]) }
    }
}

static PREFIXES: Spinlock<Prefixes> = Spinlock::new(Prefixes {
    text: [0; PREFIX_CAPACITY],
    len: 0,
    marks: [0; PREFIX_DEPTH],
    depth: 0,
});

/// Adds `prefix` to every following report line (until popped). Prefixes
/// are global, shared by all CPUs, as in kvm-unit-tests.
///
/// # Panics
///
/// If more than 8 prefixes are pushed or they exceed 128 bytes.
pub fn report_prefix_push(prefix: &str) {
    let mut prefixes = PREFIXES.lock();
    let start = prefixes.len;
    let end = start + prefix.len() + 2;
    assert!(
        prefixes.depth < PREFIX_DEPTH && end <= PREFIX_CAPACITY,
        "report prefixes too deep or too long"
    );
    prefixes.text[start..end - 2].copy_from_slice(prefix.as_bytes());
    prefixes.text[end - 2..end].copy_from_slice(b": ");
    let depth = prefixes.depth;
    prefixes.marks[depth] = start;
    prefixes.depth += 1;
    prefixes.len = end;
}

/// Removes the most recently pushed prefix.
pub fn report_prefix_pop() {
    let mut prefixes = PREFIXES.lock();
    if prefixes.depth > 0 {
        prefixes.depth -= 1;
        prefixes.len = prefixes.marks[prefixes.depth];
    }
}

fn print_line(tag: &str, message: fmt::Arguments<'_>) {
    let prefixes = PREFIXES.lock();
    console::with_console(|w| {
        let _ = w.write_str(tag);
        let _ = w.write_str(prefixes.as_str());
        let _ = w.write_fmt(message);
        let _ = w.write_str("\n");
    });
}

/// Records one test result and prints its `PASS:`/`FAIL:` line; returns
/// `pass`. Usually called through [`report!`](crate::report!).
pub fn report(pass: bool, message: fmt::Arguments<'_>) -> bool {
    TESTS.fetch_add(1, Ordering::Relaxed);
    if !pass {
        FAILURES.fetch_add(1, Ordering::Relaxed);
    }
    print_line(if pass { "PASS: " } else { "FAIL: " }, message);
    pass
}

/// Records a skipped test and prints its `SKIP:` line. Usually called
/// through [`report_skip!`](crate::report_skip!).
pub fn report_skip(message: fmt::Arguments<'_>) {
    TESTS.fetch_add(1, Ordering::Relaxed);
    SKIPPED.fetch_add(1, Ordering::Relaxed);
    print_line("SKIP: ", message);
}

/// Prints an `INFO:` line. Usually called through
/// [`report_info!`](crate::report_info!).
pub fn report_info(message: fmt::Arguments<'_>) {
    print_line("INFO: ", message);
}

/// Prints the `SUMMARY:` line and returns the exit code for `main`: 1 if
/// anything failed, 77 if every test (and at least one) was skipped, else 0.
pub fn report_summary() -> u8 {
    let tests = TESTS.load(Ordering::Relaxed);
    let failures = FAILURES.load(Ordering::Relaxed);
    let skipped = SKIPPED.load(Ordering::Relaxed);
    console::with_console(|w| {
        let _ = write!(w, "SUMMARY: {tests} tests");
        if failures > 0 {
            let _ = write!(w, ", {failures} unexpected failures");
        }
        if skipped > 0 {
            let _ = write!(w, ", {skipped} skipped");
        }
        let _ = w.write_str("\n");
    });
    if failures > 0 {
        1
    } else if skipped > 0 && skipped == tests {
        EXIT_SKIP
    } else {
        0
    }
}

/// Reports one test result: `report!(condition, "format", args...)` prints
/// `PASS: <prefixes>message` or `FAIL: ...` and evaluates to `condition`.
#[macro_export]
macro_rules! report {
    ($pass:expr, $($arg:tt)+) => {
        $crate::report::report($pass, format_args!($($arg)+))
    };
}

/// Reports a skipped test: `SKIP: <prefixes>message`.
#[macro_export]
macro_rules! report_skip {
    ($($arg:tt)+) => {
        $crate::report::report_skip(format_args!($($arg)+))
    };
}

/// Prints `INFO: <prefixes>message`; not a test result.
#[macro_export]
macro_rules! report_info {
    ($($arg:tt)+) => {
        $crate::report::report_info(format_args!($($arg)+))
    };
}
