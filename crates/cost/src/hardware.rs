//! Chip profiles: the published figures a roofline needs (hardware.toml, each with its source),
//! and `cpu-local`, which whale measures on the machine it runs on.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::Dtype;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Chip {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub description: String,
    pub memory_gb: f64,
    pub bandwidth_gb_s: f64,
    pub bf16_tflops: f64,
    /// 0 where the chip has no FP8 units (the weights then compute at the BF16 rate)
    #[serde(default)]
    pub fp8_tflops: f64,
    #[serde(default)]
    pub int8_tops: f64,
    /// 0 where int4 weights compute at the int8 rate
    #[serde(default)]
    pub int4_tops: f64,
    /// scale-up link per chip, one direction
    #[serde(default)]
    pub link_gb_s: f64,
    /// scale-out network per chip, one direction
    #[serde(default)]
    pub network_gb_s: f64,
    #[serde(default = "one")]
    pub chips_per_node: usize,
    /// cpu-local only: the weight bytes per second whale's own matrix-vector kernels reach on a
    /// matrix far larger than the caches, per format (0: use `bandwidth_gb_s`). Decode on a CPU
    /// streams weights through these kernels, so this, not a plain read, bounds it.
    #[serde(default)]
    pub gemv_bf16_gb_s: f64,
    #[serde(default)]
    pub gemv_int8_gb_s: f64,
    #[serde(default)]
    pub gemv_int4_gb_s: f64,
    pub price_per_hour: f64,
    /// memory traffic and arithmetic overlap (a step costs the larger), or add up (a CPU core
    /// that waits on memory is not computing)
    pub overlap: bool,
    pub source: String,
}

fn one() -> usize {
    1
}

#[derive(Deserialize, Serialize)]
struct Table {
    chip: Vec<Chip>,
}

pub const LOCAL: &str = "cpu-local";

impl Chip {
    /// Peak rate, in FLOP/s, of products whose weights are stored as `dtype`.
    pub fn flops(&self, dtype: Dtype) -> f64 {
        let pick = |v: f64, fallback: f64| if v > 0.0 { v } else { fallback };
        let t = match dtype {
            Dtype::Bf16 | Dtype::F16 | Dtype::F32 => self.bf16_tflops,
            Dtype::Fp8 => pick(self.fp8_tflops, self.bf16_tflops),
            Dtype::Int8 => pick(self.int8_tops, self.bf16_tflops),
            Dtype::Int4 => pick(self.int4_tops, pick(self.int8_tops, self.bf16_tflops)),
        };
        t * 1e12
    }

    pub fn bandwidth(&self) -> f64 {
        self.bandwidth_gb_s * 1e9
    }

    /// Bytes per second at which weights stored as `dtype` are read by a product.
    pub fn weight_bandwidth(&self, dtype: Dtype) -> f64 {
        let measured = match dtype {
            Dtype::Bf16 => self.gemv_bf16_gb_s,
            Dtype::Int8 => self.gemv_int8_gb_s,
            Dtype::Int4 => self.gemv_int4_gb_s,
            _ => 0.0,
        };
        if measured > 0.0 {
            measured * 1e9
        } else {
            self.bandwidth()
        }
    }

    fn validate(&self) -> Result<()> {
        let positive = [
            ("memory_gb", self.memory_gb),
            ("bandwidth_gb_s", self.bandwidth_gb_s),
            ("bf16_tflops", self.bf16_tflops),
        ];
        for (k, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                bail!("chip `{}`: {k} must be a positive number", self.name);
            }
        }
        if self.chips_per_node == 0 {
            bail!("chip `{}`: chips_per_node must be at least 1", self.name);
        }
        Ok(())
    }
}

/// The profiles shipped with whale.
pub fn builtin() -> Vec<Chip> {
    let t: Table = toml::from_str(include_str!("../hardware.toml"))
        .expect("hardware.toml is checked by a unit test");
    t.chip
}

