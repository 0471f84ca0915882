//! Block-quantised weights (Q8_0, Q4_0) times activations quantised to int8 per block of 32,
//! for CPUs with AVX2 but not AVX-512 VNNI (`qdot`): `vpmaddubsw` multiplies 32 unsigned by 32
//! signed bytes and adds adjacent pairs into i16, `vpmaddwd` by ones widens those to 8 i32 lanes.
//!
//! `vpmaddubsw` wants the weights unsigned and saturates its pair sums at i16. Q8_0 weights go
//! in as |w| with their sign moved onto the activation (`vpsignb`, llama.cpp's scheme): |w| <= 128
//! and |x| <= 127 keep a pair within 2 * 128 * 127 < 2^15. Q4_0 weights go in as stored, q + 8
//! (0..15), and the offset's share, -8 * (sum of the block's x), is taken off per block in f32.
//! Each block's dot is exact in i32; blocks are then scaled by dw * dx and summed in f32, two
//! blocks in flight.
//!
//! One token and one row per call, in block order: a cell's bits do not depend on the tile, the
//! batch or the thread count.

use half::f16;

use crate::qdot::{quantize_block, Layout, QRows};
use crate::quant::QK;

/// One activation row quantised like Q8_0 (d = max|x| / 127 per block of 32), in order.
pub struct I8Act {
    q: Vec<i8>,
    d: Vec<f32>,
    /// each block's sum of q (Q4_0 weights go in unsigned, q + 8; this takes the 8 off)
    sum: Vec<i32>,
}

impl I8Act {
    pub fn new(x: &[f32]) -> Self {
        assert!(
            x.len().is_multiple_of(QK),
            "activation length must be a multiple of 32"
        );
        let mut q = vec![0i8; x.len()];
        let d = x
            .chunks_exact(QK)
            .zip(q.chunks_exact_mut(QK))
            .map(|(xb, qb)| quantize_block(xb, qb.try_into().expect("32 values")))
            .collect();
        let sum = q
            .chunks_exact(QK)
            .map(|b| b.iter().map(|&v| v as i32).sum())
            .collect();
        I8Act { q, d, sum }
    }
}

