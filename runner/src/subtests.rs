//! Subtest verdicts from a test's output: TAP (`ok 1 - x`, `not ok 2 - y`,
//! `# SKIP`), as kselftests print, and kvm-unit-tests' report lines, as
//! ktvmm's guests print: counts, and the names of the subtests that failed.
//! kvm-unit-tests' `lib/report.c` counts `FAIL:` and `XPASS:` (passed
//! though expected to fail) as unexpected failures, `XFAIL:` (failed as
//! expected) and `KFAIL:` (a known failure) as neither passes nor
//! failures, and `SKIP:` as skipped; so does this.

use crate::verdict::Subtests;

/// Names kept per test: enough to see a pattern, bounded for a test that
/// fails thousands of assertions.
const MAX_FAILED_NAMES: usize = 100;

/// The counts, or `None` when the output has no subtest lines.
pub fn count(output: &str) -> Option<Subtests> {
    let mut tap = Subtests::default();
    let mut kut = Subtests::default();
    let mut planned: Option<u32> = None;
    let mut reported: u32 = 0;
    for line in output.lines() {
        let line = line.trim_end_matches('\r');
        if let Some((ok, rest)) = tap_result(line) {
            reported += 1;
            tap_line(&mut tap, ok, rest);
        } else if let Some(n) = tap_plan(line) {
            // The first plan is the test's own; later ones are incidental.
            planned.get_or_insert(n);
        } else if let Some((word, name)) = kut_report(line) {
            match word {
                "PASS" => kut.pass += 1,
                "XFAIL" => kut.xfail += 1,
                "KFAIL" => kut.kfail += 1,
                "SKIP" => kut.skip += 1,
                unexpected => {
                    kut.fail += 1;
                    kut.xpass += u32::from(unexpected == "XPASS");
                    note_failure(&mut kut, name.trim());
                }
            }
        }
    }
    tap.not_run = planned.unwrap_or(0).saturating_sub(reported);
    // A test speaks one of the two; if both appear, the larger tally is the
    // test's own and the other is incidental text.
    [tap, kut]
        .into_iter()
        .filter(|s| total(s) > 0)
        .max_by_key(total)
}

fn total(s: &Subtests) -> u32 {
    s.pass + s.fail + s.skip + s.xfail + s.kfail + s.not_run
}

/// A kvm-unit-tests report line (`va_report` prints `WORD: ` then the
/// prefixes and message): its word and the rest.
fn kut_report(line: &str) -> Option<(&'static str, &str)> {
    ["PASS", "FAIL", "SKIP", "XFAIL", "XPASS", "KFAIL"]
        .into_iter()
        .find_map(|word| {
            let rest = line.strip_prefix(word)?.strip_prefix(": ")?;
            Some((word, rest))
        })
}

/// `ok 3 ...` / `not ok 3 ...` at the start of a line (nested KTAP results
/// are indented, and `# ok` is a comment): whether it passed, and the rest
/// after the number's start.
fn tap_result(line: &str) -> Option<(bool, &str)> {
    let (ok, rest) = match line.strip_prefix("not ok ") {
        Some(rest) => (false, rest),
        None => (true, line.strip_prefix("ok ")?),
    };
    starts_with_number(rest).then_some((ok, rest))
}

