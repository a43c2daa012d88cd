//! KVM's counters for host programs (the kernel's KVM selftests), which
//! run VMs of their own: KVM lists each VM in debugfs as
//! `/sys/kernel/debug/kvm/<pid>-<fd>/`, one file per counter (the VM's, and
//! the vCPUs' summed). While a test runs, its VMs (those of processes in
//! its process group) are read every scheduler tick; a VM's last reading
//! before it went away stands for it. A VM that lives less than a tick may
//! be missed: the counters are a lower bound.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where KVM's debugfs directory is.
pub const DEBUGFS_KVM: &str = "/sys/kernel/debug/kvm";
/// VMs of one test followed at most (a selftest creating thousands would
/// otherwise grow the runner).
const MAX_VMS: usize = 256;

/// Why host programs' counters cannot be read here, or `None` when they can.
pub fn unavailable(root: &Path) -> Option<String> {
    if !root.is_dir() {
        return Some(format!(
            "{} is not there: debugfs is not mounted (as root: mount -t debugfs none /sys/kernel/debug)",
            root.display()
        ));
    }
    // Every KVM lists its global sums here; reading one says whether the
    // per-VM files will be readable (kernel lockdown forbids it).
    match std::fs::File::open(root.join("exits")).and_then(|mut f| {
        let mut text = String::new();
        f.read_to_string(&mut text).map(|_| text)
    }) {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(format!(
            "{}: {e} (without root, or under kernel lockdown: /sys/kernel/security/lockdown)",
            root.join("exits").display()
        )),
        Err(e) => Some(format!("{}: {e}", root.join("exits").display())),
    }
}

/// Which counters are the VM's and which the vCPUs'.
#[derive(Clone, Debug, Default)]
pub struct Names {
    vm: Vec<String>,
    vcpu: Vec<String>,
}

impl Names {
    /// This host's, from a throwaway VM; empty without binary statistics
    /// (every counter is then filed as the VM's).
    pub fn probe() -> Self {
        ktvmm_vmm::host::kvm_stats::names()
            .map(|(vm, vcpu)| Names { vm, vcpu })
            .unwrap_or_default()
    }
}

/// The VMs one test process group made, as last read.
pub struct Sampler {
    root: PathBuf,
    vms: HashMap<String, BTreeMap<String, u64>>,
}

impl Sampler {
    /// Follows VMs under `root` (normally [`DEBUGFS_KVM`]).
    pub fn new(root: &Path) -> Self {
        Sampler {
            root: root.to_path_buf(),
            vms: HashMap::new(),
        }
    }

    /// Reads the VMs of processes in process group `pgid`.
    pub fn sample(&mut self, pgid: i32) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .split_once('-')
                .and_then(|(p, _)| p.parse::<i32>().ok())
            else {
                continue;
            };
            if process_group(pid) != Some(pgid) {
                continue;
            }
            if !self.vms.contains_key(&name) && self.vms.len() >= MAX_VMS {
                continue;
            }
            let counters = read_counters(&entry.path());
            if !counters.is_empty() {
                self.vms.insert(name, counters);
            }
        }
    }

    /// The test's counters, every VM summed (peaks: the largest), as
    /// `{"vm": {...}, "vcpu": {...}, "vms": N}`; `None` when it ran none.
    pub fn finish(self, names: &Names) -> Option<serde_json::Value> {
        if self.vms.is_empty() {
            return None;
        }
        let mut vm: BTreeMap<String, u64> = BTreeMap::new();
        let mut vcpu: BTreeMap<String, u64> = BTreeMap::new();
        for counters in self.vms.values() {
            for (name, &value) in counters {
                let group = if names.vcpu.contains(name) && !names.vm.contains(name) {
                    &mut vcpu
                } else {
                    &mut vm
                };
                let total = group.entry(name.clone()).or_insert(0);
                *total = if name.starts_with("max_") {
                    (*total).max(value)
                } else {
                    total.saturating_add(value)
                };
            }
        }
        Some(serde_json::json!({ "vm": vm, "vcpu": vcpu, "vms": self.vms.len() }))
    }
}

/// A process's group, from `/proc/PID/stat` (after the command's closing
/// parenthesis: state, ppid, pgrp).
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(2)?.parse().ok()
}

/// Every counter file of one VM's directory (one number each).
fn read_counters(dir: &Path) -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return counters;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let mut text = String::new();
        let read =
            std::fs::File::open(entry.path()).and_then(|f| f.take(64).read_to_string(&mut text));
        if let (Ok(_), Ok(value)) = (read, text.trim().parse::<u64>()) {
            counters.insert(entry.file_name().to_string_lossy().into_owned(), value);
        }
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_groups_vms_are_summed_and_others_left_out() {
        let root = std::env::temp_dir().join(format!("ktvmm-debugfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        assert!(unavailable(&root).unwrap().contains("exits"));
        std::fs::write(root.join("exits"), "7\n").unwrap();
        assert_eq!(unavailable(&root), None);
        assert!(
            unavailable(&root.join("nope"))
                .unwrap()
                .contains("not mounted")
        );

        // This process's group stands for the test's; pid 1 is not in it.
        let pgid = process_group(std::process::id() as i32).unwrap();
        let me = std::process::id();
        for (dir, exits, flush) in [
            (format!("{me}-10"), "100", "3"),
            (format!("{me}-11"), "50", "0"),
            ("1-4".to_string(), "999999", "999"),
        ] {
            let vm = root.join(&dir);
            std::fs::create_dir_all(vm.join("vcpu0")).unwrap();
            std::fs::write(vm.join("exits"), format!("{exits}\n")).unwrap();
            std::fs::write(vm.join("remote_tlb_flush"), format!("{flush}\n")).unwrap();
            std::fs::write(vm.join("max_mmu_rmap_size"), "5\n").unwrap();
        }
        let mut sampler = Sampler::new(&root);
        sampler.sample(pgid);
        // One VM goes away: its last reading still counts.
        std::fs::remove_dir_all(root.join(format!("{me}-11"))).unwrap();
        sampler.sample(pgid);
        let names = Names {
            vm: vec!["remote_tlb_flush".into(), "max_mmu_rmap_size".into()],
            vcpu: vec!["exits".into()],
        };
        let stats = sampler.finish(&names).unwrap();
        assert_eq!(stats["vms"], 2);
        assert_eq!(stats["vcpu"]["exits"], 150);
        assert_eq!(stats["vm"]["remote_tlb_flush"], 3);
        assert_eq!(stats["vm"]["max_mmu_rmap_size"], 5);
        assert!(Sampler::new(&root).finish(&names).is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
