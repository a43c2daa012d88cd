//! `ktvmm merge`: the shards of a real run of real guests put back
//! together, and the inputs that are not one run refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{parts, run, scratch, write};
use ktvmm_vmm::boot::test_images::{elf64, exit_with};
use serde_json::Value;

const LOAD_ADDR: u64 = 0x10_0000;

/// A suite of guests that pass, fail and skip, more than three so every
/// shard of three gets more than one.
fn suite(dir: &Path) -> String {
    write(dir, "fail.elf", &elf64(LOAD_ADDR, &exit_with(1), 0));
    write(dir, "skip.elf", &elf64(LOAD_ADDR, &exit_with(77), 0));
    write(dir, "code3.elf", &elf64(LOAD_ADDR, &exit_with(3), 0));
    write(
        dir,
        "mixed.ktvmm.toml",
        br#"
[[test]]
name = "pass-1"
guest = "bundled:exitcode"
append = "pass"

[[test]]
name = "fail-1"
guest = "fail.elf"

[[test]]
name = "skip-1"
guest = "skip.elf"

[[test]]
name = "pass-2"
guest = "bundled:exitcode"
append = "pass"

[[test]]
name = "fail-code3"
guest = "code3.elf"

[[test]]
name = "skip-2"
guest = "skip.elf"

[[test]]
name = "pass-3"
guest = "bundled:exitcode"
append = "pass"
"#,
    )
}

/// `ktvmm test` into `out`; returns its exit code.
fn test_into(out: &Path, args: &[&str]) -> i32 {
    let mut all = vec!["test", "-q", "-o", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = parts(&run(&all).0);
    assert!(
        code == 0 || code == 1,
        "ktvmm test {args:?}: {code}\n{stdout}\n{stderr}"
    );
    code
}

/// `ktvmm merge` of `inputs` into `out`: exit code, stdout, stderr.
fn merge(out: &Path, inputs: &[&Path], extra: &[&str]) -> (i32, String, String) {
    let mut all = vec!["merge".to_string(), "-o".into(), out.display().to_string()];
    all.extend(inputs.iter().map(|p| p.display().to_string()));
    all.extend(extra.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    parts(&run(&all).0)
}

fn results(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("results.json")).expect("results.json");
    serde_json::from_str(&text).expect("results.json is JSON")
}

/// Test name -> status, over every result.
fn statuses(results: &Value) -> BTreeMap<String, String> {
    results["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn shards_merge_into_the_unsharded_runs_verdicts_and_bad_sets_are_refused() {
    let dir = scratch("merge");
    let suite = suite(&dir);
    let whole = dir.join("whole");
    assert_eq!(test_into(&whole, &[&suite]), 1, "the suite has failures");
    let shards: Vec<_> = (1..=3).map(|k| dir.join(format!("shard{k}"))).collect();
    for (k, shard) in shards.iter().enumerate() {
        let part = format!("{}/3", k + 1);
        test_into(shard, &["--shard", &part, &suite]);
        let record = &results(shard)["meta"]["selection"];
        assert_eq!(record["shard"]["index"], k + 1);
        assert_eq!(record["selected"], 7);
    }

    // The three shards, given in any order.
    let merged = dir.join("merged");
    let (code, stdout, stderr) = merge(&merged, &[&shards[2], &shards[0], &shards[1]], &[]);
    assert_eq!(code, 1, "a failure fails the merge\n{stdout}\n{stderr}");
    let merged_results = results(&merged);
    let want = statuses(&results(&whole));
    assert_eq!(want.len(), 7);
    assert_eq!(statuses(&merged_results), want);
    assert_eq!(merged_results["tests"].as_array().unwrap().len(), 7);
    assert!(
        stdout
            .contains("summary: 3 passed, 2 failed, 2 skipped, 0 timed out, 0 errors (7 tests in "),
        "{stdout}"
    );
    assert!(stdout.contains("merged from 3 runs of `"), "{stdout}");
    // The merged run has no shard; its logs are its own and hold the
    // guests' output.
    assert!(merged_results["meta"]["selection"].get("shard").is_none());
    for t in merged_results["tests"].as_array().unwrap() {
        let log = Path::new(t["log"].as_str().unwrap());
        assert!(log.starts_with(&merged), "{log:?} is not under {merged:?}");
        assert!(log.is_file(), "{log:?}");
    }
    for name in ["junit.xml", "results.tap", "report.html"] {
        assert!(merged.join(name).is_file(), "{name}");
    }
    // The report links each log inside the merged directory.
    let report = std::fs::read_to_string(merged.join("report.html")).unwrap();
    assert!(report.contains("logs/fail-code3.log"), "no link to a log");
    let junit = std::fs::read_to_string(merged.join("junit.xml")).unwrap();
    assert!(junit.contains(r#"tests="7""#), "{junit}");

    // Each set that is not one run: its own message, a non-zero exit,
    // nothing written.
    let foreign = dir.join("foreign");
    test_into(&foreign, &["--shard", "3/3"]);
    let refused = |inputs: &[&Path], message: &str| {
        let out = dir.join("refused");
        let (code, stdout, stderr) = merge(&out, inputs, &[]);
        assert_ne!(code, 0, "{stdout}\n{stderr}");
        assert_ne!(code, 1, "an error, not a failed test");
        assert!(stderr.contains(message), "want {message:?} in:\n{stderr}");
        assert!(!out.exists(), "nothing is written");
    };
    refused(
        &[&shards[0], &shards[1], &shards[1], &shards[2]],
        &format!(
            "{}: shard 2/3 again ({} is shard 2/3 too): shards overlap",
            shards[1].display(),
            shards[1].display()
        ),
    );
    refused(
        &[&shards[0], &shards[1], &foreign],
        &format!(
            "{}: from another suite than {} (bundled with ",
            foreign.display(),
            shards[0].display()
        ),
    );
    refused(
        &[&shards[0], &shards[2]],
        &format!(
            "shard 2/3 is missing (given: 1/3 in {}, 3/3 in {})",
            shards[0].display(),
            shards[2].display()
        ),
    );
    refused(&[&whole, &whole], "repeated runs, not shards");

    // Repeated runs: every run kept, numbered on.
    let repeated = dir.join("repeated");
    let (code, stdout, stderr) = merge(&repeated, &[&whole, &whole], &["--repeats"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let tests = results(&repeated)["tests"].as_array().unwrap().clone();
    assert_eq!(tests.len(), 14);
    let runs_of_fail: Vec<u64> = tests
        .iter()
        .filter(|t| t["name"] == "fail-1")
        .map(|t| t["iteration"].as_u64().unwrap_or(1))
        .collect();
    assert_eq!(runs_of_fail, [1, 2]);
    assert!(stdout.contains("fail-1#2"), "{stdout}");
}
