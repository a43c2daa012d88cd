//! What a suite is once discovered: a flat list of tests, each a guest to
//! boot or a host executable to run, with where it came from.

pub mod discover;
pub mod file;
pub mod kselftest;
pub mod kut;
pub mod kut_env;
pub mod sweep;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ktvmm_vmm::boot::Protocol;

/// One test, ready to schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct TestSpec {
    /// Unique within a run; what filters, `--rerun-failed` and reports use.
    pub name: String,
    /// What to run.
    pub kind: TestKind,
    /// This test's own limit; `None`: the run's `--timeout`.
    pub timeout: Option<Duration>,
    /// Groups for `-g`.
    pub groups: Vec<String>,
    /// The suite file (or path on the command line) that defined it.
    pub source: PathBuf,
    /// Runs with nothing else running (a performance test that other tests
    /// would slow past its limit).
    pub exclusive: bool,
    /// Which variant of a swept test this is (`--sweep`, a suite's
    /// `sweep`, `--kvm-config`).
    pub variant: Option<crate::suite::sweep::Variant>,
}

/// How a test runs.
#[derive(Clone, Debug, PartialEq)]
pub enum TestKind {
    /// A guest booted by `ktvmm run`.
    Guest(GuestTest),
    /// A host executable (kselftest convention: 0 pass, 4 skip).
    Exec(ExecTest),
    /// Not run: the suite says why (wrong arch, a check that fails, an
    /// option ktvmm cannot honour). Reported as a skip with the reason.
    Skip(String),
}

/// A guest and the VM it needs.
#[derive(Clone, Debug, PartialEq)]
pub struct GuestTest {
    /// An ELF path, or `bundled:NAME`.
    pub guest: String,
    /// vCPUs.
    pub smp: u32,
    /// RAM in MiB.
    pub mem_mib: u64,
    /// The guest's command line.
    pub append: String,
    /// A file passed as the initrd.
    pub initrd: Option<PathBuf>,
    /// The CPU model (`ktvmm run --cpu`); `None`: ktvmm's default.
    pub cpu: Option<String>,
    /// Leave out the PIT (`ktvmm run --no-pit`).
    pub no_pit: bool,
    /// Boot with this protocol (`ktvmm run --boot`) rather than the one the
    /// file calls for.
    pub boot: Option<Protocol>,
    /// An Intel VT-d unit in front of edu (`ktvmm run --iommu`).
    pub iommu: bool,
    /// How its exit code reads.
    pub exit_codes: ExitCodes,
    /// Which VMM runs it.
    pub vmm: Vmm,
}

/// The VMM a guest runs under (`ktvmm test --env`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Vmm {
    /// ktvmm itself.
    #[default]
    Ktvmm,
    /// QEMU with KVM (`qemu-kvm`) or with TCG (`qemu-tcg`).
    Qemu {
        /// TCG instead of KVM.
        tcg: bool,
    },
}

/// Guests' exit-code conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCodes {
    /// ktvmm's (and the kvm-unit-tests report convention): 0 pass, 77 skip.
    Ktvmm,
    /// kvm-unit-tests x86 binaries, written for QEMU's isa-debug-exit,
    /// which reports `(code << 1) | 1`: they write 0 to pass, 1 to fail,
    /// 77 >> 1 = 38 to skip, and 63 from `abort()`.
    KvmUnitTests,
}

/// A host program with its arguments and environment.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecTest {
    /// The program.
    pub path: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables added to the runner's environment.
    pub env: Vec<(String, String)>,
    /// Working directory; `None`: the runner's.
    pub cwd: Option<PathBuf>,
}

impl ExitCodes {
    /// kvm-unit-tests' `.flat` files speak its convention; other guests
    /// ktvmm's.
    pub fn for_guest(guest: &str) -> Self {
        if guest.ends_with(".flat") {
            ExitCodes::KvmUnitTests
        } else {
            ExitCodes::Ktvmm
        }
    }
}

impl GuestTest {
    /// A guest with ktvmm's defaults (1 vCPU, 128 MiB, no arguments).
    pub fn new(guest: impl Into<String>) -> Self {
        let guest = guest.into();
        GuestTest {
            exit_codes: ExitCodes::for_guest(&guest),
            guest,
            smp: 1,
            mem_mib: 128,
            append: String::new(),
            initrd: None,
            cpu: None,
            no_pit: false,
            boot: None,
            iommu: false,
            vmm: Vmm::Ktvmm,
        }
    }
}