/// `1..N` (with an optional `# SKIP ...`): the number of subtests planned.
pub fn tap_plan(line: &str) -> Option<u32> {
    let rest = line.strip_prefix("1..")?;
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// Counts one result line, honouring its directive: `# SKIP` is a skip
/// whatever the result, `# XFAIL` and a failed `# TODO` are expected
/// failures, `# error` is a failure.
fn tap_line(tally: &mut Subtests, ok: bool, rest: &str) {
    let directive = directive(rest).map(|(word, _)| word.to_ascii_uppercase());
    match (ok, directive.as_deref()) {
        (_, Some("SKIP")) => tally.skip += 1,
        (_, Some("XFAIL")) | (false, Some("TODO")) => tally.xfail += 1,
        (true, _) => tally.pass += 1,
        (false, _) => {
            tally.fail += 1;
            note_failure(tally, tap_name(rest));
        }
    }
}

/// The directive of a result line: its keyword (`SKIP`, `XFAIL`, `TODO`,
/// `error`) and the text after it.
pub fn directive(rest: &str) -> Option<(&str, &str)> {
    let (_, after) = rest.split_once('#')?;
    let after = after.trim_start();
    let word_end = after
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(after.len());
    let (word, text) = after.split_at(word_end);
    (!word.is_empty()).then(|| (word, text.trim()))
}

fn note_failure(tally: &mut Subtests, name: &str) {
    if tally.failed.len() < MAX_FAILED_NAMES {
        tally.failed.push(name.to_string());
    }
}

/// `2 - name # directive` -> `name`; without a name, the directive's text
/// (`5 # error epsilon` -> `epsilon`), else the number.
fn tap_name(rest: &str) -> &str {
    let before = rest.split_once('#').map_or(rest, |(n, _)| n).trim();
    let (number, name) = before.split_once(' ').unwrap_or((before, ""));
    let name = name.trim_start_matches(['-', ' ']).trim();
    if !name.is_empty() {
        return name;
    }
    match directive(rest) {
        Some((_, text)) if !text.is_empty() => text,
        _ => number,
    }
}

fn starts_with_number(text: &str) -> bool {
    text.bytes().next().is_some_and(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_lines() {
        let out = "TAP version 13\n1..4\nok 1 a\nnot ok 2 b\nok 3 c # SKIP no vmx\n\
                   ok 4 d # skip\n# ok 5 commented\n  ok 1 nested\nok x\n";
        assert_eq!(
            count(out),
            Some(Subtests {
                pass: 1,
                fail: 1,
                skip: 2,
                failed: vec!["b".into()],
                ..Default::default()
            })
        );
    }

    #[test]
    fn kvm_unit_tests_lines() {
        let out = "PASS: one\nFAIL: two\nSKIP: three\nXFAIL: four\nSUMMARY: 4 tests\n";
        assert_eq!(
            count(out),
            Some(Subtests {
                pass: 1,
                fail: 1,
                skip: 1,
                xfail: 1,
                failed: vec!["two".into()],
                ..Default::default()
            })
        );
    }

    /// Report lines as KUT's tests print them: x86/vmx_tests.c's
    /// `report_xfail` checks of a #DB VM-exit (XFAIL when the erratum
    /// shows, XPASS when it does not), powerpc/spapr_vpa.c's and
    /// powerpc/mmu.c's `report_kfail`, and the summary `report_summary`
    /// prints for them (XPASS is among the 2 unexpected failures, KFAIL and
    /// XFAIL are not).
    #[test]
    fn kvm_unit_tests_expected_unexpected_and_known_failures() {
        let out = "enabling apic\n\
            PASS: Expected #DB VM-exit\n\
            XFAIL: Expected pending debug exceptions 0 (actual 4000)\n\
            XPASS: Expected DR6 ffff4ff0 (actual ffff4ff0)\n\
            FAIL: Expected RIP 0x401234 (actual 401236)\n\
            KFAIL: VPA: Dispatch count is odd after deregister\n\
            SKIP: mmu: tlbie: requires at least 2 CPUs\n\
            SUMMARY: 6 tests, 2 unexpected failures, 1 known failures, \
            1 expected failures, 1 skipped\n";
        assert_eq!(
            count(out),
            Some(Subtests {
                pass: 1,
                fail: 2,
                skip: 1,
                xfail: 1,
                xpass: 1,
                kfail: 1,
                failed: vec![
                    "Expected DR6 ffff4ff0 (actual ffff4ff0)".into(),
                    "Expected RIP 0x401234 (actual 401236)".into()
                ],
                ..Default::default()
            })
        );
        // A test whose only non-passes are known failures exits 0 and
        // counts no failure.
        let known = "PASS: a\nKFAIL: b\nSUMMARY: 2 tests, 1 known failures\n";
        assert_eq!(
            count(known),
            Some(Subtests {
                pass: 1,
                kfail: 1,
                ..Default::default()
            })
        );
        // Words KUT does not print are not report lines.
        assert_eq!(count("PASSED: x\nXFAILED: y\nKFAIL:z\n"), None);
    }

    #[test]
    fn failed_names() {
        assert_eq!(tap_name("3 - vm_create # TODO x"), "vm_create");
        assert_eq!(tap_name("4"), "4");
        let many: String = (0..150).map(|i| format!("FAIL: t{i}\n")).collect();
        let counted = count(&many).unwrap();
        assert_eq!((counted.fail, counted.failed.len()), (150, 100));
    }

    /// kselftest.h's directives: `ksft_test_result_error` prints
    /// `not ok N # error MSG`, `ksft_test_result_xfail` `ok N # XFAIL MSG`,
    /// `ksft_test_result_skip` `ok N # SKIP MSG`; a plan announces more
    /// than were reported when the test dies early.
    #[test]
    fn ktap_directives_and_a_short_plan() {
        let out = "TAP version 13\n1..7\nok 1 alpha\nnot ok 2 beta # SKIP no beta\n\
                   not ok 3 gamma # TODO later\nok 4 # XFAIL delta\nnot ok 5 # error epsilon\n";
        assert_eq!(
            count(out),
            Some(Subtests {
                pass: 1,
                fail: 1,
                skip: 1,
                xfail: 2,
                not_run: 2,
                failed: vec!["epsilon".into()],
                ..Default::default()
            })
        );
        let died = "1..5\nok 1 a\n";
        assert_eq!(count(died).map(|s| (s.pass, s.not_run)), Some((1, 4)));
        let nothing_yet = "TAP version 13\n1..3\n";
        assert_eq!(count(nothing_yet).map(|s| s.not_run), Some(3));
        assert_eq!(count("1..0 # SKIP - Requirement not met: x\n"), None);
    }

    #[test]
    fn nothing_to_count() {
        assert_eq!(count("hello\nworld\n"), None);
        assert_eq!(count(""), None);
    }
}
