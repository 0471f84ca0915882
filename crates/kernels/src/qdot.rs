//! Block-quantised weights (Q8_0, Q4_0) times activations quantised to int8 per block of 32,
//! on AVX-512 VNNI: `vpdpbusd` multiplies 64 unsigned by 64 signed bytes and adds each run of
//! four products into one of 16 i32 lanes, so a weight byte costs a fraction of an instruction.
//!
//! `vpdpbusd` wants the weights unsigned. They are made so with an offset (Q8_0: q + 128, a flip
//! of the sign bit; Q4_0: the stored nibble, which is q + 8), and the offset's share of each lane,
//! offset * (sum of the lane's four activations), depends on the activation alone: it is computed
//! once per token and starts every lane's integer sum, so each block's dot stays exact in i32.
//! Lanes are then scaled by dw * dx of their block and summed into 16 f32 lanes.
//!
//! Every (weight row, token) cell runs the same instruction sequence whatever tile it is computed
//! in, so a token gets the same bits alone or in a batch, on one thread or many.

use half::f16;

use crate::quant::QK;

/// Weight layouts these kernels read (the two block formats of `quant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Q8_0,
    Q4_0,
}

impl Layout {
    /// Blocks of 32 read per 64-byte weight load.
    fn blocks_per_group(self) -> usize {
        match self {
            Layout::Q8_0 => 2,
            Layout::Q4_0 => 4,
        }
    }

    /// What the kernel adds to a stored weight to make it unsigned.
    fn offset(self) -> i32 {
        match self {
            Layout::Q8_0 => 128,
            Layout::Q4_0 => 8,
        }
    }
}

/// Lanes per 512-bit register.
const LANES: usize = 16;

/// How far ahead of a row's current group the kernels prefetch its weight bytes, into L2: a
/// prefetch into L1 holds one of the core's few L1 miss buffers until its line arrives, which
/// capped the lines in flight (int4 decode 67-78 -> 86-92 tok/s against 4 KiB into L1; 8 and 16
/// KiB into L2 measure the same, 2 KiB less; `examples/shapes`, `whale bench`).
const PREFETCH: usize = 8192;

/// One activation row quantised like Q8_0 (d = max|x| / 127 per block of 32) and laid out for
/// one weight layout: per group of blocks, the int8 values in the order the weight bytes unpack
/// (`q`, 64 or 128 bytes), the lanes' starting sums (`start`, -offset * sum of each lane's
/// activations) and the lanes' block scales (`d`). Padded with zeros to whole groups.
pub struct QAct {
    pub layout: Layout,
    q: Vec<i8>,
    start: Vec<i32>,
    d: Vec<f32>,
    /// the block scales once each (`d` repeats each over its lanes): what decode reads, so that
    /// a long row's activation stays within L1 beside the weight stream
    db: Vec<f32>,
    blocks: usize,
}

impl QAct {
    pub fn new(x: &[f32], layout: Layout) -> Self {
        assert!(
            x.len().is_multiple_of(QK),
            "activation length must be a multiple of 32"
        );
        let blocks = x.len() / QK;
        let bpg = layout.blocks_per_group();
        let groups = blocks.div_ceil(bpg);
        let mut q = vec![0i8; groups * bpg * QK];
        let mut d = vec![0f32; groups * LANES];
        let mut db = vec![0f32; groups * bpg];
        let mut qb = [0i8; QK];
        for (b, xb) in x.chunks_exact(QK).enumerate() {
            let s = quantize_block(xb, &mut qb);
            let (g, i) = (b / bpg, b % bpg);
            // each half of a block is a run of 16 bytes in both layouts
            for (h, half) in qb.chunks_exact(16).enumerate() {
                let at = g * bpg * QK + position(layout, i, 16 * h);
                q[at..at + 16].copy_from_slice(half);
            }
            let per = LANES / bpg;
            d[g * LANES + i * per..][..per].fill(s);
            db[b] = s;
        }
        // lane l of a group sums activation bytes 4l..4l + 4 of each of its 64-byte halves
        let off = layout.offset();
        let halves = bpg * QK / 64;
        let mut start = vec![0i32; groups * LANES];
        for (gq, st) in q.chunks_exact(bpg * QK).zip(start.chunks_exact_mut(LANES)) {
            for h in gq.chunks_exact(64).take(halves) {
                for (s, four) in st.iter_mut().zip(h.chunks_exact(4)) {
                    *s -= off * four.iter().map(|&v| v as i32).sum::<i32>();
                }
            }
        }
        QAct {
            layout,
            q,
            start,
            d,
            db,
            blocks,
        }
    }

