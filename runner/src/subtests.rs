//! Subtest verdicts from a test's output: TAP (`ok 1 - x`, `not ok 2 - y`,
//! `# SKIP`), as kselftests print, and kvm-unit-tests' `PASS: x` /
//! `FAIL: y` / `SKIP: z` report lines, as ktvmm's guests print: counts, and
//! the names of the subtests that failed.

use crate::verdict::Subtests;

/// Names kept per test: enough to see a pattern, bounded for a test that
/// fails thousands of assertions.
const MAX_FAILED_NAMES: usize = 100;

/// The counts, or `None` when the output has no subtest lines.
pub fn count(output: &str) -> Option<Subtests> {
    let mut tap = Subtests::default();
    let mut kut = Subtests::default();
    for line in output.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("not ok ") {
            if starts_with_number(rest) {
                tap.fail += 1;
                note_failure(&mut tap, tap_name(rest));
            }
        } else if let Some(rest) = line.strip_prefix("ok ") {
            if starts_with_number(rest) {
                if is_skip_directive(rest) {
                    tap.skip += 1;
                } else {
                    tap.pass += 1;
                }
            }
        } else if line.starts_with("PASS: ") || line.starts_with("XFAIL: ") {
            kut.pass += 1;
        } else if let Some(name) = line
            .strip_prefix("FAIL: ")
            .or_else(|| line.strip_prefix("XPASS: "))
        {
            kut.fail += 1;
            note_failure(&mut kut, name.trim());
        } else if line.starts_with("SKIP: ") {
            kut.skip += 1;
        }
    }
    // A test speaks one of the two; if both appear, the larger tally is the
    // test's own and the other is incidental text.
    [tap, kut]
        .into_iter()
        .filter(|s| s.pass + s.fail + s.skip > 0)
        .max_by_key(|s| s.pass + s.fail + s.skip)
}

fn note_failure(tally: &mut Subtests, name: &str) {
    if tally.failed.len() < MAX_FAILED_NAMES {
        tally.failed.push(name.to_string());
    }
}

/// `2 - name # directive` -> `name` (or the number when there is no name).
fn tap_name(rest: &str) -> &str {
    let rest = rest.split_once('#').map_or(rest, |(n, _)| n).trim();
    let (number, name) = rest.split_once(' ').unwrap_or((rest, ""));
    let name = name.trim_start_matches(['-', ' ']).trim();
    if name.is_empty() { number } else { name }
}

fn starts_with_number(text: &str) -> bool {
    text.bytes().next().is_some_and(|b| b.is_ascii_digit())
}

fn is_skip_directive(text: &str) -> bool {
    text.split_once('#')
        .is_some_and(|(_, d)| d.trim_start().to_ascii_uppercase().starts_with("SKIP"))
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
            })
        );
    }

    #[test]
    fn kvm_unit_tests_lines() {
        let out = "PASS: one\nFAIL: two\nSKIP: three\nXFAIL: four\nSUMMARY: 4 tests\n";
        assert_eq!(
            count(out),
            Some(Subtests {
                pass: 2,
                fail: 1,
                skip: 1,
                failed: vec!["two".into()],
            })
        );
    }

    #[test]
    fn failed_names() {
        assert_eq!(tap_name("3 - vm_create # TODO x"), "vm_create");
        assert_eq!(tap_name("4"), "4");
        let many: String = (0..150).map(|i| format!("FAIL: t{i}\n")).collect();
        let counted = count(&many).unwrap();
        assert_eq!((counted.fail, counted.failed.len()), (150, 100));
    }

    #[test]
    fn nothing_to_count() {
        assert_eq!(count("hello\nworld\n"), None);
        assert_eq!(count(""), None);
    }
}
