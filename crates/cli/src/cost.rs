//! `whale cost`: the serving economics of a model on a chip, and `--check`, which sets the
//! cpu-local prediction against what the engine measures in the same run.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use whale_cost::{hardware, plot, Chip, Dtype, Figures, Report, Request, Setup};
use whale_model::{Checkpoint, Format, Model, ModelConfig};

#[derive(Args)]
pub struct CostArgs {
    /// checkpoint directory or a config.json
    #[arg(long)]
    model: Option<PathBuf>,
    /// h100, h800, h20, h200, b200, a100, mi300x, or cpu-local (measured here)
    #[arg(long)]
    hardware: Option<String>,
    /// chips the model is split over (tensor-parallel attention, expert-parallel experts)
    #[arg(long, default_value_t = 1)]
    gpus: usize,
    /// sequences decoded together
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// context length for decode speed and KV size (default: prompt + output)
    #[arg(long)]
    context: Option<u64>,
    /// prompt tokens of one request
    #[arg(long, default_value_t = 1024)]
    prompt: u64,
    /// output tokens of one request
    #[arg(long, default_value_t = 1024)]
    output: u64,
    /// weight format: bf16, f16, fp8, int8, int4 (default: as the checkpoint stores them)
    #[arg(long)]
    dtype: Option<String>,
    /// KV-cache element: bf16, f16, f32, fp8, int8
    #[arg(long, default_value = "bf16")]
    kv_dtype: String,
    /// rental price per chip-hour in USD (default: the profile's indicative price)
    #[arg(long)]
    price_per_hour: Option<f64>,
    #[arg(long)]
    json: bool,
    /// write a PNG: decode tokens/s per chip vs context, and $/M output tokens vs batch
    #[arg(long)]
    plot: Option<PathBuf>,
    /// measure this machine (memory bandwidth, matmul rate per format) and store the cpu-local
    /// profile
    #[arg(long)]
    measure_local: bool,
    /// with a checkpoint and cpu-local: predict prefill and decode at batch 1 and 8, run them
    /// with the engine in the same process, and print both with their ratio
    #[arg(long)]
    check: bool,
}

fn load_config(path: &Path) -> Result<ModelConfig> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    if !file.exists() {
        bail!("--model {}: no config.json there", path.display());
    }
    ModelConfig::from_file(&file)
}

fn measure_and_store() -> Result<Chip> {
    eprintln!("measuring this machine (memory bandwidth, matmul rates)...");
    let chip = hardware::measure_local();
    let path = hardware::local_profile_path();
    hardware::save_local(&chip, &path)?;
    eprintln!(
        "cpu-local: {:.1} GB/s read, bf16 {:.0} GFLOP/s, int8 {:.0}, int4 {:.0} (stored in {})",
        chip.bandwidth_gb_s,
        chip.bf16_tflops * 1e3,
        chip.int8_tops * 1e3,
        chip.int4_tops * 1e3,
        path.display()
    );
    Ok(chip)
}

fn chip(name: &str) -> Result<Chip> {
    if name.eq_ignore_ascii_case(hardware::LOCAL) {
        return match hardware::load_local(&hardware::local_profile_path())? {
            Some(c) => Ok(c),
            None => measure_and_store(),
        };
    }
    hardware::find(name)
}

