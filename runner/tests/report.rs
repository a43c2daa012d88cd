//! `report.html` rendered in a real browser: headless Chromium loads the
//! report a real `ktvmm test` run wrote, offline, and the tests read what
//! its script made of it from the DOM Chromium dumps.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{chromium_usable, parts, run, scratch, write};

/// Longer than any render takes, so a browser that hangs fails the test
/// instead of stalling it.
const BROWSER_LIMIT: Duration = Duration::from_secs(180);

/// Guests and programs of every kind of outcome, and a name, a reason and
/// a log that try to break out of the page.
const SAMPLE_SUITE: &str = r#"
[[test]]
name = "exitcode/pass"
guest = "bundled:exitcode"
append = "pass"

[[test]]
name = "exitcode/fail"
guest = "bundled:exitcode"
append = "fail"

[[test]]
name = "exitcode/skip"
guest = "bundled:exitcode"
append = "skip"

[[test]]
name = "exitcode/exception"
guest = "bundled:exitcode"
append = "exception"

[[test]]
name = "hang"
guest = "bundled:hang"
timeout = 1

[[test]]
name = "exceptions"
guest = "bundled:exceptions"

[[test]]
name = "selftest"
guest = "bundled:selftest"

[[test]]
name = "tap/</script><img src=x onerror=alert(1)>"
exec = "/bin/sh"
args = ["-c", "echo 1..4; echo ok 1 first; echo 'not ok 2 <b>second</b>'; echo ok 3 third; echo 'not ok 4 </script>'; exit 1"]
"#;

