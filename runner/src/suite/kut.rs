//! kvm-unit-tests' `unittests.cfg`, read the way KUT's `run_tests.sh`
//! reads it (`scripts/common.bash`, `scripts/runtime.bash`): one section per
//! test, the `.flat` files next to the cfg file, default timeout 90 s.
//!
//! What KUT's scripts skip, ktvmm skips with the same reason (another arch,
//! a `check` that does not hold, `nodefault` groups, a missing `.flat`), and
//! so it does for QEMU options it cannot honour: never a silent pass.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
use std::time::Duration;

use super::{ExitCodes, GuestTest, SuiteError, TestKind, TestSpec};
use ktvmm_vmm::cpu::model::{self as cpu_model, CpuSpec, HostCpu};
use ktvmm_vmm::input;

use crate::units::{parse_mem_mib, parse_seconds};

/// KUT's default per-test limit.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);
/// The architecture ktvmm runs (KUT's `$ARCH`).
const ARCH: &str = "x86_64";
/// Devices every ktvmm VM has, so `-device` asking for them is honoured.
const BUILT_IN_DEVICES: [&str; 4] = ["pci-testdev", "pc-testdev", "isa-debug-exit", "edu"];

/// Whether `path` is a kvm-unit-tests test list.
pub fn is_unittests_cfg(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "unittests.cfg")
}

/// One section of the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The section name: the test's name.
    pub name: String,
    /// Line of the `[name]` header.
    pub line: usize,
    /// `file`.
    pub file: String,
    /// `smp`.
    pub smp: Option<String>,
    /// `test_args`, as written (shell quoting included).
    pub test_args: String,
    /// `qemu_params` / `extra_params`.
    pub qemu_params: String,
    /// `groups`, split.
    pub groups: Vec<String>,
    /// `arch`.
    pub arch: String,
    /// `accel`.
    pub accel: String,
    /// `timeout`, as written.
    pub timeout: String,
    /// `check`, as written.
    pub check: String,
    /// `disabled_if`, a bash condition.
    pub disabled_if: String,
}

/// Reads the cfg file's sections.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, SuiteError> {
    let err = |line: usize, message: String| SuiteError::Line {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut entries: Vec<Entry> = Vec::new();
    // Section name -> its line: duplicates are found in linear time.
    let mut defined: HashMap<String, usize> = HashMap::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((number, raw)) = lines.next() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            // As in suite files: `[]` would run a test with no name.
            super::file::check_name(name).map_err(|e| err(number, format!("[{name}]: {e}")))?;
            if let Some(first) = defined.get(name) {
                return Err(err(
                    number,
                    format!("[{name}] is already defined on line {first}"),
                ));
            }
            defined.insert(name.to_string(), number);
            entries.push(Entry {
                name: name.to_string(),
                line: number,
                ..Entry::default()
            });
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(
                number,
                format!("expected `key = value` or `[name]`, found {line:?}"),
            ));
        };
        let (key, mut value) = (key.trim(), value.trim().to_string());
        let Some(entry) = entries.last_mut() else {
            return Err(err(
                number,
                format!("`{key}` comes before any [test] section"),
            ));
        };
        if let Some(first) = value.strip_prefix("\"\"\"") {
            // A multi-line value, up to the closing triple quote.
            let mut joined = first.to_string();
            loop {
                if let Some(done) = joined.trim_end().strip_suffix("\"\"\"") {
                    value = done.to_string();
                    break;
                }
                let Some((_, next)) = lines.next() else {
                    return Err(err(number, format!("`{key}`: no closing \"\"\"")));
                };
                joined = match joined.strip_suffix('\\') {
                    Some(continued) => continued.to_string() + next,
                    None => joined + "\n" + next,
                };
            }
        }
        match key {
            "file" => entry.file = value,
            "smp" => entry.smp = Some(value),
            "test_args" => entry.test_args = value,
            "qemu_params" | "extra_params" => entry.qemu_params = value,
            "groups" => entry.groups = value.split_whitespace().map(str::to_string).collect(),
            "arch" => entry.arch = value,
            "accel" => entry.accel = value,
            "timeout" => entry.timeout = value,
            "check" => entry.check = value,
            "disabled_if" => entry.disabled_if = value,
            // Keys for other VMMs and machines KUT supports.
            "machine" | "kvmtool_params" => {}
            other => return Err(err(number, format!("unknown key `{other}`"))),
        }
    }
    for entry in &entries {
        if entry.file.is_empty() {
            return Err(err(entry.line, format!("[{}] has no `file`", entry.name)));
        }
    }
    Ok(entries)
}

