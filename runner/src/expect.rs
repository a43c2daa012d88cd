//! Known failures (`--expect FILE`): a test that fails as expected is XFAIL,
//! one expected to fail that passes is XPASS. Only the unexpected decides
//! the exit status. The file is data kept outside the suite (TOML):
//!
//! ```toml
//! [[expect]]
//! test = "msr*"                 # a name, or a glob
//! reason = "kvm_pvm lets SPEC_CTRL through"
//! kvm_module = "kvm_pvm"        # optional: only on this KVM backend
//! kernel = "6.18*"              # optional: only on matching host kernels
//! subtests = ["*SPEC_CTRL*"]    # optional: only these subtests may fail
//! failure = "guest exit code 1*" # optional: only a failure whose reason matches
//! ```
//!
//! Without `subtests` or `failure`, any failure of the test is expected:
//! fine for a test known to be broken, too broad where the failure is
//! known. With `subtests`, some of them must have failed and nothing else;
//! with `failure` alone, the reason must match and no subtest may have
//! failed. Naming both pins a failure down: a crash, or a new failure in the
//! same test, is then unexpected.

use std::path::Path;

use ktvmm_vmm::input;
use serde::Deserialize;

use crate::select::matches;
use crate::verdict::{RunMeta, Status, TestResult};

/// One expected failure.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// Test name or glob.
    pub test: String,
    /// Why it fails (shown with the verdict).
    pub reason: String,
    /// Only with this KVM module.
    pub kvm_module: Option<String>,
    /// Only on host kernels matching this glob.
    pub kernel: Option<String>,
    /// Only these subtests (names or globs) may fail; others make the
    /// failure unexpected.
    #[serde(default)]
    pub subtests: Vec<String>,
    /// Only a failure whose reason (as results.json gives it, before this
    /// file is applied) matches this name or glob.
    pub failure: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    expect: Vec<Expectation>,
}

/// Reads an expectations file; errors name the file and line.
pub fn load(path: &Path) -> anyhow::Result<Vec<Expectation>> {
    let text = input::read_text(path, input::MAX_TEXT, "an --expect file")?;
    let file: File = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| {
            text[..s.start.min(text.len())].matches('\n').count() + 1
        });
        anyhow::anyhow!("{}:{line}: {}", path.display(), e.message().trim())
    })?;
    Ok(file.expect)
}

impl Expectation {
    fn applies(&self, result: &TestResult, meta: &RunMeta) -> bool {
        matches_all(&self.test, &result.name)
            && self
                .kvm_module
                .as_ref()
                .is_none_or(|m| *m == meta.kvm_module)
            && self
                .kernel
                .as_ref()
                .is_none_or(|k| matches_all(k, &meta.host_kernel))
    }

    /// Whether the way `result` failed is the way this expectation says.
    fn covers(&self, result: &TestResult) -> bool {
        let failed: &[String] = result.subtests.as_ref().map_or(&[], |s| &s.failed);
        let reason_matches = self
            .failure
            .as_ref()
            .is_none_or(|f| matches_all(f, result.reason.as_deref().unwrap_or("")));
        let subtests_match = if self.subtests.is_empty() {
            self.failure.is_none() || failed.is_empty()
        } else {
            !failed.is_empty()
                && failed
                    .iter()
                    .all(|f| self.subtests.iter().any(|p| matches_all(p, f)))
        };
        reason_matches && subtests_match
    }
}

/// A name pattern that must match the whole name (a plain word is exact,
/// unlike the command line's substring filters).
fn matches_all(pattern: &str, name: &str) -> bool {
    if pattern.contains(['*', '?']) {
        matches(pattern, name)
    } else {
        pattern == name
    }
}

/// Turns expected failures into XFAIL and unexpected passes into XPASS.
pub fn apply(expectations: &[Expectation], meta: &RunMeta, results: &mut [TestResult]) {
    for result in results {
        apply_one(expectations, meta, result);
    }
}

