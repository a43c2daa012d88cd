//! A test's output, capped: the test writes into a pipe, and a thread of
//! the runner copies it to the log file up to the limit's head, keeps the
//! last part in a fixed ring, and at the end writes a line saying how much
//! was cut, then that tail. A test printing forever can neither fill the
//! disk nor grow the runner's memory; a write that fails (a full disk) is
//! reported, so the test ends as ERROR with the reason.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// The tail kept in memory per running test, at most.
const TAIL_MAX: usize = 1 << 20;
/// What a verdict reads of a log at most (subtest lines, the reason):
/// its head and its tail.
const VERDICT_READ_MAX: u64 = 16 << 20;
/// What a log keeps after a write to it failed.
const KEPT_ON_ERROR: u64 = 64 << 10;
/// What the copier still reads once the test is over, at most.
const DRAIN_AFTER_STOP: usize = 1 << 20;
/// How often the copier looks whether it was asked to stop, when the
/// pipe stays open (a process that escaped the test's process group).
const POLL_MS: i32 = 100;

/// What became of a test's output.
#[derive(Debug, Default)]
pub struct Captured {
    /// Bytes the test wrote.
    pub total: u64,
    /// Bytes left out of the middle of the log.
    pub cut: u64,
    /// Why the log could not be written, if it could not.
    pub error: Option<String>,
}

/// The copier of one test's output.
pub struct Capture {
    thread: Option<JoinHandle<Captured>>,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
}

impl Capture {
    /// Copies what arrives on `pipe` to `log` (`path` names it), keeping at
    /// most `limit` bytes.
    pub fn start(pipe: OwnedFd, log: File, path: &Path, limit: u64) -> io::Result<Capture> {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        let mut copier = Copier::new(log, path.display().to_string(), limit);
        let (stop_seen, failed_set) = (stop.clone(), failed.clone());
        let thread = std::thread::Builder::new()
            .name("log".into())
            .spawn(move || copier.run(File::from(pipe), &stop_seen, &failed_set))?;
        Ok(Capture {
            thread: Some(thread),
            stop,
            failed,
        })
    }

    /// Whether writing the log has failed (the test should be stopped).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits for the copy to end: at the end of the output, or, once the
    /// test's processes are gone, when nothing more is waiting in the pipe.
    pub fn finish(mut self) -> Captured {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(captured)) => captured,
            _ => Captured {
                error: Some("the log's copier failed".into()),
                ..Captured::default()
            },
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Never left running: it would hold the pipe and a file open.
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Copier {
    log: File,
    path: String,
    limit: u64,
    head: u64,
    tail: Ring,
    written: u64,
    captured: Captured,
}

impl Copier {
    fn new(log: File, path: String, limit: u64) -> Copier {
        let tail = (limit / 4).min(TAIL_MAX as u64) as usize;
        Copier {
            log,
            path,
            limit,
            head: limit - tail as u64,
            tail: Ring::new(tail),
            written: 0,
            captured: Captured::default(),
        }
    }

    fn run(&mut self, mut pipe: File, stop: &AtomicBool, failed: &AtomicBool) -> Captured {
        let mut buf = vec![0u8; 64 << 10];
        // Read after the stop request: a process that escaped the test's
        // process group may hold the pipe and write without pause.
        let mut after_stop: usize = 0;
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            if stopping && after_stop > DRAIN_AFTER_STOP {
                break;
            }
            let mut fds = libc::pollfd {
                fd: pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut fds, 1, if stopping { 0 } else { POLL_MS }) };
            if ready == 0 {
                if stopping {
                    break;
                }
                continue;
            }
            if ready < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.take(&buf[..n]);
                    if stopping {
                        after_stop += n;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
            if self.captured.error.is_some() {
                failed.store(true, Ordering::Relaxed);
            }
        }
        self.close();
        std::mem::take(&mut self.captured)
    }

    fn take(&mut self, mut data: &[u8]) {
        self.captured.total += data.len() as u64;
        if self.written < self.head {
            let n = data.len().min((self.head - self.written) as usize);
            self.write(&data[..n]);
            data = &data[n..];
        }
        self.tail.push(data);
    }

