//! KVM's own counters for a VM and its vCPUs (`KVM_GET_STATS_FD`, the
//! binary statistics of Documentation/virt/kvm/api.rst): what KVM did while
//! the guest ran (exits, emulated instructions, remote TLB flushes, page
//! faults...). A test can pass while KVM does a thousand times the work it
//! did last week; these numbers show it.
//!
//! The names and the set of counters are KVM's and vary by kernel and
//! backend: a counter KVM does not offer is absent, never zero.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use serde::Serialize;
use vmm_sys_util::ioctl::ioctl;

#[allow(missing_docs)]
mod request {
    // <linux/kvm.h>: #define KVM_GET_STATS_FD _IO(KVMIO, 0xce)
    vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);
}
use request::KVM_GET_STATS_FD;

/// Size of `struct kvm_stats_header`.
const HEADER_LEN: usize = 24;
/// Size of `struct kvm_stats_desc` before its name.
const DESC_LEN: usize = 16;
/// Far more than any kernel's statistics block (a few KiB today).
const MAX_FILE: usize = 1 << 20;
/// Bounds on what the header may claim, so a surprise cannot make us
/// allocate or loop without end.
const MAX_DESCS: usize = 4096;
const MAX_NAME: usize = 1024;
const MAX_BUCKETS: usize = 4096;
/// vCPUs whose own counters are kept besides the sums.
const MAX_PER_VCPU: usize = 64;

/// How a counter's values combine across vCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`exits`): summed.
    Cumulative,
    /// A current value (`pages_4k`): summed.
    Instant,
    /// A high-water mark (`max_mmu_page_hash_collisions`): the largest.
    Peak,
    /// A histogram (`halt_poll_success_hist`): its buckets' total, summed.
    Histogram,
}

/// One counter as KVM reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// KVM's name for it.
    pub name: String,
    /// How it combines.
    pub kind: Kind,
    /// Its value (a histogram: the sum of its buckets).
    pub value: u64,
}

/// Why statistics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// KVM_GET_STATS_FD failed (a kernel without binary statistics).
    #[error("KVM_GET_STATS_FD: {0}")]
    Open(std::io::Error),
    /// Reading the statistics file failed.
    #[error("reading KVM's statistics: {0}")]
    Read(std::io::Error),
    /// The statistics block is not laid out as api.rst says.
    #[error("KVM's statistics are malformed: {0}")]
    Malformed(&'static str),
}

/// Whether this host's KVM offers binary statistics
/// (`KVM_CAP_BINARY_STATS_FD`); false without `/dev/kvm`.
pub fn offered() -> bool {
    kvm_ioctls::Kvm::new().is_ok_and(|kvm| {
        kvm.check_extension_raw(u64::from(kvm_bindings::KVM_CAP_BINARY_STATS_FD)) > 0
    })
}

/// The names of this host's VM counters and vCPU counters, read from a
/// throwaway VM: what tells the two apart in debugfs, which lists both
/// side by side. `None` without binary statistics.
pub fn names() -> Option<(Vec<String>, Vec<String>)> {
    let kvm = kvm_ioctls::Kvm::new().ok()?;
    let vm = kvm.create_vm().ok()?;
    let vcpu = vm.create_vcpu(0).ok()?;
    let names = |stats: Vec<Stat>| stats.into_iter().map(|s| s.name).collect();
    Some((names(read(&vm).ok()?), names(read(&vcpu).ok()?)))
}

