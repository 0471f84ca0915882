//! bf16 weights times activations rounded to bf16, on AVX512-BF16: `vdpbf16ps` multiplies 32
//! bf16 pairs and adds each adjacent pair of products into one of 16 f32 lanes, twice the
//! multiply rate of widening the weights to f32 for `vfmadd`. This is what llama.cpp's and
//! PyTorch's bf16 paths compute; it costs the activations' low 16 bits (relative error 2^-9 per
//! value), so it is an opt-in format (`bf16-fast`) next to the exact f32-activation `bf16`.
//!
//! Every (weight row, token) cell runs the same instruction sequence (one 16-lane accumulator,
//! 32 columns per step, a masked last step, one fixed reduction) whatever tile it is computed in,
//! so a token gets the same bits alone or in a batch, on one thread or many.

use half::bf16;

/// Whether this CPU has the instructions (AVX-512 with BF16 and word masks).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            crate::simd::isa() == crate::simd::Isa::Avx512
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Activations rounded to bf16 (round to nearest even), as the kernels read them.
pub fn round(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect()
}

/// out[i * n_tok + t] = dot(W[rows.start + i], x[t]) where W is row-major bf16 `cols` wide and x
/// holds `n_tok` rounded activation rows. Up to three tokens stream the rows in order; more go
/// four rows at a time, each group of rows (in L1 after the first tile) taken by every tile of up
/// to four tokens in turn.
pub fn rows_times_tokens(
    w: &[u16],
    cols: usize,
    rows: std::ops::Range<usize>,
    x: &[u16],
    n_tok: usize,
    out: &mut [f32],
) {
    assert!(rows.end * cols <= w.len() && x.len() == n_tok * cols);
    assert_eq!(out.len(), rows.len() * n_tok);
    let wrow = |r: usize| &w[r * cols..(r + 1) * cols];
    let tok = |t: usize| &x[t * cols..(t + 1) * cols];
    let mut r = rows.start;
    while n_tok >= 4 && r + 4 <= rows.end {
        let i0 = r - rows.start;
        let w4: [&[u16]; 4] = std::array::from_fn(|i| wrow(r + i));
        // The group's first two tiles fetch the next group's rows into L2 as they go, half the
        // cache lines each: with 5-8 tokens memory then streams through both tiles, not just the
        // first (+10% at 8 tokens); spreading it over more tiles fetched too late (-10% at 16).
        let next: Option<[&[u16]; 4]> =
            (r + 8 <= rows.end).then(|| std::array::from_fn(|i| wrow(r + 4 + i)));
        let tiles = n_tok.div_ceil(4).min(2);
        let mut t = 0;
        while t < n_tok {
            let m = (n_tok - t).min(4);
            let mut put = |ri: usize, ti: usize, v: f32| out[(i0 + ri) * n_tok + t + ti] = v;
            let pf = next.filter(|_| t / 4 < tiles).map(|rows| Ahead {
                rows,
                phase: t / 4,
                period: tiles,
            });
            macro_rules! tile {
                ($t:literal) => {
                    for (ri, yr) in
                        cells_ahead::<4, $t>(w4, std::array::from_fn(|j| tok(t + j)), pf)
                            .iter()
                            .enumerate()
                    {
                        for (ti, &v) in yr.iter().enumerate() {
                            put(ri, ti, v);
                        }
                    }
                };
            }
            match m {
                1 => tile!(1),
                2 => tile!(2),
                3 => tile!(3),
                _ => tile!(4),
            }
            t += m;
        }
        r += 4;
    }
    // A few tokens (a batch's decode step) read one row at a time: four rows in lockstep are
    // four memory streams per core, which fetch well below one stream's bandwidth.
    for r in r..rows.end {
        let o = &mut out[(r - rows.start) * n_tok..][..n_tok];
        let mut t = 0;
        while t < n_tok {
            let m = (n_tok - t).min(4);
            macro_rules! row {
                ($t:literal) => {
                    o[t..t + $t].copy_from_slice(
                        &cells::<1, $t>([wrow(r)], std::array::from_fn(|j| tok(t + j)))[0],
                    )
                };
            }
            match m {
                1 => row!(1),
                2 => row!(2),
                3 => row!(3),
                _ => row!(4),
            }
            t += m;
        }
    }
}

/// One cell: sum_j w[j] * x[j] over bf16 values.
pub fn dot(w: &[u16], x: &[u16]) -> f32 {
    cells::<1, 1>([w], [x])[0][0]
}

/// R weight rows by T tokens; every cell runs the same steps whatever R and T are.
fn cells<const R: usize, const T: usize>(w: [&[u16]; R], x: [&[u16]; T]) -> [[f32; T]; R] {
    cells_ahead(w, x, None)
}

/// Rows to fetch into L2 while a tile works: the cache lines `phase`, `phase + period`, ... of
/// each, so `period` tiles with phases 0..period fetch every line once between them.
#[derive(Clone, Copy)]
struct Ahead<'a, const R: usize> {
    rows: [&'a [u16]; R],
    phase: usize,
    period: usize,
}

