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
//! digits or blanks in a row) makes QEMU's write loop spin forever, whereas
//! ktvmm drops the buffered bytes and goes on. Arguments wrap modulo 2^32
//! (QEMU's `int` overflows).

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
        .skip_while(|(_, b)| b.is_ascii_whitespace());
    let mut arg: u32 = 0;
    let (mut at, mut c) = rest.next()?;
    while c.is_ascii_digit() {
        arg = arg.wrapping_mul(10).wrapping_add(u32::from(c - b'0'));
        (at, c) = rest.next()?;
    }
    while c.is_ascii_whitespace() {
        (at, c) = rest.next()?;
    }
    Some(Packet {
        len: at + 1,
        exit: (c == b'q').then_some(arg),
    })
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
}