/// [`apply`] for one result.
pub fn apply_one(expectations: &[Expectation], meta: &RunMeta, result: &mut TestResult) {
    {
        let Some(expected) = expectations.iter().find(|e| e.applies(result, meta)) else {
            return;
        };
        match result.status {
            Status::Fail | Status::Timeout if expected.covers(result) => {
                let how = result.reason.take().unwrap_or_else(|| "failed".into());
                result.status = Status::XFail;
                result.reason = Some(format!("{how}; expected: {}", expected.reason));
            }
            Status::Pass => {
                result.status = Status::XPass;
                result.reason = Some(format!("passed, but expected to fail: {}", expected.reason));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::testutil::{meta, result};
    use crate::verdict::Subtests;

    fn expectation(test: &str) -> Expectation {
        Expectation {
            test: test.into(),
            reason: "known".into(),
            kvm_module: None,
            kernel: None,
            subtests: Vec::new(),
            failure: None,
        }
    }

    #[test]
    fn expected_failures_and_unexpected_passes() {
        let mut results = vec![
            result("msr", Status::Fail),
            result("msr64", Status::Pass),
            result("apic", Status::Fail),
            result("hang", Status::Timeout),
        ];
        let expect = [expectation("msr*"), expectation("hang")];
        apply(&expect, &meta(), &mut results);
        let statuses: Vec<Status> = results.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [Status::XFail, Status::XPass, Status::Fail, Status::XFail]
        );
        assert!(
            results[0]
                .reason
                .as_deref()
                .unwrap()
                .ends_with("expected: known")
        );
        assert!(!Status::XFail.is_failure() && Status::XPass.is_failure());
    }

    #[test]
    fn conditions_and_subtests_narrow_an_expectation() {
        let mut on_amd = expectation("msr");
        on_amd.kvm_module = Some("kvm_amd".into());
        let mut results = vec![result("msr", Status::Fail)];
        apply(&[on_amd], &meta(), &mut results);
        assert_eq!(results[0].status, Status::Fail, "meta says kvm_intel");

        let mut only_spec = expectation("msr");
        only_spec.subtests = vec!["*SPEC_CTRL*".into()];
        let mut r = result("msr", Status::Fail);
        r.subtests = Some(Subtests {
            pass: 10,
            fail: 2,
            skip: 0,
            failed: vec!["RDMSR(SPEC_CTRL)".into(), "WRMSR(SPEC_CTRL)".into()],
            ..Default::default()
        });
        let mut other = r.clone();
        other
            .subtests
            .as_mut()
            .unwrap()
            .failed
            .push("MSR_EFER".into());
        let mut results = vec![r, other];
        apply(&[only_spec], &meta(), &mut results);
        assert_eq!(results[0].status, Status::XFail);
        assert_eq!(
            results[1].status,
            Status::Fail,
            "an unlisted subtest failed"
        );
    }

    #[test]
    fn a_failure_pattern_pins_the_failure_down() {
        let mut crash = expectation("edu");
        crash.failure = Some("QEMU died of SIGABRT: *EDU: DMA range*".into());
        let mut expected = result("edu", Status::Fail);
        expected.reason = Some("QEMU died of SIGABRT: qemu: hardware error: EDU: DMA range".into());
        let mut other_crash = result("edu", Status::Fail);
        other_crash.reason = Some("QEMU died of SIGSEGV".into());
        let mut crash_after_failures = expected.clone();
        crash_after_failures.subtests = Some(Subtests {
            pass: 1,
            fail: 1,
            skip: 0,
            failed: vec!["edu: liveness".into()],
            ..Default::default()
        });
        let mut results = vec![expected, other_crash, crash_after_failures];
        apply(&[crash], &meta(), &mut results);
        let statuses: Vec<Status> = results.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [Status::XFail, Status::Fail, Status::Fail]);

        // Subtests and a reason together: the guest ran to its end and
        // only the named subtests failed; a crash is not that.
        let mut layout = expectation("pci-enum");
        layout.failure = Some("guest exit code 1*".into());
        layout.subtests = vec!["*slot 1*".into()];
        let mut as_known = result("pci-enum", Status::Fail);
        as_known.reason = Some("guest exit code 1; 1 subtest failed: slot 1".into());
        as_known.subtests = Some(Subtests {
            pass: 3,
            fail: 1,
            skip: 0,
            failed: vec!["slot 1 holds pci-testdev".into()],
            ..Default::default()
        });
        let mut crashed = as_known.clone();
        crashed.reason = Some("QEMU died of SIGABRT".into());
        let mut none_failed = as_known.clone();
        none_failed.subtests = None;
        let mut results = vec![as_known, crashed, none_failed];
        apply(&[layout], &meta(), &mut results);
        let statuses: Vec<Status> = results.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [Status::XFail, Status::Fail, Status::Fail]);
    }

    #[test]
    fn bad_files_name_the_line() {
        let dir = std::env::temp_dir().join(format!("ktvmm-expect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.toml");
        std::fs::write(
            &path,
            "[[expect]]\ntest = \"a\"\nreason = \"r\"\nbogus = 1\n",
        )
        .unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("x.toml:4:") && err.contains("bogus"), "{err}");
        std::fs::write(&path, "[[expect]]\ntest = \"a\"\nreason = \"r\"\n").unwrap();
        assert_eq!(load(&path).unwrap().len(), 1);
    }
}
