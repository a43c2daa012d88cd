//! The postfix serial testdev: an architecture-neutral exit channel.
//!
//! The guest writes commands as text to a UART: optional whitespace, a
//! decimal argument, optional whitespace, one command character. `q` ends the
//! VM with the argument as exit code (kvm-unit-tests sends `"%dq"`). Unknown
//! commands are consumed and ignored; an incomplete packet waits for more
//! bytes. As in QEMU's chardev/testdev.c, at most 32 bytes are buffered.
//!
//! Where ktvmm differs from QEMU: QEMU exits with `(arg << 1) | 1`, ktvmm
//! with `arg` itself; and a full buffer that holds no complete packet (32
//! digits or blanks in a row) makes QEMU's write loop spin forever (it copies
//! 0 bytes into the full buffer and retries), whereas ktvmm drops the
//! buffered bytes and goes on. A packet of exactly 32 bytes, command included,
//! still works, as in QEMU. Arguments wrap modulo 2^32: QEMU's `int` does the
//! same (QEMU builds with `-fwrapv`), so the bits of the argument agree.
//! "Whitespace" is C's `isspace` in the C locale, vertical tab included, and
//! the command is whatever byte follows the blanks, a digit too: `"1 2q"` is
//! command `2` with argument 1, then `q` with argument 0.

/// Bytes buffered at most.
pub const BUFFER_SIZE: usize = 32;

/// The parser state: bytes received but not yet part of a complete packet.
#[derive(Debug, Default)]
pub struct Postfix {
    buffer: Vec<u8>,
}

/// A complete packet: how many bytes it took, and the exit it asks for.
struct Packet {
    len: usize,
    exit: Option<u32>,
}

impl Postfix {
    /// An empty parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one byte the guest transmitted; returns the exit code when it
    /// completed a `q` command.
    pub fn push(&mut self, byte: u8) -> Option<u32> {
        self.buffer.push(byte);
        let mut exit = None;
        while let Some(packet) = parse(&self.buffer) {
            self.buffer.drain(..packet.len);
            exit = exit.or(packet.exit);
        }
        if self.buffer.len() >= BUFFER_SIZE {
            self.buffer.clear();
        }
        exit
    }
}

/// The first complete packet in `bytes`, or `None` when more bytes are needed.
fn parse(bytes: &[u8]) -> Option<Packet> {
    let mut rest = bytes
        .iter()
        .copied()
        .enumerate()
        .skip_while(|&(_, b)| is_space(b));
    let mut arg: u32 = 0;
    let (mut at, mut c) = rest.next()?;
    while c.is_ascii_digit() {
        arg = arg.wrapping_mul(10).wrapping_add(u32::from(c - b'0'));
        (at, c) = rest.next()?;
    }
    while is_space(c) {
        (at, c) = rest.next()?;
    }
    Some(Packet {
        len: at + 1,
        exit: (c == b'q').then_some(arg),
    })
}

/// C's `isspace` in the C locale (Rust's `is_ascii_whitespace` leaves out
/// the vertical tab).
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(parser: &mut Postfix, text: &[u8]) -> Vec<u32> {
        text.iter().filter_map(|&b| parser.push(b)).collect()
    }

    #[test]
    fn kvm_unit_tests_exit_packets() {
        for (text, code) in [
            (&b"0q"[..], 0),
            (b"1q", 1),
            (b"77q", 77),
            (b"  12 \n q", 12),
        ] {
            assert_eq!(feed(&mut Postfix::new(), text), vec![code], "{text:?}");
        }
    }

    #[test]
    fn a_partial_packet_waits_for_more_bytes() {
        let mut parser = Postfix::new();
        assert!(feed(&mut parser, b"4").is_empty());
        assert!(feed(&mut parser, b"2 ").is_empty());
        assert_eq!(feed(&mut parser, b"q"), vec![42]);
    }

    #[test]
    fn unknown_commands_are_consumed_and_ignored() {
        let mut parser = Postfix::new();
        assert!(feed(&mut parser, b"5x 7y z").is_empty());
        assert!(parser.buffer.is_empty());
        assert_eq!(feed(&mut parser, b"3q"), vec![3]);
    }

    #[test]
    fn a_missing_argument_is_zero() {
        assert_eq!(feed(&mut Postfix::new(), b"q"), vec![0]);
    }

    #[test]
    fn several_commands_in_one_stream() {
        assert_eq!(feed(&mut Postfix::new(), b"1x 2q 3q"), vec![2, 3]);
    }

    #[test]
    fn huge_numbers_wrap_instead_of_panicking() {
        let digits = b"99999999999999999999q"; // 20 digits: fits the buffer
        let expected = (0..20).fold(0u32, |acc, _| acc.wrapping_mul(10).wrapping_add(9));
        assert_eq!(feed(&mut Postfix::new(), digits), vec![expected]);
    }

    #[test]
    fn a_full_buffer_without_a_packet_is_dropped() {
        let mut parser = Postfix::new();
        assert!(feed(&mut parser, &[b'7'; BUFFER_SIZE]).is_empty());
        assert!(
            parser.buffer.is_empty(),
            "32 digits and no command: dropped"
        );
        assert!(feed(&mut parser, &[b' '; 100]).is_empty());
        // The stream recovers.
        assert_eq!(feed(&mut parser, b"9q"), vec![9]);
    }

    #[test]
    fn whitespace_is_c_isspace() {
        assert_eq!(feed(&mut Postfix::new(), b"\x0b\x0c\r\t 8\x0b q"), vec![8]);
        // A byte that is not C whitespace is a command, even a NUL.
        let mut parser = Postfix::new();
        assert!(feed(&mut parser, b"\x006").is_empty());
        assert_eq!(feed(&mut parser, b"q"), vec![6]);
    }

    #[test]
    fn a_digit_after_blanks_is_a_command() {
        // QEMU reads "1 2" as command '2' with argument 1, then "q" alone.
        assert_eq!(feed(&mut Postfix::new(), b"1 2q"), vec![0]);
    }

    #[test]
    fn a_32_byte_packet_fits_and_a_33rd_byte_starts_afresh() {
        let mut packet = vec![b' '; BUFFER_SIZE - 3];
        packet.extend_from_slice(b"12q");
        assert_eq!(packet.len(), BUFFER_SIZE);
        assert_eq!(feed(&mut Postfix::new(), &packet), vec![12]);

        let mut parser = Postfix::new();
        let mut long = vec![b' '; BUFFER_SIZE - 2];
        long.extend_from_slice(b"12");
        assert!(feed(&mut parser, &long).is_empty(), "32 bytes, no command");
        assert!(parser.buffer.is_empty());
        // The command that would have been the 33rd byte of that packet now
        // stands alone: argument 0.
        assert_eq!(feed(&mut parser, b"q"), vec![0]);
    }

    #[test]
    fn wrapping_matches_32_bit_arithmetic() {
        assert_eq!(feed(&mut Postfix::new(), b"4294967296q"), vec![0]);
        assert_eq!(feed(&mut Postfix::new(), b"4294967297q"), vec![1]);
        assert_eq!(
            feed(&mut Postfix::new(), b"4294967295q"),
            vec![u32::MAX],
            "all 32 bits survive"
        );
    }

    #[test]
    fn any_byte_stream_is_harmless() {
        let mut parser = Postfix::new();
        let noise: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        feed(&mut parser, &noise);
        assert!(parser.buffer.len() < BUFFER_SIZE);
    }
}
