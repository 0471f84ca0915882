//! Multiply rate of one product shape per weight format: `cargo run --release -p whale-kernels
//! --example shapes -- ROWS COLS TOKENS [MATRICES] [REPEATS] [PER_CALL] [FORMATS]`. Every repeat multiplies MATRICES
//! copies (default 64, 3 repeats): many large ones read from memory, a few small ones over many
//! repeats from cache; PER_CALL of them per `matmul_batch` (default all), as a MoE layer's experts
//! are one call each; FORMATS a comma list such as int8,int4 (default all; `fp8` for float8_e4m3fn
//! in 128x128 blocks as the released V3 stores it, `mxfp4` for V4's routed experts). Prints the read bandwidth probe, then GMAC/s and GB/s of weights per format.

use std::time::Instant;
use whale_kernels::{fp8, matmul_batch, Buf, Format, Matrix, Product, WeightData};

/// `w` as float8_e4m3fn codes in 128x128 blocks, each scaled so its largest value is 448:
/// (codes, scale_inv).
fn to_fp8_blocks(cols: usize, w: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let cb = cols.div_ceil(FP8_BLOCK);
    let block = |i: usize| i / cols / FP8_BLOCK * cb + i % cols / FP8_BLOCK;
    let mut scale_inv = vec![0f32; (w.len() / cols).div_ceil(FP8_BLOCK) * cb];
    for (i, v) in w.iter().enumerate() {
        scale_inv[block(i)] = scale_inv[block(i)].max(v.abs() / 448.0);
    }
    let codes = w
        .iter()
        .enumerate()
        .map(|(i, v)| fp8::f32_to_e4m3(v / scale_inv[block(i)]))
        .collect();
    (codes, scale_inv)
}

const FP8_BLOCK: usize = 128;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // an argument with letters is the list of formats to time (default all)
    let formats: Vec<String> = match args.iter().find(|s| s.parse::<usize>().is_err()) {
        Some(f) => f.split(',').map(String::from).collect(),
        None => ["f32", "bf16", "bf16-fast", "fp8", "mxfp4", "int8", "int4"]
            .map(String::from)
            .to_vec(),
    };
    let a: Vec<usize> = args
        .iter()
        .filter(|s| s.parse::<usize>().is_ok())
        .map(|s| {
            s.parse()
                .expect("numbers: ROWS COLS TOKENS [MATRICES] [REPEATS] [PER_CALL]")
        })
        .collect();
    let (rows, cols, n_tok) = (a[0], a[1], a[2]);
    let count = a.get(3).copied().unwrap_or(64);
    let reps = a.get(4).copied().unwrap_or(3);
    let per_call = a.get(5).copied().unwrap_or(count).max(1);
    let mut s = 1u32;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s % 2001) as f32 / 1000.0 - 1.0
    };
    let base: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
    let x: Vec<f32> = (0..n_tok * cols).map(|_| next()).collect();
    println!(
        "probe: {:.1} GB/s",
        whale_kernels::probe::read_bandwidth_gbs(1 << 30, 3)
    );
    for fmt in &formats {
        let f = Format::parse(fmt);
        assert!(
            f.is_some() || fmt == "fp8" || fmt == "mxfp4",
            "formats: f32, bf16, bf16-fast, f16, fp8, mxfp4, int8, int4"
        );
        let proto = Matrix::from_f32(rows, cols, base.clone());
        let fp8 = (fmt == "fp8").then(|| to_fp8_blocks(cols, &base));
        // packed as the engine packs weights at load (WHALE_NO_ARENA=1: each in its own Vec)
        let arena = whale_kernels::arena::Arena::default();
        let pack = std::env::var_os("WHALE_NO_ARENA").is_none();
        let ms: Vec<Matrix> = (0..count)
            .map(|_| {
                let m = match (f, &fp8) {
                    (Some(f), _) => proto.convert(f).unwrap(),
                    (None, Some((codes, scale_inv))) => Matrix {
                        rows,
                        cols,
                        data: WeightData::Fp8Block {
                            codes: Buf::owned(codes.clone()),
                            scale_inv: scale_inv.clone(),
                            block_rows: FP8_BLOCK,
                            block_cols: FP8_BLOCK,
                        },
                    },
                    // codes of any value, scales near 1: the kernel's cost does not depend on them
                    (None, None) => Matrix {
                        rows,
                        cols,
                        data: WeightData::Fp4 {
                            codes: Buf::owned(
                                (0..rows * cols / 2).map(|i| (i * 97 % 256) as u8).collect(),
                            ),
                            scales: Buf::owned(vec![126u8; rows * cols / 32]),
                        },
                    },
                };
                if pack {
                    m.packed_into(&arena)
                } else {
                    m
                }
            })
            .collect();
        let mut out = vec![vec![0f32; n_tok * rows]; count];
        let t = Instant::now();
        for _ in 0..reps {
            for (ms, out) in ms.chunks(per_call).zip(out.chunks_mut(per_call)) {
                let products = ms
                    .iter()
                    .zip(out.iter_mut())
                    .map(|(m, o)| Product::new(&x, n_tok, m, o))
                    .collect();
                matmul_batch(products);
            }
        }
        let secs = t.elapsed().as_secs_f64() / reps as f64;
        let macs = (count * rows * cols * n_tok) as f64;
        let bytes = (count * ms[0].stored_bytes()) as f64;
        println!(
            "{fmt:>9}: {:6.1} GMAC/s  {:5.1} GB/s of weights",
            macs / secs / 1e9,
            bytes / secs / 1e9
        );
    }
}
