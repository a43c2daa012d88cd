//! Running a helper program ktvmm needs an answer from (`make` listing a
//! selftest target, QEMU booting a probe guest) within a time limit, its
//! output kept up to a bound and the rest drained: neither a hang nor a
//! flood of output can hold the runner up or fill its memory.

use std::io::{self, Read, Write};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a helper ended.
pub struct Ran {
    /// Its exit status; `None` when it ran past the limit and was killed.
    pub status: Option<ExitStatus>,
    /// The start of its standard output.
    pub stdout: String,
    /// The start of its standard error.
    pub stderr: String,
}

/// Runs `cmd` with `stdin` as its input, for at most `limit`, keeping the
/// first `max_output` bytes of each of its outputs.
pub fn run(mut cmd: Command, stdin: &[u8], limit: Duration, max_output: u64) -> io::Result<Ran> {
    cmd.stdin(if stdin.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let Some(mut input) = child.stdin.take() {
        // Dropped right after: the helper sees the end of its input.
        let _ = input.write_all(stdin);
    }
    let stdout = child.stdout.take().map(|o| read_capped(o, max_output));
    let stderr = child.stderr.take().map(|e| read_capped(e, max_output));
    let status = wait(&mut child, limit)?;
    let text =
        |reader: Option<JoinHandle<String>>| reader.and_then(|r| r.join().ok()).unwrap_or_default();
    Ok(Ran {
        status,
        stdout: text(stdout),
        stderr: text(stderr),
    })
}

/// The exit status, or `None` after killing it at `limit`.
fn wait(child: &mut Child, limit: Duration) -> io::Result<Option<ExitStatus>> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if started.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pipe of the helper's.
trait Pipe: Read + Send + 'static {}
impl Pipe for ChildStdout {}
impl Pipe for ChildStderr {}

fn read_capped(mut pipe: impl Pipe, max: u64) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = (&mut pipe).take(max).read_to_end(&mut bytes);
        // Keep draining, so the helper never blocks on a full pipe.
        let _ = io::copy(&mut pipe, &mut io::sink());
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_and_drained_and_input_arrives() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "cat; head -c 1000000 /dev/zero | tr '\\0' x; echo oops >&2",
        ]);
        let ran = run(cmd, b"hello ", Duration::from_secs(30), 10).unwrap();
        assert!(ran.status.unwrap().success());
        assert_eq!(ran.stdout, "hello xxxx");
        assert_eq!(ran.stderr, "oops\n");
    }

    #[test]
    fn a_helper_past_its_limit_is_killed() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let started = Instant::now();
        let ran = run(cmd, b"", Duration::from_millis(300), 100).unwrap();
        assert!(ran.status.is_none());
        assert_eq!(ran.stdout, "started\n");
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}
