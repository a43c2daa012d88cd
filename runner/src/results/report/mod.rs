//! `report.html`: one self-contained page (inline CSS, script and SVG; no
//! network) for people to open from a CI artifact. The summary and the
//! environment are HTML written here; every test's record (the same as in
//! `results.json`, plus a link to its log and the log's tail for those
//! that did not pass) is embedded as JSON, which the page's script renders
//! a screenful at a time, so 10,000 tests stay fast.
//!
//! Test names, reasons and logs are hostile input: the HTML written here is
//! escaped, the JSON cannot close its `<script>` element, and the script
//! only ever sets text, never markup.

use std::fmt::Write as _;
use std::path::{Component, Path};

use serde::Serialize;

use super::junit::{log_tail, resolve_log, xml_char};
use super::utc::Utc;
use super::{ResultsError, display_name, shell_quote, write_atomic};
use crate::verdict::{RunMeta, Status, TestResult};

/// `report.html`'s file name in the output directory.
pub const REPORT_HTML: &str = "report.html";

/// Characters of a log's tail embedded per test: with thousands of failing
/// tests the page must stay a size a browser opens quickly.
const EXCERPT_CHARS: usize = 4096;

const STYLE: &str = include_str!("report.css");
const SCRIPT: &str = include_str!("report.js");

/// Writes `dir/report.html` for a run's `meta` and `tests` (the data
/// `results.json` holds), replacing any earlier one atomically. Log paths
/// are resolved as for `junit.xml`; links to them are made relative to
/// `dir` when the logs are inside it, so the directory can be moved or
/// archived whole.
pub fn write_report(dir: &Path, meta: &RunMeta, tests: &[TestResult]) -> Result<(), ResultsError> {
    let page = render(dir, meta, tests).map_err(|source| ResultsError::Serialize {
        path: dir.join(REPORT_HTML),
        source,
    })?;
    write_atomic(&dir.join(REPORT_HTML), page.as_bytes())
}

/// Writes a page of the report's look with `body` (HTML, already escaped)
/// to `path`: for reports other than a run's, such as `ktvmm diff --html`.
pub fn write_page(path: &Path, title: &str, body: &str) -> Result<(), ResultsError> {
    write_atomic(path, page(title, body, None).as_bytes())
}

/// `s` escaped for HTML text or a quoted attribute, without the
/// characters XML cannot hold (which a guest's output may have).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|&c| xml_char(c)) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // In an attribute, literal whitespace reads back as spaces;
            // references keep it.
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// One test as the page's script reads it: the `results.json` record, the
/// name the report shows, a link to the log and the log's tail.
#[derive(Serialize)]
struct Entry<'a> {
    #[serde(flatten)]
    result: &'a TestResult,
    label: String,
    href: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    excerpt: Option<String>,
}

#[derive(Serialize)]
struct Data<'a> {
    meta: &'a RunMeta,
    tests: Vec<Entry<'a>>,
}

fn render(dir: &Path, meta: &RunMeta, tests: &[TestResult]) -> Result<String, serde_json::Error> {
    let entries = tests
        .iter()
        .map(|r| {
            let log = resolve_log(dir, &r.log);
            // A passing test's log is a click away; only the others' tails
            // are worth the page's weight.
            let excerpt = (r.status != Status::Pass)
                .then(|| log_tail(&log))
                .flatten()
                .map(|t| last_chars(&t, EXCERPT_CHARS));
            Entry {
                result: r,
                label: display_name(r),
                href: log_href(dir, &log),
                excerpt,
            }
        })
        .collect();
    let data = script_json(&serde_json::to_string(&Data {
        meta,
        tests: entries,
    })?);

    let mut body = String::new();
    body.push_str("<header><h1>ktvmm test report</h1>");
    let _ = write!(
        body,
        "<p class=\"sub\">{} tests, started {} UTC, took {:.1} s{}</p></header>",
        tests.len(),
        escape(&Utc::from_unix(meta.started_unix).iso8601()),
        meta.duration.as_secs_f64(),
        if meta.interrupted {
            " <strong class=\"st-error\">(interrupted by Ctrl-C)</strong>"
        } else {
            ""
        }
    );
    summary(&mut body, tests);
    environment(&mut body, meta);
    body.push_str(
        "<section id=\"charts\"></section>\
         <section id=\"tests\"><h2>Tests</h2>\
         <noscript><p>The test list needs JavaScript; results.json holds the same data.</p></noscript>\
         </section>",
    );
    Ok(page("ktvmm test report", &body, Some(&data)))
}

