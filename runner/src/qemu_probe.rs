//! Whether QEMU can start a VM here, per accelerator and CPU model, found by
//! booting a tiny guest before any test runs under it. Installed is not
//! enough: Debian's QEMU 7.2 aborts every VM with `-cpu max` or `-cpu host`
//! on some AMD hosts ("failed to set MSR 0x10a", an assertion in
//! `kvm_buf_set_msrs`), and a test tool that counted that as the guest's
//! failure would give a wrong verdict.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ktvmm_vmm::boot::test_images::{elf32_multiboot, exit_with};

use crate::suite::{GuestTest, TestKind, TestSpec, Vmm};

/// Long enough for SeaBIOS under TCG on a loaded host; a usable QEMU
/// reaches the guest in a few seconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// QEMU's stderr kept for its message.
const MAX_STDERR: u64 = 64 << 10;

/// What a probe found for one accelerator and CPU model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Usability {
    /// It boots the guest as asked.
    Usable,
    /// It boots with `model` instead, because `why`.
    Workaround {
        /// The model that works.
        model: String,
        /// QEMU's message for the one that did not.
        why: String,
    },
    /// It cannot start a VM: QEMU's own message.
    Unavailable(String),
}

/// Probes every (accelerator, model) the QEMU tests in `tests` use, in
/// parallel; then points tests at a workaround model or turns them into
/// skips with QEMU's message. Returns one notice per finding that is not
/// plain "usable", for the console and the run's metadata.
pub fn apply(tests: &mut [TestSpec]) -> Vec<String> {
    let mut wanted: BTreeMap<(bool, String), Option<Usability>> = BTreeMap::new();
    for test in tests.iter() {
        if let TestKind::Guest(g) = &test.kind
            && let Vmm::Qemu { tcg } = g.vmm
        {
            wanted.insert((tcg, crate::qemu_cmd::model_of(g).to_string()), None);
        }
    }
    if wanted.is_empty() {
        return Vec::new();
    }
    let kernel = match ProbeKernel::write() {
        Ok(kernel) => kernel,
        Err(e) => {
            let why = format!("cannot write QEMU's probe guest: {e}");
            for found in wanted.values_mut() {
                *found = Some(Usability::Unavailable(why.clone()));
            }
            return settle(tests, &wanted);
        }
    };
    let keys: Vec<(bool, String)> = wanted.keys().cloned().collect();
    let found: Vec<Usability> = std::thread::scope(|scope| {
        let handles: Vec<_> = keys
            .iter()
            .map(|(tcg, model)| {
                let path = kernel.path();
                scope.spawn(move || probe_with_workaround(path, *tcg, model))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Usability::Unavailable("the QEMU probe thread panicked".into())
                })
            })
            .collect()
    });
    for (key, usability) in keys.into_iter().zip(found) {
        wanted.insert(key, Some(usability));
    }
    settle(tests, &wanted)
}

fn settle(
    tests: &mut [TestSpec],
    found: &BTreeMap<(bool, String), Option<Usability>>,
) -> Vec<String> {
    let mut skipped: BTreeMap<(bool, String), usize> = BTreeMap::new();
    for test in tests.iter_mut() {
        let TestKind::Guest(g) = &mut test.kind else {
            continue;
        };
        let Vmm::Qemu { tcg } = g.vmm else {
            continue;
        };
        let key = (tcg, crate::qemu_cmd::model_of(g).to_string());
        match found.get(&key).cloned().flatten() {
            Some(Usability::Workaround { model, .. }) => g.cpu = Some(model),
            Some(Usability::Unavailable(why)) => {
                *skipped.entry(key.clone()).or_default() += 1;
                test.kind = TestKind::Skip(format!(
                    "{} cannot start a VM with -cpu {}: {why}",
                    accel_name(key.0),
                    key.1
                ));
            }
            _ => {}
        }
    }
    let mut notices = Vec::new();
    for ((tcg, model), usability) in found {
        match usability {
            Some(Usability::Workaround { model: used, why }) => notices.push(format!(
                "{} cannot start a VM with -cpu {model} on this host ({why}); \
                 using -cpu {used} instead",
                accel_name(*tcg)
            )),
            Some(Usability::Unavailable(why)) => notices.push(format!(
                "{} cannot start a VM with -cpu {model} ({why}): its {} test(s) are skipped \
                 and not compared",
                accel_name(*tcg),
                skipped.get(&(*tcg, model.clone())).copied().unwrap_or(0)
            )),
            _ => {}
        }
    }
    notices
}

fn accel_name(tcg: bool) -> &'static str {
    if tcg { "qemu-tcg" } else { "qemu-kvm" }
}

/// Probes `model`, and where it fails, the workarounds known for it.
pub fn probe_with_workaround(kernel: &Path, tcg: bool, model: &str) -> Usability {
    let why = match probe(kernel, tcg, model) {
        Ok(()) => return Usability::Usable,
        Err(why) => why,
    };
    for candidate in workarounds(model) {
        if probe(kernel, tcg, &candidate).is_ok() {
            return Usability::Workaround {
                model: candidate,
                why,
            };
        }
    }
    Usability::Unavailable(why)
}