/// How a cfg entry becomes a test: the host facts it depends on.
pub struct Host {
    /// `$MAX_SMP`: the host's CPU count.
    pub cpus: u32,
    /// Run `nodefault` tests (a group was selected with `-g`).
    pub run_nodefault: bool,
    /// What the host's KVM can give guests, to skip (not fail) a test whose
    /// `-cpu` asks for more; asked of KVM on first use, since only cfg
    /// files with `-cpu` need it. `None` inside: not checked.
    cpu: OnceCell<Option<HostCpu>>,
}

impl Host {
    /// This host; KVM is asked what CPUs it can give when a test needs it.
    pub fn new(cpus: u32, run_nodefault: bool) -> Self {
        Host {
            cpus,
            run_nodefault,
            cpu: OnceCell::new(),
        }
    }

    /// A host whose KVM gives `cpu` (`None`: `-cpu` is not checked).
    #[cfg(test)]
    pub fn with_cpu(cpus: u32, run_nodefault: bool, cpu: Option<HostCpu>) -> Self {
        Host {
            cpus,
            run_nodefault,
            cpu: OnceCell::from(cpu),
        }
    }

    fn host_cpu(&self) -> Option<&HostCpu> {
        self.cpu.get_or_init(|| HostCpu::probe().ok()).as_ref()
    }
}

/// A `check` names a sysfs parameter: a few bytes.
const CHECK_FILE_MAX: u64 = 64 << 10;

/// Reads `path` and turns its entries into tests.
pub fn load(path: &Path, host: &Host) -> Result<Vec<TestSpec>, SuiteError> {
    let text = input::read_text(path, input::MAX_TEXT, "a unittests.cfg")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(path, &text)?
        .into_iter()
        .map(|entry| {
            spec(&entry, dir, path, host).map_err(|message| SuiteError::Line {
                path: path.to_path_buf(),
                line: entry.line,
                message: format!("[{}]: {message}", entry.name),
            })
        })
        .collect()
}

fn spec(entry: &Entry, dir: &Path, source: &Path, host: &Host) -> Result<TestSpec, String> {
    let timeout = if entry.timeout.is_empty() {
        DEFAULT_TIMEOUT
    } else {
        kut_duration(&entry.timeout)?
    };
    let kind = match skip_reason(entry, dir, host)? {
        Some(reason) => TestKind::Skip(reason),
        None => guest(entry, dir, host)?,
    };
    Ok(TestSpec {
        name: entry.name.clone(),
        kind,
        timeout: Some(timeout),
        groups: entry.groups.clone(),
        source: source.to_path_buf(),
        exclusive: false,
        variant: None,
    })
}

/// KUT's reasons to skip, in its order, then ktvmm's own.
fn skip_reason(entry: &Entry, dir: &Path, host: &Host) -> Result<Option<String>, String> {
    let has_group = |g: &str| entry.groups.iter().any(|x| x == g);
    if has_group("nodefault") && !host.run_nodefault {
        return Ok(Some(
            "test marked as manual run only (group nodefault; select it with -g)".into(),
        ));
    }
    if !entry.arch.is_empty() && entry.arch != ARCH {
        return Ok(Some(format!("{} only", entry.arch)));
    }
    if !entry.accel.is_empty() && entry.accel != "kvm" {
        return Ok(Some(format!("{} only, but ktvmm is KVM", entry.accel)));
    }
    if !entry.disabled_if.is_empty() && bash_true(&entry.disabled_if) {
        return Ok(Some(format!("disabled because: {}", entry.disabled_if)));
    }
    for check in entry.check.split_whitespace() {
        let (path, value) = check.split_once('=').unwrap_or((check, ""));
        // A sysfs parameter: a few bytes, never a FIFO or /dev/zero.
        let actual = input::read_text(Path::new(path), CHECK_FILE_MAX, "a `check` file").ok();
        if actual.as_deref().map(str::trim_end) != Some(value) {
            return Ok(Some(format!("{path} not equal to {value}")));
        }
    }
    if !dir.join(&entry.file).is_file() {
        return Ok(Some(format!(
            "Test file '{}' not found",
            dir.join(&entry.file).display()
        )));
    }
    if has_group("migration") {
        return Ok(Some("migration is not supported by ktvmm".into()));
    }
    if has_group("panic") {
        return Ok(Some("the pvpanic device is not supported by ktvmm".into()));
    }
    let qemu = QemuParams::parse(&entry.qemu_params)?;
    if let Some(option) = qemu.unsupported.first() {
        return Ok(Some(format!(
            "QEMU option {option} is not supported by ktvmm"
        )));
    }
    if let (Some(spec), Some(cpu)) = (&qemu.cpu, host.host_cpu())
        && let Err(e) = cpu.check(spec)
    {
        return Ok(Some(format!("-cpu {spec}: {e}")));
    }
    Ok(None)
}

