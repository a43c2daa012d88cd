//! TEMPORARY STUB (replaced by the results module being written).
use crate::verdict::{RunMeta, TestResult};
use std::path::{Path, PathBuf};
pub struct OutputDir(PathBuf);
impl OutputDir {
    pub fn create(p: Option<&Path>) -> anyhow::Result<Self> {
        let d = p
            .map(Path::to_path_buf)
            .unwrap_or_else(|| "ktvmm-results/stub".into());
        std::fs::create_dir_all(d.join("logs"))?;
        Ok(OutputDir(d))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn log_path(&self, name: &str, it: u32) -> anyhow::Result<PathBuf> {
        Ok(self
            .0
            .join("logs")
            .join(format!("{}.{it}.log", name.replace('/', "_"))))
    }
    pub fn previous_results(p: Option<&Path>) -> anyhow::Result<PathBuf> {
        Ok(p.unwrap_or(Path::new("ktvmm-results/stub"))
            .join("results.json"))
    }
}
pub fn write_all(d: &OutputDir, m: &RunMeta, r: &[TestResult]) -> anyhow::Result<()> {
    std::fs::write(
        d.0.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({"meta": m, "tests": r}))?,
    )?;
    Ok(())
}
pub mod json {
    pub fn failed_names(p: &std::path::Path) -> anyhow::Result<std::collections::HashSet<String>> {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p)?)?;
        Ok(v["tests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["status"] != "pass" && t["status"] != "skip")
            .filter_map(|t| t["name"].as_str().map(String::from))
            .collect())
    }
}