/// The summary: a count per status, each a link that filters the list.
fn summary(body: &mut String, tests: &[TestResult]) {
    body.push_str("<section id=\"summary\"><h2>Summary</h2><ul class=\"counts\">");
    let _ = write!(
        body,
        "<li><a href=\"#\"><span class=\"count\" data-status=\"all\">{}</span> tests</a></li>",
        tests.len()
    );
    for status in Status::ALL {
        let n = tests.iter().filter(|t| t.status == status).count();
        if n == 0 && !matches!(status, Status::Pass | Status::Fail) {
            continue;
        }
        let name = status.name();
        let _ = write!(
            body,
            "<li class=\"st-{name}\"><a href=\"#status={name}\"><span class=\"count\" data-status=\"{name}\">{n}</span> {}</a></li>",
            status.label()
        );
    }
    body.push_str("</ul><div id=\"statusbar\"></div></section>");
}

/// What the run ran on: everything `results.json`'s `meta` holds.
fn environment(body: &mut String, meta: &RunMeta) {
    body.push_str("<section id=\"environment\"><h2>Environment</h2><table class=\"kv\">");
    let mut row = |k: &str, v: &str| {
        let _ = write!(
            body,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(k),
            escape(v)
        );
    };
    row("ktvmm", &meta.ktvmm_version);
    row("command line", &shell_quote(&meta.command_line));
    row("host kernel", &meta.host_kernel);
    row("KVM module", &meta.kvm_module);
    row("CPU", &meta.cpu);
    for notice in &meta.notices {
        row("notice", notice);
    }
    body.push_str("</table>");
    if !meta.kvm_params.is_empty() {
        let _ = write!(
            body,
            "<details><summary>KVM module parameters ({})</summary><table class=\"kv\">",
            meta.kvm_params.len()
        );
        for (k, v) in &meta.kvm_params {
            let _ = write!(
                body,
                "<tr><th>{}</th><td>{}</td></tr>",
                escape(k),
                escape(v)
            );
        }
        body.push_str("</table></details>");
    }
    body.push_str("</section>");
}

/// The whole page. `data`, when given, is JSON already made safe for a
/// `<script>` element by [`script_json`].
fn page(title: &str, body: &str, data: Option<&str>) -> String {
    let mut html = String::with_capacity(body.len() + data.map_or(0, str::len) + 32 * 1024);
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    // Nothing is loaded from anywhere: the page works offline, and a name
    // that slipped through could not fetch or send anything.
    html.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
    );
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    let _ = write!(html, "<title>{}</title>", escape(title));
    let _ = write!(html, "<style>{STYLE}</style></head><body>");
    html.push_str(body);
    if let Some(data) = data {
        let _ = write!(
            html,
            "<script type=\"application/json\" id=\"data\">{data}</script><script>{SCRIPT}</script>"
        );
    }
    html.push_str("</body></html>\n");
    html
}

/// JSON that cannot end the `<script>` element holding it (`</script>`,
/// `<!--`) nor be read as markup: `<`, `>` and `&` occur only inside JSON
/// strings, where their `\u` escapes mean the same. U+2028/2029 too, for
/// readers that take the text as JavaScript.
fn script_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// The link to a log: relative to `dir` when the log is inside it (what
/// `ktvmm test` writes), else the absolute path as a `file:` URL; `None`
/// for a path that cannot be named either way.
fn log_href(dir: &Path, log: &Path) -> Option<String> {
    if let Ok(inside) = log.strip_prefix(dir)
        && inside
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Some(url_path(inside));
    }
    let absolute = std::path::absolute(log).ok()?;
    Some(format!("file://{}", url_path(&absolute)))
}

