//! Why a test did not pass, in its own words, read from its log:
//!
//! - skips: the `# SKIP ...` directive of a TAP/KTAP plan (`1..0 # SKIP
//!   ...`) or result line, kvm-unit-tests' and ktest's `SKIP: ...` lines,
//!   else the last `SKIP` line or "skipping" line of plain output (KVM's
//!   `print_skip`, VFIO's "..., skipping test.");
//! - failures: the KVM selftests' `==== Test Assertion Failure ====` block
//!   (`file.c:line: expression` and the message under it), VFIO's
//!   `file.c:line: Assertion Failure` / `FAIL` lines, and the failed TAP/KTAP
//!   subtests, with the planned subtests that never reported.
//!
//! Functions over the log text only, so the scheduler calls one of them
//! however it came by the text.

use crate::subtests::{directive, tap_plan};
use crate::verdict::{Status, Subtests};

/// A reason longer than this is cut: it is one line of a summary.
const MAX_REASON_CHARS: usize = 400;
/// Failed subtests named in a reason; the rest are counted.
const SHOWN_SUBTESTS: usize = 3;

/// The reason to report for a test with `status`, given the runner's own
/// (`exit code 254`, `the test skipped`), its log and its subtests.
pub fn explain(
    status: Status,
    reason: Option<String>,
    log: &str,
    subtests: Option<&Subtests>,
) -> Option<String> {
    match status {
        Status::Skip => skip_reason(log).or(reason),
        Status::Fail | Status::Timeout => {
            let mut parts: Vec<String> = reason.into_iter().collect();
            if status == Status::Fail {
                parts.extend(assertion(log));
                parts.extend(subtests.and_then(failed_subtests));
            }
            if let Some(missing) = subtests.map(|s| s.not_run).filter(|&n| n > 0) {
                parts.push(format!(
                    "{} planned never reported",
                    plural(missing, "subtest")
                ));
            }
            (!parts.is_empty()).then(|| cut(parts.join("; ")))
        }
        _ => reason,
    }
}

/// `2 subtests failed: a; b`, from the names of the failed subtests.
fn failed_subtests(s: &Subtests) -> Option<String> {
    if s.failed.is_empty() {
        return None;
    }
    let shown: Vec<&str> = s
        .failed
        .iter()
        .take(SHOWN_SUBTESTS)
        .map(String::as_str)
        .collect();
    let more = (s.fail as usize).saturating_sub(shown.len());
    let xpass = match s.xpass {
        0 => String::new(),
        n => format!(" ({n} of them XPASS: passed though expected to fail)"),
    };
    let mut text = format!(
        "{} failed{xpass}: {}",
        plural(s.fail, "subtest"),
        shown.join("; ")
    );
    if more > 0 {
        text += &format!(" (+{more} more)");
    }
    Some(text)
}

/// What the test said when it skipped, if it said anything.
pub fn skip_reason(log: &str) -> Option<String> {
    let mut directive_reason: Option<&str> = None;
    let mut report_lines: Vec<&str> = Vec::new();
    let mut plain: Option<&str> = None;
    let mut skipping: Option<&str> = None;
    for line in log.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(text) = tap_skip(line) {
            directive_reason = Some(text);
        } else if let Some(text) = line.strip_prefix("SKIP: ") {
            report_lines.push(text.trim());
        } else if let Some(text) = line
            .strip_prefix("# SKIP")
            .or_else(|| line.strip_prefix("[SKIP]"))
            .or_else(|| line.strip_prefix("SKIP"))
        {
            let text = text.trim_start_matches([':', ' ', '-']).trim();
            if !text.is_empty() {
                plain = Some(text);
            }
        } else if line.to_ascii_lowercase().contains("skipping") {
            skipping = Some(line.trim());
        }
    }
    if let Some(text) = directive_reason {
        return Some(cut(text.to_string()));
    }
    if !report_lines.is_empty() {
        let more = report_lines.len().saturating_sub(SHOWN_SUBTESTS);
        let mut text = report_lines[..report_lines.len().min(SHOWN_SUBTESTS)].join("; ");
        if more > 0 {
            text += &format!(" (+{more} more)");
        }
        return Some(cut(text));
    }
    plain
        .or_else(|| skipping.map(strip_skipping))
        .map(|t| cut(t.to_string()))
}

/// The text of a `# SKIP` directive on a plan (`1..0 # SKIP why`) or a
/// result line (`ok 3 name # SKIP why`); KVM's `- ` before it dropped.
fn tap_skip(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("ok ")
        .or_else(|| line.strip_prefix("not ok "))
        .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        .or_else(|| tap_plan(line).map(|_| line))?;
    let (word, text) = directive(rest)?;
    if !word.eq_ignore_ascii_case("SKIP") {
        return None;
    }
    let text = text.trim_start_matches(['-', ' ']).trim();
    (!text.is_empty()).then_some(text)
}

/// `Unable to determine which device(s) to use, skipping test.` -> the
/// part before `, skipping`.
fn strip_skipping(line: &str) -> &str {
    let lower = line.to_ascii_lowercase();
    match lower.find(", skipping") {
        Some(at) if at > 0 => &line[..at],
        _ => line,
    }
}

