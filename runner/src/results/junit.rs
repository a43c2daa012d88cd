//! `junit.xml`, for CI systems: one `<testsuite>`, one `<testcase>` per
//! result, and the tail of the log of anything that did not pass. Written
//! with `quick-junit` (cargo-nextest's JUnit model and serializer), which
//! knows Maven Surefire's `<flakyFailure>` and does the XML escaping.
//!
//! What is still ours, because quick-junit leaves it to the caller:
//! - Characters XML 1.0 cannot hold at all (U+FFFE, U+FFFF, ...) are
//!   dropped before quick-junit sees a string; it removes only C0 controls,
//!   and one such character from a guest would make the file unreadable.
//! - quick-xml writes a tab, CR or line break in an attribute literally,
//!   and a reader turns each into a space. So attribute values get spaces
//!   for them here (what a reader would see anyway), and a reason of
//!   several lines is also the status element's text, where lines survive.
//! - The testsuite's `timestamp` keeps the form the JUnit schema gives
//!   (`2026-11-23T01:02:03`, no zone) and `hostname` is ours: both go in as
//!   plain attributes rather than quick-junit's RFC 3339 timestamp.

use std::path::{Path, PathBuf};

use quick_junit::{
    NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestRerun, TestSuite,
};

use super::utc::Utc;
use super::{ResultsError, display_name, write_atomic};
use crate::verdict::{RunMeta, Status, TestResult};

/// Lines of a non-passing test's log put in its `<system-out>`.
const TAIL_LINES: usize = 50;
/// At most this much of the end of a log is read for them: a guest can
/// print megabytes, and a few thousand bytes per line is plenty.
const TAIL_BYTES: u64 = 64 * 1024;