/// Reads the statistics of a VM or vCPU file descriptor.
pub fn read(fd: &impl AsRawFd) -> Result<Vec<Stat>, StatsError> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file
    // descriptor, or -1 with errno set.
    let raw = unsafe { ioctl(fd, KVM_GET_STATS_FD()) };
    if raw < 0 {
        return Err(StatsError::Open(std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(raw) };
    let mut bytes = vec![0u8; 16 << 10];
    let mut len = 0;
    loop {
        if len == bytes.len() {
            if bytes.len() >= MAX_FILE {
                return Err(StatsError::Malformed("larger than 1 MiB"));
            }
            bytes.resize(bytes.len() * 2, 0);
        }
        match file.read_at(&mut bytes[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StatsError::Read(e)),
        }
    }
    parse(&bytes[..len])
}

/// Parses a statistics block: header, descriptors, data.
pub fn parse(bytes: &[u8]) -> Result<Vec<Stat>, StatsError> {
    let u32_at = |at: usize| -> Result<u32, StatsError> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(StatsError::Malformed("truncated"))
    };
    let u64_at = |at: usize| -> Result<u64, StatsError> {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or(StatsError::Malformed("data past the end"))
    };
    if bytes.len() < HEADER_LEN {
        return Err(StatsError::Malformed("no header"));
    }
    let name_size = u32_at(4)? as usize;
    let num_desc = u32_at(8)? as usize;
    let desc_offset = u32_at(16)? as usize;
    let data_offset = u32_at(20)? as usize;
    if num_desc > MAX_DESCS || name_size > MAX_NAME {
        return Err(StatsError::Malformed("implausible header"));
    }
    let mut stats = Vec::with_capacity(num_desc);
    for i in 0..num_desc {
        let at = desc_offset + i * (DESC_LEN + name_size);
        let flags = u32_at(at)?;
        let size = bytes
            .get(at + 6..at + 8)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or(StatsError::Malformed("truncated descriptor"))?;
        let offset = u32_at(at + 8)? as usize;
        let name = bytes
            .get(at + DESC_LEN..at + DESC_LEN + name_size)
            .ok_or(StatsError::Malformed("truncated name"))?;
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        let name = String::from_utf8_lossy(name).into_owned();
        if size == 0 || size > MAX_BUCKETS {
            return Err(StatsError::Malformed("implausible counter size"));
        }
        let kind = match flags & kvm_bindings::KVM_STATS_TYPE_MASK {
            kvm_bindings::KVM_STATS_TYPE_CUMULATIVE => Kind::Cumulative,
            kvm_bindings::KVM_STATS_TYPE_INSTANT => Kind::Instant,
            kvm_bindings::KVM_STATS_TYPE_PEAK => Kind::Peak,
            _ => Kind::Histogram,
        };
        let start = data_offset + offset;
        let mut value: u64 = 0;
        for bucket in 0..size {
            value = value.saturating_add(u64_at(start + bucket * 8)?);
        }
        stats.push(Stat { name, kind, value });
    }
    Ok(stats)
}

/// A VM's counters at the end of its run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KvmCounters {
    /// The VM's own counters.
    pub vm: BTreeMap<String, u64>,
    /// The vCPUs' counters, combined (summed; peaks: the largest).
    pub vcpu: BTreeMap<String, u64>,
    /// Each vCPU's non-zero counters, for the first 64 vCPUs: where one
    /// vCPU did all the work, or none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_vcpu: Vec<BTreeMap<String, u64>>,
}

impl KvmCounters {
    /// Combines the VM's statistics and each vCPU's (in vCPU order).
    pub fn combine(vm: &[Stat], vcpus: &[Vec<Stat>]) -> Self {
        let mut counters = KvmCounters {
            vm: vm.iter().map(|s| (s.name.clone(), s.value)).collect(),
            ..KvmCounters::default()
        };
        for (index, stats) in vcpus.iter().enumerate() {
            for stat in stats {
                let total = counters.vcpu.entry(stat.name.clone()).or_insert(0);
                *total = match stat.kind {
                    Kind::Peak => (*total).max(stat.value),
                    _ => total.saturating_add(stat.value),
                };
            }
            if index < MAX_PER_VCPU {
                counters.per_vcpu.push(
                    stats
                        .iter()
                        .filter(|s| s.value != 0)
                        .map(|s| (s.name.clone(), s.value))
                        .collect(),
                );
            }
        }
        counters
    }