pub fn cost(a: CostArgs) -> Result<()> {
    if a.check {
        return check(&a);
    }
    if a.measure_local {
        let c = measure_and_store()?;
        if a.model.is_none() {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            }
            return Ok(());
        }
    }
    let (Some(model), Some(hw)) = (&a.model, &a.hardware) else {
        bail!("whale cost needs --model DIR|CONFIG.json and --hardware NAME (or --measure-local alone)");
    };
    let config = load_config(model)?;
    let dtype = match &a.dtype {
        Some(d) => Dtype::parse(d)?,
        None if config.fp8_block.is_some() => Dtype::Fp8,
        None => Dtype::Bf16,
    };
    let kv_dtype = Dtype::parse(&a.kv_dtype).context("--kv-dtype")?;
    if kv_dtype == Dtype::Int4 {
        bail!("--kv-dtype int4 is not a cache format whale models (bf16, f16, f32, fp8, int8)");
    }
    let chip = chip(hw)?;
    let price = a.price_per_hour.unwrap_or(chip.price_per_hour);
    let setup = Setup {
        chip,
        gpus: a.gpus,
        dtype,
        kv_dtype,
    };
    let f = Figures::new(config);
    let request = Request {
        batch: a.batch,
        context: a.context.unwrap_or(a.prompt + a.output),
        prompt: a.prompt,
        output: a.output,
        price_per_hour: price,
    };
    let report = Report::new(&model.display().to_string(), &f, &setup, &request)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if let Some(path) = &a.plot {
        plot::write(path, &f, &setup, request.batch, request.context)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Predicted vs measured on this machine, in one process: the profile is measured first, then
/// the engine runs the same shapes the prediction is for.
fn check(a: &CostArgs) -> Result<()> {
    let Some(dir) = &a.model else {
        bail!("--check needs --model DIR (a checkpoint the engine can load)");
    };
    if let Some(h) = &a.hardware {
        if !h.eq_ignore_ascii_case(hardware::LOCAL) {
            bail!("--check measures this machine: use --hardware cpu-local (or leave it out)");
        }
    }
    let dtype = match a.dtype.as_deref().unwrap_or("bf16") {
        "bf16" => (Dtype::Bf16, Format::Bf16),
        "int8" => (Dtype::Int8, Format::Q8_0),
        "int4" => (Dtype::Int4, Format::Q4_0),
        other => bail!("--check runs the engine's bf16, int8 or int4 weights, not `{other}`"),
    };
    let chip = measure_and_store()?;
    let mut ck = Checkpoint::open(dir)?;
    ck.dtype = Some(dtype.1);
    let model = Model::load(&ck)?;
    let f = Figures::new(model.config.clone());
    // the engine keeps its latent cache in f32
    let setup = Setup {
        chip,
        gpus: 1,
        dtype: dtype.0,
        kv_dtype: Dtype::F32,
    };
    // the same machine seen only through its plain read bandwidth: the roofline the engine's
    // kernels are measured against
    let mut plain = setup.clone();
    (
        plain.chip.gemv_bf16_gb_s,
        plain.chip.gemv_int8_gb_s,
        plain.chip.gemv_int4_gb_s,
    ) = (0.0, 0.0, 0.0);
    let (prompt, gen) = (128usize, 32usize);
    crate::bench::measure(&model, prompt, 1, 1)?; // fault the weights in
    let mut rows = vec![];
    let mut add = |what: String, roofline: f64, predicted: f64, measured: f64| {
        rows.push(serde_json::json!({"what": what, "roofline_tok_s": roofline, "predicted_tok_s": predicted, "measured_tok_s": measured,
            "measured_over_predicted": measured / predicted, "measured_over_roofline": measured / roofline}));
    };
    for batch in [1usize, 8] {
        let (pre, dec) = crate::bench::measure(&model, prompt, gen, batch)?;
        if batch == 1 {
            let speed = |s: &Setup| prompt as f64 / s.prefill(&f, prompt as f64).seconds;
            add(
                format!("prefill {prompt} tokens"),
                speed(&plain),
                speed(&setup),
                pre,
            );
        }
        // decode runs at contexts prompt+1 .. prompt+gen: take the middle
        let ctx = (prompt + gen / 2) as f64;
        let speed = |s: &Setup| batch as f64 / s.decode(&f, batch as f64, ctx).seconds;
        add(
            format!("decode batch {batch}"),
            speed(&plain),
            speed(&setup),
            dec,
        );
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"model": dir, "dtype": dtype.0, "profile": setup.chip, "rows": rows})
            )?
        );
        return Ok(());
    }
    println!(
        "{:<20} {:>12} {:>12} {:>12} {:>11} {:>10}",
        "tokens/s", "roofline", "predicted", "measured", "/predicted", "/roofline"
    );
    for r in &rows {
        let v = |k: &str| r[k].as_f64().unwrap_or(0.0);
        println!(
            "{:<20} {:>12.1} {:>12.1} {:>12.1} {:>11.2} {:>10.2}",
            r["what"].as_str().unwrap_or_default(),
            v("roofline_tok_s"),
            v("predicted_tok_s"),
            v("measured_tok_s"),
            v("measured_over_predicted"),
            v("measured_over_roofline")
        );
    }
    println!("roofline: plain read bandwidth + matmul rate; predicted: weights read at the rate whale's matrix-vector kernels reach (the profile's gemv figures)");
    Ok(())
}
