//! `results.tap`: TAP version 13, one test point per result, with a YAML
//! block saying what went wrong for anything that did not pass.

use std::fmt::Write as _;
use std::path::Path;

use super::{ResultsError, display_name, write_atomic};
use crate::verdict::{RunMeta, Status, TestResult};

/// Writes the TAP report for `results` to `path`, replacing any earlier
/// file atomically.
pub fn write(path: &Path, meta: &RunMeta, results: &[TestResult]) -> Result<(), ResultsError> {
    write_atomic(path, render(meta, results).as_bytes())
}

fn render(meta: &RunMeta, results: &[TestResult]) -> String {
    let mut t = String::from("TAP version 13\n");
    let _ = writeln!(t, "1..{}", results.len());
    if meta.interrupted {
        // A comment, not `Bail out!`: the plan matches what did run.
        t.push_str("# run interrupted; tests not started are not listed\n");
    }
    for (i, r) in results.iter().enumerate() {
        let n = i + 1;
        let name = description(&display_name(r));
        match r.status {
            Status::Pass => {
                let _ = writeln!(t, "ok {n} - {name}");
                continue;
            }
            Status::Flaky => {
                let _ = writeln!(t, "ok {n} - {name}");
            }
            Status::Skip => {
                let _ = write!(t, "ok {n} - {name} # SKIP");
                if let Some(reason) = &r.reason {
                    let _ = write!(t, " {}", one_line(reason));
                }
                t.push('\n');
            }
            Status::Fail | Status::Timeout | Status::Error | Status::XPass => {
                let _ = writeln!(t, "not ok {n} - {name}");
            }
            // TAP's TODO directive is exactly an expected failure.
            Status::XFail => {
                let _ = write!(t, "not ok {n} - {name} # TODO");
                if let Some(reason) = &r.reason {
                    let _ = write!(t, " {}", one_line(reason));
                }
                t.push('\n');
            }
        }
        diagnostics(&mut t, r);
    }
    t
}

/// The YAML diagnostic block under a test point.
fn diagnostics(t: &mut String, r: &TestResult) {
    t.push_str("  ---\n");
    let _ = writeln!(t, "  status: {}", r.status.name());
    let _ = writeln!(t, "  duration_ms: {}", r.duration.as_millis());
    if let Some(code) = r.exit_code {
        let _ = writeln!(t, "  exit_code: {code}");
    }
    if let Some(reason) = &r.reason {
        let _ = writeln!(t, "  message: {}", yaml_string(reason));
    }
    let _ = writeln!(t, "  log: {}", yaml_string(&r.log.to_string_lossy()));
    if r.iteration > 1 {
        let _ = writeln!(t, "  iteration: {}", r.iteration);
    }
    if let Some(s) = &r.subtests {
        let _ = writeln!(
            t,
            "  subtests: {{pass: {}, fail: {}, skip: {}, xfail: {}, xpass: {}, kfail: {}, \
             not_run: {}}}",
            s.pass, s.fail, s.skip, s.xfail, s.xpass, s.kfail, s.not_run
        );
    }
    t.push_str("  ...\n");
}

/// A test name as a TAP description: on one line, with `#` escaped as
/// `\#` (else it would start a directive) and `\` as `\\` so the escape
/// stays unambiguous.
fn description(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in one_line(name).chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '#' => out.push_str("\\#"),
            c => out.push(c),
        }
    }
    out
}