    pub fn len(&self) -> usize {
        self.blocks * QK
    }

    pub fn is_empty(&self) -> bool {
        self.blocks == 0
    }
}

/// One block of 32 activations to int8 with d = max|x| / 127, rounded half away from zero;
/// returns d. The AVX-512 build gives the same bits as the scalar one (test); it exists because
/// the scalar `round` is a libm call per value (~3% of int4 decode).
pub(crate) fn quantize_block(x: &[f32], q: &mut [i8; QK]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: `available()` checked AVX-512; x holds QK values (chunks_exact).
        return unsafe { x86::quantize_block(x, q) };
    }
    quantize_block_scalar(x, q)
}

fn quantize_block_scalar(x: &[f32], q: &mut [i8; QK]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let s = amax / 127.0;
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    for (o, v) in q.iter_mut().zip(x) {
        *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    s
}

/// Where value j of block i of a group sits among the group's activation bytes. Q8_0: in order.
/// Q4_0: byte j of a block holds values j (low nibble) and j + 16 (high); the 64 weight bytes
/// of four blocks unpack into 64 low then 64 high nibbles, block after block.
fn position(layout: Layout, i: usize, j: usize) -> usize {
    match layout {
        Layout::Q8_0 => i * QK + j,
        Layout::Q4_0 => (j / 16) * 64 + i * 16 + j % 16,
    }
}

/// Whether this CPU runs these kernels (AVX-512 with VNNI and byte/word masks).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            crate::simd::isa() == crate::simd::Isa::Avx512
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Weight rows of one block-quantised matrix: the row-major quantised bytes and block scales.
#[derive(Clone, Copy)]
pub struct QRows<'a> {
    pub layout: Layout,
    pub bytes: &'a [u8],
    pub scales: &'a [f16],
    /// row length in values
    pub cols: usize,
}

impl QRows<'_> {
    fn row_bytes(&self) -> usize {
        match self.layout {
            Layout::Q8_0 => self.cols,
            Layout::Q4_0 => self.cols / 2,
        }
    }
}

