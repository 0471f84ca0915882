//! e^x over f32 slices, for softmax and SwiGLU. libm's `expf` is a call per value: ~1.5% of the
//! main thread's time in int4 decode (the experts' SwiGLU) and more in long-prompt attention.
//! The AVX-512 form does 16 values per step: Cephes' polynomial for e^r on |r| <= ln2 / 2 (within
//! 2 ulp, test), and `vscalefps` for the power of two, which also gives inf, 0 and subnormals at
//! the ends of the range. Every value goes through the same code (the tail under a mask), so a
//! value's result does not depend on its place in the slice.

use crate::simd::{isa, Isa};

/// x[i] <- e^(x[i] - m); returns the sum of the new values.
pub fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    match isa() {
        // SAFETY: the feature was detected at runtime.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::exp_sub_sum(x, m) },
        _ => {
            let mut s = 0f32;
            for v in x.iter_mut() {
                *v = (*v - m).exp();
                s += *v;
            }
            s
        }
    }
}

/// gate[i] <- silu(gate[i]) * up[i] = gate[i] * up[i] / (1 + e^-gate[i])
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    match isa() {
        // SAFETY: as above; the lengths are checked.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::swiglu(gate, up) },
        _ => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// e^x for 16 values
    #[inline(always)]
    unsafe fn exp16(x: __m512) -> __m512 {
        // beyond these e^x is inf or rounds to 0 anyway; NaN stays NaN (max/min return their
        // second operand when one is NaN)
        let x = _mm512_min_ps(
            _mm512_set1_ps(89.0),
            _mm512_max_ps(_mm512_set1_ps(-110.0), x),
        );
        let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // r = x - k ln2, with ln2 in two parts so k * ln2_hi is exact
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let one = _mm512_set1_ps(1.0);
        let y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, one));
        _mm512_scalef_ps(y, k)
    }

    fn tail_mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
        let mv = _mm512_set1_ps(m);
        let mut sum = _mm512_setzero_ps();
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), mv));
            _mm512_storeu_ps(c.as_mut_ptr(), e);
            sum = _mm512_add_ps(sum, e);
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let k = tail_mask(rest.len());
            let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, rest.as_ptr()), mv));
            _mm512_mask_storeu_ps(rest.as_mut_ptr(), k, e);
            sum = _mm512_mask_add_ps(sum, k, sum, e);
        }
        _mm512_reduce_add_ps(sum)
    }

    #[inline(always)]
    unsafe fn swiglu16(g: __m512, u: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
        let mut gs = gate.chunks_exact_mut(16);
        let mut us = up.chunks_exact(16);
        for (g, u) in (&mut gs).zip(&mut us) {
            let y = swiglu16(_mm512_loadu_ps(g.as_ptr()), _mm512_loadu_ps(u.as_ptr()));
            _mm512_storeu_ps(g.as_mut_ptr(), y);
        }
        let (g, u) = (gs.into_remainder(), us.remainder());
        if !g.is_empty() {
            let k = tail_mask(g.len());
            let y = swiglu16(
                _mm512_maskz_loadu_ps(k, g.as_ptr()),
                _mm512_maskz_loadu_ps(k, u.as_ptr()),
            );
            _mm512_mask_storeu_ps(g.as_mut_ptr(), k, y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ulps between a and the exact value b (f64), counted in a's format near b
    fn ulps(a: f32, b: f64) -> f64 {
        let ulp = (b.abs() as f32).max(f32::MIN_POSITIVE);
        let ulp = (f32::from_bits(ulp.to_bits() + 1) - ulp) as f64;
        (a as f64 - b).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulp_over_the_whole_range() {
        // every value from -110 to 89 in steps that hit many different reductions
        let xs: Vec<f32> = (0..200_001)
            .map(|i| -110.0 + i as f32 * 0.000_995)
            .collect();
        let mut e = xs.clone();
        exp_sub_sum(&mut e, 0.0);
        for (&x, &y) in xs.iter().zip(&e) {
            let want = (x as f64).exp();
            if want < f32::MIN_POSITIVE as f64 {
                // subnormal or zero results: within one subnormal step
                assert!((y as f64 - want).abs() <= 1.5e-45, "e^{x}: {y} vs {want}");
            } else if want > f32::MAX as f64 {
                assert_eq!(y, f32::INFINITY, "e^{x}");
            } else {
                assert!(ulps(y, want) <= 2.0, "e^{x}: {y} vs {want}");
            }
        }
        let mut edge = [f32::NEG_INFINITY, f32::INFINITY, f32::NAN, 0.0];
        exp_sub_sum(&mut edge, 0.0);
        assert_eq!(edge[0], 0.0);
        assert_eq!(edge[1], f32::INFINITY);
        assert!(edge[2].is_nan());
        assert_eq!(edge[3], 1.0);
    }

    #[test]
    fn results_do_not_depend_on_place_in_the_slice() {
        // the same values at every offset (full vectors and masked tails) give the same bits
        let vals: Vec<f32> = (0..40).map(|i| (i as f32 - 20.0) * 0.37).collect();
        let mut whole = vals.clone();
        exp_sub_sum(&mut whole, 1.5);
        for start in 0..vals.len() {
            let mut part = vals[start..].to_vec();
            exp_sub_sum(&mut part, 1.5);
            assert_eq!(part, whole[start..]);
        }
        let up: Vec<f32> = (0..40).map(|i| 0.1 * i as f32 - 1.0).collect();
        let mut g = vals.clone();
        swiglu(&mut g, &up);
        for (i, (&x, &u)) in vals.iter().zip(&up).enumerate() {
            let want = x as f64 / (1.0 + (-x as f64).exp()) * u as f64;
            assert!(
                (g[i] as f64 - want).abs() <= 4.0 * f32::EPSILON as f64 * want.abs().max(1e-30),
                "swiglu({x}, {u}): {} vs {want}",
                g[i]
            );
            let mut one = [x];
            swiglu(&mut one, &[u]);
            assert_eq!(one[0], g[i]);
        }
    }

    #[test]
    fn sum_is_the_sum_of_the_values() {
        let mut x: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let m = x[36];
        let s = exp_sub_sum(&mut x, m);
        let direct: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((s as f64 - direct).abs() <= 1e-6 * direct);
        assert_eq!(x[36], 1.0);
    }
}