    fn write(&mut self, data: &[u8]) {
        if self.captured.error.is_some() {
            return;
        }
        match self.log.write_all(data) {
            Ok(()) => self.written += data.len() as u64,
            Err(e) => {
                self.captured.error = Some(format!("cannot write its log {}: {e}", self.path));
                self.make_room();
            }
        }
    }

    /// After a failed write (a full disk), shortens the log to its first
    /// lines, so that the run's results and the other logs still fit.
    fn make_room(&mut self) {
        if self.written > KEPT_ON_ERROR {
            let _ = self.log.set_len(KEPT_ON_ERROR);
            let _ = self.log.seek(std::io::SeekFrom::Start(KEPT_ON_ERROR));
            let _ = self.log.write_all(
                format!(
                    "\n[ktvmm test: the log was cut to {KEPT_ON_ERROR} bytes: it could not be written further]\n"
                )
                .as_bytes(),
            );
        }
    }

    /// The marker and the tail, when the middle was cut.
    fn close(&mut self) {
        let (skipped, tail) = self.tail.contents();
        if skipped == 0 {
            self.write(&tail);
        } else {
            // Start the tail at a line.
            let start = tail.iter().position(|&b| b == b'\n').map_or(0, |nl| nl + 1);
            self.captured.cut = skipped + start as u64;
            let marker = format!(
                "\n[ktvmm test: {} bytes of output cut here; the log keeps the first {} and the last {} bytes of {} (--log-limit {} MiB)]\n",
                self.captured.cut,
                self.written,
                tail.len() - start,
                self.captured.total,
                self.limit >> 20,
            );
            self.write(marker.as_bytes());
            self.write(&tail[start..]);
        }
        if self.captured.error.is_none()
            && let Err(e) = self.log.flush()
        {
            self.captured.error = Some(format!("cannot write its log {}: {e}", self.path));
        }
    }
}

/// The last `capacity` bytes of a stream.
struct Ring {
    buf: Vec<u8>,
    capacity: usize,
    /// Where the next byte goes, once the ring is full.
    pos: usize,
    /// Bytes pushed out of the ring.
    dropped: u64,
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        Ring {
            buf: Vec::new(),
            capacity,
            pos: 0,
            dropped: 0,
        }
    }

    fn push(&mut self, mut data: &[u8]) {
        if self.capacity == 0 {
            self.dropped += data.len() as u64;
            return;
        }
        if data.len() > self.capacity {
            let over = data.len() - self.capacity;
            self.dropped += over as u64;
            data = &data[over..];
        }
        let room = self.capacity - self.buf.len();
        if room > 0 {
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        while !data.is_empty() {
            let n = (self.capacity - self.pos).min(data.len());
            self.dropped += n as u64;
            self.buf[self.pos..self.pos + n].copy_from_slice(&data[..n]);
            self.pos = (self.pos + n) % self.capacity;
            data = &data[n..];
        }
    }

    /// (bytes that did not fit, the last bytes in order).
    fn contents(&self) -> (u64, Vec<u8>) {
        let mut out = Vec::with_capacity(self.buf.len());
        out.extend_from_slice(&self.buf[self.pos..]);
        out.extend_from_slice(&self.buf[..self.pos]);
        (self.dropped, out)
    }
}

/// A log as text for a verdict (subtest lines, the reason): all of it up to
/// a bound, else its head and its tail, so a huge log (`--log-limit` set
/// high) costs the runner a bounded amount of memory.
pub fn read_for_verdict(path: &Path) -> String {
    String::from_utf8_lossy(&read_head_and_tail(path, VERDICT_READ_MAX).unwrap_or_default())
        .into_owned()
}