/// A path percent-encoded for a URL: unreserved characters and `/` kept.
fn url_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The last `max` characters of `s`, from the start of a line when it is
/// cut.
fn last_chars(s: &str, max: usize) -> String {
    let count = s.chars().count();
    if count <= max {
        return s.to_string();
    }
    let tail: String = s.chars().skip(count - max).collect();
    match tail.find('\n') {
        Some(nl) => tail[nl + 1..].to_string(),
        None => tail,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::testutil::*;
    use super::*;
    use crate::verdict::Subtests;

    fn embedded(html: &str) -> serde_json::Value {
        let start = html.find("id=\"data\">").unwrap() + "id=\"data\">".len();
        let end = start + html[start..].find("</script>").unwrap();
        serde_json::from_str(&html[start..end]).unwrap()
    }

    #[test]
    fn hostile_names_reasons_and_logs_stay_text() {
        let scratch = Scratch::new("html-hostile");
        let dir = &scratch.0;
        fs::create_dir_all(dir.join("logs")).unwrap();
        let evil = "</script><script>alert(1)</script><!-- & \u{2028}";
        let mut t = result(evil, Status::Fail);
        t.reason = Some(format!("<img src=x onerror=alert(2)> {evil}"));
        t.log = dir.join("logs/evil.log");
        fs::write(&t.log, format!("boot\n{evil}\n\x1b[31mred\x1b[0m\n")).unwrap();
        let mut meta = meta();
        meta.cpu = "<b>cpu</b>".into();
        meta.command_line.push(evil.into());
        let html = render(dir, &meta, &[t.clone()]).unwrap();

        // One data element and one script, whatever the input said.
        assert_eq!(html.matches("</script>").count(), 2, "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>cpu"), "{html}");
        assert!(html.contains("&lt;b&gt;cpu&lt;/b&gt;"), "{html}");
        // The JSON reads back to exactly what went in.
        let data = embedded(&html);
        let test = &data["tests"][0];
        assert_eq!(test["name"], evil);
        assert_eq!(test["reason"], t.reason.unwrap());
        assert_eq!(test["href"], "logs/evil.log");
        assert_eq!(test["excerpt"], format!("boot\n{evil}\nred"));
        assert_eq!(data["meta"]["cpu"], "<b>cpu</b>");
    }

    #[test]
    fn counts_per_status_and_links_to_logs() {
        let scratch = Scratch::new("html-counts");
        let dir = &scratch.0;
        let mut tests = one_of_each();
        tests.push(result("another-pass", Status::Pass));
        tests[1].subtests = Some(Subtests {
            pass: 2,
            fail: 1,
            failed: vec!["x86: one".into()],
            ..Default::default()
        });
        tests[0].log = dir.join("logs/a b%.log");
        tests[2].log = "/elsewhere/x.log".into();
        let html = render(dir, &meta(), &tests).unwrap();
        assert!(
            html.contains("<span class=\"count\" data-status=\"pass\">2</span>"),
            "{html}"
        );
        assert!(html.contains("data-status=\"xfail\">1</span>"), "{html}");
        assert!(html.contains("data-status=\"all\">9</span>"), "{html}");
        let data = embedded(&html);
        assert_eq!(data["tests"][0]["href"], "logs/a%20b%25.log");
        assert_eq!(data["tests"][2]["href"], "file:///elsewhere/x.log");
        assert_eq!(data["tests"][1]["subtests"]["failed"][0], "x86: one");
        // Missing logs: no excerpt, no failure.
        assert!(data["tests"][1].get("excerpt").is_none());
    }

    #[test]
    fn the_page_loads_nothing_from_anywhere() {
        let scratch = Scratch::new("html-offline");
        let html = render(&scratch.0, &meta(), &one_of_each()).unwrap();
        assert!(html.contains("content=\"default-src 'none';"), "{html}");
        for fetch in [
            "<link",
            " src=",
            "url(",
            "@import",
            "fetch(",
            "XMLHttpRequest",
        ] {
            assert!(!html.contains(fetch), "{fetch} in the page");
        }
        // The one URL in it is the SVG namespace, which is a name.
        assert_eq!(
            html.matches("http").count(),
            2,
            "http-equiv and the SVG namespace"
        );
    }

    #[test]
    fn write_report_names_the_file_it_could_not_write() {
        let scratch = Scratch::new("html-err");
        let missing = scratch.0.join("no-such-dir");
        let e = write_report(&missing, &meta(), &[]).unwrap_err();
        assert!(e.to_string().contains(REPORT_HTML), "{e}");
        write_report(&scratch.0, &meta(), &[]).unwrap();
        assert!(scratch.0.join(REPORT_HTML).is_file());
    }

    #[test]
    fn excerpts_are_cut_at_a_line() {
        assert_eq!(last_chars("abc", 10), "abc");
        assert_eq!(last_chars("aaaa\nbb\ncc", 6), "bb\ncc");
        assert_eq!(last_chars("ééééé", 2), "éé");
    }
}