/// The first assertion failure the log reports, as
/// `file.c:line: expression: message`.
pub fn assertion(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().map(own_text).collect();
    for (i, line) in lines.iter().enumerate() {
        if line
            .trim_end()
            .ends_with("==== Test Assertion Failure ====")
        {
            return Some(kvm_assertion(&lines[i + 1..]));
        }
        if let Some(place) = line
            .strip_suffix(": Assertion Failure")
            .or_else(|| line.strip_suffix(": FAIL"))
            .filter(|p| is_file_line(p))
        {
            return Some(vfio_assertion(place, &lines[i + 1..]));
        }
    }
    None
}

/// A line as the test wrote it, without another thread's progress text:
/// a status line redrawn with `\r` and no newline (`\r1 vCPUs haven't
/// rendezvoused...`) lands in front of the next line written to stderr.
/// The lines of an assertion block are indented, so what follows the
/// first run of two spaces after the last `\r` is the test's own.
fn own_text(line: &str) -> &str {
    let line = line.trim_end_matches('\r');
    let Some(cr) = line.rfind('\r') else {
        return line;
    };
    let after = &line[cr + 1..];
    if after.starts_with(' ') {
        return after;
    }
    match after.find("  ") {
        Some(at) => &after[at..],
        None => after,
    }
}

/// KVM's block (`lib/assert.c`): `  file.c:line: expression`, `  pid=...`,
/// the stack (`cat -n` of addr2line: a number and a tab), then the
/// message, indented.
fn kvm_assertion(after: &[&str]) -> String {
    let mut lines = after.iter().map(|l| l.trim_end());
    let place = lines.next().map(str::trim).unwrap_or("").to_string();
    let mut message: Vec<&str> = Vec::new();
    for line in lines {
        if !line.starts_with(' ') || line.trim().is_empty() {
            if message.is_empty() && line.trim().is_empty() {
                continue;
            }
            break;
        }
        let text = line.trim();
        let stack = text
            .split_once('\t')
            .is_some_and(|(n, _)| n.bytes().all(|b| b.is_ascii_digit()));
        if text.starts_with("pid=") || stack || text == "(stack trace empty)" {
            continue;
        }
        message.push(text);
    }
    join_message(place, &message)
}

/// VFIO's (`libvfio/assert.h`): `file.c:line: Assertion Failure`, a blank
/// line, then indented `Expression:`, `Observed:`, `[errno: ...]` and the
/// message.
fn vfio_assertion(place: &str, after: &[&str]) -> String {
    let mut message: Vec<&str> = Vec::new();
    for line in after {
        if line.trim().is_empty() {
            if message.is_empty() {
                continue;
            }
            break;
        }
        if !line.starts_with(' ') {
            break;
        }
        message.push(line.trim());
    }
    join_message(place.to_string(), &message)
}

fn join_message(place: String, message: &[&str]) -> String {
    if message.is_empty() {
        cut(place)
    } else {
        cut(format!("{place}: {}", message.join(" ")))
    }
}

/// `dir/file.c:123`
fn is_file_line(text: &str) -> bool {
    text.rsplit_once(':').is_some_and(|(file, line)| {
        file.ends_with(".c")
            && !file.contains(' ')
            && !line.is_empty()
            && line.bytes().all(|b| b.is_ascii_digit())
    })
}