fn guest(entry: &Entry, dir: &Path, host: &Host) -> Result<TestKind, String> {
    let qemu = QemuParams::parse(&entry.qemu_params)?;
    let smp = match (&qemu.smp, &entry.smp) {
        (Some(n), _) => *n,
        (None, Some(text)) => parse_smp(text, host.cpus)?,
        (None, None) => 1,
    };
    let args = shell_words(&entry.test_args)?.join(" ");
    Ok(TestKind::Guest(GuestTest {
        guest: dir.join(&entry.file).display().to_string(),
        smp,
        mem_mib: qemu.mem_mib.unwrap_or(GuestTest::new("").mem_mib),
        append: args,
        initrd: None,
        cpu: qemu.cpu.map(|c| c.to_string()),
        no_pit: qemu.no_pit,
        boot: None,
        iommu: qemu.iommu,
        vmm: Default::default(),
        exit_codes: ExitCodes::KvmUnitTests,
    }))
}

fn parse_smp(text: &str, max: u32) -> Result<u32, String> {
    match text.trim() {
        "$MAX_SMP" => Ok(max.max(1)),
        t => t
            .parse::<u32>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("smp = {t} is not a CPU count")),
    }
}

/// `90`, `90s`, `2m`, `1h` (the `timeout` command's spelling).
fn kut_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = match text.chars().last() {
        Some('m') => (&text[..text.len() - 1], 60.0),
        Some('h') => (&text[..text.len() - 1], 3600.0),
        Some('d') => (&text[..text.len() - 1], 86400.0),
        _ => (text, 1.0),
    };
    let seconds =
        parse_seconds(number).map_err(|_| format!("timeout = {text} is not a duration"))?;
    Ok(seconds.mul_f64(scale))
}

/// What ktvmm makes of a test's QEMU options.
#[derive(Debug, Default, PartialEq)]
struct QemuParams {
    smp: Option<u32>,
    cpu: Option<CpuSpec>,
    no_pit: bool,
    /// `-device intel-iommu` with interrupt remapping in xAPIC mode.
    iommu: bool,
    /// `-machine q35`.
    q35: bool,
    mem_mib: Option<u64>,
    unsupported: Vec<String>,
}