/// A suite that cannot be read: the run does not start.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// A path on the command line or in a suite is unusable.
    #[error("{}: {message}", path.display())]
    Path {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A file that is not a regular file, too large or unreadable.
    #[error(transparent)]
    Input(#[from] ktvmm_vmm::input::InputError),
    /// A line of a suite file is wrong.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Two tests have one name.
    #[error(
        "two tests are named '{name}' (from {} and {}); give one a `name` in a suite file",
        first.display(),
        second.display()
    )]
    Duplicate {
        /// The name.
        name: String,
        /// Where the first came from.
        first: PathBuf,
        /// Where the second came from.
        second: PathBuf,
    },
}

impl SuiteError {
    /// `path` is unusable because of `message`.
    pub fn path(path: &Path, message: String) -> Self {
        SuiteError::Path {
            path: path.to_path_buf(),
            message,
        }
    }
}

/// Mutated suite files and `unittests.cfg` texts, from a fixed seed: every
/// one parses or gives an error with a line, and none panics.
#[cfg(test)]
mod fuzz {
    use std::path::Path;

    use ktvmm_fuzz::rng::SplitMix64;

    const SUITE: &str = "[defaults]\ntimeout = 30\ngroups = [\"a\"]\n\n[[test]]\nname = \"x\"\n\
        guest = \"bundled:exitcode\"\nsmp = 2\nmemory = \"256M\"\nappend = \"pass\"\n\
        sweep = { smp = \"1..4*2\", memory = [\"64M\", 96], cpu = [\"max,-pcid\"] }\n\n\
        [[test]]\nexec = \"/bin/true\"\nargs = [\"-v\"]\nenv = { A = \"1\" }\n";
    const CFG: &str = "# c\n[t1]\nfile = vmexit.flat\nsmp = 2\ntest_args = 'cpuid'\n\
        qemu_params = -cpu qemu64,+x2apic -m 256\ngroups = a nodefault\ntimeout = 90s\n\n\
        [t2]\nfile = msr.flat\nqemu_params = \"\"\"-cpu max\n -smp 2\"\"\"\ncheck = /x=Y\n";

    fn mutate(text: &str, rng: &mut SplitMix64) -> String {
        let chars = b"[]=\"'\n #$,{}0123456789-.aZ\\";
        let mut bytes = text.as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len());
            let c = chars[rng.below(chars.len())];
            match rng.below(3) {
                0 => bytes[at] = c,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, c),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The checked-in corpus of the cargo-fuzz suite-file and
    /// unittests.cfg inputs: each parses or names a line.
    #[test]
    fn the_parser_corpus_replays() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let dir = Path::new("/nonexistent-ktvmm-fuzz");
        for (target, name) in [
            ("suite_file", "f.ktvmm.toml"),
            ("unittests_cfg", "unittests.cfg"),
        ] {
            for entry in std::fs::read_dir(corpus.join(target)).unwrap() {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                let result = if target == "suite_file" {
                    super::file::parse(&dir.join(name), &text).map(|_| ())
                } else {
                    super::kut::parse(&dir.join(name), &text).map(|_| ())
                };
                if let Err(e) = result {
                    assert!(e.to_string().contains(name), "{e}");
                }
            }
        }
    }

    #[test]
    fn mutated_suites_parse_or_name_a_line() {
        let mut rng = SplitMix64(0x5);
        let dir = Path::new("/nonexistent-ktvmm-fuzz");
        for _ in 0..5_000 {
            let text = mutate(SUITE, &mut rng);
            if let Err(e) = super::file::parse(&dir.join("f.ktvmm.toml"), &text) {
                assert!(e.to_string().contains("f.ktvmm.toml:"), "{e}\n{text}");
            }
            let text = mutate(CFG, &mut rng);
            if let Err(e) = super::kut::parse(&dir.join("unittests.cfg"), &text) {
                assert!(e.to_string().contains("unittests.cfg:"), "{e}\n{text}");
            }
        }
    }
}