/// `s` with line breaks and other control characters as spaces: a newline
/// would end the test point line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `s` as a YAML double-quoted scalar. JSON's string escapes are a subset
/// of YAML's, so serde_json spells it correctly, control characters and
/// all.
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// What a TAP consumer sees: the plan, and each test point's number,
    /// ok-ness, description and directive.
    #[derive(Debug)]
    struct Point {
        n: usize,
        ok: bool,
        desc: String,
        directive: Option<String>,
    }

    /// A minimal TAP 13 reader: checks the version line, a single plan
    /// before the points, sequential numbering, and that YAML blocks are
    /// indented and closed.
    fn check(tap: &str) -> (usize, Vec<Point>) {
        let mut lines = tap.lines();
        assert_eq!(lines.next(), Some("TAP version 13"));
        let plan = lines.next().unwrap();
        let planned: usize = plan.strip_prefix("1..").unwrap().parse().unwrap();
        let mut points: Vec<Point> = Vec::new();
        let mut in_yaml = false;
        for line in lines {
            if in_yaml {
                assert!(line.starts_with("  "), "unindented YAML: {line:?}");
                in_yaml = line != "  ...";
                continue;
            }
            if line == "  ---" {
                assert!(!points.is_empty(), "YAML before any test point");
                in_yaml = true;
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (ok, rest) = if let Some(rest) = line.strip_prefix("ok ") {
                (true, rest)
            } else if let Some(rest) = line.strip_prefix("not ok ") {
                (false, rest)
            } else {
                panic!("not a TAP line: {line:?}");
            };
            let (n, rest) = rest.split_once(" - ").unwrap();
            // The directive starts at the first unescaped `#`.
            let mut desc = String::new();
            let mut directive = None;
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => desc.push(chars.next().unwrap()),
                    '#' => {
                        directive = Some(chars.as_str().trim().to_string());
                        break;
                    }
                    c => desc.push(c),
                }
            }
            points.push(Point {
                n: n.parse().unwrap(),
                ok,
                desc: desc.trim_end().to_string(),
                directive,
            });
        }
        assert!(!in_yaml, "unclosed YAML block");
        assert_eq!(points.len(), planned, "plan does not match the points");
        for (i, p) in points.iter().enumerate() {
            assert_eq!(p.n, i + 1, "numbering");
        }
        (planned, points)
    }

    #[test]
    fn plan_numbering_and_directives() {
        let mut results = one_of_each();
        results[2].reason = Some("needs\nAVX-512 # really".into());
        results.push(result("odd # name \\ here\nsecond line", Status::Pass));
        let tap = render(&meta(), &results);
        let (planned, points) = check(&tap);
        assert_eq!(planned, 9);
        let oks: Vec<bool> = points.iter().map(|p| p.ok).collect();
        assert_eq!(
            oks,
            [true, false, true, false, false, true, false, false, true]
        );
        assert_eq!(points[6].directive.as_deref(), Some("TODO XFAIL reason"));
        assert_eq!(points[1].desc, "t-fail");
        assert_eq!(
            points[2].directive.as_deref(),
            Some("SKIP needs AVX-512 # really")
        );
        assert_eq!(points[0].directive, None);
        assert_eq!(points[5].desc, "t-flaky");
        assert_eq!(points[8].desc, "odd # name \\ here second line");
        assert_eq!(points[8].directive, None);
        assert!(tap.contains("ok 3 - t-skip # SKIP needs AVX-512 # really\n"));
        assert!(tap.contains(
            "not ok 4 - t-timeout\n  ---\n  status: timeout\n  duration_ms: 1500\n  \
             message: \"TIMEOUT reason\"\n  log: \"logs/t-timeout.log\"\n  ...\n"
        ));
        assert!(tap.contains(
            "not ok 2 - t-fail\n  ---\n  status: fail\n  duration_ms: 1500\n  exit_code: 1\n"
        ));
        // Passes get no YAML block.
        assert!(tap.starts_with("TAP version 13\n1..9\nok 1 - t-pass\nnot ok 2"));
        assert!(tap.contains("ok 6 - t-flaky\n  ---\n  status: flaky\n"));
    }

    #[test]
    fn empty_and_interrupted_runs() {
        let mut meta = meta();
        assert_eq!(render(&meta, &[]), "TAP version 13\n1..0\n");
        meta.interrupted = true;
        let tap = render(&meta, &[result("a", Status::Error)]);
        let (planned, _) = check(&tap);
        assert_eq!(planned, 1);
    }

    #[test]
    fn yaml_strings_escape_control_bytes() {
        let mut r = result("x", Status::Fail);
        r.reason = Some("a\"b\u{1b}[31m\nc".into());
        r.iteration = 2;
        let tap = render(&meta(), &[r]);
        check(&tap);
        assert!(
            tap.contains("  message: \"a\\\"b\\u001b[31m\\nc\"\n"),
            "{tap}"
        );
        assert!(tap.contains("not ok 1 - x (iteration 2)\n"));
        assert!(tap.contains("  iteration: 2\n"));
    }
}