impl QemuParams {
    fn parse(text: &str) -> Result<Self, String> {
        let words = shell_words(text)?;
        let mut params = QemuParams::default();
        let mut words = words.iter().map(String::as_str).peekable();
        while let Some(word) = words.next() {
            let option = word.trim_start_matches('-');
            let mut value = || {
                words
                    .next()
                    .ok_or_else(|| format!("QEMU option {word} needs a value"))
            };
            match option {
                "enable-kvm" | "nodefaults" | "no-reboot" | "nographic" => {}
                "m" => {
                    let v = value()?;
                    let size = v.split(',').next().unwrap_or(v);
                    let size = size.strip_prefix("size=").unwrap_or(size);
                    params.mem_mib = Some(parse_mem_mib(size)?);
                }
                "smp" => {
                    let v = value()?;
                    let n = v.split(',').next().unwrap_or(v);
                    params.smp = Some(parse_smp(n.strip_prefix("cpus=").unwrap_or(n), 1)?);
                }
                "cpu" => {
                    let v = value()?;
                    match cpu_model::parse(v) {
                        Ok(spec) => params.cpu = Some(spec),
                        Err(_) => params.unsupported.push(format!("-cpu {v}")),
                    }
                }
                "device" => {
                    let v = value()?;
                    let mut properties = v.split(',');
                    let device = properties.next().unwrap_or(v);
                    if device == "intel-iommu"
                        && properties.all(|p| matches!(p, "intremap=on" | "eim=off"))
                    {
                        params.iommu = true;
                    } else if !BUILT_IN_DEVICES.contains(&device) {
                        params.unsupported.push(format!("-device {v}"));
                    }
                }
                "machine" | "M" => {
                    let v = value()?;
                    for property in v.split(',') {
                        match property {
                            "accel=kvm" | "pc" => {}
                            "pit=off" => params.no_pit = true,
                            // What kvm-unit-tests needs of q35 is its VT-d
                            // unit (checked below); the IOAPIC stays KVM's.
                            "q35" => params.q35 = true,
                            "kernel-irqchip=split" => {}
                            _ => params.unsupported.push(format!("-{option} {v}")),
                        }
                    }
                }
                _ => {
                    // An unknown option's value goes with it into the reason.
                    let value = words.next_if(|w| !w.starts_with('-'));
                    params
                        .unsupported
                        .push(value.map_or_else(|| word.to_string(), |v| format!("{word} {v}")));
                }
            }
        }
        if params.q35 && !params.iommu {
            params
                .unsupported
                .push("-machine q35 (ktvmm has q35's VT-d unit, not the rest of it)".into());
        }
        Ok(params)
    }
}

/// Splits like a POSIX shell (quotes and backslashes; no expansion).
pub(crate) fn shell_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed ' in {text:?}")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => w.extend(chars.next()),
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed \" in {text:?}")),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