/// Runs `ktvmm test` on `suite` into `dir/out`; returns the exit code.
fn test_into(dir: &Path, suite: &str, extra: &[&str]) -> i32 {
    let out = dir.join("out");
    let mut args = vec!["test", "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(suite);
    let (code, stdout, stderr) = parts(&run(&args).0);
    assert!(
        dir.join("out/report.html").is_file(),
        "no report.html:\n{stdout}\n{stderr}"
    );
    code
}

/// The DOM of `page` (with `fragment`, the report's filter) after its
/// script ran, as headless Chromium dumps it, and the browser's wall time.
fn rendered(dir: &Path, page: &Path, fragment: &str) -> (String, Duration) {
    let profile = dir.join(format!("chromium-profile-{}", fragment.len()));
    let _ = std::fs::remove_dir_all(&profile);
    let dump = dir.join("dom.html");
    let url = format!("file://{}{fragment}", page.display());
    let started = Instant::now();
    let mut browser = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Scripts and timers run to completion before the dump.
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url)
        .stdout(File::create(&dump).expect("create the dump file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let status = loop {
        if let Some(status) = browser.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > BROWSER_LIMIT {
            let _ = browser.kill();
            let _ = browser.wait();
            panic!("chromium did not finish rendering {url} in {BROWSER_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    assert!(status.success(), "chromium failed on {url}: {status}");
    let dom = std::fs::read_to_string(&dump).expect("the dumped DOM");
    assert!(
        dom.contains("data-rendered="),
        "the report's script did not finish:\n{dom}"
    );
    (dom, took)
}

/// The rendered test rows: `(status, HTML of the row)`.
fn rows(dom: &str) -> Vec<(String, String)> {
    let marker = "<div class=\"test st-";
    let mut rows = Vec::new();
    let mut rest = dom;
    while let Some(start) = rest.find(marker) {
        let after = &rest[start + marker.len()..];
        let status = after[..after.find('"').unwrap()].to_string();
        let end = after.find(marker).unwrap_or(after.len());
        rows.push((status, after[..end].to_string()));
        rest = &after[end..];
    }
    rows
}

fn row_named<'a>(rows: &'a [(String, String)], name_html: &str) -> &'a (String, String) {
    let name = format!("<span class=\"name\">{name_html}</span>");
    rows.iter()
        .find(|(_, html)| html.contains(&name))
        .unwrap_or_else(|| panic!("no row for {name_html}"))
}

/// `<span class="count" data-status="fail">3</span>` as `3`.
fn count(dom: &str, status: &str) -> usize {
    let marker = format!("data-status=\"{status}\">");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no {status} count"))
        + marker.len();
    dom[at..at + dom[at..].find('<').unwrap()].parse().unwrap()
}

/// Where `ktvmm test` put the report of the sample suite, and a browser to
/// read it with; `None` (said) when there is no browser.
fn sample_report(test: &str) -> Option<PathBuf> {
    if !chromium_usable(test) {
        return None;
    }
    let dir = scratch(test);
    let suite = write(&dir, "sample.ktvmm.toml", SAMPLE_SUITE.as_bytes());
    assert_eq!(test_into(&dir, &suite, &[]), 1, "the sample has failures");
    Some(dir)
}

#[test]
fn the_report_of_a_run_with_failures_shows_everything_in_a_browser() {
    let Some(dir) = sample_report("report_in_a_browser") else {
        return;
    };
    let page = dir.join("out/report.html");
    let (dom, _) = rendered(&dir, &page, "");

    // The counts, from the run's verdicts.
    assert_eq!(count(&dom, "all"), 8);
    assert_eq!(count(&dom, "pass"), 3);
    assert_eq!(count(&dom, "fail"), 3);
    assert_eq!(count(&dom, "skip"), 1);
    assert_eq!(count(&dom, "timeout"), 1);
    assert!(dom.contains("showing 8 of 8 tests"), "{dom}");
    let rows = rows(&dom);
    assert_eq!(rows.len(), 8, "{dom}");
    // Problems first.
    assert_eq!(rows[0].0, "fail");
    assert_eq!(rows[3].0, "timeout");
    assert_eq!(rows[4].0, "skip");
    assert_eq!(rows[7].0, "pass");

    // A failed test: its reason, its failed subtest by name, its log's end
    // and a link to the whole log, relative to the results directory.
    let (status, fail) = row_named(&rows, "exitcode/fail");
    assert_eq!(status, "fail");
    assert!(
        fail.contains(
            "<span class=\"reason\">guest exit code 1; 1 subtest failed: exitcode: fail (requested)</span>"
        ),
        "{fail}"
    );
    assert!(
        fail.contains("Subtests: 1 failed")
            && fail
                .contains("<ul class=\"failed-subtests\"><li>exitcode: fail (requested)</li></ul>"),
        "{fail}"
    );
    assert!(
        fail.contains("SUMMARY: 1 tests, 1 unexpected failures"),
        "{fail}"
    );
    assert!(fail.contains("href=\"logs/exitcode_fail.log\""), "{fail}");
    assert!(dir.join("out/logs/exitcode_fail.log").is_file());
    // ktvmm recorded the guest's KVM counters; they wait under a fold.
    assert!(fail.contains("<summary>KVM counters ("), "{fail}");

    // The timed-out guest: where its vCPU was.
    let (status, hang) = row_named(&rows, "hang");
    assert_eq!(status, "timeout");
    assert!(hang.contains("Where the vCPUs were"), "{hang}");
    assert!(
        hang.contains("<th>rip</th>") && hang.contains("<td>long</td>"),
        "{hang}"
    );

    // A passing guest's subtests are a bar; its details wait for a click.
    let (_, selftest) = row_named(&rows, "selftest");
    assert!(
        selftest.contains("<title>subtests: 20 passed, 2 skipped</title>"),
        "{selftest}"
    );
    assert!(!selftest.contains("class=\"facts\""), "{selftest}");

    // The hostile name, subtests and log are text in the page, not markup.
    let (_, tap) = row_named(
        &rows,
        "tap/&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;",
    );
    assert!(
        tap.contains("<li>&lt;b&gt;second&lt;/b&gt;</li><li>&lt;/script&gt;</li>"),
        "{tap}"
    );
    assert!(!dom.contains("<img") && !dom.contains("<b>"), "{dom}");

    // The pictures: durations slowest first (the 1 s hang leads), and the
    // subtests of each test.
    let durations = &dom[dom
        .find("Durations, slowest first")
        .expect("a duration chart")..];
    let first_bar = &durations[durations.find("class=\"lbl\"").unwrap()..];
    assert!(first_bar.starts_with("class=\"lbl\">hang<"), "{first_bar}");
    assert!(dom.contains("Subtests per test"), "{dom}");

    // The environment the run recorded.
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/results.json")).unwrap())
            .unwrap();
    for key in ["host_kernel", "kvm_module", "cpu", "ktvmm_version"] {
        let value = results["meta"][key].as_str().unwrap();
        assert!(dom.contains(&format!("<td>{value}</td>")), "{key} {value}");
    }
}

#[test]
fn the_status_filter_and_the_search_hide_the_other_tests() {
    let Some(dir) = sample_report("report_filter") else {
        return;
    };
    let page = dir.join("out/report.html");
    let (dom, _) = rendered(&dir, &page, "#status=fail");
    let shown = rows(&dom);
    assert_eq!(shown.len(), 3, "{dom}");
    assert!(shown.iter().all(|(s, _)| s == "fail"), "{shown:?}");
    assert!(dom.contains("showing 3 of 8 tests"), "{dom}");
    assert!(
        dom.contains("class=\"toggle st-fail on\""),
        "the filter shows as on"
    );

    let (dom, _) = rendered(&dir, &page, "#status=pass,timeout&q=E");
    let mut names: Vec<String> = rows(&dom)
        .iter()
        .map(|(s, html)| {
            let at = html.find("<span class=\"name\">").unwrap() + 19;
            format!("{s} {}", &html[at..at + html[at..].find('<').unwrap()])
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["pass exceptions", "pass exitcode/pass", "pass selftest"],
        "search is by name, case-insensitive; 'hang' has no e"
    );
}

#[test]
fn a_report_of_ten_thousand_tests_renders() {
    if !chromium_usable("report_of_ten_thousand_tests") {
        return;
    }
    let dir = scratch("report_10000");
    let mut suite = String::new();
    for i in 0..10_000 {
        let end = match i % 13 {
            0 => "exit 1",
            1 => "exit 4",
            _ => "exit 0",
        };
        suite += &format!(
            "[[test]]\nname = \"group{}/test-{i:05}\"\nexec = \"/bin/sh\"\n\
             args = [\"-c\", \"echo ok 1 a; echo not ok 2 b-{i}; {end}\"]\n\n",
            i % 50
        );
    }
    let suite = write(&dir, "big.ktvmm.toml", suite.as_bytes());
    assert_eq!(test_into(&dir, &suite, &["-j", "8"]), 1);
    let page = dir.join("out/report.html");
    let size = std::fs::metadata(&page).unwrap().len();
    let (dom, took) = rendered(&dir, &page, "");
    assert!(dom.contains("data-rendered=\"10000\""), "not every test");
    assert_eq!(count(&dom, "all"), 10_000);
    assert_eq!(count(&dom, "fail"), 770);
    assert_eq!(count(&dom, "skip"), 770);
    // A screenful at a time, failures first.
    let shown = rows(&dom);
    assert_eq!(shown.len(), 200);
    assert!(shown.iter().all(|(s, _)| s == "fail"));
    assert!(dom.contains("show 200 more (9800 not shown)"), "{dom}");
    let ready = dom
        .split("data-ready-ms=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("?");
    // Said, not asserted: wall time on a shared machine is noise.
    eprintln!(
        "report of 10,000 tests: {size} bytes; first view after {ready} ms in the page; chromium ran {took:?} in all"
    );
}
