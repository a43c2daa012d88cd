//! Subtest counts from a test's output: TAP (`ok 1 - x`, `not ok 2 - y`,
//! `# SKIP`), as kselftests print, and kvm-unit-tests' `PASS: x` /
//! `FAIL: y` / `SKIP: z` report lines, as ktvmm's guests print.

use crate::verdict::Subtests;

/// The counts, or `None` when the output has no subtest lines.
pub fn count(output: &str) -> Option<Subtests> {
    let mut tap = Subtests::default();
    let mut kut = Subtests::default();
    for line in output.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("not ok ") {
            if starts_with_number(rest) {
                tap.fail += 1;
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
        } else if line.starts_with("FAIL: ") || line.starts_with("XPASS: ") {
            kut.fail += 1;
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
                skip: 2
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
                skip: 1
            })
        );
    }

    #[test]
    fn nothing_to_count() {
        assert_eq!(count("hello\nworld\n"), None);
        assert_eq!(count(""), None);
    }
}