/// out[i * x.len() + t] = dot(W[rows.start + i], x[t]): the dots of a band of weight rows with
/// every activation row, computed one or two rows by up to four tokens at a time.
pub fn rows_times_tokens(w: QRows, rows: std::ops::Range<usize>, x: &[QAct], out: &mut [f32]) {
    assert!(available(), "integer block kernels need AVX-512 VNNI");
    let (n_tok, nb, rb) = (x.len(), w.cols / QK, w.row_bytes());
    assert!(w.cols.is_multiple_of(QK) && rows.end * rb <= w.bytes.len());
    assert!(rows.end * nb <= w.scales.len() && out.len() == rows.len() * n_tok);
    assert!(x.iter().all(|a| a.layout == w.layout && a.len() == w.cols));
    // One token (decode) streams the rows in order; several share each unpacked pair of rows.
    if n_tok == 1 {
        // SAFETY: as below.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::rows_one_token(w, rows, nb, &x[0], out)
        };
        return;
    }
    let mut r = rows.start;
    while r < rows.end {
        let rn = if r + 2 <= rows.end { 2 } else { 1 };
        let mut t = 0;
        while t < n_tok {
            let tn = (n_tok - t).min(4);
            let i0 = r - rows.start;
            let mut put = |ri: usize, ti: usize, v: f32| out[(i0 + ri) * n_tok + t + ti] = v;
            // SAFETY: `available()` checked the features; the asserts above bound every row and
            // scale read, and activations are padded to whole groups.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                macro_rules! tile {
                    ($r:literal, $t:literal) => {{
                        let y = x86::tile::<$r, $t>(w, r, nb, std::array::from_fn(|i| &x[t + i]));
                        for (ri, yr) in y.iter().enumerate() {
                            for (ti, &v) in yr.iter().enumerate() {
                                put(ri, ti, v);
                            }
                        }
                    }};
                }
                match (rn, tn) {
                    (2, 1) => tile!(2, 1),
                    (2, 2) => tile!(2, 2),
                    (2, 3) => tile!(2, 3),
                    (2, 4) => tile!(2, 4),
                    (_, 1) => tile!(1, 1),
                    (_, 2) => tile!(1, 2),
                    (_, 3) => tile!(1, 3),
                    _ => tile!(1, 4),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (&mut put, nb);
                unreachable!("available() is false off x86_64");
            }
            t += tn;
        }
        r += rn;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Layout, QAct, QRows, LANES, PREFETCH, QK};
    use std::arch::x86_64::*;

    /// `quantize_block_scalar` in AVX-512: round half away from zero is truncation plus one
    /// where the dropped fraction is at least a half.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn quantize_block(x: &[f32], q: &mut [i8; QK]) -> f32 {
        assert_eq!(x.len(), QK);
        let v = [
            _mm512_loadu_ps(x.as_ptr()),
            _mm512_loadu_ps(x.as_ptr().add(16)),
        ];
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
        let s = amax / 127.0;
        let inv = _mm512_set1_ps(if s > 0.0 { 1.0 / s } else { 0.0 });
        for (h, v) in v.into_iter().enumerate() {
            let y = _mm512_mul_ps(v, inv);
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
            let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(
                _mm512_abs_ps(_mm512_sub_ps(y, t)),
                _mm512_set1_ps(0.5),
            );
            let one = _mm512_or_ps(_mm512_and_ps(y, _mm512_set1_ps(-0.0)), _mm512_set1_ps(1.0));
            let r = _mm512_mask_add_ps(t, up, t, one);
            let r = _mm512_min_ps(
                _mm512_max_ps(r, _mm512_set1_ps(-127.0)),
                _mm512_set1_ps(127.0),
            );
            let b = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r));
            _mm_storeu_si128(q.as_mut_ptr().add(16 * h) as *mut __m128i, b);
        }
        s
    }

    /// `R` weight rows from `r0` times `T` activation rows, one f32 dot per cell.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn tile<const R: usize, const T: usize>(
        w: QRows,
        r0: usize,
        nb: usize,
        x: [&QAct; T],
    ) -> [[f32; T]; R] {
        match w.layout {
            Layout::Q8_0 => tile_in::<R, T, false, false>(w, r0, nb, x),
            Layout::Q4_0 => tile_in::<R, T, true, false>(w, r0, nb, x),
        }
    }

    /// `tile::<1, 1>` for each row of `rows` (the decode case), without a call per row, reading
    /// the activation's block scales compactly (see `group`). One row at a time: rows in lockstep
    /// are as many memory streams, which fetch below one stream's bandwidth.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn rows_one_token(
        w: QRows,
        rows: std::ops::Range<usize>,
        nb: usize,
        x: &QAct,
        out: &mut [f32],
    ) {
        for (o, r) in out.iter_mut().zip(rows) {
            *o = match w.layout {
                Layout::Q8_0 => tile_in::<1, 1, false, true>(w, r, nb, [x]),
                Layout::Q4_0 => tile_in::<1, 1, true, true>(w, r, nb, [x]),
            }[0][0];
        }
    }

    /// One group of weight bytes (64) and block scales (2 or 4) of a row, full or, with masks,
    /// the row's last partial group.
    // Always inlined into the `#[target_feature]` entry points, which compile it with their
    // features: out of line, its accumulators would go through memory every group.
    #[inline(always)]
    unsafe fn load_group<const Q4: bool>(
        p: *const u8,
        s: *const u16,
        masks: Option<(u64, u8)>,
    ) -> ([__m512i; 2], __m128) {
        let (v, h) = match masks {
            None => {
                let h = if Q4 {
                    _mm_loadl_epi64(s as *const __m128i)
                } else {
                    _mm_cvtsi32_si128((s as *const i32).read_unaligned())
                };
                (_mm512_loadu_si512(p as *const __m512i), h)
            }
            Some((bm, sm)) => (
                _mm512_maskz_loadu_epi8(bm, p as *const i8),
                _mm_maskz_loadu_epi16(sm, s as *const i16),
            ),
        };
        let a = if Q4 {
            let low4 = _mm512_set1_epi8(0x0f);
            [
                _mm512_and_si512(v, low4),
                _mm512_and_si512(_mm512_srli_epi16(v, 4), low4),
            ]
        } else {
            [_mm512_xor_si512(v, _mm512_set1_epi8(-128)), v]
        };
        (a, _mm_cvtph_ps(h))
    }

    // always inlined, as `load_group`
    #[inline(always)]
    unsafe fn tile_in<const R: usize, const T: usize, const Q4: bool, const COMPACT: bool>(
        w: QRows,
        r0: usize,
        nb: usize,
        x: [&QAct; T],
    ) -> [[f32; T]; R] {
        let bpg = if Q4 { 4 } else { 2 };
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let full = nb / bpg;
        for g in 0..full {
            group::<R, T, Q4, COMPACT>(w, r0, nb, g, None, &x, &mut acc);
        }
        let blocks = nb - full * bpg;
        if blocks > 0 {
            let bytes = blocks * if Q4 { 16 } else { 32 };
            let masks = ((1u64 << bytes) - 1, ((1u16 << blocks) - 1) as u8);
            group::<R, T, Q4, COMPACT>(w, r0, nb, full, Some(masks), &x, &mut acc);
        }
        let mut out = [[0f32; T]; R];
        for r in 0..R {
            for t in 0..T {
                out[r][t] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
        out
    }

    /// Adds group `g` of rows `r0..r0 + R` times `T` activations to the accumulators. COMPACT
    /// reads the activation's block scales once each (`QAct::db`) and multiplies them by the
    /// weight's before spreading the products over the lanes, instead of reading them spread
    /// (`QAct::d`): the same products, so the same bits, from a third of the activation bytes.
    // always inlined, as `load_group`
    #[inline(always)]
    unsafe fn group<const R: usize, const T: usize, const Q4: bool, const COMPACT: bool>(
        w: QRows,
        r0: usize,
        nb: usize,
        g: usize,
        masks: Option<(u64, u8)>,
        x: &[&QAct; T],
        acc: &mut [[__m512; T]; R],
    ) {
        let bpg = if Q4 { 4 } else { 2 };
        let row_bytes = if Q4 { w.cols / 2 } else { w.cols };
        // lane l of a group belongs to block l / (16 / bpg)
        let spread = if Q4 {
            _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0)
        } else {
            _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
        };
        let mut wa = [[_mm512_setzero_si512(); 2]; R];
        let mut dw = [_mm512_setzero_ps(); R];
        let mut hw = [_mm_setzero_ps(); R];
        for r in 0..R {
            let row = r0 + r;
            let p = w.bytes.as_ptr().add(row * row_bytes + g * 64);
            let s = w.scales.as_ptr().add(row * nb + g * bpg) as *const u16;
            // The hardware prefetcher alone leaves these streams short of the memory bandwidth
            // (the loop's instructions per byte limit the misses in flight): fetch ahead.
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH) as *const i8);
            if Q4 {
                // Q4_0's scales are an eighth of its weight bytes, a stream of their own that
                // the hardware prefetcher left short (int4 examples/shapes 1408x2048, four
                // interleaved pairs: 23.2 -> 26.5 GB/s); at Q8_0's sixteenth it measured no gain
                let ahead = PREFETCH / 8;
                _mm_prefetch::<_MM_HINT_T1>((s as *const u8).wrapping_add(ahead) as *const i8);
            }
            let (a, h) = load_group::<Q4>(p, s, masks);
            wa[r] = a;
            if COMPACT {
                hw[r] = h;
            } else {
                dw[r] = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(h));
            }
        }
        for t in 0..T {
            let a = x[t];
            let start = _mm512_loadu_si512(a.start.as_ptr().add(g * LANES) as *const __m512i);
            let (dx, dxb) = if COMPACT {
                let db = a.db.as_ptr().add(g * bpg);
                let dxb = if Q4 {
                    _mm_loadu_ps(db)
                } else {
                    _mm_castsi128_ps(_mm_loadl_epi64(db as *const __m128i))
                };
                (_mm512_setzero_ps(), dxb)
            } else {
                (
                    _mm512_loadu_ps(a.d.as_ptr().add(g * LANES)),
                    _mm_setzero_ps(),
                )
            };
            let q = a.q.as_ptr().add(g * bpg * QK);
            let x0 = _mm512_loadu_si512(q as *const __m512i);
            let x1 = if Q4 {
                _mm512_loadu_si512(q.add(64) as *const __m512i)
            } else {
                x0
            };
            for r in 0..R {
                let mut s = _mm512_dpbusd_epi32(start, wa[r][0], x0);
                if Q4 {
                    s = _mm512_dpbusd_epi32(s, wa[r][1], x1);
                }
                let scale = if COMPACT {
                    let m = _mm_mul_ps(hw[r], dxb);
                    _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(m))
                } else {
                    _mm512_mul_ps(dw[r], dx)
                };
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[r][t]);
            }
        }
    }
}