fn plural(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// One printable line of at most `MAX_REASON_CHARS`: a reason is read from
/// a log, which may hold control characters.
fn cut(text: String) -> String {
    let text = if text.chars().any(char::is_control) {
        crate::printable::visible(text.as_bytes())
    } else {
        text
    };
    if text.chars().count() <= MAX_REASON_CHARS {
        return text;
    }
    let mut short: String = text.chars().take(MAX_REASON_CHARS - 3).collect();
    short.push_str("...");
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_reasons_in_the_tests_own_words() {
        // KVM's TEST_REQUIRE through ksft_exit_skip.
        let kvm = "Random seed: 0x6b8b4567\nTAP version 13\n\
                   1..0 # SKIP - Requirement not met: kvm_has_cap(KVM_CAP_HYPERV_TIME)\n";
        assert_eq!(
            skip_reason(kvm).as_deref(),
            Some("Requirement not met: kvm_has_cap(KVM_CAP_HYPERV_TIME)")
        );
        let subtest = "1..2\nok 1 a\nok 2 b # SKIP no nested VMX\n";
        assert_eq!(skip_reason(subtest).as_deref(), Some("no nested VMX"));
        // VFIO's libvfio, plain stderr.
        let vfio = "Unable to determine which device(s) to use, skipping test.\n";
        assert_eq!(
            skip_reason(vfio).as_deref(),
            Some("Unable to determine which device(s) to use")
        );
        // kvm-unit-tests and ktest guests.
        let kut = "enabling apic\nSKIP: PKU not enabled\nSUMMARY: 1 tests, 1 skipped\n";
        assert_eq!(skip_reason(kut).as_deref(), Some("PKU not enabled"));
        let plain = "SKIP hugepages unavailable\nbye\n";
        assert_eq!(skip_reason(plain).as_deref(), Some("hugepages unavailable"));
        assert_eq!(skip_reason("nothing to see\n"), None);
        assert_eq!(
            explain(Status::Skip, Some("the test skipped".into()), "x\n", None).as_deref(),
            Some("the test skipped")
        );
    }

    #[test]
    fn kvm_assertion_with_stack_and_message() {
        let log = "Random seed: 0x1\n==== Test Assertion Failure ====\n  \
                   x86/state_test.c:231: r == 0\n  pid=4242 tid=4242 errno=4 - Interrupted system call\n     \
                   1\t0x0000000000402d1c: main at state_test.c:231\n     \
                   2\t0x00007f0e5c02924a: ?? ??:0\n  Unexpected result from KVM_SET_NESTED_STATE, r: -1\n";
        assert_eq!(
            assertion(log).as_deref(),
            Some(
                "x86/state_test.c:231: r == 0: Unexpected result from KVM_SET_NESTED_STATE, r: -1"
            )
        );
        let reason = explain(Status::Fail, Some("exit code 254".into()), log, None);
        assert_eq!(
            reason.as_deref(),
            Some(
                "exit code 254; x86/state_test.c:231: r == 0: Unexpected result from KVM_SET_NESTED_STATE, r: -1"
            )
        );
        let bare = "==== Test Assertion Failure ====\n  lib/kvm_util.c:99: false\n  pid=1 tid=1 errno=0 - Success\n  (stack trace empty)\n";
        assert_eq!(assertion(bare).as_deref(), Some("lib/kvm_util.c:99: false"));
    }

    /// mmu_stress_test's rendezvous progress (`\r` and no newline, on
    /// stdout) interleaved with the assertion on stderr, as logged here.
    #[test]
    fn kvm_assertion_through_progress_lines() {
        let log = "Waiting for vCPUs to finish run 1...\n\
                   \r1 vCPUs haven't rendezvoused...==== Test Assertion Failure ====\n  \
                   lib/x86/processor.c:734: Unconditional guest failure\n  \
                   pid=15261 tid=15874 errno=4 - Interrupted system call\n\
                   \r1 vCPUs haven't rendezvoused...     1\t0x412c41: assert_on_unhandled_exception at processor.c:778\n     \
                   2\t0x407614: _vcpu_run at kvm_util.c:1663\n     3\t (inlined by) vcpu_run at kvm_util.c:1674\n\
                   \r1 vCPUs haven't rendezvoused...  Unhandled exception '0xe' at guest RIP '0x40357c'\n";
        assert_eq!(
            assertion(log).as_deref(),
            Some(
                "lib/x86/processor.c:734: Unconditional guest failure: Unhandled exception '0xe' at guest RIP '0x40357c'"
            )
        );
    }

    #[test]
    fn vfio_assertion() {
        let log = "vfio_dma_mapping_test.c:120: Assertion Failure\n\n  Expression: rc == 0\n  \
                   Observed: 0xffffffffffffffea == 0\n  [errno: 22 - Invalid argument]\n  map failed\n";
        assert_eq!(
            assertion(log).as_deref(),
            Some(
                "vfio_dma_mapping_test.c:120: Expression: rc == 0 Observed: 0xffffffffffffffea == 0 [errno: 22 - Invalid argument] map failed"
            )
        );
        assert_eq!(
            assertion("lib/vfio_pci_device.c:7: FAIL\n\n  no BAR\n").as_deref(),
            Some("lib/vfio_pci_device.c:7: no BAR")
        );
        assert_eq!(assertion("the word FAIL alone: FAIL\n"), None);
    }

    #[test]
    fn failed_and_unreported_subtests() {
        let subtests = crate::subtests::count(
            "1..6\nok 1 a\nnot ok 2 b\nnot ok 3 # error epsilon\nok 4 # XFAIL delta\n",
        );
        let reason = explain(
            Status::Fail,
            Some("exit code 1".into()),
            "",
            subtests.as_ref(),
        );
        assert_eq!(
            reason.as_deref(),
            Some("exit code 1; 2 subtests failed: b; epsilon; 2 subtests planned never reported")
        );
        let kut = crate::subtests::count(
            "PASS: a\nXPASS: pmu: b\nKFAIL: c\nXFAIL: d\nFAIL: e\n\
             SUMMARY: 5 tests, 2 unexpected failures, 1 known failures, 1 expected failures\n",
        );
        assert_eq!(
            explain(Status::Fail, Some("exit code 1".into()), "", kut.as_ref()).as_deref(),
            Some(
                "exit code 1; 2 subtests failed (1 of them XPASS: passed though expected to \
                 fail): pmu: b; e"
            )
        );
        let odd = explain(
            Status::Skip,
            None,
            "SKIP: no\x1b[31m colour\tat all\n",
            None,
        );
        assert_eq!(odd.as_deref(), Some("no^[[31m colour\tat all"));
        let long = "x".repeat(1000);
        let cut_reason = explain(Status::Fail, Some(long), "", None).unwrap();
        assert_eq!(cut_reason.chars().count(), MAX_REASON_CHARS);
    }
}
