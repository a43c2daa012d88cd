//! Console output on COM1.
//!
//! ktvmm's UART is always ready to take a byte, so there is no status polling:
//! text is collected in a buffer and written with one `rep outsb`, which the
//! VMM handles in a single exit. One lock around each whole `print!` keeps
//! lines from different CPUs apart.

use core::fmt::{self, Write};

use ktvmm_abi::ports::COM1;

use crate::spinlock::Spinlock;
use crate::x86;

/// Bytes collected before a `rep outsb`; longer output is written in pieces.
const BUFFER_SIZE: usize = 160;

/// The line being assembled. It is a static behind the console lock rather
/// than a stack array: the compiler clears fresh stack buffers with SSE
/// stores (`xorps`), which KVM's instruction emulator cannot execute.
pub(crate) struct ConsoleWriter {
    buf: [u8; BUFFER_SIZE],
    len: usize,
}

static CONSOLE: Spinlock<ConsoleWriter> = Spinlock::new(ConsoleWriter {
    buf: [0; BUFFER_SIZE],
    len: 0,
});

impl ConsoleWriter {
    fn flush(&mut self) {
        if self.len > 0 {
            write_bytes(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Write for ConsoleWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut bytes = s.as_bytes();
        loop {
            let room = BUFFER_SIZE - self.len;
            if bytes.len() <= room {
                self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
                self.len += bytes.len();
                return Ok(());
            }
            let (now, later) = bytes.split_at(room);
            self.buf[self.len..].copy_from_slice(now);
            self.len = BUFFER_SIZE;
            self.flush();
            bytes = later;
        }
    }
}

/// Writes raw bytes to the console, without taking the console lock.
fn write_bytes(bytes: &[u8]) {
    // SAFETY: COM1 is the console; writing text to it has no other effect.
    unsafe { x86::outsb(COM1, bytes) }
}

/// Runs `f` with the console locked and a writer whose output appears as one
/// piece once `f` returns.
pub(crate) fn with_console(f: impl FnOnce(&mut ConsoleWriter)) {
    let mut writer = CONSOLE.lock();
    writer.len = 0;
    f(&mut writer);
    writer.flush();
}

/// Like [`with_console`] for a CPU that is about to end the guest: if the
/// lock stays busy (its holder may be the code that just crashed), prints
/// anyway.
pub(crate) fn with_console_dying(f: impl FnOnce(&mut ConsoleWriter)) {
    let mut writer = CONSOLE.lock_or_steal(100_000);
    writer.len = 0;
    f(&mut writer);
    writer.flush();
}

/// Implementation of [`print!`](crate::print); not for direct use.
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    with_console(|w| {
        let _ = w.write_fmt(args);
    });
}

/// Prints to the console (COM1).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!($($arg)*))
    };
}

/// Prints a line to the console (COM1); the line is written in one piece
/// even when several CPUs print at once.
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::_print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
