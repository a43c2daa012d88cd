//! The COM1 console: a 16550 UART (vm-superio) whose output is the guest's
//! console, and whose interrupt is an irqfd on its ISA line.

use std::io::{self, Write};

use ktvmm_testdevs::postfix::Postfix;
use ktvmm_testdevs::{Action, BusDevice};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Width of a UART's port window.
pub const UART_PORTS: u64 = 8;

/// An interrupt line backed by an eventfd that KVM listens on (irqfd).
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Console output, written a line at a time.
///
/// vm-superio flushes after every byte; forwarding that would cost one
/// system call per character, so `flush` only passes on complete lines and
/// [`Console::finish`] writes whatever is left when the VM ends.
pub struct Console {
    out: Box<dyn Write + Send>,
    pending: Vec<u8>,
}

impl Console {
    /// A console that writes to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            pending: Vec::new(),
        }
    }

    /// Writes out a last, unterminated line, ended: whatever ktvmm says
    /// next ("guest timed out ...") starts a line of its own.
    pub fn finish(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.pending.push(b'\n');
        }
        self.out.write_all(&self.pending)?;
        self.pending.clear();
        self.out.flush()
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(last_newline) = self.pending.iter().rposition(|&b| b == b'\n') {
            self.out.write_all(&self.pending[..=last_newline])?;
            self.out.flush()?;
            self.pending.drain(..=last_newline);
        }
        Ok(())
    }
}

/// Where a UART's transmitted bytes go.
pub trait UartOutput: Write + Send {
    /// Whether the bytes so far asked to end the VM, with which code.
    fn take_exit(&mut self) -> Option<u32> {
        None
    }
}

impl UartOutput for Console {}

/// The postfix serial testdev behind a UART: transmitted bytes are commands.
#[derive(Debug, Default)]
pub struct PostfixOutput {
    parser: Postfix,
    exit: Option<u32>,
}

impl Write for PostfixOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &byte in buf {
            if let Some(code) = self.parser.push(byte) {
                self.exit = self.exit.or(Some(code));
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl UartOutput for PostfixOutput {
    fn take_exit(&mut self) -> Option<u32> {
        self.exit.take()
    }
}

/// A UART on the port bus.
pub struct SerialDevice<W: UartOutput = Console> {
    uart: Serial<IrqLine, vm_superio::serial::NoEvents, W>,
}

impl<W: UartOutput> SerialDevice<W> {
    /// A UART that raises `irq` and transmits to `output`.
    pub fn new(irq: IrqLine, output: W) -> Self {
        Self {
            uart: Serial::new(irq, output),
        }
    }
}

impl SerialDevice<Console> {
    /// Writes out what the guest printed and has not been written yet.
    pub fn finish(&mut self) -> io::Result<()> {
        self.uart.writer_mut().finish()
    }
}

impl<W: UartOutput> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // UART registers are byte-wide; wider accesses see the byte in lane 0.
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        match self.uart.write(offset as u8, data[0]) {
            // A console that cannot be written (stdout closed: `| head`, or
            // a full disk) ends the run once, instead of a warning per byte
            // while the guest goes on.
            Err(vm_superio::serial::Error::IOError(e)) => return Action::Stop(console_failure(&e)),
            Err(e) => log::warn!("serial: {e}"),
            Ok(()) => {}
        }
        match self.uart.writer_mut().take_exit() {
            Some(code) => Action::Exit(code),
            None => Action::Continue,
        }
    }
}

/// Why the console stopped, in a user's words.
fn console_failure(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPIPE) => "the guest's console output was closed (a pipe whose reader exited)",
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => {
            "the guest's console output is full (no space left for it)"
        }
        _ => "the guest's console could not be written",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_goes_out_a_line_at_a_time_and_the_rest_at_finish() {
        let out = Shared::default();
        let irq = IrqLine(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut dev = SerialDevice::new(irq, Console::new(Box::new(out.clone())));
        for &b in b"hi\nthere" {
            assert_eq!(dev.write(0, &[b]), Action::Continue);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        dev.finish().unwrap();
        // The last line is ended, so that "ktvmm: guest timed out" after
        // it is not glued to the guest's text.
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\nthere\n");
    }

    #[test]
    fn the_postfix_testdev_ends_the_vm_on_q() {
        let irq = IrqLine(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut dev = SerialDevice::new(irq, PostfixOutput::default());
        for &b in b"77" {
            assert_eq!(dev.write(0, &[b]), Action::Continue);
        }
        assert_eq!(dev.write(0, b"q"), Action::Exit(77));
        // Register writes other than THR transmit nothing.
        assert_eq!(dev.write(1, b"q"), Action::Continue);
    }
}
