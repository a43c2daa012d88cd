//! The debugger's connection as `gdbstub` sees it: only whole, well-formed
//! packets. `gdbstub` ends a session on any byte it did not expect (a
//! stray character, a `-`, a bad checksum, an oversized packet), and its
//! `m` handler reads on, chunk after chunk, for as long as the length a
//! client gives (`m0,ffffffffffffffff`). The wire in front of it frames
//! packets itself, bounded: it acknowledges and asks for retransmission as
//! the protocol says, drops what is not a packet, refuses what is too long,
//! clamps reads to what one reply holds, and answers QEMU's physical-memory
//! packets. When `gdbstub` still gives up on a packet, the session goes on
//! with a new stub: [`Wire::recover`] answers that packet with an error and
//! replays the negotiation (features, no-ack mode, selected threads) to the
//! new one with its replies withheld.

use std::collections::VecDeque;
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gdbstub::conn::{Connection, ConnectionExt};

/// `gdbstub`'s packet buffer (its default), which its `qSupported` reply
/// announces as `PacketSize`: the most a well-behaved GDB sends.
pub const PACKET_SIZE: usize = 4096;
/// The longest `m` read that fits one reply (two hex digits a byte).
const MAX_READ: u64 = (PACKET_SIZE as u64 - 64) / 2;

struct Queued {
    left: usize,
    body: Vec<u8>,
    replay: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// Between packets.
    Idle,
    /// After `$`.
    Body,
    /// After `#`: the first checksum digit.
    Sum1,
    /// The second checksum digit.
    Sum2,
}

/// One debugger connection, between the socket and `gdbstub`.
pub struct Wire {
    stream: TcpStream,
    frame: Frame,
    body: Vec<u8>,
    /// The packet being received grew past PACKET_SIZE: it is refused.
    oversized: bool,
    /// The checksum of the whole body, kept ones too.
    running: u8,
    sum: [u8; 2],
    /// Bytes for `gdbstub`: whole packets and interrupts.
    inbound: VecDeque<u8>,
    /// What `inbound` holds, in order: each packet's bytes not yet read,
    /// its body, and whether it is a replay.
    queued: VecDeque<Queued>,
    /// The body of the packet `gdbstub` read last (the one it handles).
    current: Vec<u8>,
    /// `gdbstub`'s reply being written, sent whole on flush.
    outbound: Vec<u8>,
    /// The last reply sent, for a `-`.
    last_reply: Vec<u8>,
    /// The debugger still acknowledges packets (no `QStartNoAckMode` yet).
    acks: bool,
    /// Replies of replayed packets to withhold.
    withheld: usize,
    /// What a new stub must be told again: `qSupported`, `Hg`, `Hc`.
    negotiated: Vec<Vec<u8>>,
    /// QEMU's `Qqemu.PhyMemMode`: memory addresses are guest-physical.
    physical: Arc<AtomicBool>,
}

