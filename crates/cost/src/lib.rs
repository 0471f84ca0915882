//! `whale cost`: what a DeepSeek-family model costs to serve on given hardware, from first
//! principles — parameters and FLOPs per token, bytes per step, KV size, rooflines per phase and
//! dollars per million tokens.

pub mod figures;
pub mod hardware;
pub mod plot;
pub mod report;
pub mod roofline;

pub use figures::Figures;
pub use hardware::Chip;
pub use report::{Report, Request};
pub use roofline::Setup;

use anyhow::{bail, Result};

/// How weights (or cache entries) are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    Bf16,
    F16,
    Fp8,
    Int8,
    Int4,
}

impl Dtype {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Dtype::F32,
            "bf16" => Dtype::Bf16,
            "f16" => Dtype::F16,
            "fp8" | "e4m3" => Dtype::Fp8,
            "int8" | "q8_0" => Dtype::Int8,
            "int4" | "q4_0" => Dtype::Int4,
            _ => bail!("unknown dtype `{s}` (bf16, f16, f32, fp8, int8, int4)"),
        })
    }

    /// Bytes per value as stored, scales included: FP8 with one f32 scale per 128x128 block,
    /// int8/int4 as whale's Q8_0/Q4_0 (blocks of 32 with an f16 scale).
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            Dtype::F32 => 4.0,
            Dtype::Bf16 | Dtype::F16 => 2.0,
            Dtype::Fp8 => 1.0 + 4.0 / (128.0 * 128.0),
            Dtype::Int8 => 34.0 / 32.0,
            Dtype::Int4 => 18.0 / 32.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
            Dtype::Fp8 => "fp8",
            Dtype::Int8 => "int8",
            Dtype::Int4 => "int4",
        }
    }
}