/// Opens a log to read it: without blocking, so that a FIFO a test put in
/// its place cannot stop the runner.
fn open_log(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// At most `max` bytes of `path`: all of it, or its first and last
/// `max / 2` bytes.
pub fn read_head_and_tail(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::SeekFrom;
    let mut file = open_log(path)?;
    let len = file.metadata()?.len();
    let mut bytes = Vec::new();
    if len <= max {
        file.take(max).read_to_end(&mut bytes)?;
        return Ok(bytes);
    }
    (&mut file).take(max / 2).read_to_end(&mut bytes)?;
    bytes.push(b'\n');
    file.seek(SeekFrom::Start(len - max / 2))?;
    file.take(max / 2).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The last `max` bytes of `path` at most, from the start of a line when
/// it was cut.
pub fn read_tail(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::SeekFrom;
    let mut file = open_log(path)?;
    let start = file.metadata()?.len().saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    if start > 0
        && let Some(nl) = bytes.iter().position(|&b| b == b'\n')
    {
        bytes.drain(..=nl);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(limit: u64, chunks: &[&[u8]]) -> (Captured, String) {
        let path = std::env::temp_dir().join(format!(
            "ktvmm-logcap-{}-{limit}-{}",
            std::process::id(),
            chunks.len()
        ));
        let mut copier = Copier::new(File::create(&path).unwrap(), "log".into(), limit);
        for chunk in chunks {
            copier.take(chunk);
        }
        copier.close();
        let captured = std::mem::take(&mut copier.captured);
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        (captured, text)
    }

    #[test]
    fn a_log_within_the_limit_is_kept_whole() {
        let (captured, text) = copy(1 << 20, &[b"one\n", b"two\n"]);
        assert_eq!(text, "one\ntwo\n");
        assert_eq!((captured.total, captured.cut), (8, 0));
        assert!(captured.error.is_none());
    }

    #[test]
    fn a_long_log_keeps_its_head_and_tail_and_says_what_was_cut() {
        let line = b"0123456789abcdef\n";
        let mut chunks: Vec<&[u8]> = vec![b"FIRST\n"];
        chunks.extend(std::iter::repeat_n(&line[..], 1 << 20 >> 2));
        chunks.push(b"LAST LINE\n");
        let (captured, text) = copy(1 << 20, &chunks);
        assert!(text.starts_with("FIRST\n"), "{}", &text[..40]);
        assert!(text.ends_with("0123456789abcdef\nLAST LINE\n"));
        assert!(captured.cut > 0);
        let total = 6 + 17 * (1 << 18) + 10;
        assert_eq!(captured.total, total);
        let marker = text
            .lines()
            .find(|l| l.starts_with("[ktvmm test: "))
            .expect("a marker line");
        assert!(
            marker.contains(&format!("{} bytes of output cut here", captured.cut)),
            "{marker}"
        );
        // The log is within its limit, give or take the marker.
        assert!(text.len() as u64 <= (1 << 20) + 200, "{}", text.len());
        // Kept + cut = written, so nothing is unaccounted for.
        let kept = text.len() - marker.len() - 2;
        assert_eq!(kept as u64 + captured.cut, total);
    }

    #[test]
    fn a_log_that_reaches_into_the_tail_is_still_whole() {
        let block = vec![b'x'; 800 << 10];
        let (captured, text) = copy(1 << 20, &[&block, b"\nend\n"]);
        assert_eq!(captured.cut, 0);
        assert_eq!(text.len(), (800 << 10) + 5);
        assert!(text.ends_with("x\nend\n"));
    }

    #[test]
    fn the_ring_keeps_the_last_bytes_in_order() {
        let mut ring = Ring::new(5);
        ring.push(b"abc");
        ring.push(b"defg");
        assert_eq!(ring.contents(), (2, b"cdefg".to_vec()));
        ring.push(b"0123456789");
        assert_eq!(ring.contents(), (12, b"56789".to_vec()));
    }

    #[test]
    fn a_write_error_is_reported_with_the_log() {
        let full = File::options().write(true).open("/dev/full").unwrap();
        let mut copier = Copier::new(full, "x.log".into(), 1 << 20);
        copier.take(b"hello\n");
        copier.close();
        let error = copier.captured.error.expect("an error");
        assert!(error.starts_with("cannot write its log x.log: "), "{error}");
        assert!(error.contains("No space left on device"), "{error}");
    }
}
