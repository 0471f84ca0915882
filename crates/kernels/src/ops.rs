//! Elementwise and reduction operations on f32 slices.

/// Dot product with eight independent accumulators (lets the compiler vectorise).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// y = w * x / sqrt(mean(x^2) + eps), for each row of width `w.len()`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    assert_eq!(x.len(), out.len());
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = dot(xr, xr) / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = g * (v * inv);
        }
    }
}

/// In-place softmax (max-subtracted).
pub fn softmax(x: &mut [f32]) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv = 1.0 / crate::vexp::exp_sub_sum(x, m);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// gate <- silu(gate) * up (the SwiGLU inner activation), 16 values at a time where it can
pub use crate::vexp::swiglu;

/// The first position of the largest value (NaNs never win; 0 when nothing beats -inf): greedy
/// decoding's pick over a 100k-entry vocabulary every token. The scalar loop is a serial chain
/// of compares; the compiler's vector form of it kept its indices in general registers (60-120 us
/// a token, ~1% of int4 decode). AVX-512: 4 x 16 lanes keep their largest value and where it was.
pub fn argmax(v: &[f32]) -> usize {
    match crate::simd::isa() {
        // SAFETY: the feature was detected at runtime.
        #[cfg(target_arch = "x86_64")]
        crate::simd::Isa::Avx512 => unsafe { x86::argmax(v) },
        _ => argmax_scalar(v),
    }
}

fn argmax_scalar(v: &[f32]) -> usize {
    let mut top = (f32::NEG_INFINITY, 0);
    for (i, &x) in v.iter().enumerate() {
        if x > top.0 {
            top = (x, i);
        }
    }
    top.1
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn argmax(v: &[f32]) -> usize {
        const SETS: usize = 4;
        let mut best = [_mm512_set1_ps(f32::NEG_INFINITY); SETS];
        let mut at = [_mm512_setzero_si512(); SETS];
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let whole = v.len() / (16 * SETS) * 16 * SETS;
        let mut i = 0;
        while i < whole {
            for k in 0..SETS {
                let j = i + 16 * k;
                let x = _mm512_loadu_ps(v.as_ptr().add(j));
                // strictly greater: a lane keeps the first place its maximum occurred
                let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, best[k]);
                best[k] = _mm512_mask_mov_ps(best[k], gt, x);
                let idx = _mm512_add_epi32(lane, _mm512_set1_epi32(j as i32));
                at[k] = _mm512_mask_mov_epi32(at[k], gt, idx);
            }
            i += 16 * SETS;
        }
        let (mut bv, mut bi) = ([0f32; 16], [0u32; 16]);
        let mut top = (f32::NEG_INFINITY, 0usize);
        for k in 0..SETS {
            _mm512_storeu_ps(bv.as_mut_ptr(), best[k]);
            _mm512_storeu_si512(bi.as_mut_ptr() as *mut __m512i, at[k]);
            for (&x, &p) in bv.iter().zip(&bi) {
                let p = p as usize;
                if x > top.0 || (x == top.0 && x > f32::NEG_INFINITY && p < top.1) {
                    top = (x, p);
                }
            }
        }
        for (j, &x) in v.iter().enumerate().skip(whole) {
            if x > top.0 {
                top = (x, j);
            }
        }
        top.1
    }
}

/// dst += a * src
pub fn axpy(a: f32, src: &[f32], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += a * s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rows() {
        let x = [3.0f32, 4.0, 0.0, 0.0];
        let w = [1.0f32, 2.0];
        let mut out = [0f32; 4];
        rms_norm(&x, &w, 0.0, &mut out);
        let r = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
        rms_norm(&x, &w, 1e-6, &mut out);
        assert!(out[2].abs() < 1e-6 && out[3].abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one_and_is_stable() {
        let mut x = [1000.0f32, 1001.0, f32::NEG_INFINITY];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[2], 0.0);
        assert!(x[1] > x[0]);
    }

    #[test]
    fn argmax_is_the_first_position_of_the_largest_in_every_build() {
        for n in [0usize, 1, 15, 16, 17, 63, 64, 65, 100, 1000, 102_400] {
            for seed in 0..5u32 {
                // few distinct values, so the maximum is tied at several places
                let mut v: Vec<f32> = (0..n as u32)
                    .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 7) as f32 - 3.0)
                    .collect();
                if seed == 4 && n > 2 {
                    v[n / 2] = f32::NAN;
                    v[n - 1] = 9.0;
                }
                let mut want = 0;
                for (i, &x) in v.iter().enumerate() {
                    if x > v[want] || (v[want].is_nan() && !x.is_nan()) {
                        want = i;
                    }
                }
                assert_eq!(argmax(&v), want, "n {n} seed {seed}");
                assert_eq!(argmax_scalar(&v), want, "n {n} seed {seed}");
            }
        }
        assert_eq!(argmax(&[f32::NEG_INFINITY; 100]), 0);
        assert_eq!(argmax(&[f32::NAN; 100]), 0);
    }

    #[test]
    fn dot_handles_remainders() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let want: f32 = a.iter().map(|v| v * v).sum();
        assert_eq!(dot(&a, &a), want);
    }
}