fn checksum(body: &[u8]) -> u8 {
    body.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn packet(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(b'$');
    out.extend_from_slice(body);
    out.extend_from_slice(format!("#{:02x}", checksum(body)).as_bytes());
    out
}

fn hex_value(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

impl Wire {
    /// A wire over `stream`; `physical` is the stub's physical-address mode.
    pub fn new(stream: TcpStream, physical: Arc<AtomicBool>) -> Self {
        let mut wire = Wire {
            stream,
            frame: Frame::Idle,
            body: Vec::new(),
            oversized: false,
            running: 0,
            sum: [0; 2],
            inbound: VecDeque::new(),
            queued: VecDeque::new(),
            current: Vec::new(),
            outbound: Vec::new(),
            last_reply: Vec::new(),
            acks: true,
            withheld: 0,
            negotiated: Vec::new(),
            physical,
        };
        wire.start_stub();
        wire
    }

    /// Before a new stub reads: it never acknowledges (the wire does, as
    /// long as the debugger wants it), and it hears the negotiation again.
    fn start_stub(&mut self) {
        let mut replay = vec![b"QStartNoAckMode".to_vec()];
        replay.extend(self.negotiated.iter().cloned());
        // Ahead of what the debugger sent meanwhile.
        for body in replay.into_iter().rev() {
            let bytes = packet(&body);
            for &b in bytes.iter().rev() {
                self.inbound.push_front(b);
            }
            self.queued.push_front(Queued {
                left: bytes.len(),
                body,
                replay: true,
            });
            self.withheld += 1;
        }
    }

    /// Queues bytes for `gdbstub`.
    fn deliver(&mut self, bytes: Vec<u8>, body: Vec<u8>) {
        self.inbound.extend(&bytes);
        self.queued.push_back(Queued {
            left: bytes.len(),
            body,
            replay: false,
        });
    }

    /// The next byte for `gdbstub`, noting which packet it ends.
    fn next_inbound(&mut self) -> Option<u8> {
        let byte = self.inbound.pop_front()?;
        if let Some(front) = self.queued.front_mut() {
            front.left = front.left.saturating_sub(1);
            if front.left == 0 {
                self.current = self.queued.pop_front().map(|q| q.body).unwrap_or_default();
            }
        }
        Some(byte)
    }

    /// After `gdbstub` gave up on the packet it was handling: that packet
    /// gets an error reply, and the next stub starts where this one was,
    /// with the packets the debugger sent since. A negotiation packet that
    /// made a stub give up is not replayed (it would again, for ever).
    pub fn recover(&mut self) {
        let failed = std::mem::take(&mut self.current);
        if self.withheld > 0 {
            // A replay failed: forget the negotiation, and the rest of it.
            self.negotiated.clear();
            while self.queued.front().is_some_and(|q| q.replay) {
                if let Some(q) = self.queued.pop_front() {
                    self.inbound.drain(..q.left.min(self.inbound.len()));
                }
            }
        } else {
            self.negotiated.retain(|p| *p != failed);
        }
        self.outbound.clear();
        self.withheld = 0;
        // E01: EPERM, as QEMU answers what it cannot do.
        let _ = self.send(&packet(b"E01"));
        self.start_stub();
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        io::Write::write_all(&mut self.stream, bytes)?;
        io::Write::flush(&mut self.stream)
    }

    fn reply(&mut self, body: &[u8]) -> io::Result<()> {
        let reply = packet(body);
        self.send(&reply)?;
        self.last_reply = reply;
        Ok(())
    }

    /// Takes bytes from the debugger.
    fn take(&mut self, bytes: &[u8]) -> io::Result<()> {
        for &byte in bytes {
            self.take_byte(byte)?;
        }
        Ok(())
    }

    fn take_byte(&mut self, byte: u8) -> io::Result<()> {
        match self.frame {
            Frame::Idle => match byte {
                b'$' => {
                    self.frame = Frame::Body;
                    self.body.clear();
                    self.oversized = false;
                    self.running = 0;
                }
                // Ctrl-C.
                0x03 => self.deliver(vec![byte], Vec::new()),
                b'-' if self.acks => {
                    let again = self.last_reply.clone();
                    self.send(&again)?;
                }
                // Acknowledgements, and noise between packets.
                _ => {}
            },
            Frame::Body => match byte {
                b'#' => self.frame = Frame::Sum1,
                // A packet cut short: start again at the new one.
                b'$' => {
                    self.body.clear();
                    self.oversized = false;
                    self.running = 0;
                }
                _ => {
                    self.running = self.running.wrapping_add(byte);
                    // Room for `$`, `#` and the checksum in gdbstub's buffer.
                    if self.body.len() < PACKET_SIZE - 4 {
                        self.body.push(byte);
                    } else {
                        self.oversized = true;
                    }
                }
            },
            Frame::Sum1 => {
                self.sum[0] = byte;
                self.frame = Frame::Sum2;
            }
            Frame::Sum2 => {
                self.sum[1] = byte;
                self.frame = Frame::Idle;
                self.packet_done()?;
            }
        }
        Ok(())
    }

    fn packet_done(&mut self) -> io::Result<()> {
        let intact = hex_value(&self.sum).is_some_and(|s| s == u64::from(self.running));
        if !intact {
            log::debug!("gdb: a packet with a bad checksum");
            return if self.acks {
                self.send(b"-")
            } else {
                self.reply(b"E01")
            };
        }
        if self.acks {
            self.send(b"+")?;
        }
        let body = std::mem::take(&mut self.body);
        if self.oversized {
            log::debug!("gdb: a packet longer than {PACKET_SIZE} bytes");
            // E07: E2BIG.
            return self.reply(b"E07");
        }
        match body.as_slice() {
            b"Qqemu.PhyMemMode:1" | b"Qqemu.PhyMemMode:0" => {
                self.physical.store(body.ends_with(b"1"), Ordering::Relaxed);
                return self.reply(b"OK");
            }
            b"qqemu.PhyMemMode" => {
                let mode = if self.physical.load(Ordering::Relaxed) {
                    b"1"
                } else {
                    b"0"
                };
                return self.reply(mode);
            }
            b"QStartNoAckMode" => {
                // The stub is in no-ack mode already; its OK is the
                // debugger's last acknowledged reply.
                self.acks = false;
            }
            _ => {}
        }
        if body.starts_with(b"qSupported") {
            self.negotiated.retain(|p| !p.starts_with(b"qSupported"));
            self.negotiated.push(body.clone());
        }
        if let Some(which @ (b'g' | b'c')) = body.strip_prefix(b"H").and_then(|r| r.first()) {
            self.negotiated
                .retain(|p| !(p.len() > 1 && p[0] == b'H' && p[1] == *which));
            self.negotiated.push(body.clone());
        }
        let body = clamp_read(body);
        self.deliver(packet(&body), body);
        Ok(())
    }

    /// Reads what the socket has without waiting.
    fn poll(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 1024];
        self.stream.set_nonblocking(true)?;
        let read = io::Read::read(&mut self.stream, &mut buf);
        self.stream.set_nonblocking(false)?;
        match read {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => self.take(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The socket, for the stub's wait to sleep on.
impl std::os::fd::AsRawFd for Wire {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }
}

/// `mADDR,LEN` with LEN cut to what one reply holds: GDB never asks for
/// more, and `gdbstub` would loop over any length it is given.
fn clamp_read(body: Vec<u8>) -> Vec<u8> {
    let Some(args) = body.strip_prefix(b"m") else {
        return body;
    };
    let Some(comma) = args.iter().position(|&b| b == b',') else {
        return body;
    };
    let (addr, len) = (&args[..comma], &args[comma + 1..]);
    // Leading zeros do not make a length short.
    let digits = len
        .iter()
        .position(|&b| b != b'0')
        .map_or(&len[len.len()..], |i| &len[i..]);
    let too_long = !digits.is_empty()
        && digits.iter().all(u8::is_ascii_hexdigit)
        && hex_value(digits).is_none_or(|n| n > MAX_READ);
    match hex_value(addr) {
        Some(_) if too_long => {
            let mut clamped = b"m".to_vec();
            clamped.extend_from_slice(addr);
            clamped.extend_from_slice(format!(",{MAX_READ:x}").as_bytes());
            clamped
        }
        _ => body,
    }
}

/// `gdbstub` talks to the wire through this.
impl Connection for &mut Wire {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.outbound.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.outbound.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let reply = std::mem::take(&mut self.outbound);
        if self.withheld > 0 {
            self.withheld -= 1;
            return Ok(());
        }
        self.send(&reply)?;
        self.last_reply = reply;
        Ok(())
    }
}

impl ConnectionExt for &mut Wire {
    fn read(&mut self) -> io::Result<u8> {
        let mut buf = [0u8; 1024];
        loop {
            if let Some(byte) = self.next_inbound() {
                return Ok(byte);
            }
            let n = io::Read::read(&mut self.stream, &mut buf)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.take(&buf[..n])?;
        }
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        if self.inbound.is_empty() {
            self.poll()?;
        }
        Ok(self.inbound.front().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_clamped_to_one_reply() {
        assert_eq!(
            clamp_read(b"m0,ffffffffffffffff".to_vec()),
            format!("m0,{MAX_READ:x}").into_bytes()
        );
        assert_eq!(clamp_read(b"m1000,10".to_vec()), b"m1000,10".to_vec());
        for long in ["m0,00000000000000000000fffffff", "m0,1ffffffffffffffff"] {
            assert_eq!(
                clamp_read(long.as_bytes().to_vec()),
                format!("m0,{MAX_READ:x}").into_bytes(),
                "{long}"
            );
        }
        assert_eq!(
            clamp_read(b"m0,0000000000000000010".to_vec()),
            b"m0,0000000000000000010".to_vec()
        );
        // Not a read, or not one the wire understands: gdbstub decides.
        assert_eq!(clamp_read(b"mzz,1".to_vec()), b"mzz,1".to_vec());
        assert_eq!(clamp_read(b"M0,1:00".to_vec()), b"M0,1:00".to_vec());
    }

    /// A `qSupported` that makes gdbstub give up is answered with an
    /// error and not told to the next stub, which would give up again.
    #[test]
    fn a_negotiation_packet_that_failed_is_not_replayed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut wire = Wire::new(server, Arc::default());
        let bad = b"qSupported:;;";
        io::Write::write_all(&mut client, &packet(bad)).unwrap();
        let mut conn = &mut wire;
        // The stub reads its replay and answers it, then the bad packet.
        for _ in 0..packet(b"QStartNoAckMode").len() {
            ConnectionExt::read(&mut conn).unwrap();
        }
        Connection::flush(&mut conn).unwrap();
        for _ in 0..packet(bad).len() {
            ConnectionExt::read(&mut conn).unwrap();
        }
        assert_eq!(wire.negotiated, vec![bad.to_vec()]);
        wire.recover();
        assert!(wire.negotiated.is_empty());
        assert_eq!(wire.queued.len(), 1, "only QStartNoAckMode is replayed");
        assert_eq!(wire.queued[0].body, b"QStartNoAckMode");
    }

    #[test]
    fn packets_are_framed_with_their_checksum() {
        assert_eq!(packet(b"OK"), b"$OK#9a".to_vec());
        assert_eq!(hex_value(b"9a"), Some(0x9a));
        assert_eq!(hex_value(b"9g"), None);
    }
}
