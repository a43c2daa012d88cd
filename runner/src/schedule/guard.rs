//! No test outlives the runner, however the runner ends (SIGKILL and the
//! OOM killer included). Each test runs in a process group of its own; a
//! guard, a small process forked when the scheduler starts, is told each
//! test's process group over a pipe. When the pipe's other end closes (the
//! runner exited or was killed: the kernel closes it either way), the guard
//! kills every group still listed, then exits.
//!
//! (`PR_SET_PDEATHSIG` in each test would cover only its first process,
//! and setting it needs a `pre_exec` hook, which makes std fork the runner
//! instead of using posix_spawn: several milliseconds per test.)

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The guard, seen from the runner.
pub struct Guard {
    /// Where the runner writes: +pgid to watch a group, -pgid to forget it.
    tell: Option<std::fs::File>,
    pid: libc::pid_t,
}

impl Guard {
    /// Forks the guard, with room for `groups` process groups at once.
    /// Without one (fork failed), tests still die with the runner; only
    /// their own children might not.
    pub fn start(groups: usize) -> Guard {
        match fork_guard(groups) {
            Ok((tell, pid)) => Guard {
                tell: Some(std::fs::File::from(tell)),
                pid,
            },
            Err(e) => {
                log::warn!("cannot start the guard that stops tests if ktvmm dies: {e}");
                Guard { tell: None, pid: 0 }
            }
        }
    }

    /// Kill the process group `pgid` should the runner die.
    pub fn watch(&mut self, pgid: i32) {
        self.tell(pgid);
    }

    /// `pgid` has been reaped: forget it (its id may be reused).
    pub fn forget(&mut self, pgid: i32) {
        self.tell(-pgid);
    }

    fn tell(&mut self, word: i32) {
        use std::io::Write;
        if let Some(tell) = &mut self.tell {
            // 4 bytes: one atomic pipe write.
            let _ = tell.write_all(&word.to_ne_bytes());
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Closing the pipe ends the guard; every group it knows of has
        // been reaped by now, so the list is empty.
        if self.tell.take().is_some() && self.pid > 0 {
            // SAFETY: waits for our own child, the guard.
            unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
        }
    }
}

fn fork_guard(groups: usize) -> io::Result<(OwnedFd, libc::pid_t)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Allocated before the fork: the child of a threaded process must not
    // allocate (another thread may have held the allocator's lock).
    let mut list: Vec<i32> = Vec::with_capacity(groups.max(1));
    // SAFETY: the child only calls async-signal-safe functions (close,
    // sigaction via signal, setpgid, read, kill, _exit) and touches memory
    // it does not allocate.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: fd numbers of this (child) process.
            unsafe { libc::close(write.as_raw_fd()) };
            std::mem::forget(write);
            guard_main(read.as_raw_fd(), &mut list)
        }
        pid => Ok((write, pid)),
    }
}

/// The guard process: reads words until the runner's end closes, then
/// kills every group still listed. Never returns.
fn guard_main(fd: i32, list: &mut Vec<i32>) -> ! {
    // SAFETY: signal dispositions and the process group of this process
    // only: Ctrl-C and a kill of the runner's group must not stop the guard
    // before it has done its work; closing stdio lets a pipe reading the
    // runner's output end when the runner does.
    unsafe {
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(signal, libc::SIG_IGN);
        }
        libc::setpgid(0, 0);
        for stdio in 0..=2 {
            libc::close(stdio);
        }
    }
    let mut word = [0u8; 4];
    loop {
        // SAFETY: reads into a 4-byte buffer we own.
        let n = unsafe { libc::read(fd, word.as_mut_ptr().cast(), word.len()) };
        if n == 4 {
            let value = i32::from_ne_bytes(word);
            if value > 0 {
                if list.len() < list.capacity() {
                    list.push(value);
                }
            } else if let Some(i) = list.iter().position(|&g| g == -value) {
                list.swap_remove(i);
            }
        } else if n == 0
            || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
        {
            break;
        }
    }
    for &group in list.iter() {
        // SAFETY: kill(2) of a process group the runner started.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
    // SAFETY: ends the guard without running the runner's exit handlers.
    unsafe { libc::_exit(0) }
}
