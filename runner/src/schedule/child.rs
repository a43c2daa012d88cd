//! One test process: how it is started (its own process group, output to
//! its log file), watched, stopped and reaped.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc::Sender;
use std::time::Duration;

use super::logcap::{Capture, Captured};
use crate::qemu_cmd::qemu_command;
use crate::suite::{GuestTest, TestKind, TestSpec, Vmm};
use crate::verdict::Ending;

/// Where `ktvmm run` writes a guest's outcome (JSON) next to its log.
pub fn outcome_path(log: &Path) -> std::path::PathBuf {
    log.with_extension("outcome.json")
}

/// Where `ktvmm test --cores` has a guest's core written, next to its log.
pub fn core_path(log: &Path) -> std::path::PathBuf {
    log.with_extension("core")
}

/// The command that runs `spec` (none for a test the suite skips); `ktvmm`
/// is this binary, which boots guests; `log` is where its output goes.
pub fn command(
    spec: &TestSpec,
    options: &super::Options,
    timeout: Duration,
    log: &Path,
) -> Option<Command> {
    let ktvmm = options.ktvmm.as_path();
    Some(match &spec.kind {
        TestKind::Guest(g) if g.vmm != Vmm::Ktvmm => qemu_command(g),
        TestKind::Guest(g) => {
            let mut cmd = ktvmm_run(g, ktvmm);
            // The VMM stops the guest itself at the limit, which says so in
            // the log; the runner's own deadline is the backstop.
            cmd.arg(format!("--timeout={}", timeout.as_secs_f64()))
                .arg("--json-outcome")
                .arg(outcome_path(log));
            if options.cores {
                cmd.arg("--core").arg(core_path(log));
            }
            if let Some(port) = options.gdb_port {
                cmd.arg(format!("--gdb=127.0.0.1:{port}")).arg("-S");
            }
            cmd
        }
        TestKind::Skip(_) => return None,
        TestKind::Exec(e) => {
            let mut cmd = Command::new(&e.path);
            cmd.args(&e.args);
            cmd.envs(e.env.iter().map(|(k, v)| (k, v)));
            if let Some(dir) = &e.cwd {
                cmd.current_dir(dir);
            }
            cmd
        }
    })
}

/// `ktvmm run` with the VM `g` asks for: what the runner starts, and (as it
/// is) what a failure offers to rerun by hand.
fn ktvmm_run(g: &GuestTest, ktvmm: &Path) -> Command {
    let mut cmd = Command::new(ktvmm);
    cmd.arg("run").arg(&g.guest).args([
        "--smp",
        &g.smp.to_string(),
        "--memory",
        &g.mem_mib.to_string(),
    ]);
    if !g.append.is_empty() {
        cmd.args(["--append", &g.append]);
    }
    if let Some(initrd) = &g.initrd {
        cmd.arg("--initrd").arg(initrd);
    }
    if let Some(cpu) = &g.cpu {
        cmd.args(["--cpu", cpu]);
    }
    if g.no_pit {
        cmd.arg("--no-pit");
    }
    if let Some(boot) = g.boot {
        cmd.args(["--boot", boot.name()]);
    }
    if g.iommu {
        cmd.arg("--iommu");
    }
    cmd
}

