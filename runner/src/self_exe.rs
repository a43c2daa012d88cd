//! Where this `ktvmm` executable is, to start it again for each test.
//!
//! The kernel says so through `/proc/self/exe`; a container or chroot that
//! holds nothing but the binary and `/dev/kvm` has no `/proc`, and there
//! the path the binary was started by (when it names a file, as
//! `/ktvmm` does) is as good.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// This executable's path.
pub fn path() -> Result<PathBuf> {
    let proc_error = match std::env::current_exe() {
        Ok(path) => return Ok(path),
        Err(e) => e,
    };
    let argv0 = std::env::args_os().next().map(PathBuf::from);
    match argv0.and_then(|a| from_argv0(&a)) {
        Some(path) => Ok(path),
        None => bail!(
            "cannot find the ktvmm executable: {proc_error}, and it was not started by a path (start it as /path/to/ktvmm, or mount /proc)"
        ),
    }
}

/// `argv0` made absolute, when it is a path to a file (not a bare name
/// looked up in `PATH`, which may since have changed).
fn from_argv0(argv0: &Path) -> Option<PathBuf> {
    if argv0.components().count() < 2 {
        return None;
    }
    let path = if argv0.is_absolute() {
        argv0.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(argv0)
    };
    path.is_file().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv0_counts_only_as_a_path_to_a_file() {
        assert_eq!(from_argv0(Path::new("ktvmm")), None, "a bare name");
        assert_eq!(from_argv0(Path::new("/nonexistent/ktvmm")), None);
        let me = std::env::current_exe().unwrap();
        assert_eq!(from_argv0(&me), Some(me.clone()));
        // cargo runs unit tests in the package's directory.
        let relative = Path::new("src/main.rs");
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(from_argv0(relative), Some(cwd.join(relative)));
    }
}