/// `cells`, also prefetching `ahead`'s rows (as long as `w`'s) into L2 in step with the work.
fn cells_ahead<const R: usize, const T: usize>(
    w: [&[u16]; R],
    x: [&[u16]; T],
    ahead: Option<Ahead<R>>,
) -> [[f32; T]; R] {
    let k = x[0].len();
    assert!(w.iter().all(|r| r.len() == k) && x.iter().all(|r| r.len() == k));
    if available() {
        // SAFETY: features detected; all rows have length k (`ahead` too: checked here).
        #[cfg(target_arch = "x86_64")]
        return unsafe {
            match ahead {
                Some(a) => {
                    assert!(a.rows.iter().all(|r| r.len() == k) && a.phase < a.period);
                    x86::tile::<R, T, true>(w, x, a)
                }
                None => x86::tile::<R, T, false>(
                    w,
                    x,
                    Ahead {
                        rows: w,
                        phase: 0,
                        period: 1,
                    },
                ),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::isa() != crate::simd::Isa::Portable {
        // SAFETY: AVX2 and FMA detected (the ISA check); all rows have length k.
        return std::array::from_fn(|r| {
            std::array::from_fn(|t| unsafe { x86::dot_avx2(w[r], x[t]) })
        });
    }
    std::array::from_fn(|r| std::array::from_fn(|t| portable(w[r], x[t])))
}

/// CPUs without AVX2: the same products (exact in f32), summed in order.
fn portable(w: &[u16], x: &[u16]) -> f32 {
    let f = |v: u16| f32::from_bits((v as u32) << 16);
    w.iter().zip(x).map(|(&a, &b)| f(a) * f(b)).sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// CPUs with AVX2 but not AVX512-BF16: both sides widened to f32 (their products are exact
    /// there), 32 columns a step over four 8-lane accumulators, the rest in order.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(w: &[u16], x: &[u16]) -> f32 {
        use crate::simd::x86::{hsum256, widen8};
        let n = w.len();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let j = i + 8 * k;
                *acc = _mm256_fmadd_ps(widen8(w.as_ptr().add(j)), widen8(x.as_ptr().add(j)), *acc);
            }
            i += 32;
        }
        let mut s = hsum256(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        let f = |v: u16| f32::from_bits((v as u32) << 16);
        for j in i..n {
            s += f(w[j]) * f(x[j]);
        }
        s
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load(p: *const u16, n: usize) -> __m512bh {
        let v = if n >= 32 {
            _mm512_loadu_si512(p as *const _)
        } else {
            _mm512_maskz_loadu_epi16((1u32 << n) - 1, p as *const i16)
        };
        std::mem::transmute::<__m512i, __m512bh>(v)
    }

    /// R weight rows x T tokens, R*T accumulators: 32 columns a step, the rest in one masked step.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn tile<const R: usize, const T: usize, const AHEAD: bool>(
        w: [&[u16]; R],
        x: [&[u16]; T],
        ahead: super::Ahead<R>,
    ) -> [[f32; T]; R] {
        // plain loops, no closures: a closure would not inherit the target features and its
        // loads would not be inlined; and no branch among the loads of a whole step
        let k = x[0].len();
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let mut xv = [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); T];
        let mut i = 0;
        // steps until this tile's next prefetch (a step is one 64-byte line of each row)
        let mut wait = ahead.phase;
        while i + 32 <= k {
            for t in 0..T {
                xv[t] = load(x[t].as_ptr().add(i), 32);
            }
            let fetch = AHEAD && wait == 0;
            wait = if wait == 0 {
                ahead.period - 1
            } else {
                wait - 1
            };
            for r in 0..R {
                if fetch {
                    _mm_prefetch::<_MM_HINT_T1>(ahead.rows[r].as_ptr().add(i) as *const i8);
                }
                let wv = load(w[r].as_ptr().add(i), 32);
                for t in 0..T {
                    acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv, xv[t]);
                }
            }
            i += 32;
        }
        if i < k {
            for t in 0..T {
                xv[t] = load(x[t].as_ptr().add(i), k - i);
            }
            for r in 0..R {
                let wv = load(w[r].as_ptr().add(i), k - i);
                for t in 0..T {
                    acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv, xv[t]);
                }
            }
        }
        let mut out = [[0f32; T]; R];
        for r in 0..R {
            for t in 0..T {
                out[r][t] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::tests::seq;

    /// f64 sum of the exact products of the rounded values.
    fn reference(w: &[u16], x: &[u16]) -> f64 {
        let f = |v: u16| f32::from_bits((v as u32) << 16) as f64;
        w.iter().zip(x).map(|(&a, &b)| f(a) * f(b)).sum()
    }

    #[test]
    fn dots_match_an_f64_reference_at_every_length() {
        for k in [1, 7, 31, 32, 33, 64, 100, 1408, 2048 + 17] {
            let (w, x) = (round(&seq(k, 3)), round(&seq(k, 4)));
            let (got, want) = (dot(&w, &x) as f64, reference(&w, &x));
            let scale: f64 = w
                .iter()
                .zip(&x)
                .map(|(&a, &b)| reference(&[a], &[b]).abs())
                .sum();
            // f32 accumulation over k terms: rounding grows at most like k * 2^-24 of sum |w x|
            assert!(
                (got - want).abs() <= 1e-6 + scale * k as f64 * 6e-8,
                "k={k}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn a_cell_has_the_same_bits_in_every_tile() {
        for k in [45, 2048, 1408 + 5] {
            let rows = 9;
            let w = round(&seq(rows * k, 5));
            for n_tok in 1..=7 {
                let x = round(&seq(n_tok * k, 6 + n_tok as u32));
                let mut out = vec![0f32; rows * n_tok];
                rows_times_tokens(&w, k, 0..rows, &x, n_tok, &mut out);
                for r in 0..rows {
                    for t in 0..n_tok {
                        let alone = dot(&w[r * k..(r + 1) * k], &x[t * k..(t + 1) * k]);
                        assert_eq!(out[r * n_tok + t].to_bits(), alone.to_bits(), "k={k}");
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 lies halfway between two bf16 values: ties go to the even one (1.0)
        let halfway = f32::from_bits(0x3f80_8000);
        assert_eq!(round(&[halfway, -2.5, 0.0]), vec![0x3f80, 0xc020, 0]);
    }
}
