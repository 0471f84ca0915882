//! Block-quantised weights (Q8_0, Q4_0) times activations quantised to int8 per block of 32,
//! for CPUs with AVX2 but not AVX-512 VNNI (`qdot`): `vpmaddubsw` multiplies 32 unsigned by 32
//! signed bytes and adds adjacent pairs into i16, `vpmaddwd` by ones widens those to i32.
//!
//! `vpmaddubsw` wants the weights unsigned and saturates its pair sums at i16. Q8_0 weights go
//! in as |w| with their sign moved onto the activation (`vpsignb`, llama.cpp's scheme): |w| <= 128
//! and |x| <= 127 keep a pair within 2 * 128 * 127 < 2^15. Q4_0 weights go in as stored, q + 8
//! (0..15), and the offset's share, 8 * (sum of the block's x), is taken off each block's integer
//! dot. Each block's dot is exact in i32; blocks are then scaled by dw * dx and summed in f32.
//!
//! Q4_0 runs eight rows at a time, one row per f32 lane: the eight rows' blocks are gathered
//! eight bytes a row into registers that hold four rows each (two loads and an unpack per four
//! rows), so a token's block costs eight `vpmaddubsw`, adds in i16 (a Q4_0 pair is at most
//! 2 * 15 * 127, four of them fit), one `vpmaddwd` per four rows and one `vphaddd` that leaves
//! the eight rows' dots in row order, then one convert and one FMA for all eight. The gathered
//! weights serve up to four tokens. A row-by-token loop spent a convert, an FMA and a horizontal
//! sum per cell, and unpacked the nibbles again for every token: prefill ran at half
//! llama.cpp's, which repacks Q4_0 at load for the same reason.
//!
//! Every cell sums its blocks in block order in one f32 lane: its bits do not depend on the tile,
//! the batch or the thread count.

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
    let n_tok = x.len();
    if w.layout == Layout::Q8_0 {
        for (i, r) in rows.enumerate() {
            let (bytes, scales) = (&w.bytes[r * rb..][..rb], &w.scales[r * nb..][..nb]);
            for (t, a) in x.iter().enumerate() {
                // SAFETY: `available()` checked AVX2, FMA and F16C; lengths above.
                #[cfg(target_arch = "x86_64")]
                {
                    out[i * n_tok + t] = unsafe { x86::q8_row_dot(bytes, scales, a) };
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = (bytes, scales, a, t);
                    unreachable!("available() is false off x86_64");
                }
            }
        }
        return;
    }
    for g in rows.clone().step_by(8) {
        // a short last group repeats its last row in the spare lanes, which are not stored
        let lanes: [usize; 8] = std::array::from_fn(|l| (g + l).min(rows.end - 1));
        let valid = (rows.end - g).min(8);
        for t0 in (0..n_tok).step_by(4) {
            let toks = &x[t0..(t0 + 4).min(n_tok)];
            let mut cells = [[0f32; 8]; 4];
            // SAFETY: `available()` checked AVX2, FMA and F16C; every row in `lanes` is below
            // rows.end, whose bytes and scales the asserts above bound.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                let (b, s, c) = (w.bytes, w.scales, &mut cells);
                match toks.len() {
                    1 => x86::q4_rows8::<1>(b, s, nb, lanes, toks, c),
                    2 => x86::q4_rows8::<2>(b, s, nb, lanes, toks, c),
                    3 => x86::q4_rows8::<3>(b, s, nb, lanes, toks, c),
                    _ => x86::q4_rows8::<4>(b, s, nb, lanes, toks, c),
                }
            };
            for (i, lane) in (0..valid).zip(g - rows.start..) {
                for (j, c) in cells.iter().take(toks.len()).enumerate() {
                    out[lane * n_tok + t0 + j] = c[i];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{f16, I8Act, QK};
    use std::arch::x86_64::*;

    /// One Q8_0 row by one token: blocks alternate between two accumulators (one FMA chain
    /// would wait 4 cycles a block).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_row_dot(bytes: &[u8], scales: &[f16], x: &I8Act) -> f32 {
        let nb = scales.len();
        let ones = _mm256_set1_epi16(1);
        // block b's exact integer dot, in 8 lanes of f32
        let block = |b: usize| {
            let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * QK) as *const __m256i);
            let w = _mm256_loadu_si256(bytes.as_ptr().add(b * QK) as *const __m256i);
            _mm256_cvtepi32_ps(signed_dot(w, xv, ones))
        };
        // two accumulators in registers (an array indexed by b & 1 lived on the stack, a
        // store-to-load round trip per block)
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        // dw * dx of the next eight blocks, widened from f16 eight at a time
        let mut dd = [0f32; 8];
        let mut b = 0;
        while b < nb {
            if b % 8 == 0 {
                if b + 8 <= nb {
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(b) as *const _));
                    let v = _mm256_mul_ps(dw, _mm256_loadu_ps(x.d.as_ptr().add(b)));
                    _mm256_storeu_ps(dd.as_mut_ptr(), v);
                } else {
                    for (i, d) in dd.iter_mut().enumerate().take(nb - b) {
                        *d = scales[b + i].to_f32() * x.d[b + i];
                    }
                }
            }
            acc0 = _mm256_fmadd_ps(block(b), _mm256_set1_ps(dd[b % 8]), acc0);
            if b + 1 < nb {
                acc1 = _mm256_fmadd_ps(block(b + 1), _mm256_set1_ps(dd[(b + 1) % 8]), acc1);
            }
            b += 2;
        }
        crate::simd::x86::hsum256(_mm256_add_ps(acc0, acc1))
    }

    /// Block b of the eight rows in eight registers, each of four rows' 8-byte runs: registers
    /// 0..4 hold rows 0, 1, 4, 5 and 4..8 rows 2, 3, 6, 7 (so that `vphaddd` of the two halves'
    /// dots leaves rows 0..8 in order); register i holds values 8 * (i % 4).. of the block.
    /// (Intrinsics in closures or `array::map` here were left as calls, outside this
    /// function's features: a tenth of the speed.)
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn q4_gather(row: &[*const u8; 8], b: usize) -> [__m256i; 8] {
        let nibble = _mm256_set1_epi8(0x0f);
        let mut w = [_mm256_setzero_si256(); 8];
        for (h, [r0, r1, r4, r5]) in [[0, 1, 4, 5], [2, 3, 6, 7]].into_iter().enumerate() {
            // [r0 | r4] and [r1 | r5], 16 bytes each: byte j holds values j (low nibble) and
            // j + 16 (high); unpacked: bytes 0..8 (values 0..8, 16..24) and 8..16 (8..16, 24..32)
            let at = |r: usize| row[r].add(b * 16) as *const __m128i;
            let p = _mm256_loadu2_m128i(at(r4), at(r0));
            let q = _mm256_loadu2_m128i(at(r5), at(r1));
            let (v0, v1) = (_mm256_unpacklo_epi64(p, q), _mm256_unpackhi_epi64(p, q));
            w[4 * h] = _mm256_and_si256(v0, nibble);
            w[4 * h + 1] = _mm256_and_si256(v1, nibble);
            w[4 * h + 2] = _mm256_and_si256(_mm256_srli_epi16(v0, 4), nibble);
            w[4 * h + 3] = _mm256_and_si256(_mm256_srli_epi16(v1, 4), nibble);
        }
        w
    }

    /// Four registers of `q4_gather` by the token's values: i32 [a a b b | c c d d] for their
    /// four rows a, b, c, d.
    /// A pair is at most 2 * 15 * 127, so four of them add in i16.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn q4_half(w: &[__m256i], xs: &[__m256i; 4], ones: __m256i) -> __m256i {
        let s01 = _mm256_add_epi16(
            _mm256_maddubs_epi16(w[0], xs[0]),
            _mm256_maddubs_epi16(w[1], xs[1]),
        );
        let s23 = _mm256_add_epi16(
            _mm256_maddubs_epi16(w[2], xs[2]),
            _mm256_maddubs_epi16(w[3], xs[3]),
        );
        _mm256_madd_epi16(_mm256_add_epi16(s01, s23), ones)
    }

    /// Eight Q4_0 rows (`rows`, repeats allowed) by T tokens: cells[t][i] = dot(W[rows[i]],
    /// x[t]). `bytes` and `scales` are the whole matrix's, `nb` blocks a row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_rows8<const T: usize>(
        bytes: &[u8],
        scales: &[f16],
        nb: usize,
        rows: [usize; 8],
        x: &[I8Act],
        cells: &mut [[f32; 8]; 4],
    ) {
        let ones = _mm256_set1_epi16(1);
        let rb = nb * QK / 2;
        let mut row = [bytes.as_ptr(); 8];
        for (p, r) in row.iter_mut().zip(rows) {
            *p = bytes.as_ptr().add(r * rb);
        }
        // The next eight rows (where a band's rows follow each other), pulled into L2 while
        // these are at work: eight streams at 16 bytes a block left the hardware prefetcher
        // at a third of the bandwidth that one row's stream reached. Their 8 * rb bytes of
        // weights and 16 * nb of scales go at 128 and 16 bytes a block.
        let next = bytes.as_ptr().wrapping_add((rows[0] + 8) * rb);
        let next_scales = (scales.as_ptr() as *const u8).wrapping_add((rows[0] + 8) * nb * 2);
        let mut acc = [_mm256_setzero_ps(); T];
        // the eight rows' scales of eight blocks, dw[j] lane i = row i's scale of block b0 + j
        let mut dw = [_mm256_setzero_ps(); 8];
        for b in 0..nb {
            if b % 8 == 0 {
                scales_8x8(scales, nb, &rows, b, &mut dw);
            }
            _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(b * 128) as *const i8);
            _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(b * 128 + 64) as *const i8);
            if b % 4 == 0 {
                _mm_prefetch::<_MM_HINT_T1>(next_scales.wrapping_add(b * 16) as *const i8);
            }
            let w = q4_gather(&row, b);
            for t in 0..T {
                let a = &x[t];
                let q = a.q.as_ptr().add(b * QK) as *const i64;
                // values 0..8, 8..16, 16..24, 24..32 in every 8-byte lane
                let xs = [
                    _mm256_set1_epi64x(q.read_unaligned()),
                    _mm256_set1_epi64x(q.add(1).read_unaligned()),
                    _mm256_set1_epi64x(q.add(2).read_unaligned()),
                    _mm256_set1_epi64x(q.add(3).read_unaligned()),
                ];
                let dot =
                    _mm256_hadd_epi32(q4_half(&w[..4], &xs, ones), q4_half(&w[4..], &xs, ones));
                let dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(8 * a.sum[b]));
                let dd = _mm256_mul_ps(dw[b % 8], _mm256_set1_ps(a.d[b]));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), dd, acc[t]);
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(cells[t].as_mut_ptr(), acc[t]);
        }
    }

    /// Signed bytes w times x in i32 pairs of pairs: |w| by x with w's sign.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn signed_dot(w: __m256i, x: __m256i, ones: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
        _mm256_madd_epi16(pairs, ones)
    }

    /// dw[j] = the eight rows' scales of block b0 + j, for the blocks b0.. that the row has.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn scales_8x8(
        scales: &[f16],
        nb: usize,
        rows: &[usize; 8],
        b0: usize,
        dw: &mut [__m256; 8],
    ) {
        let mut r = [_mm256_setzero_ps(); 8];
        if b0 + 8 <= nb {
            for i in 0..8 {
                let at = scales.as_ptr().add(rows[i] * nb + b0) as *const __m128i;
                r[i] = _mm256_cvtph_ps(_mm_loadu_si128(at));
            }
        } else {
            // the last few blocks of a row: copied out, where eight would read past it
            let mut tail = [[0u16; 8]; 8];
            for i in 0..8 {
                for j in 0..nb - b0 {
                    tail[i][j] = scales[rows[i] * nb + b0 + j].to_bits();
                }
                r[i] = _mm256_cvtph_ps(_mm_loadu_si128(tail[i].as_ptr() as *const __m128i));
            }
        }
        // 8x8 transpose: pairs, then quads, then halves
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
        dw[0] = _mm256_permute2f128_ps::<0x20>(u0, u4);
        dw[1] = _mm256_permute2f128_ps::<0x20>(u1, u5);
        dw[2] = _mm256_permute2f128_ps::<0x20>(u2, u6);
        dw[3] = _mm256_permute2f128_ps::<0x20>(u3, u7);
        dw[4] = _mm256_permute2f128_ps::<0x31>(u0, u4);
        dw[5] = _mm256_permute2f128_ps::<0x31>(u1, u5);
        dw[6] = _mm256_permute2f128_ps::<0x31>(u2, u6);
        dw[7] = _mm256_permute2f128_ps::<0x31>(u3, u7);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant;
    use crate::simd::tests::seq;

    /// Weights of `layout`, quantised from `seq`: (bytes, scales).
    fn weights(layout: Layout, rows: usize, k: usize) -> (Vec<u8>, Vec<f16>) {
        let (mut bytes, mut scales) = (vec![], vec![]);
        for row in seq(rows * k, 3).chunks_exact(k) {
            match layout {
                Layout::Q8_0 => {
                    let mut q = vec![];
                    quant::quantize_q8_0(row, &mut q, &mut scales);
                    bytes.extend(q.iter().map(|&v| v as u8));
                }
                Layout::Q4_0 => quant::quantize_q4_0(row, &mut bytes, &mut scales),
            }
        }
        (bytes, scales)
    }

    /// Each block's integer dot is exact, so a cell differs from the dot of the dequantised
    /// weights with the dequantised activation only by the f32 sums' rounding; -128 and 127
    /// (a stored Q8_0 file may hold -128) reach the widest pair sums without saturating, as do
    /// Q4_0 codes 0 and 15 against activations of -127 and 127. Shapes: fewer blocks than the
    /// eight whose scales go together, eight and a tail; groups of eight rows and a short one;
    /// one to six tokens (four at a time, then the rest).
    #[test]
    fn integer_dots_equal_dots_of_the_dequantised_values() {
        if !available() {
            return;
        }
        for (rows, k, n_tok) in [(5, 96, 3), (13, 352, 6), (16, 256, 1)] {
            let mut xs: Vec<Vec<f32>> = (0..n_tok).map(|t| seq(k, 10 + t as u32)).collect();
            xs[0][..4].copy_from_slice(&[1.0, -1.0, 1.0, -1.0]);
            let acts: Vec<I8Act> = xs.iter().map(|x| I8Act::new(x)).collect();
            for layout in [Layout::Q8_0, Layout::Q4_0] {
                let (mut bytes, scales) = weights(layout, rows, k);
                match layout {
                    Layout::Q8_0 => bytes[..2].copy_from_slice(&[0x80, 127]), // -128, 127
                    Layout::Q4_0 => bytes[..2].copy_from_slice(&[0xf0, 0x0f]), // 0 and 15
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
                            let qs: Vec<i8> =
                                bytes[r * k..][..k].iter().map(|&b| b as i8).collect();
                            quant::dequantize_q8_0(&qs, sc, &mut wd)
                        }
                        Layout::Q4_0 => {
                            quant::dequantize_q4_0(&bytes[r * k / 2..][..k / 2], sc, &mut wd)
                        }
                    }
                    for (t, a) in acts.iter().enumerate() {
                        let prod = |j: usize| wd[j] as f64 * a.q[j] as f64 * a.d[j / QK] as f64;
                        let want: f64 = (0..k).map(prod).sum();
                        let mag: f64 = (0..k).map(|j| prod(j).abs()).sum();
                        let got = out[r * acts.len() + t] as f64;
                        assert!(
                            (got - want).abs() <= 1e-6 * mag.max(1.0),
                            "{layout:?} {rows}x{k} row {r} token {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// A cell's bits do not depend on the rows and tokens computed beside it: a band that starts
    /// mid-group, and each token alone, give the same bits as the whole product.
    #[test]
    fn cells_do_not_depend_on_the_tile() {
        if !available() {
            return;
        }
        let (rows, k, n_tok) = (21, 288, 7);
        let acts: Vec<I8Act> = (0..n_tok)
            .map(|t| I8Act::new(&seq(k, 40 + t as u32)))
            .collect();
        for layout in [Layout::Q8_0, Layout::Q4_0] {
            let (bytes, scales) = weights(layout, rows, k);
            let q = QRows {
                layout,
                bytes: &bytes,
                scales: &scales,
                cols: k,
            };
            let mut all = vec![0f32; rows * n_tok];
            rows_times_tokens(q, 0..rows, &acts, &mut all);
            let mut band = vec![0f32; 11 * n_tok];
            rows_times_tokens(q, 3..14, &acts, &mut band);
            assert_eq!(band, all[3 * n_tok..14 * n_tok], "{layout:?}");
            for (t, a) in acts.iter().enumerate() {
                let mut one = vec![0f32; rows];
                rows_times_tokens(q, 0..rows, std::slice::from_ref(a), &mut one);
                let col: Vec<f32> = (0..rows).map(|r| all[r * n_tok + t]).collect();
                assert_eq!(one, col, "{layout:?} token {t}");
            }
        }
    }
}
