//! Memory read bandwidth as the decode kernels can use it: every thread streams its share of
//! memory much larger than the caches, either a buffer of its own through the SIMD dot product
//! the kernels use (`read_bandwidth_gbs`), or given memory such as the model's weights through an
//! XOR fold, which reads any bytes at the same cost (`read_regions_gbs`; weights read as f32
//! would meet subnormals and NaNs).

use rayon::prelude::*;
use std::time::Instant;

/// Best of `passes` timed reads of a `bytes`-sized buffer by the current rayon pool, in GB/s.
/// The buffer lives where the weights do (an arena of 2 MiB pages; see `arena`), so the two are
/// read at the same cost per byte.
pub fn read_bandwidth_gbs(bytes: usize, passes: usize) -> f64 {
    let n = bytes / 4;
    let value = |i: usize| (i % 7) as f32;
    let arena = crate::arena::Arena::default();
    let buf = arena
        .filled(n, value)
        .unwrap_or_else(|| crate::Buf::owned((0..n).into_par_iter().map(value).collect()));
    let buf = buf.as_slice();
    let chunk = n.div_ceil(rayon::current_num_threads() * 4).max(1 << 16);
    let mut best = 0f64;
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        let s: f32 = buf
            .par_chunks(chunk)
            .map(|c| crate::simd::dot_f32(c, c))
            .sum();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max(bytes as f64 / secs / 1e9);
    }
    best
}

/// One timed read of up to `max_bytes` of `regions` (largest first, as given) by every thread of
/// the current pool, in GB/s. Any memory will do; `whale bench` reads the model's own weights
/// right before and after each run, so a run is set against the bandwidth of its own moment
/// without a buffer that would add to its peak memory. Threads claim 1 MiB pieces in runs
/// (`guided`), as the kernels claim weight rows.
pub fn read_regions_gbs(regions: &[&[u8]], max_bytes: usize) -> f64 {
    const PIECE: usize = 1 << 20;
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut total = 0;
    for r in regions {
        for p in r.chunks(PIECE) {
            if total >= max_bytes {
                break;
            }
            pieces.push(p);
            total += p.len();
        }
    }
    let folded = std::sync::atomic::AtomicU64::new(0);
    let t = Instant::now();
    crate::guided::for_runs(
        pieces.len(),
        || (),
        |_, run| {
            let x = pieces[run]
                .iter()
                .fold(0, |a, p| a ^ crate::simd::xor_fold(p));
            folded.fetch_xor(x, std::sync::atomic::Ordering::Relaxed);
        },
    );
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(folded.into_inner());
    total as f64 / secs.max(1e-9) / 1e9
}

/// Best of `passes` timed products of `m` activation rows with a `k` x `n` weight matrix held in
/// `format`, through the same kernel the model's layers use, in GFLOP/s (2·m·k·n per product).
pub fn matmul_gflops(format: crate::Format, m: usize, k: usize, n: usize, passes: usize) -> f64 {
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let w = crate::Matrix::from_f32(n, k, w);
    let w = w.convert(format).unwrap_or(w);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
    let mut out = vec![0f32; m * n];
    crate::matmul(&x, m, &w, &mut out); // warm the caches and the thread pool
    let mut best = 0f64;
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        crate::matmul(&x, m, &w, &mut out);
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(&out);
        best = best.max(2.0 * (m * k * n) as f64 / secs / 1e9);
    }
    best
}
