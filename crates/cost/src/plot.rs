//! The PNG of `whale cost --plot`: decode speed per chip against context length, and the price
//! of output tokens against batch size, for every built-in chip (and the one asked about).

use crate::{hardware, Chip, Figures, Setup};
use anyhow::Result;
use std::path::Path;
use whale_plot::{save_png, Chart};

/// `chosen` is the chip and chip count of the question; other chips get the fewest chips (a
/// power of two) that hold the weights.
pub fn write(path: &Path, f: &Figures, chosen: &Setup, batch: u64, context: u64) -> Result<()> {
    let mut chips: Vec<Chip> = hardware::builtin();
    if !chips.iter().any(|c| c.name == chosen.chip.name) {
        chips.push(chosen.chip.clone());
    }
    let max_ctx = f.config.max_position_embeddings as f64;
    let contexts: Vec<f64> = (0..)
        .map(|i| 1024.0 * 2f64.powi(i))
        .take_while(|c| *c <= max_ctx.max(1024.0))
        .collect();
    let mut speed = Chart::new(
        &format!("decode tokens/s per chip, batch {batch}"),
        "context length (tokens)",
        "tokens/s per chip",
    )
    .log_x()
    .log_y();
    let mut price = Chart::new(
        &format!("$ per million output tokens, context {context}"),
        "batch",
        "$ / M output tokens",
    )
    .log_x()
    .log_y();
    for chip in chips {
        let setup = if chip.name == chosen.chip.name {
            chosen.clone()
        } else {
            let Ok(gpus) = Setup::chips_needed(&chip, f, chosen.dtype, 0.0) else {
                continue;
            };
            Setup {
                chip: chip.clone(),
                gpus,
                dtype: chosen.dtype,
                kv_dtype: chosen.kv_dtype,
            }
        };
        let g = setup.gpus as f64;
        let kv = f.kv_per_token(setup.kv_dtype).cached as f64;
        let label = format!("{} x{}", chip.name, setup.gpus);
        let pts: Vec<(f64, f64)> = contexts
            .iter()
            .take_while(|&&ctx| setup.max_batch(f, ctx, kv) >= batch)
            .map(|&ctx| {
                let s = setup.decode(f, batch as f64, ctx);
                (ctx, batch as f64 / s.seconds / g)
            })
            .collect();
        speed = speed.line(label.clone(), pts);
        let most = setup.max_batch(f, context as f64, kv).min(4096);
        let per_hour = chip.price_per_hour * g;
        let cost: Vec<(f64, f64)> = (0..)
            .map(|i| 1u64 << i)
            .take_while(|b| *b <= most)
            .map(|b| {
                let s = setup.decode(f, b as f64, context as f64);
                (b as f64, per_hour / 3600.0 * s.seconds / b as f64 * 1e6)
            })
            .collect();
        price = price.line(format!("{label} @ ${:.2}/h", chip.price_per_hour), cost);
    }
    save_png(path, &[speed, price], 1400, 560)
}