/// The reference: each block's integer dot, scaled by dw * dx, summed in f64 (tests).
pub fn reference_dot(w: QRows, row: usize, x: &[f32]) -> f64 {
    let nb = w.cols / QK;
    let mut deq = vec![0f32; w.cols];
    let sc = &w.scales[row * nb..(row + 1) * nb];
    match w.layout {
        Layout::Q8_0 => {
            let q: &[i8] = bytemuck::cast_slice(&w.bytes[row * w.cols..(row + 1) * w.cols]);
            crate::quant::dequantize_q8_0(q, sc, &mut deq);
        }
        Layout::Q4_0 => {
            let q = &w.bytes[row * w.cols / 2..(row + 1) * w.cols / 2];
            crate::quant::dequantize_q4_0(q, sc, &mut deq);
        }
    }
    let mut s = 0f64;
    for (xb, wb) in x.chunks_exact(QK).zip(deq.chunks_exact(QK)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (xv, wv) in xb.iter().zip(wb) {
            let q = (xv * inv).round().clamp(-127.0, 127.0);
            s += q as f64 * d as f64 * *wv as f64;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{quantize_q4_0, quantize_q8_0};
    use crate::simd::tests::seq;

    #[test]
    fn activation_blocks_quantise_to_the_same_bits_in_every_build() {
        // amax 127 makes the scale 1, so these are the rounded values themselves: halves
        // (ties round away from zero), the largest float below a half, zeros, signs
        let mut ties = [0f32; QK];
        for (j, v) in ties.iter_mut().enumerate() {
            *v = match j % 6 {
                0 => j as f32 + 0.5,
                1 => -(j as f32) - 0.5,
                2 => 0.499_999_97,
                3 => -0.499_999_97,
                4 => 126.5,
                _ => 0.0,
            };
        }
        ties[31] = 127.0;
        let mut blocks = vec![ties, [0f32; QK]];
        for (i, scale) in [1e-3f32, 1.0, 37.0, 1e4].into_iter().enumerate() {
            let v = seq(QK, i as u32);
            blocks.push(std::array::from_fn(|j| scale * v[j]));
        }
        for x in &blocks {
            let (mut a, mut b) = ([0i8; QK], [0i8; QK]);
            let (sa, sb) = (quantize_block(x, &mut a), quantize_block_scalar(x, &mut b));
            assert_eq!((sa.to_bits(), a), (sb.to_bits(), b), "{x:?}");
        }
        let mut q = [0i8; QK];
        quantize_block_scalar(&ties, &mut q);
        assert_eq!(&q[..5], &[1, -2, 0, 0, 127]);
    }

    #[test]
    fn integer_tiles_match_the_reference_and_do_not_depend_on_the_tile() {
        if !available() {
            eprintln!("skipped: no AVX-512 VNNI here");
            return;
        }
        // column counts cover whole groups and 1-3 leftover blocks of both layouts
        for cols in [32usize, 64, 96, 128, 160, 224, 1408] {
            let rows = 7;
            let w = seq(rows * cols, 3);
            let (mut q8, mut s8, mut q4, mut s4) = (vec![], vec![], vec![], vec![]);
            for r in w.chunks_exact(cols) {
                quantize_q8_0(r, &mut q8, &mut s8);
                quantize_q4_0(r, &mut q4, &mut s4);
            }
            let q8: Vec<u8> = bytemuck::cast_slice(&q8).to_vec();
            for (layout, bytes, scales) in [(Layout::Q8_0, &q8, &s8), (Layout::Q4_0, &q4, &s4)] {
                let m = QRows {
                    layout,
                    bytes,
                    scales,
                    cols,
                };
                let xs: Vec<Vec<f32>> = (0..6).map(|t| seq(cols, 10 + t)).collect();
                let acts: Vec<QAct> = xs.iter().map(|x| QAct::new(x, layout)).collect();
                let mut all = vec![0f32; rows * 6];
                rows_times_tokens(m, 0..rows, &acts, &mut all);
                // one token over all rows (decode's kernel): the same bits as in the tiles
                for t in 0..6 {
                    let mut col = vec![0f32; rows];
                    rows_times_tokens(m, 0..rows, &acts[t..t + 1], &mut col);
                    for r in 0..rows {
                        assert_eq!(col[r].to_bits(), all[r * 6 + t].to_bits());
                    }
                }
                for r in 0..rows {
                    for t in 0..6 {
                        let want = reference_dot(m, r, &xs[t]);
                        let got = all[r * 6 + t] as f64;
                        // f32 lanes summing `cols` products of magnitude <= max|w|
                        let tol = cols as f64 * 1e-6;
                        assert!(
                            (got - want).abs() <= tol,
                            "{layout:?} {cols}: {got} vs {want}"
                        );
                        // one row, one token: the same bits as inside the 4x4 tiles
                        let mut one = [0f32];
                        rows_times_tokens(m, r..r + 1, &acts[t..t + 1], &mut one);
                        assert_eq!(one[0].to_bits(), all[r * 6 + t].to_bits());
                    }
                }
            }
        }
    }
}