fn bash_true(condition: &str) -> bool {
    std::process::Command::new("bash")
        .args(["-c", condition])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
##############
# a comment
[x2apic]
file = apic.flat
smp = 2
qemu_params = -cpu qemu64,+x2apic,+tsc-deadline
arch = x86_64
timeout = 30
groups = apic

[vmexit_cpuid]
file = vmexit.flat
test_args = 'cpuid'
groups = vmexit

[cmpxchg8b]
file = cmpxchg8b.flat
arch = i386

[big]
file = vmexit.flat
smp = $MAX_SMP
qemu_params = """-m 2048
  -enable-kvm"""
timeout = 2m

[manual]
file = vmexit.flat
groups = vmx nodefault

[checked]
file = vmexit.flat
check = /nonexistent/param=Y

[tcg]
file = vmexit.flat
accel = tcg

[pvpanic]
file = vmexit.flat
groups = panic

[s3]
file = s3.flat
"#;

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ktvmm-kut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["apic.flat", "vmexit.flat", "s3.flat"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        dir
    }

    fn specs(run_nodefault: bool) -> Vec<TestSpec> {
        let dir = dir();
        let cfg = dir.join("unittests.cfg");
        std::fs::write(&cfg, CFG).unwrap();
        load(&cfg, &Host::with_cpu(8, run_nodefault, None)).unwrap()
    }

    fn skip_of(specs: &[TestSpec], name: &str) -> Option<String> {
        match &specs.iter().find(|s| s.name == name).unwrap().kind {
            TestKind::Skip(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    #[test]
    fn entries_become_tests_like_run_tests_sh_makes_them() {
        let specs = specs(false);
        assert_eq!(specs.len(), 9);
        let cpuid = specs.iter().find(|s| s.name == "vmexit_cpuid").unwrap();
        assert_eq!(cpuid.timeout, Some(Duration::from_secs(90)));
        assert_eq!(cpuid.groups, ["vmexit"]);
        let TestKind::Guest(g) = &cpuid.kind else {
            panic!("{cpuid:?}")
        };
        assert_eq!((g.smp, g.append.as_str()), (1, "cpuid"));
        assert_eq!(g.exit_codes, ExitCodes::KvmUnitTests);
        assert!(g.guest.ends_with("vmexit.flat"));

        let big = specs.iter().find(|s| s.name == "big").unwrap();
        assert_eq!(big.timeout, Some(Duration::from_secs(120)));
        let TestKind::Guest(g) = &big.kind else {
            panic!("{big:?}")
        };
        assert_eq!((g.smp, g.mem_mib), (8, 2048));
    }

    #[test]
    fn what_kut_skips_is_skipped_with_its_reason() {
        let all = specs(false);
        assert_eq!(skip_of(&all, "cmpxchg8b").unwrap(), "i386 only");
        assert!(skip_of(&all, "manual").unwrap().contains("manual run only"));
        assert!(skip_of(&all, "checked").unwrap().contains("not equal to Y"));
        assert!(skip_of(&all, "tcg").unwrap().contains("tcg only"));
        assert!(skip_of(&all, "pvpanic").unwrap().contains("pvpanic"));
        // S3 resumes at the FACS waking vector without firmware.
        assert_eq!(skip_of(&all, "s3"), None);
        assert_eq!(skip_of(&all, "vmexit_cpuid"), None);
        assert_eq!(skip_of(&specs(true), "manual"), None);
    }

    #[test]
    fn cpu_models_pass_through_unless_the_host_cannot_give_them() {
        let all = specs(false);
        let x2apic = all.iter().find(|s| s.name == "x2apic").unwrap();
        let TestKind::Guest(g) = &x2apic.kind else {
            panic!("{x2apic:?}")
        };
        assert_eq!(g.cpu.as_deref(), Some("qemu64,+x2apic,+tsc-deadline"));

        // A host whose KVM has no TSC deadline timer (its own file: the
        // other tests write unittests.cfg in the same directory).
        let dir = dir();
        let cfg = dir.join("no-tsc-deadline.cfg");
        std::fs::write(&cfg, CFG).unwrap();
        let leaf1 = kvm_bindings::kvm_cpuid_entry2 {
            function: 1,
            ecx: 1 << 21,
            ..Default::default()
        };
        let host = Host::with_cpu(
            2,
            false,
            Some(HostCpu {
                supported: kvm_bindings::CpuId::from_entries(&[leaf1]).unwrap(),
                extra: Vec::new(),
                smaller_maxphyaddr: false,
                vmx_controls: Vec::new(),
            }),
        );
        let specs = load(&cfg, &host).unwrap();
        let reason = skip_of(&specs, "x2apic").unwrap();
        assert!(reason.contains("tsc-deadline"), "{reason}");
    }

    /// The cfg lines of KUT's named-model tests, on a host like an AMD one
    /// whose KVM has no VMX and does not allow a smaller MAXPHYADDR.
    #[test]
    fn named_models_run_or_skip_naming_what_the_host_lacks() {
        let cfg_text = r#"
[syscall]
file = vmexit.flat
qemu_params = -cpu Opteron_G1,vendor=AuthenticAMD

[reduced]
file = vmexit.flat
qemu_params = -cpu IvyBridge,phys-bits=36,host-phys-bits=off

[ept-mbec]
file = vmexit.flat
qemu_params = -cpu Skylake-Server,host-phys-bits,+vmx,+vmx-mbec -m 2560
"#;
        let dir = dir();
        let cfg = dir.join("named-models.cfg");
        std::fs::write(&cfg, cfg_text).unwrap();
        let entry = |function, eax, ecx, edx| kvm_bindings::kvm_cpuid_entry2 {
            function,
            eax,
            ecx,
            edx,
            ..Default::default()
        };
        let host = Host::with_cpu(
            2,
            false,
            Some(HostCpu {
                supported: kvm_bindings::CpuId::from_entries(&[
                    entry(0, 0xd, 0, 0),
                    entry(1, 0, 1 << 21, !0),
                    entry(0x8000_0000, 0x8000_0008, 0, 0),
                    entry(0x8000_0001, 0, 0, 1 << 11 | 1 << 29),
                    entry(0x8000_0008, 0x3030, 0, 0),
                ])
                .unwrap(),
                extra: Vec::new(),
                smaller_maxphyaddr: false,
                vmx_controls: Vec::new(),
            }),
        );
        let specs = load(&cfg, &host).unwrap();
        let syscall = specs.iter().find(|s| s.name == "syscall").unwrap();
        let TestKind::Guest(g) = &syscall.kind else {
            panic!("{syscall:?}")
        };
        assert_eq!(g.cpu.as_deref(), Some("Opteron_G1,vendor=AuthenticAMD"));
        let reduced = skip_of(&specs, "reduced").unwrap();
        assert!(
            reduced.starts_with("-cpu IvyBridge,phys-bits=36,host-phys-bits=off: ")
                && reduced.contains("KVM_CAP_SMALLER_MAXPHYADDR"),
            "{reduced}"
        );
        let mbec = skip_of(&specs, "ept-mbec").unwrap();
        assert!(mbec.contains("CPU flag 'vmx'"), "{mbec}");
    }

    #[test]
    fn bad_lines_are_named() {
        let path = Path::new("x86/unittests.cfg");
        let cases = [
            ("file = a.flat\n", 1, "before any"),
            ("[a]\nfile = a.flat\nbogus = 1\n", 3, "unknown key"),
            ("[a]\nfile = a.flat\nwhat is this\n", 3, "key = value"),
            ("[a]\nsmp = 2\n", 1, "no `file`"),
            (
                "[a]\nfile = a.flat\n[a]\nfile = b.flat\n",
                3,
                "already defined",
            ),
            (
                "[a]\nfile = a.flat\nqemu_params = \"\"\"-m 1\n",
                3,
                "closing",
            ),
            (
                "[a]\nfile = a.flat\n[]\nfile = b.flat\n",
                3,
                "[]: a test name cannot be empty",
            ),
        ];
        for (text, line, needle) in cases {
            let err = parse(path, text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("x86/unittests.cfg:{line}:")),
                "{err}"
            );
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn qemu_options() {
        let p = QemuParams::parse("-cpu max -m 4g -smp 3 -enable-kvm -device pci-testdev").unwrap();
        assert_eq!(p.mem_mib, Some(4096));
        assert_eq!(p.smp, Some(3));
        assert!(p.unsupported.is_empty(), "{p:?}");
        let p = QemuParams::parse("-machine pit=off -device intel-iommu -overcommit cpu-pm=on")
            .unwrap();
        assert_eq!(p.unsupported, ["-overcommit cpu-pm=on"], "{p:?}");
        assert!(p.no_pit && p.iommu);
        // intel_iommu's line; q35 without the VT-d unit, and x2APIC
        // remapping, are more than ktvmm has.
        let p = QemuParams::parse(
            "-M q35,kernel-irqchip=split -device intel-iommu,intremap=on,eim=off -device edu",
        )
        .unwrap();
        assert!(p.iommu && p.unsupported.is_empty(), "{p:?}");
        assert_eq!(QemuParams::parse("-M q35").unwrap().unsupported.len(), 1);
        let p = QemuParams::parse("-M q35 -device intel-iommu,intremap=on,eim=on").unwrap();
        assert_eq!(p.unsupported.len(), 2, "{p:?}");
        assert!(QemuParams::parse("-m").is_err());
        let p = QemuParams::parse("-cpu qemu64,+x2apic,vendor=GenuineIntel").unwrap();
        assert_eq!(
            p.cpu.map(|c| c.to_string()).as_deref(),
            Some("qemu64,+x2apic,vendor=GenuineIntel")
        );
        let p = QemuParams::parse("-cpu IvyBridge,phys-bits=36,host-phys-bits=off").unwrap();
        assert_eq!(
            p.cpu.map(|c| c.to_string()).as_deref(),
            Some("IvyBridge,phys-bits=36,host-phys-bits=off")
        );
        for not in [
            "-cpu Westmere",
            "-cpu max,phys-bits=64",
            "-cpu host,hv_passthrough",
        ] {
            assert_eq!(
                QemuParams::parse(not).unwrap().unsupported.len(),
                1,
                "{not}"
            );
        }
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(
            shell_words("'a b' c\\ d \"e\\\"f\"").unwrap(),
            ["a b", "c d", "e\"f"]
        );
        assert!(shell_words("'open").is_err());
        assert_eq!(kut_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(kut_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(kut_duration("soon").is_err());
    }
}
