//! Reading a file ktvmm was given (a guest, an initrd, a suite, a results
//! or reproducer file): it must be a regular file, and no larger than what
//! its kind can sensibly be, so that a FIFO cannot block ktvmm in `open()`
//! and `/dev/zero` or a sparse 10 GB file cannot make its memory follow
//! the input's size. Every such read in ktvmm goes through [`read`].

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Text files ktvmm reads (suite files, `unittests.cfg`, `--expect`
/// files, reproducers, fuzzer inputs) are at most this big.
pub const MAX_TEXT: u64 = 16 << 20;
/// A `results.json` is at most this big (about 100,000 tests with long
/// reasons).
pub const MAX_RESULTS: u64 = 256 << 20;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// It could not be opened or read.
    #[error("{}: cannot read: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said (not a `source`: the message holds it once).
        error: io::Error,
    },
    /// A FIFO, device, directory or socket.
    #[error("{}: is a {kind}, not a regular file", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Larger than its kind may be.
    #[error("{}: is {size} bytes; {what} may be at most {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The bound.
        limit: u64,
        /// What kind of file it was read as, and where the bound comes
        /// from ("a guest with 128 MiB of RAM").
        what: String,
    },
    /// Text that is not UTF-8.
    #[error("{}: is not UTF-8 text ({error})", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
        /// Where the bad bytes are.
        error: std::str::Utf8Error,
    },
}

/// Reads `path` whole, refusing anything but a regular file of at most
/// `limit` bytes; `what` names its kind for the message.
pub fn read(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, InputError> {
    let io_error = |error| InputError::Io {
        path: path.to_path_buf(),
        error,
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer, forever; a regular file ignores the flag.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    let kind = meta.file_type();
    let not_regular = if kind.is_dir() {
        Some("directory")
    } else if kind.is_fifo() {
        Some("FIFO")
    } else if kind.is_char_device() {
        Some("character device")
    } else if kind.is_block_device() {
        Some("block device")
    } else if kind.is_socket() {
        Some("socket")
    } else {
        None
    };
    if let Some(kind) = not_regular {
        return Err(InputError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    let too_large = |size| InputError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit,
        what: what.to_string(),
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: one byte over the bound says so.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`read`] for a UTF-8 text file.
pub fn read_text(path: &Path, limit: u64, what: &str) -> Result<String, InputError> {
    let bytes = read(path, limit, what)?;
    String::from_utf8(bytes).map_err(|e| InputError::NotText {
        path: path.to_path_buf(),
        error: e.utf8_error(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ktvmm-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn devices_fifos_and_directories_are_refused_at_once() {
        let err = read(Path::new("/dev/zero"), MAX_TEXT, "a suite file").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/zero: is a character device, not a regular file"
        );
        let dir = std::env::temp_dir();
        let err = read(&dir, MAX_TEXT, "a suite file").unwrap_err();
        assert!(
            err.to_string()
                .ends_with("is a directory, not a regular file")
        );
        let fifo = temp("fifo");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Without a writer, a blocking open would never return.
        let err = read(&fifo, MAX_TEXT, "a guest").unwrap_err();
        assert!(
            err.to_string().ends_with("is a FIFO, not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn a_sparse_file_larger_than_its_bound_is_refused_unread() {
        let path = temp("sparse");
        let f = File::create(&path).unwrap();
        f.set_len(10 << 30).unwrap();
        let err = read(&path, 128 << 20, "a guest with 128 MiB of RAM").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: is 10737418240 bytes; a guest with 128 MiB of RAM may be at most 134217728 bytes",
                path.display()
            )
        );
        std::fs::write(&path, b"hello").unwrap();
        assert_eq!(read(&path, 5, "x").unwrap(), b"hello");
        assert!(read(&path, 4, "x").is_err());
    }
}