/// Whether this CPU runs these kernels.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd::isa() != crate::simd::Isa::Portable && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// out[i * x.len() + t] = dot(W[rows.start + i], x[t]).
pub fn rows_times_tokens(w: QRows, rows: std::ops::Range<usize>, x: &[I8Act], out: &mut [f32]) {
    assert!(available(), "the AVX2 integer block kernels need AVX2");
    let nb = w.cols / QK;
    let rb = match w.layout {
        Layout::Q8_0 => w.cols,
        Layout::Q4_0 => w.cols / 2,
    };
    assert!(w.cols.is_multiple_of(QK) && rows.end * rb <= w.bytes.len());
    assert!(rows.end * nb <= w.scales.len() && out.len() == rows.len() * x.len());
    assert!(x.iter().all(|a| a.q.len() == w.cols));
    for (i, r) in rows.enumerate() {
        let (bytes, scales) = (&w.bytes[r * rb..][..rb], &w.scales[r * nb..][..nb]);
        for (t, a) in x.iter().enumerate() {
            // SAFETY: `available()` checked AVX2, FMA and F16C; lengths above.
            #[cfg(target_arch = "x86_64")]
            {
                out[i * x.len() + t] = unsafe { x86::row_dot(w.layout, bytes, scales, a) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (bytes, scales, a, t);
                unreachable!("available() is false off x86_64");
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{f16, I8Act, Layout, QK};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_dot(layout: Layout, bytes: &[u8], scales: &[f16], x: &I8Act) -> f32 {
        match layout {
            Layout::Q8_0 => row_dot_in::<false>(bytes, scales, x),
            Layout::Q4_0 => row_dot_in::<true>(bytes, scales, x),
        }
    }

    #[inline(always)]
    unsafe fn row_dot_in<const Q4: bool>(bytes: &[u8], scales: &[f16], x: &I8Act) -> f32 {
        let nb = scales.len();
        let ones = _mm256_set1_epi16(1);
        let nibble = _mm_set1_epi8(0x0f);
        // block b's exact integer dot, in 8 lanes of f32
        let block = |b: usize| {
            let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * QK) as *const __m256i);
            let pairs = if Q4 {
                // byte j holds values j (low nibble) and j + 16 (high), as stored (q + 8):
                // unsigned already, the offset is taken off below
                let v = _mm_loadu_si128(bytes.as_ptr().add(b * QK / 2) as *const __m128i);
                let lo = _mm_and_si128(v, nibble);
                let hi = _mm_and_si128(_mm_srli_epi16(v, 4), nibble);
                _mm256_maddubs_epi16(_mm256_set_m128i(hi, lo), xv)
            } else {
                let w = _mm256_loadu_si256(bytes.as_ptr().add(b * QK) as *const __m256i);
                _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xv, w))
            };
            _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones))
        };
        // two accumulators in registers (an array indexed by b & 1 lived on the stack, a
        // store-to-load round trip per block)
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        // Q4_0: the offset's share, sum over blocks of dw * dx * 8 * (sum of the block's x),
        // taken off at the end
        let (mut offset, mut offset_tail) = (_mm256_setzero_ps(), 0f32);
        // dw * dx of the next eight blocks, widened from f16 eight at a time
        let mut dd = [0f32; 8];
        let mut b = 0;
        while b < nb {
            if b % 8 == 0 {
                if b + 8 <= nb {
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(b) as *const _));
                    let v = _mm256_mul_ps(dw, _mm256_loadu_ps(x.d.as_ptr().add(b)));
                    _mm256_storeu_ps(dd.as_mut_ptr(), v);
                    if Q4 {
                        let sums = _mm256_loadu_si256(x.sum.as_ptr().add(b) as *const __m256i);
                        let share = _mm256_cvtepi32_ps(_mm256_slli_epi32(sums, 3));
                        offset = _mm256_fmadd_ps(v, share, offset);
                    }
                } else {
                    for (i, d) in dd.iter_mut().enumerate().take(nb - b) {
                        *d = scales[b + i].to_f32() * x.d[b + i];
                        if Q4 {
                            offset_tail += *d * (8 * x.sum[b + i]) as f32;
                        }
                    }
                }
            }
            acc0 = _mm256_fmadd_ps(block(b), _mm256_set1_ps(dd[b % 8]), acc0);
            if b + 1 < nb {
                acc1 = _mm256_fmadd_ps(block(b + 1), _mm256_set1_ps(dd[(b + 1) % 8]), acc1);
            }
            b += 2;
        }
        crate::simd::x86::hsum256(_mm256_sub_ps(_mm256_add_ps(acc0, acc1), offset)) - offset_tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant;
    use crate::simd::tests::seq;

    /// Each block's integer dot is exact, so a cell differs from the dot of the dequantised
    /// weights with the dequantised activation only by the f32 sums' rounding; -128 and 127
    /// (a stored Q8_0 file may hold -128) reach the widest pair sums without saturating.
    #[test]
    fn integer_dots_equal_dots_of_the_dequantised_values() {
        if !available() {
            return;
        }
        let (rows, k) = (5, 96);
        let w = seq(rows * k, 3);
        let xs: Vec<Vec<f32>> = (0..3).map(|t| seq(k, 10 + t)).collect();
        let acts: Vec<I8Act> = xs.iter().map(|x| I8Act::new(x)).collect();
        for layout in [Layout::Q8_0, Layout::Q4_0] {
            let (mut bytes, mut scales) = (vec![], vec![]);
            for row in w.chunks_exact(k) {
                match layout {
                    Layout::Q8_0 => {
                        let mut q = vec![];
                        quant::quantize_q8_0(row, &mut q, &mut scales);
                        bytes.extend(q.iter().map(|&v| v as u8));
                    }
                    Layout::Q4_0 => quant::quantize_q4_0(row, &mut bytes, &mut scales),
                }
            }
            if layout == Layout::Q8_0 {
                bytes[0] = 0x80; // -128
                bytes[1] = 127;
            }
            let q = QRows {
                layout,
                bytes: &bytes,
                scales: &scales,
                cols: k,
            };
            let mut out = vec![0f32; rows * acts.len()];
            rows_times_tokens(q, 0..rows, &acts, &mut out);
            for r in 0..rows {
                let mut wd = vec![0f32; k];
                let nb = k / QK;
                let sc = &scales[r * nb..][..nb];
                match layout {
                    Layout::Q8_0 => {
                        let qs: Vec<i8> = bytes[r * k..][..k].iter().map(|&b| b as i8).collect();
                        quant::dequantize_q8_0(&qs, sc, &mut wd)
                    }
                    Layout::Q4_0 => {
                        quant::dequantize_q4_0(&bytes[r * k / 2..][..k / 2], sc, &mut wd)
                    }
                }
                for (t, a) in acts.iter().enumerate() {
                    let want: f64 = (0..k)
                        .map(|j| wd[j] as f64 * a.q[j] as f64 * a.d[j / QK] as f64)
                        .sum();
                    let got = out[r * acts.len() + t] as f64;
                    let mag: f64 = (0..k)
                        .map(|j| (wd[j] as f64 * a.q[j] as f64 * a.d[j / QK] as f64).abs())
                        .sum();
                    assert!(
                        (got - want).abs() <= 1e-6 * mag.max(1.0),
                        "{layout:?} row {r} token {t}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