    /// The largest event counters, VM and vCPU together, for a person to
    /// read: `(name, value)`, vCPU counters prefixed `vcpu.`. Times
    /// (`*_ns`) and histograms are left out: their sizes do not compare
    /// with counts.
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self
            .vm
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .chain(self.vcpu.iter().map(|(k, v)| (format!("vcpu.{k}"), *v)))
            .filter(|(k, v)| *v != 0 && !k.ends_with("_ns") && !k.ends_with("_hist"))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statistics block as KVM lays it out, with `counters` as
    /// (name, type flags, values).
    fn block(name_size: usize, counters: &[(&str, u32, &[u64])]) -> Vec<u8> {
        let desc_offset = HEADER_LEN + 16; // an id string in between
        let data_offset = desc_offset + counters.len() * (DESC_LEN + name_size);
        let mut bytes = Vec::new();
        for v in [
            0,
            name_size,
            counters.len(),
            HEADER_LEN,
            desc_offset,
            data_offset,
        ] {
            bytes.extend_from_slice(&(v as u32).to_le_bytes());
        }
        bytes.resize(desc_offset, b'x');
        let mut data = Vec::new();
        for (name, flags, values) in counters {
            bytes.extend_from_slice(&flags.to_le_bytes());
            bytes.extend_from_slice(&0i16.to_le_bytes());
            bytes.extend_from_slice(&(values.len() as u16).to_le_bytes());
            bytes.extend_from_slice(&(data.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&0u32.to_le_bytes());
            let mut padded = name.as_bytes().to_vec();
            padded.resize(name_size, 0);
            bytes.extend_from_slice(&padded);
            for v in *values {
                data.extend_from_slice(&v.to_le_bytes());
            }
        }
        bytes.extend_from_slice(&data);
        bytes
    }

    #[test]
    fn parses_counters_peaks_and_histograms() {
        let bytes = block(
            48,
            &[
                ("exits", kvm_bindings::KVM_STATS_TYPE_CUMULATIVE, &[42]),
                ("max_x", kvm_bindings::KVM_STATS_TYPE_PEAK, &[7]),
                ("hist", kvm_bindings::KVM_STATS_TYPE_LOG_HIST, &[1, 2, 3]),
            ],
        );
        let stats = parse(&bytes).unwrap();
        assert_eq!(
            stats,
            [
                Stat {
                    name: "exits".into(),
                    kind: Kind::Cumulative,
                    value: 42
                },
                Stat {
                    name: "max_x".into(),
                    kind: Kind::Peak,
                    value: 7
                },
                Stat {
                    name: "hist".into(),
                    kind: Kind::Histogram,
                    value: 6
                },
            ]
        );
    }

    #[test]
    fn malformed_blocks_are_errors_not_panics() {
        let good = block(48, &[("exits", 0, &[42])]);
        for len in 0..good.len() {
            assert!(parse(&good[..len]).is_err(), "truncated at {len}");
        }
        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge).is_err());
        let mut offsets = good;
        offsets[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&offsets).is_err());
    }

    #[test]
    fn vcpu_counters_sum_and_peaks_take_the_largest() {
        let stat = |name: &str, kind, value| Stat {
            name: name.into(),
            kind,
            value,
        };
        let vcpus = [
            vec![
                stat("exits", Kind::Cumulative, 10),
                stat("max", Kind::Peak, 3),
            ],
            vec![
                stat("exits", Kind::Cumulative, 5),
                stat("max", Kind::Peak, 9),
            ],
        ];
        let counters =
            KvmCounters::combine(&[stat("remote_tlb_flush", Kind::Cumulative, 2)], &vcpus);
        assert_eq!(counters.vcpu["exits"], 15);
        assert_eq!(counters.vcpu["max"], 9);
        assert_eq!(counters.vm["remote_tlb_flush"], 2);
        assert_eq!(counters.per_vcpu.len(), 2);
        assert_eq!(
            counters.top(2),
            [("vcpu.exits".to_string(), 15), ("vcpu.max".to_string(), 9)]
        );
    }

    #[test]
    fn a_real_vm_has_counters_where_kvm_offers_them() {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let offered = offered();
        match (read(&vm), read(&vcpu)) {
            (Ok(vm_stats), Ok(vcpu_stats)) => {
                assert!(offered);
                assert!(!vm_stats.is_empty());
                assert!(
                    vcpu_stats.iter().any(|s| s.name == "exits"),
                    "{vcpu_stats:?}"
                );
            }
            (vm_stats, vcpu_stats) => assert!(
                !offered,
                "KVM offers binary stats, yet: {vm_stats:?} {vcpu_stats:?}"
            ),
        }
    }
}
