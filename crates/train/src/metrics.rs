//! Machine-readable logs (JSONL, one object per step) and the PNG plots drawn from them.

use anyhow::{Context, Result};
use serde_json::Value;
use std::io::Write;
use std::path::Path;

pub struct JsonlLog {
    file: std::fs::File,
}

impl JsonlLog {
    /// Appends to `path` (a resumed run continues its log).
    pub fn open(path: &Path, append: bool) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(JsonlLog { file })
    }

    pub fn write(&mut self, v: &Value) -> Result<()> {
        writeln!(self.file, "{v}")?;
        Ok(())
    }
}

pub fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// (step, value) points of `key` in rows, smoothed by a trailing mean over `window` rows.
pub fn series(rows: &[Value], key: &str, window: usize) -> Vec<(f64, f64)> {
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
        .collect();
    let w = window.max(1);
    (0..pts.len())
        .map(|i| {
            let lo = i.saturating_sub(w - 1);
            let m = pts[lo..=i].iter().map(|p| p.1).sum::<f64>() / (i - lo + 1) as f64;
            (pts[i].0, m)
        })
        .collect()
}