/// Writes the JUnit report for `results` to `path`, replacing any earlier
/// file atomically. Relative log paths that do not resolve from the current
/// directory are looked up under `dir`, the run's output directory.
pub fn write(
    path: &Path,
    dir: &Path,
    meta: &RunMeta,
    results: &[TestResult],
) -> Result<(), ResultsError> {
    let mut xml = Vec::new();
    report(dir, meta, results, hostname().as_deref())
        .serialize(&mut xml)
        .map_err(|e| ResultsError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    write_atomic(path, &xml)
}

fn report(dir: &Path, meta: &RunMeta, results: &[TestResult], host: Option<&str>) -> Report {
    let mut suite = TestSuite::new("ktvmm");
    suite.set_time(meta.duration);
    suite.extra.insert(
        "timestamp".into(),
        Utc::from_unix(meta.started_unix).iso8601().into(),
    );
    if let Some(host) = host {
        suite.extra.insert("hostname".into(), attr(host).into());
    }
    let props = [
        ("ktvmm_version", meta.ktvmm_version.clone()),
        ("command_line", shell_quote(&meta.command_line)),
        ("host_kernel", meta.host_kernel.clone()),
        ("kvm_module", meta.kvm_module.clone()),
        ("cpu", meta.cpu.clone()),
        ("interrupted", meta.interrupted.to_string()),
    ];
    suite.add_properties(props.map(|(name, value)| Property::new(name, attr(&value))));
    suite.add_test_cases(results.iter().map(|r| testcase(dir, r)));

    let mut report = Report::new("ktvmm");
    report.set_time(meta.duration);
    report.add_test_suite(suite);
    report
}

fn testcase(dir: &Path, r: &TestResult) -> TestCase {
    let reason = r.reason.as_deref();
    let failure = NonSuccessKind::Failure;
    let (kind, message) = match r.status {
        Status::Pass => {
            let mut case = TestCase::new(attr(&display_name(r)), TestCaseStatus::success());
            case.set_classname(attr(&classname(&r.name)))
                .set_time(r.duration);
            return case;
        }
        // Passed in the end: not counted failed; the first failure goes in
        // Maven Surefire's <flakyFailure>, which CI tools that know flaky
        // tests read.
        Status::Flaky => (
            Some(failure),
            format!("flaky: {}", reason.unwrap_or("failed, then passed")),
        ),
        Status::Fail => (Some(failure), reason.unwrap_or("failed").to_string()),
        // Said outright, whatever the scheduler's reason reads like: CI
        // pages show only the message, and a timeout is not a plain failure.
        Status::Timeout => (
            Some(failure),
            match reason {
                Some(r) if r.contains("timed out") => r.to_string(),
                Some(r) => format!("timed out: {r}"),
                None => "timed out".to_string(),
            },
        ),
        Status::Error => (
            Some(NonSuccessKind::Error),
            reason.unwrap_or("error").to_string(),
        ),
        // An expected failure is not a CI failure: shown as skipped, with
        // what failed and why it was expected.
        Status::XFail => (
            None,
            format!("xfail: {}", reason.unwrap_or("expected failure")),
        ),
        Status::XPass => (
            Some(failure),
            format!("xpass: {}", reason.unwrap_or("unexpected pass")),
        ),
        Status::Skip => (None, reason.unwrap_or("skipped").to_string()),
    };
    let ty = r.status.name();
    // Lines an attribute cannot keep (see the module comment).
    let lines = message
        .contains('\n')
        .then(|| message.lines().map(attr).collect::<Vec<_>>().join("\n"));
    let status = match kind {
        Some(kind) if r.status == Status::Flaky => {
            let mut run = TestRerun::new(kind);
            run.set_message(attr(&message)).set_type(ty);
            if let Some(lines) = lines {
                run.set_description(lines);
            }
            TestCaseStatus::Success {
                flaky_runs: vec![run],
            }
        }
        Some(kind) => {
            let mut status = TestCaseStatus::non_success(kind);
            status.set_message(attr(&message)).set_type(ty);
            if let Some(lines) = lines {
                status.set_description(lines);
            }
            status
        }
        None => {
            let mut status = TestCaseStatus::skipped();
            status.set_message(attr(&message));
            if let Some(lines) = lines {
                status.set_description(lines);
            }
            status
        }
    };
    let mut case = TestCase::new(attr(&display_name(r)), status);
    case.set_classname(attr(&classname(&r.name)))
        .set_time(r.duration);
    if let Some(tail) = log_tail(&resolve_log(dir, &r.log)) {
        case.set_system_out(text(&tail));
    }
    case
}

/// The command line as a shell would take it back (shlex's quoting: a word
/// with a space stays one word, `$` and backquotes stay literal).
pub fn shell_quote(words: &[String]) -> String {
    // A NUL cannot be in an argument at all; shlex refuses it, so drop it.
    let words: Vec<String> = words.iter().map(|w| w.replace('\0', "")).collect();
    shlex::try_join(words.iter().map(String::as_str)).unwrap_or_default()
}

/// `ktvmm`, plus the test's path-like prefix (`x86/apic` → `ktvmm.x86`), so
/// CI tree views group tests the way the suite does.
fn classname(name: &str) -> String {
    match name.rsplit_once('/') {
        Some((prefix, _)) if !prefix.is_empty() => format!("ktvmm.{}", prefix.replace('/', ".")),
        _ => "ktvmm".to_string(),
    }
}

pub(super) fn resolve_log(dir: &Path, log: &Path) -> PathBuf {
    if log.is_relative() && !log.exists() {
        dir.join(log)
    } else {
        log.to_path_buf()
    }
}

/// The last [`TAIL_LINES`] lines of a log, decoded lossily (guest serial
/// output is arbitrary bytes) with terminal escape sequences removed;
/// `None` if there is no log or nothing in it.
pub(super) fn log_tail(path: &Path) -> Option<String> {
    // From the start of a line; never blocking on a FIFO in its place.
    let bytes = crate::schedule::logcap::read_tail(path, TAIL_BYTES).ok()?;
    let text = strip_ansi(&crate::printable::escape_invalid(&bytes));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    (!tail.trim().is_empty()).then_some(tail)
}

/// Removes ANSI escape sequences (colour codes mostly, but also OSC titles
/// and the rest `strip-ansi-escapes` knows), which would otherwise leave
/// `[31m` litter once the ESC is stripped.
fn strip_ansi(s: &str) -> String {
    strip_ansi_escapes::strip_str(s)
}

/// Whether XML 1.0 allows `c` at all (its `Char` production; Rust `char`s
/// are never surrogates).
pub(super) fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `s` for element text: without the characters XML cannot hold, and
/// without ESC, so quick-junit's own escape stripping finds no sequence
/// to take more than that character away.
fn text(s: &str) -> String {
    s.chars().filter(|&c| xml_char(c)).collect()
}

/// `s` for an attribute value: as [`text`], with a space for each tab, CR
/// and line break (what a reader makes of them in an attribute anyway;
/// quick-junit would drop tabs and CRs, joining words).
fn attr(s: &str) -> String {
    text(s)
        .chars()
        .map(|c| {
            if matches!(c, '\t' | '\n' | '\r') {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// This host's name, for the `hostname` attribute; `None` if unknown.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    // Not NUL-terminated if truncated; then the whole buffer is the name.
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use std::fs;
    use std::time::Duration;

    const NASTY: &str = "a<b>&c\"d'e ]]> f\u{0}g\u{1b}[31mh\u{7}\u{fffe}i/#";

    /// The report as the file holds it.
    fn render(dir: &Path, meta: &RunMeta, results: &[TestResult], host: Option<&str>) -> String {
        report(dir, meta, results, host)
            .to_string()
            .expect("serializes to memory")
    }

    fn parse(xml: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("{e}\n{xml}"))
    }

    fn attr_of<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> &'a str {
        node.attribute(name)
            .unwrap_or_else(|| panic!("no {name} on {node:?}"))
    }

    /// A fixed run, its logs written under `dir`: every status, a nasty
    /// name and multi-line reason, escape sequences, bad UTF-8 and a bare
    /// CR in logs, a flaky test without a reason, nested path names.
    /// `tests/data/junit-before.xml` is what the hand-written writer made
    /// of it (hostname `golden-host`).
    fn golden_run(dir: &Path) -> (RunMeta, Vec<TestResult>) {
        let mut results = one_of_each();
        let mut nasty = result(&format!("x86/deep/{NASTY}"), Status::Fail);
        nasty.reason = Some(format!("exit code 1\n{NASTY}\ttabbed\r"));
        results.push(nasty);
        let mut quiet_flaky = result("quiet-flaky", Status::Flaky);
        quiet_flaky.reason = None;
        results.push(quiet_flaky);
        let mut unreasoned = result("x86/unreasoned", Status::Timeout);
        unreasoned.reason = None;
        unreasoned.duration = Duration::from_micros(123_456_789);
        results.push(unreasoned);
        for (i, r) in results.iter_mut().enumerate() {
            r.log = PathBuf::from(format!("logs/{i}.log"));
            let mut log = format!("boot {i}\n\x1b[1;31mFAIL\x1b[0m: step\r\n").into_bytes();
            log.extend_from_slice(b"50%\r100%\nbad \xff\x00 <&> ]]>\n");
            log.extend_from_slice(NASTY.as_bytes());
            fs::create_dir_all(dir.join("logs")).unwrap();
            fs::write(dir.join(&r.log), log).unwrap();
        }
        let mut meta = meta();
        meta.command_line
            .extend(["-f".into(), "a b".into(), NASTY.into()]);
        meta.interrupted = true;
        (meta, results)
    }

    #[test]
    fn counts_and_elements_per_status() {
        let scratch = Scratch::new("junit");
        let xml = render(&scratch.0, &meta(), &one_of_each(), Some("box"));
        let doc = parse(&xml);
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        let suites: Vec<_> = root.children().filter(|n| n.is_element()).collect();
        assert_eq!(suites.len(), 1);
        let suite = suites[0];
        for node in [root, suite] {
            assert_eq!(attr_of(node, "tests"), "8");
            assert_eq!(attr_of(node, "failures"), "3");
            assert_eq!(attr_of(node, "errors"), "1");
            assert_eq!(attr_of(node, "skipped"), "2");
            assert_eq!(attr_of(node, "time"), "12.345");
        }
        assert_eq!(attr_of(suite, "timestamp"), "2026-11-23T01:02:03");
        assert_eq!(attr_of(suite, "hostname"), "box");

        let cases: Vec<_> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        assert_eq!(cases.len(), 8);
        let kids = |i: usize| -> Vec<String> {
            cases[i]
                .children()
                .filter(|n| n.is_element())
                .map(|n| n.tag_name().name().to_string())
                .collect()
        };
        assert!(kids(0).is_empty(), "pass has no children");
        assert_eq!(kids(1), ["failure"]);
        assert_eq!(kids(2), ["skipped"]);
        assert_eq!(kids(3), ["failure"]);
        assert_eq!(kids(4), ["error"]);
        assert_eq!(kids(5), ["flakyFailure"], "flaky is not a failure");
        assert_eq!(kids(6), ["skipped"], "an expected failure is not one");
        assert_eq!(kids(7), ["failure"], "an unexpected pass is");
        let timeout = cases[3].first_element_child().unwrap();
        assert_eq!(attr_of(timeout, "message"), "timed out: TIMEOUT reason");
        assert_eq!(attr_of(timeout, "type"), "timeout");
        assert_eq!(attr_of(cases[1], "time"), "1.500");
    }

    #[test]
    fn nasty_names_and_log_bytes_stay_well_formed() {
        let scratch = Scratch::new("junit-nasty");
        let mut r = result(&format!("x86/{NASTY}"), Status::Fail);
        r.reason = Some(format!("exit code 1\n{NASTY}"));
        r.log = scratch.0.join("nasty.log");
        let mut log: Vec<u8> = (0..100)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        log.extend_from_slice(b"bad utf8 \xff\xfe\x00 end ]]> <x/> & \x1b[1;31mred\x1b[0m\r\n");
        log.extend_from_slice(NASTY.as_bytes());
        fs::write(&r.log, &log).unwrap();
        let mut meta = meta();
        meta.command_line.push(NASTY.into());

        let xml = render(&scratch.0, &meta, &[r], Some(NASTY));
        let doc = parse(&xml);
        let case = doc
            .descendants()
            .find(|n| n.has_tag_name("testcase"))
            .unwrap();
        let clean = "a<b>&c\"d'e ]]> fg[31mhi/#";
        assert_eq!(attr_of(case, "name"), format!("x86/{clean}"));
        assert_eq!(
            attr_of(case, "classname"),
            "ktvmm.x86.a<b>&c\"d'e ]]> fg[31mhi"
        );
        let failure = case.first_element_child().unwrap();
        // An attribute cannot keep the line break through quick-xml (a
        // reader sees a space); the element's text keeps the lines.
        assert_eq!(attr_of(failure, "message"), format!("exit code 1 {clean}"));
        assert_eq!(
            failure.text(),
            Some(format!("exit code 1\n{clean}").as_str())
        );

        let out = doc
            .descendants()
            .find(|n| n.has_tag_name("system-out"))
            .unwrap()
            .text()
            .unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 52");
        // Colour codes gone, bad bytes written as \xNN, NUL dropped.
        assert_eq!(lines[48], "bad utf8 \\xff\\xfe end ]]> <x/> & red");
        // NASTY's own ESC [31m is a colour code too.
        assert_eq!(lines[49], "a<b>&c\"d'e ]]> fghi/#");
    }

    #[test]
    fn missing_or_empty_logs_are_tolerated() {
        let scratch = Scratch::new("junit-nolog");
        let mut missing = result("missing", Status::Error);
        missing.log = scratch.0.join("nope.log");
        let mut empty = result("empty", Status::Fail);
        empty.log = scratch.0.join("empty.log");
        fs::write(&empty.log, "").unwrap();
        let xml = render(&scratch.0, &meta(), &[missing, empty], None);
        let doc = parse(&xml);
        assert!(!doc.descendants().any(|n| n.has_tag_name("system-out")));
        assert!(
            doc.root_element()
                .first_element_child()
                .unwrap()
                .attribute("hostname")
                .is_none()
        );
    }

    #[test]
    fn relative_logs_resolve_under_the_output_dir() {
        let scratch = Scratch::new("junit-rel");
        fs::create_dir_all(scratch.0.join("logs")).unwrap();
        fs::write(scratch.0.join("logs/t.log"), "the output\n").unwrap();
        let r = result("t", Status::Fail);
        assert_eq!(r.log, Path::new("logs/t.log"));
        let xml = render(&scratch.0, &meta(), &[r], None);
        assert!(xml.contains("<system-out>the output</system-out>"), "{xml}");
    }

    #[test]
    fn long_logs_are_read_from_the_end() {
        let scratch = Scratch::new("junit-long");
        let path = scratch.0.join("long.log");
        let line = "y".repeat(999);
        let mut big = String::new();
        for _ in 0..200 {
            big.push_str(&line);
            big.push('\n');
        }
        big.push_str("last");
        fs::write(&path, big).unwrap();
        let tail = log_tail(&path).unwrap();
        assert!(tail.ends_with("\nlast"));
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(tail.lines().take(TAIL_LINES - 1).all(|l| l == line));
    }

    #[test]
    fn escapers() {
        // Beyond colour codes: an OSC title sequence goes too.
        assert_eq!(
            strip_ansi("\x1b]0;title\x07ok \x1b[1;31mred\x1b[0m"),
            "ok red"
        );
        // What quick-junit is handed: nothing XML cannot hold, and
        // attributes with spaces where a reader would make them.
        assert_eq!(
            text("a&b<c>d\"e'f\rg\th\ni\u{0}j\u{ffff}"),
            "a&b<c>d\"e'f\rg\th\nij"
        );
        assert_eq!(attr("a&b<c>d\"e'f\rg\th\ni\u{1f}j"), "a&b<c>d\"e'f g h ij");
        assert_eq!(attr("ünï 😀"), "ünï 😀");
        // And what a reader gets back.
        let scratch = Scratch::new("junit-escapers");
        let mut r = result("x\r\ty&<>\"'\u{1b}", Status::Skip);
        r.reason = Some("p\rq\tr".into());
        let xml = render(&scratch.0, &meta(), &[r], None);
        let doc = parse(&xml);
        let case = doc
            .descendants()
            .find(|n| n.has_tag_name("testcase"))
            .unwrap();
        assert_eq!(case.attribute("name"), Some("x  y&<>\"'"));
        let skipped = case.first_element_child().unwrap();
        assert_eq!(skipped.attribute("message"), Some("p q r"));
    }

    /// An element as a reader sees it: attributes by name, its own text
    /// unless only indentation, child elements in order.
    #[derive(Debug, PartialEq)]
    struct Element {
        tag: String,
        attrs: std::collections::BTreeMap<String, String>,
        text: String,
        children: Vec<Element>,
    }

    fn element(node: roxmltree::Node<'_, '_>) -> Element {
        let text: String = node
            .children()
            .filter(|n| n.is_text())
            .map(|n| n.text().unwrap_or(""))
            .collect();
        Element {
            tag: node.tag_name().name().to_string(),
            attrs: node
                .attributes()
                .map(|a| (a.name().to_string(), a.value().to_string()))
                .collect(),
            text: if text.trim().is_empty() {
                String::new()
            } else {
                text
            },
            children: node
                .children()
                .filter(|n| n.is_element())
                .map(element)
                .collect(),
        }
    }

    /// What the hand-written writer's file says, in the two places where
    /// quick-junit's says it differently on purpose (see the module
    /// comment): whitespace in attributes reads as spaces, and a status
    /// whose message has several lines carries them as its text.
    fn as_quick_junit_writes(mut e: Element) -> Element {
        const STATUS: [&str; 4] = ["failure", "error", "skipped", "flakyFailure"];
        if let Some(message) = e.attrs.get("message").filter(|m| m.contains('\n'))
            && STATUS.contains(&e.tag.as_str())
        {
            e.text = message
                .lines()
                .map(|l| l.replace(['\t', '\r'], " "))
                .collect::<Vec<_>>()
                .join("\n");
        }
        for value in e.attrs.values_mut() {
            *value = value.replace(['\t', '\n', '\r'], " ");
        }
        e.children = e.children.into_iter().map(as_quick_junit_writes).collect();
        e
    }

    #[test]
    fn same_content_as_the_hand_written_writer() {
        let before = include_str!("../../tests/data/junit-before.xml");
        let scratch = Scratch::new("junit-golden");
        let (meta, results) = golden_run(&scratch.0);
        let after = render(&scratch.0, &meta, &results, Some("golden-host"));
        let old = element(parse(before).root_element());
        let new = element(parse(&after).root_element());
        // The fixture covers what matters: every status, a flaky run, logs.
        let suite = &old.children[0];
        let cases: Vec<&Element> = suite
            .children
            .iter()
            .filter(|c| c.tag == "testcase")
            .collect();
        assert_eq!(cases.len(), results.len());
        let tags: Vec<&str> = cases
            .iter()
            .flat_map(|c| c.children.iter().map(|k| k.tag.as_str()))
            .collect();
        for tag in ["failure", "error", "skipped", "flakyFailure", "system-out"] {
            assert!(tags.contains(&tag), "{tag} in {tags:?}");
        }
        assert!(cases[8].children[0].attrs["message"].contains('\n'));
        assert_eq!(new, as_quick_junit_writes(old), "{after}");
    }

    #[test]
    fn command_line_is_quoted() {
        let words = ["ktvmm", "test", "-k", "a b", "it's", ""].map(String::from);
        // shlex quotes a word with an apostrophe in double quotes where we
        // wrote 'it'\''s': the same word to any POSIX shell.
        assert_eq!(shell_quote(&words), r#"ktvmm test -k 'a b' "it's" ''"#);
        // What matters: a shell reads back exactly the words.
        let nasty = [
            "plain",
            "a b",
            "it's",
            "",
            "$HOME",
            "`id`",
            "a\"b",
            "tab\there",
            "new\nline",
            "*",
            "~",
            "!x",
            "semi;colon",
            "ünïcode",
            "--x=1",
        ]
        .map(String::from);
        let script = format!("printf '%s\\0' {}", shell_quote(&nasty));
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        let back: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator('\0')
            .map(String::from)
            .collect();
        assert_eq!(back, nasty);
    }

    #[test]
    fn classnames() {
        assert_eq!(classname("apic"), "ktvmm");
        assert_eq!(classname("x86/apic"), "ktvmm.x86");
        assert_eq!(classname("a/b/c"), "ktvmm.a.b");
        assert_eq!(classname("/c"), "ktvmm");
    }
}
