//! Memory read bandwidth as the decode kernels can use it: every thread streams its own share
//! of a buffer much larger than the caches through the same SIMD dot product they use.

use rayon::prelude::*;
use std::time::Instant;

/// Best of `passes` timed reads of a `bytes`-sized buffer by the current rayon pool, in GB/s.
pub fn read_bandwidth_gbs(bytes: usize, passes: usize) -> f64 {
    let n = bytes / 4;
    let buf: Vec<f32> = (0..n).into_par_iter().map(|i| (i % 7) as f32).collect();
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