/// A command line that runs `spec` alone, by hand: what a failure's
/// report offers to copy and paste; with `limit`, stopped after it (a guest
/// by `--timeout`, anything else by timeout(1)).
pub fn repro(spec: &TestSpec, ktvmm: &Path, limit: Option<Duration>) -> Option<String> {
    let mut words: Vec<String> = Vec::new();
    let mut prefix = String::new();
    let seconds = limit.map(|l| l.as_secs_f64().to_string());
    match &spec.kind {
        TestKind::Skip(_) => return None,
        TestKind::Guest(g) => {
            let cmd = match g.vmm {
                Vmm::Ktvmm => ktvmm_run(g, ktvmm),
                Vmm::Qemu { .. } => qemu_command(g),
            };
            if let (Some(seconds), Vmm::Qemu { .. }) = (&seconds, g.vmm) {
                words.extend(["timeout".to_string(), seconds.clone()]);
            }
            words.push(cmd.get_program().to_string_lossy().into_owned());
            words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
            if let (Some(seconds), Vmm::Ktvmm) = (&seconds, g.vmm) {
                words.extend(["--timeout".to_string(), seconds.clone()]);
            }
        }
        TestKind::Exec(e) => {
            if let Some(dir) = &e.cwd {
                prefix = format!(
                    "cd {} && ",
                    crate::results::shell_quote(&[dir.display().to_string()])
                );
            }
            if let Some(seconds) = &seconds {
                words.extend(["timeout".to_string(), seconds.clone()]);
                if !e.env.is_empty() {
                    words.push("env".into());
                }
            }
            words.extend(e.env.iter().map(|(k, v)| format!("{k}={v}")));
            words.push(e.path.display().to_string());
            words.extend(e.args.iter().cloned());
        }
    }
    Some(prefix + &crate::results::shell_quote(&words))
}

/// A started test process.
pub struct Running {
    child: Child,
    pgid: i32,
    capture: Capture,
}

impl Running {
    /// Starts `cmd` in a new process group with stdout and stderr going to
    /// `log` (at most `log_limit` bytes of it: [`logcap`]); `done` receives
    /// `token` once the process has exited (it is left for
    /// [`Running::reap`] to collect).
    pub fn spawn(
        mut cmd: Command,
        log: &Path,
        log_limit: u64,
        done: Sender<usize>,
        token: usize,
    ) -> io::Result<Running> {
        let file = File::create(log)?;
        let (read, write) = pipe()?;
        let capture = Capture::start(read, file, log, log_limit)?;
        let err = write.try_clone()?;
        // Nothing to read: a pipe whose write end is closed at once.
        // (Stdio::null() opens /dev/null, which a container holding only
        // ktvmm and /dev/kvm does not have.)
        let (no_input, _) = pipe()?;
        cmd.stdin(no_input)
            .stdout(write)
            .stderr(err)
            .process_group(0);
        // No pre_exec (PR_SET_PDEATHSIG): it would make std fork instead of
        // posix_spawn, 5 ms more per test; the guard kills the test's
        // process group, its first process included, if the runner dies.
        let child = cmd.spawn()?;
        // The pipe's write ends went to the child with `cmd`: dropping it
        // closes ours, so the copier sees the end of the output.
        drop(cmd);
        let pid = child.id() as i32;
        let running = Running {
            child,
            pgid: pid,
            capture,
        };
        let watcher = std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                wait_exited(pid);
                let _ = done.send(token);
            });
        match watcher {
            Ok(_) => Ok(running),
            Err(e) => {
                // Unwatched, it would never be reaped: stop it now.
                running.reap();
                Err(e)
            }
        }
    }

    /// The process group it leads.
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// Sends `signal` to the whole process group.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a negative pid signals the process group the
        // child leads; its pid is not reused before `reap` collects it.
        unsafe { libc::kill(-self.pgid, signal) };
    }

    /// Whether its log could not be written (a full disk): it should be
    /// stopped.
    pub fn log_failed(&self) -> bool {
        self.capture.failed()
    }

    /// Collects the exited process and the end of its output. Anything it
    /// left behind in its process group is killed first, so no test leaves
    /// orphans.
    pub fn reap(mut self) -> (Ending, Captured) {
        self.signal(libc::SIGKILL);
        let ending = match self.child.wait() {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => Ending::Exited(code),
                (None, Some(signal)) => Ending::Signalled(signal),
                (None, None) => Ending::Exited(-1),
            },
            Err(_) => Ending::Exited(-1),
        };
        (ending, self.capture.finish())
    }
}

/// A pipe, both ends close-on-exec (the child gets its end as stdout and
/// stderr, which clears the flag there).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Blocks until `pid` has exited, without reaping it: the zombie keeps the
/// pid and so the process group id from being reused until `reap`.
fn wait_exited(pid: i32) {
    loop {
        // SAFETY: siginfo_t is plain data; waitid writes it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waits on our own child; WNOWAIT leaves it unreaped.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}