/// Where `--measure-local` stores the cpu-local profile: $WHALE_CACHE_DIR, else
/// $XDG_CACHE_HOME/whale, else ~/.cache/whale.
pub fn local_profile_path() -> PathBuf {
    let dir = std::env::var_os("WHALE_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("whale")))
        .or_else(|| std::env::var_os("HOME").map(|p| PathBuf::from(p).join(".cache/whale")))
        .unwrap_or_else(|| PathBuf::from(".whale-cache"));
    dir.join("cpu-local.toml")
}

pub fn save_local(chip: &Chip, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(&Table {
        chip: vec![chip.clone()],
    })
    .map_err(|e| anyhow!("{e}"))?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub fn load_local(path: &Path) -> Result<Option<Chip>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let t: Table = toml::from_str(&text).with_context(|| {
        format!(
            "{} is not a cpu-local profile (delete it and run `whale cost --measure-local`)",
            path.display()
        )
    })?;
    let chip = t
        .chip
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{} holds no profile", path.display()))?;
    chip.validate()?;
    Ok(Some(chip))
}

/// Measures this machine: memory read bandwidth and the rate of whale's own matrix kernels at a
/// prefill-sized product, per weight format, on the current thread pool.
pub fn measure_local() -> Chip {
    use whale_kernels::{probe, Format};
    let bandwidth = probe::read_bandwidth_gbs(1 << 30, 8);
    let rate = |f: Format| probe::matmul_gflops(f, 128, 2048, 2048, 20) / 1e3;
    // one activation row against 64K rows of 2048: 268 MB in bf16, far past the caches
    let gemv = |f: Format, bytes_per_weight: f64| {
        probe::matmul_gflops(f, 1, 2048, 65536, 10) / 2.0 * bytes_per_weight
    };
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0 / 1e9)
        .unwrap_or(8.0);
    Chip {
        name: LOCAL.into(),
        aliases: vec![],
        description: format!(
            "this machine, {} threads (measured by whale)",
            rayon_threads()
        ),
        memory_gb,
        bandwidth_gb_s: bandwidth,
        bf16_tflops: rate(Format::Bf16),
        fp8_tflops: 0.0,
        int8_tops: rate(Format::Q8_0),
        int4_tops: rate(Format::Q4_0),
        link_gb_s: 0.0,
        network_gb_s: 0.0,
        chips_per_node: 1,
        gemv_bf16_gb_s: gemv(Format::Bf16, Dtype::Bf16.bytes_per_weight()),
        gemv_int8_gb_s: gemv(Format::Q8_0, Dtype::Int8.bytes_per_weight()),
        gemv_int4_gb_s: gemv(Format::Q4_0, Dtype::Int4.bytes_per_weight()),
        price_per_hour: 0.10,
        overlap: false,
        source: "whale_kernels::probe: best of 8 reads of a 1 GiB buffer; best of 20 products 128x2048 by 2048x2048 per format (rates); best of 10 products 1x2048 by 2048x65536 per format (gemv)".into(),
    }
}

fn rayon_threads() -> usize {
    rayon::current_num_threads()
}

/// A built-in chip by name or alias (case-insensitive). `cpu-local` is not built in: see
/// [`local_profile_path`].
pub fn find(name: &str) -> Result<Chip> {
    let want = name.to_ascii_lowercase();
    let chips = builtin();
    chips
        .iter()
        .find(|c| c.name == want || c.aliases.contains(&want))
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = chips.iter().map(|c| c.name.as_str()).collect();
            anyhow!(
                "unknown hardware `{name}` (known: {}, {LOCAL})",
                names.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_is_complete_and_sourced() {
        let chips = builtin();
        for want in ["h100", "h800", "h20", "h200", "b200", "a100", "mi300x"] {
            let c = chips.iter().find(|c| c.name == want).expect(want);
            c.validate().unwrap();
            assert!(c.source.len() > 20, "{want} names its source");
            assert!(c.link_gb_s > 0.0 && c.network_gb_s > 0.0);
        }
        // the facts the economics rest on
        let (h100, h800, h20) = (
            find("h100").unwrap(),
            find("H800").unwrap(),
            find("h20").unwrap(),
        );
        assert!(h800.link_gb_s < h100.link_gb_s, "the H800's NVLink is cut");
        assert_eq!(h800.bf16_tflops, h100.bf16_tflops);
        assert!(
            h20.bandwidth_gb_s > h100.bandwidth_gb_s && h20.bf16_tflops < h100.bf16_tflops / 5.0
        );
        assert_eq!(find("h100-sxm").unwrap().name, "h100");
    }

    #[test]
    fn unknown_hardware_names_the_known_ones() {
        let e = find("tpu-v9").unwrap_err().to_string();
        assert!(
            e.contains("tpu-v9") && e.contains("h20") && e.contains(LOCAL),
            "{e}"
        );
    }

    #[test]
    fn a_measured_profile_round_trips() {
        let dir = std::env::temp_dir().join(format!("whale-cost-{}", std::process::id()));
        let path = dir.join("cpu-local.toml");
        let mut c = find("h100").unwrap();
        c.name = LOCAL.into();
        save_local(&c, &path).unwrap();
        assert_eq!(load_local(&path).unwrap(), Some(c));
        std::fs::write(&path, "nonsense = 1").unwrap();
        assert!(load_local(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(load_local(&dir.join("none.toml")).unwrap(), None);
    }
}
