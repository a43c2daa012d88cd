//! What `ktvmm run --json-outcome` recorded about a guest's run. The runner
//! takes a guest's verdict and reason from this record, never from the
//! process's exit status: the status keeps only 8 bits, and a guest may
//! write any of ktvmm's reserved codes itself.

use std::path::Path;

use serde::Deserialize;

/// Far more than any outcome (a hang report of every vCPU of a large VM
/// and 40 kernel log lines is a few KiB); a larger file is not ktvmm's.
const MAX_BYTES: u64 = 1 << 20;

/// The fields of the record the runner uses (`docs/exit-codes.md`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct GuestOutcome {
    /// `guest_exit`, `timeout`, `shutdown`, `system_event`,
    /// `internal_error`, `fail_entry`, `unexpected_exit`, `vmm_error`.
    pub kind: String,
    /// The value the guest wrote, for `guest_exit` (any width).
    #[serde(default)]
    pub code: Option<u64>,
    /// What happened, for anything but a guest's own exit.
    #[serde(default)]
    pub message: Option<String>,
    /// Where each vCPU was, for a timeout.
    #[serde(default)]
    pub vcpus: Option<serde_json::Value>,
    /// The guest core `ktvmm run --core` wrote.
    #[serde(default)]
    pub core: Option<std::path::PathBuf>,
    /// KVM's counters at the end of the run, where KVM offers them.
    #[serde(default)]
    pub kvm_stats: Option<serde_json::Value>,
}

/// The record at `path`; `None` when there is none (ktvmm died before it
/// could write one), an error when it is there but unreadable.
pub fn read(path: &Path) -> Option<Result<GuestOutcome, String>> {
    if !path.exists() {
        return None;
    }
    // Through the one bounded reader: a FIFO planted in its place cannot
    // block the runner, nor a huge file fill its memory.
    let text = match ktvmm_vmm::input::read_text(path, MAX_BYTES, "an outcome file") {
        Ok(text) => text,
        Err(e) => return Some(Err(e.to_string())),
    };
    Some(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_ktvmm_run_writes() {
        let dir = std::env::temp_dir().join(format!("ktvmm-outcome-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("o.json");
        assert_eq!(read(&path), None);
        let wide = ktvmm_vmm::Outcome::GuestExit { code: 0x8000_0000 };
        std::fs::write(&path, wide.to_json()).unwrap();
        let outcome = read(&path).unwrap().unwrap();
        assert_eq!(outcome.kind, "guest_exit");
        assert_eq!(outcome.code, Some(0x8000_0000));
        std::fs::write(&path, "{\"kind\":").unwrap();
        assert!(read(&path).unwrap().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