/// Models to try when `model` fails: `max` and `host` pass the host's
/// ARCH_CAPABILITIES MSR through, which some hosts' KVM refuses to set
/// back (QEMU 7.2 then aborts); without that feature they boot.
fn workarounds(model: &str) -> Vec<String> {
    let base = model.split(',').next().unwrap_or(model);
    if matches!(base, "max" | "host") && !model.contains("arch-capabilities") {
        vec![format!("{model},-arch-capabilities")]
    } else {
        Vec::new()
    }
}

/// Boots the probe kernel under QEMU with the devices tests get; `Ok` when
/// the guest's write to isa-debug-exit ended it.
fn probe(kernel: &Path, tcg: bool, model: &str) -> Result<(), String> {
    let mut guest = GuestTest::new(kernel.display().to_string());
    guest.vmm = Vmm::Qemu { tcg };
    guest.cpu = Some(model.to_string());
    guest.mem_mib = 32;
    let cmd = crate::qemu_cmd::qemu_command(&guest);
    let ran = crate::helper_cmd::run(cmd, b"", PROBE_TIMEOUT, MAX_STDERR)
        .map_err(|e| format!("cannot start {}: {e}", crate::qemu_cmd::QEMU))?;
    let (status, said) = (ran.status, ran.stderr);
    match status.map(|s| s.code()) {
        // isa-debug-exit: (0 << 1) | 1.
        Some(Some(1)) => Ok(()),
        Some(code) => Err(qemu_message(&said).unwrap_or_else(|| match code {
            Some(code) => format!("QEMU exited with {code} before the guest ran"),
            None => "QEMU was killed by a signal before the guest ran".into(),
        })),
        None => Err(format!(
            "QEMU did not finish booting a trivial guest in {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// QEMU's own complaint: its first error line (`qemu-system-x86_64:
/// error: ...`), else its first line that is not a warning.
fn qemu_message(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.contains("error"))
        .or_else(|| lines.iter().find(|l| !l.contains("warning:")))
        .map(|l| l.to_string())
}

/// A multiboot kernel that exits with 0 at once, in a file QEMU can read,
/// removed when dropped.
pub struct ProbeKernel(PathBuf);

impl ProbeKernel {
    /// Writes it to the temporary directory.
    pub fn write() -> std::io::Result<Self> {
        use std::io::Write;
        let path =
            std::env::temp_dir().join(format!("ktvmm-qemu-probe-{}.elf", std::process::id()));
        // A new file of our own, never one planted at the name.
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?
            .write_all(&elf32_multiboot(0x40_0000, &exit_with(0), 0))?;
        Ok(ProbeKernel(path))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ProbeKernel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workarounds_leave_arch_capabilities_out_of_max_and_host_only() {
        assert_eq!(workarounds("max"), ["max,-arch-capabilities"]);
        assert_eq!(workarounds("host,+vmx"), ["host,+vmx,-arch-capabilities"]);
        assert!(workarounds("qemu64").is_empty());
        assert!(workarounds("max,-arch-capabilities").is_empty());
    }

    #[test]
    fn qemus_message_is_its_error_line() {
        let said = "qemu-system-x86_64: warning: host doesn't support requested feature\n\
                    qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n\
                    qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: \
                    Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n";
        assert_eq!(
            qemu_message(said).as_deref(),
            Some("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69")
        );
        assert_eq!(qemu_message("  \n"), None);
    }

    fn qemu_guest(name: &str, cpu: Option<&str>) -> TestSpec {
        let mut guest = GuestTest::new("x.flat");
        guest.vmm = Vmm::Qemu { tcg: false };
        guest.cpu = cpu.map(Into::into);
        TestSpec {
            name: name.into(),
            kind: TestKind::Guest(guest),
            timeout: None,
            groups: Vec::new(),
            source: "s".into(),
            exclusive: false,
            variant: None,
        }
    }

    #[test]
    fn unusable_models_skip_their_tests_and_workarounds_replace_models() {
        let mut tests = vec![
            qemu_guest("a@qemu-kvm", None),
            qemu_guest("b@qemu-kvm", Some("Skylake-Server")),
            qemu_guest("c@qemu-kvm", Some("qemu64")),
        ];
        let found = BTreeMap::from([
            (
                (false, "max".to_string()),
                Some(Usability::Workaround {
                    model: "max,-arch-capabilities".into(),
                    why: "MSR 0x10a".into(),
                }),
            ),
            (
                (false, "Skylake-Server".to_string()),
                Some(Usability::Unavailable("no such model".into())),
            ),
            ((false, "qemu64".to_string()), Some(Usability::Usable)),
        ]);
        let notices = settle(&mut tests, &found);
        assert!(
            matches!(&tests[0].kind, TestKind::Guest(g) if g.cpu.as_deref() == Some("max,-arch-capabilities"))
        );
        assert!(
            matches!(&tests[1].kind, TestKind::Skip(r) if r.contains("-cpu Skylake-Server: no such model"))
        );
        assert!(matches!(&tests[2].kind, TestKind::Guest(g) if g.cpu.as_deref() == Some("qemu64")));
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert!(
            notices
                .iter()
                .any(|n| n.contains("using -cpu max,-arch-capabilities")),
            "{notices:?}"
        );
        assert!(
            notices.iter().any(|n| n.contains("1 test(s) are skipped")),
            "{notices:?}"
        );
    }
}
