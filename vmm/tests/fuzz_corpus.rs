//! The checked-in `cargo fuzz` corpus (`fuzz/corpus/`), replayed as
//! ordinary tests so that CI runs what the fuzz targets run: the loaders on
//! every loader input, and every KVM API input in a fresh VM, without a
//! finding.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{}: the corpus is missing",
        dir.display()
    );
    files
}

#[test]
fn the_loader_corpus_replays() {
    for (_, bytes) in corpus("loaders") {
        ktvmm_vmm::fuzz::targets::loaders(&bytes);
    }
}

#[test]
fn the_kvm_api_corpus_replays_without_findings() {
    let mut ran = 0;
    for (path, bytes) in corpus("kvm_api") {
        if let Some(execution) = ktvmm_vmm::fuzz::targets::kvm_api(&bytes) {
            assert!(
                execution.findings.is_empty(),
                "{}: {:?}",
                path.display(),
                execution.findings
            );
            ran += 1;
        }
    }
    assert!(ran >= 10, "only {ran} corpus files made an input");
}
