//! `junit.xml`, for CI systems: one `<testsuite>`, one `<testcase>` per
//! result, and the tail of the log of anything that did not pass.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
    write_atomic(
        path,
        render(dir, meta, results, hostname().as_deref()).as_bytes(),
    )
}

fn render(dir: &Path, meta: &RunMeta, results: &[TestResult], host: Option<&str>) -> String {
    let count = |f: fn(Status) -> bool| results.iter().filter(|r| f(r.status)).count();
    let failures = count(|s| matches!(s, Status::Fail | Status::Timeout | Status::XPass));
    let errors = count(|s| s == Status::Error);
    let skipped = count(|s| matches!(s, Status::Skip | Status::XFail));
    let counts = format!(
        r#"tests="{}" failures="{failures}" errors="{errors}" skipped="{skipped}" time="{:.3}""#,
        results.len(),
        meta.duration.as_secs_f64()
    );

    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(x, r#"<testsuites name="ktvmm" {counts}>"#);
    let _ = write!(
        x,
        r#"  <testsuite name="ktvmm" {counts} timestamp="{}""#,
        Utc::from_unix(meta.started_unix).iso8601()
    );
    if let Some(host) = host {
        let _ = write!(x, r#" hostname="{}""#, attr(host));
    }
    x.push_str(">\n    <properties>\n");
    let props = [
        ("ktvmm_version", meta.ktvmm_version.clone()),
        ("command_line", shell_quote(&meta.command_line)),
        ("host_kernel", meta.host_kernel.clone()),
        ("kvm_module", meta.kvm_module.clone()),
        ("cpu", meta.cpu.clone()),
        ("interrupted", meta.interrupted.to_string()),
    ];
    for (name, value) in props {
        let _ = writeln!(
            x,
            r#"      <property name="{name}" value="{}"/>"#,
            attr(&value)
        );
    }
    x.push_str("    </properties>\n");
    for r in results {
        testcase(&mut x, dir, r);
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

fn testcase(x: &mut String, dir: &Path, r: &TestResult) {
    let name = display_name(r);
    let _ = write!(
        x,
        r#"    <testcase name="{}" classname="{}" time="{:.3}""#,
        attr(&name),
        attr(&classname(&r.name)),
        r.duration.as_secs_f64()
    );
    let reason = r.reason.as_deref();
    let (element, message) = match r.status {
        Status::Pass => {
            x.push_str("/>\n");
            return;
        }
        // Passed in the end: not counted failed; the first failure goes in
        // Maven Surefire's <flakyFailure>, which CI tools that know flaky
        // tests read.
        Status::Flaky => (
            "flakyFailure",
            format!("flaky: {}", reason.unwrap_or("failed, then passed")),
        ),
        Status::Fail => ("failure", reason.unwrap_or("failed").to_string()),
        // Said outright, whatever the scheduler's reason reads like: CI
        // pages show only the message, and a timeout is not a plain failure.
        Status::Timeout => (
            "failure",
            match reason {
                Some(r) if r.contains("timed out") => r.to_string(),
                Some(r) => format!("timed out: {r}"),
                None => "timed out".to_string(),
            },
        ),
        Status::Error => ("error", reason.unwrap_or("error").to_string()),
        // An expected failure is not a CI failure: shown as skipped, with
        // what failed and why it was expected.
        Status::XFail => (
            "skipped",
            format!("xfail: {}", reason.unwrap_or("expected failure")),
        ),
        Status::XPass => (
            "failure",
            format!("xpass: {}", reason.unwrap_or("unexpected pass")),
        ),
        Status::Skip => ("skipped", reason.unwrap_or("skipped").to_string()),
    };
    let kind = r.status.name();
    x.push_str(">\n");
    let _ = write!(x, r#"      <{element} message="{}""#, attr(&message));
    if element != "skipped" {
        let _ = write!(x, r#" type="{kind}""#);
    }
    x.push_str("/>\n");
    if let Some(tail) = log_tail(&resolve_log(dir, &r.log)) {
        let _ = writeln!(x, "      <system-out>{}</system-out>", text(&tail));
    }
    x.push_str("    </testcase>\n");
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
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Escapes `s` for element content, dropping characters XML cannot hold.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|&c| xml_char(c)) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            // Needed only in `]]>`, but simplest everywhere.
            '>' => out.push_str("&gt;"),
            // A literal CR would be read back as LF.
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes `s` for a double- or single-quoted attribute value, dropping
/// characters XML cannot hold (also right for HTML text and attributes).
pub(super) fn attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|&c| xml_char(c)) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Literal whitespace in attributes is normalised to spaces on
            // reading; references keep it.
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
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

    const NASTY: &str = "a<b>&c\"d'e ]]> f\u{0}g\u{1b}[31mh\u{7}\u{fffe}i/#";

    fn parse(xml: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("{e}\n{xml}"))
    }

    fn attr_of<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> &'a str {
        node.attribute(name)
            .unwrap_or_else(|| panic!("no {name} on {node:?}"))
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
        assert_eq!(attr_of(failure, "message"), format!("exit code 1\n{clean}"));

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
        assert_eq!(
            text("a&b<c>d\"e'f\rg\th\ni\u{0}j\u{ffff}"),
            "a&amp;b&lt;c&gt;d\"e'f&#13;g\th\nij"
        );
        assert_eq!(
            attr("a&b<c>d\"e'f\rg\th\ni\u{1f}j"),
            "a&amp;b&lt;c&gt;d&quot;e&apos;f&#13;g&#9;h&#10;ij"
        );
        assert_eq!(attr("ünï 😀"), "ünï 😀");
        let doc = format!("<a b=\"{}\">{}</a>", attr("x\r\ty"), text("p\rq"));
        let doc = parse(&doc);
        assert_eq!(doc.root_element().attribute("b"), Some("x\r\ty"));
        assert_eq!(doc.root_element().text(), Some("p\rq"));
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
