//! The host kernel's log (`/dev/kmsg`) during a run, for hang reports (a
//! KVM warning or a soft lockup on the host is often the reason a guest
//! stopped making progress) and for the fuzz harness's oracles. Needs
//! permission to read `/dev/kmsg`; without it there is simply nothing to
//! add.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Lines kept at most (the last ones).
const MAX_LINES: usize = 40;

/// A reader positioned at the end of the kernel log when it was opened.
pub struct KernelLog(File);

impl KernelLog {
    /// Opens `/dev/kmsg` and skips what is already there.
    pub fn open_at_end() -> Option<Self> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()?;
        // SAFETY: lseek on a descriptor we own; SEEK_END on /dev/kmsg moves
        // to the next record to be written.
        unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
        Some(KernelLog(file))
    }

    /// The messages logged since, the last `MAX_LINES` of them.
    pub fn new_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut record = vec![0u8; 8192];
        loop {
            // Each read returns one record: "prio,seq,usec,flags;message\n".
            match self.0.read(&mut record) {
                Ok(0) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&record[..n]);
                    let message = text.split_once(';').map_or(&*text, |(_, m)| m);
                    let first = message.lines().next().unwrap_or("").trim_end();
                    lines.push(first.to_string());
                    if lines.len() > MAX_LINES {
                        lines.remove(0);
                    }
                }
                // Records overwritten while we read: carry on from the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        lines
    }
}
