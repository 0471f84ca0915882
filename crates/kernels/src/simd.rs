//! Dot products of f32 activations with f32, bf16 or FP8-block weights, selected at runtime by CPU
//! feature detection: AVX-512F, AVX2+FMA, or portable Rust. Every kernel reduces in a fixed
//! order that does not depend on threads, so results are the same however work is split.

use half::{bf16, f16};

use crate::quant::QK;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

/// The best instruction set this CPU has; `WHALE_ISA=portable|avx2` caps it (tests, comparisons).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let cap = std::env::var("WHALE_ISA").unwrap_or_default();
        detect(&cap)
    })
}

#[cfg(target_arch = "x86_64")]
fn detect(cap: &str) -> Isa {
    if cap != "portable" && cap != "avx2" && is_x86_feature_detected!("avx512f") {
        return Isa::Avx512;
    }
    if cap != "portable" && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        return Isa::Avx2;
    }
    Isa::Portable
}

#[cfg(not(target_arch = "x86_64"))]
fn detect(_: &str) -> Isa {
    Isa::Portable
}

#[inline]
fn bf16_bits(w: &[bf16]) -> &[u16] {
    bytemuck::cast_slice(w)
}

/// sum_i a[i] * b[i], as fast as a row streams: what the bandwidth probe reads with. A product's
/// cells go through `dot_rxt`, whose order this need not share.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    match isa() {
        // SAFETY: the feature was detected at runtime; lengths are checked above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::dot_f32_avx512(a, b) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::dot_f32_avx2(a, b) },
        _ => portable::dot_f32(a, b),
    }
}

/// The XOR of `b`'s 64-bit words (a trailing partial word zero-padded): a read of every byte
/// that costs next to nothing per byte, for the bandwidth probe.
pub fn xor_fold(b: &[u8]) -> u64 {
    match isa() {
        // SAFETY: the feature was detected at runtime.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::xor_fold_avx512(b) },
        _ => portable::xor_fold(b),
    }
}

/// sum over Q8_0 blocks of d_b * (q_b . x_b) with f32 activations: the fallback for CPUs
/// without AVX2, where neither integer kernel (`qdot`, `qdot_avx2`) runs.
#[inline]
pub fn dot_q8_0(qs: &[i8], scales: &[f16], x: &[f32]) -> f32 {
    assert!(qs.len() == x.len() && scales.len() * QK == x.len());
    portable::dot_q8_0(qs, scales, x)
}

/// sum over Q4_0 blocks of d_b * ((q_b - 8) . x_b), as `dot_q8_0`.
#[inline]
pub fn dot_q4_0(qs: &[u8], scales: &[f16], x: &[f32]) -> f32 {
    assert!(qs.len() * 2 == x.len() && scales.len() * QK == x.len());
    portable::dot_q4_0(qs, scales, x)
}

/// Weight rows in a form the 4x4 kernels read directly.
#[derive(Clone, Copy)]
pub enum Rows<'a, const R: usize> {
    F32([&'a [f32]; R]),
    Bf16([&'a [bf16]; R]),
    /// float8_e4m3fn codes, each row with one multiplier per `block` columns
    /// (`scales[r][c / block]`): the weight is `e4m3(code) * scale`, as `fp8::e4m3_table` decodes it.
    Fp8 {
        codes: [&'a [u8]; R],
        scales: [&'a [f32]; R],
        block: usize,
    },
    /// MXFP4 (see `fp4`): `k / 2` bytes of packed E2M1 codes and `k / 32` E8M0 scales per row
    Fp4 {
        codes: [&'a [u8]; R],
        scales: [&'a [u8]; R],
    },
}

/// out[r][t] = dot(w[r], x[t]) for `R` weight rows and `T` (1 to 4) activation rows of length
/// k: every loaded weight vector serves T tokens and every activation vector R rows. Each cell is
/// summed in one order whatever the tile (R, T) around it, so a token gets the same bits alone or
/// in a batch.
#[inline]
pub fn dot_rxt<const R: usize, const T: usize>(w: Rows<R>, x: [&[f32]; T]) -> [[f32; T]; R] {
    let k = x[0].len();
    assert!(x.iter().all(|r| r.len() == k));
    match w {
        Rows::F32(w) => {
            assert!(w.iter().all(|r| r.len() == k));
            match isa() {
                // SAFETY: feature detected; all rows have length k.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { x86::dot_rxt_f32_avx512(w, x) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { x86::dot_rxt_avx2(w.map(x86::F32Row), usize::MAX, x) },
                _ => {
                    std::array::from_fn(|r| std::array::from_fn(|t| portable::dot_f32(w[r], x[t])))
                }
            }
        }
        Rows::Bf16(w) => {
            assert!(w.iter().all(|r| r.len() == k));
            match isa() {
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { x86::dot_rxt_bf16_avx512(w.map(bf16_bits), x) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe {
                    x86::dot_rxt_avx2(w.map(|r| x86::Bf16Row(bf16_bits(r))), usize::MAX, x)
                },
                _ => std::array::from_fn(|r| {
                    std::array::from_fn(|t| portable::dot_bf16(bf16_bits(w[r]), x[t]))
                }),
            }
        }
        Rows::Fp8 {
            codes,
            scales,
            block,
        } => {
            assert!(block > 0);
            for (c, s) in codes.iter().zip(&scales) {
                assert!(c.len() == k && s.len() == k.div_ceil(block));
            }
            match isa() {
                // SAFETY: feature detected; rows have length k and a scale for every block.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 if block % 16 == 0 => unsafe {
                    x86::dot_rxt_fp8_avx512(codes, scales, block, x)
                },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 if block % 16 == 0 => unsafe {
                    // SAFETY: as above.
                    let rows = std::array::from_fn(|r| x86::Fp8Row {
                        codes: codes[r],
                        scales: scales[r],
                        block,
                    });
                    x86::dot_rxt_avx2(rows, block, x)
                },
                _ => std::array::from_fn(|r| {
                    std::array::from_fn(|t| portable::dot_fp8(codes[r], scales[r], block, x[t]))
                }),
            }
        }
        Rows::Fp4 { codes, scales } => {
            use crate::fp4::GROUP;
            assert!(k.is_multiple_of(GROUP));
            for (c, s) in codes.iter().zip(&scales) {
                assert!(c.len() == k / 2 && s.len() == k / GROUP);
            }
            match isa() {
                // SAFETY: feature detected; rows hold k / 2 bytes and k / 32 scales.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { x86::dot_rxt_fp4_avx512(codes, scales, x) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe {
                    let rows = std::array::from_fn(|r| x86::Fp4Row {
                        codes: codes[r],
                        scales: scales[r],
                    });
                    x86::dot_rxt_avx2(rows, GROUP, x)
                },
                _ => std::array::from_fn(|r| {
                    std::array::from_fn(|t| portable::dot_fp4(codes[r], scales[r], x[t]))
                }),
            }
        }
    }
}

/// Whether `dot_fp4_lanes` runs here (AVX-512); elsewhere MXFP4 rows go through `dot_rxt`.
pub fn fp4_lanes_available() -> bool {
    isa() == Isa::Avx512
}

/// out[r][t] = dot(w[r], x[t]) for MXFP4 rows whose activations `x` are in `fp4::to_lanes` order
/// (AVX-512 only: see `fp4_lanes_available`). Each cell sums its groups in order in one 16-lane
/// accumulator: the same bits in any tile.
#[cfg(target_arch = "x86_64")]
pub fn dot_fp4_lanes<const R: usize, const T: usize>(
    codes: [&[u8]; R],
    scales: [&[u8]; R],
    x: [&[f32]; T],
) -> [[f32; T]; R] {
    use crate::fp4::GROUP;
    let k = x[0].len();
    assert!(fp4_lanes_available() && k.is_multiple_of(GROUP));
    assert!(x.iter().all(|r| r.len() == k));
    for (c, s) in codes.iter().zip(&scales) {
        assert!(c.len() == k / 2 && s.len() == k / GROUP);
    }
    // SAFETY: AVX-512 checked above; rows hold k / 2 bytes and k / 32 scales.
    unsafe { x86::dot_fp4_lanes_avx512(codes, scales, x) }
}

mod portable {
    use super::{f16, QK};

    pub fn dot_q8_0(qs: &[i8], scales: &[f16], x: &[f32]) -> f32 {
        let mut s = 0f32;
        for ((q, xb), d) in qs.chunks_exact(QK).zip(x.chunks_exact(QK)).zip(scales) {
            let p: f32 = q.iter().zip(xb).map(|(&q, &x)| q as f32 * x).sum();
            s += d.to_f32() * p;
        }
        s
    }

    pub fn dot_q4_0(qs: &[u8], scales: &[f16], x: &[f32]) -> f32 {
        let mut s = 0f32;
        for ((q, xb), d) in qs.chunks_exact(QK / 2).zip(x.chunks_exact(QK)).zip(scales) {
            let mut p = 0f32;
            for j in 0..QK / 2 {
                p += ((q[j] & 0x0f) as i32 - 8) as f32 * xb[j]
                    + ((q[j] >> 4) as i32 - 8) as f32 * xb[j + QK / 2];
            }
            s += d.to_f32() * p;
        }
        s
    }
    #[inline]
    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        crate::ops::dot(a, b)
    }

    pub fn xor_fold(b: &[u8]) -> u64 {
        let words = b.chunks_exact(8);
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        words.fold(u64::from_le_bytes(last), |a, w| {
            a ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))
        })
    }

    /// The order of `portable::dot_f32` over the decoded row.
    pub fn dot_fp8(codes: &[u8], scales: &[f32], block: usize, x: &[f32]) -> f32 {
        let table = crate::fp8::e4m3_table();
        let w = |j: usize| table[codes[j] as usize] * scales[j / block];
        let n = codes.len();
        let mut acc = [0f32; 8];
        let mut j = 0;
        while j + 8 <= n {
            for i in 0..8 {
                acc[i] += w(j + i) * x[j + i];
            }
            j += 8;
        }
        let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (j, xj) in x.iter().enumerate().skip(j) {
            s += w(j) * xj;
        }
        s
    }

    /// The order of `portable::dot_f32` over the decoded row.
    pub fn dot_fp4(codes: &[u8], scales: &[u8], x: &[f32]) -> f32 {
        let w = |j: usize| crate::fp4::value(codes, scales, j);
        let mut acc = [0f32; 8];
        for j in (0..x.len()).step_by(8) {
            for i in 0..8 {
                acc[i] += w(j + i) * x[j + i];
            }
        }
        (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
    }

    #[inline]
    pub fn dot_bf16(w: &[u16], x: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let (cw, cx) = (w.chunks_exact(8), x.chunks_exact(8));
        let (rw, rx) = (cw.remainder(), cx.remainder());
        for (a, b) in cw.zip(cx) {
            for i in 0..8 {
                acc[i] += f32::from_bits((a[i] as u32) << 16) * b[i];
            }
        }
        let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (a, b) in rw.iter().zip(rx) {
            s += f32::from_bits((*a as u32) << 16) * b;
        }
        s
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// Eight independent accumulators, as many loads in flight as the probe's reads need.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn xor_fold_avx512(b: &[u8]) -> u64 {
        let mut acc = [_mm512_setzero_si512(); 8];
        let whole = b.len() / 512 * 512;
        let p = b.as_ptr();
        for i in (0..whole).step_by(512) {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm512_xor_si512(*a, _mm512_loadu_si512(p.add(i + 64 * k) as *const __m512i));
            }
        }
        let mut all = acc[0];
        for a in &acc[1..] {
            all = _mm512_xor_si512(all, *a);
        }
        let mut lanes = [0u64; 8];
        _mm512_storeu_si512(lanes.as_mut_ptr() as *mut __m512i, all);
        lanes
            .iter()
            .fold(super::portable::xor_fold(&b[whole..]), |a, l| a ^ l)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn widen16(p: *const u16) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)),
            16,
        ))
    }

    /// 16 float8_e4m3fn codes as f32, times 2^-8: each byte's sign, exponent and mantissa placed
    /// in an f16's fields (the sign-extended byte shifted left 7, bit 14 cleared), which the
    /// hardware widens exactly, subnormals included; f16's exponent bias is 15 against e4m3's 7,
    /// hence the 2^-8. The NaN codes (S.1111.111) come out as +-1.875 (+-480 after the 2^8).
    #[inline]
    #[target_feature(enable = "avx512f,avx2")]
    unsafe fn widen_e4m3_16(p: *const u8) -> __m512 {
        let w = _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i));
        let h = _mm256_and_si256(_mm256_slli_epi16(w, 7), _mm256_set1_epi16(0xBF80u16 as i16));
        _mm512_cvtph_ps(h)
    }

    /// `dot_rxt` for FP8 rows whose scale blocks are a multiple of 16 columns wide. Each weight is
    /// `(e4m3 * 2^-8) * (scale * 2^8)`: the exact product rounded once, the same bits as the
    /// table's `e4m3 * scale`, so a cell sums what the f32 tile sums over the decoded row.
    #[target_feature(enable = "avx512f,avx2")]
    pub unsafe fn dot_rxt_fp8_avx512<const R: usize, const T: usize>(
        w: [&[u8]; R],
        scales: [&[f32]; R],
        block: usize,
        x: [&[f32]; T],
    ) -> [[f32; T]; R] {
        let k = x[0].len();
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let mut sv = [_mm512_setzero_ps(); R];
        let mut xv = [_mm512_setzero_ps(); T];
        // b counts the blocks (no division per row and block)
        let (mut i, mut next_block, mut b) = (0, 0, 0);
        while i + 16 <= k {
            if i == next_block {
                for r in 0..R {
                    sv[r] = _mm512_set1_ps(scales[r][b] * 256.0);
                }
                next_block += block;
                b += 1;
            }
            for t in 0..T {
                xv[t] = _mm512_loadu_ps(x[t].as_ptr().add(i));
            }
            for r in 0..R {
                // the next R rows into L2, as the f32 and bf16 tiles do
                _mm_prefetch::<_MM_HINT_T1>(w[r].as_ptr().wrapping_add(i + R * k) as *const i8);
                let wv = _mm512_mul_ps(widen_e4m3_16(w[r].as_ptr().add(i)), sv[r]);
                for t in 0..T {
                    acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
                }
            }
            i += 16;
        }
        let table = crate::fp8::e4m3_table();
        let mut out = [[0f32; T]; R];
        for r in 0..R {
            for t in 0..T {
                let mut s = _mm512_reduce_add_ps(acc[r][t]);
                for j in i..k {
                    s += table[w[r][j] as usize] * scales[r][j / block] * x[t][j];
                }
                out[r][t] = s;
            }
        }
        out
    }

    /// Each accumulator's 16 lanes summed.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn reduce<const R: usize, const T: usize>(acc: [[__m512; T]; R]) -> [[f32; T]; R] {
        acc.map(|row| row.map(|a| _mm512_reduce_add_ps(a)))
    }

    /// `dot_rxt` for MXFP4 rows (k a multiple of 32). Sixteen codes at a time: their 8 bytes
    /// each doubled, widened to 32-bit lanes and shifted right by 0 or 4, so each lane's low
    /// nibble is one code, which picks its value from a 16-entry table (`vpermps` reads only the
    /// index's low four bits) already multiplied by the group's scale. Values times a power-of-two
    /// scale are exact, so a cell sums what the f32 tile sums over the decoded row, in its order.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // constant indices once unrolled
    pub unsafe fn dot_rxt_fp4_avx512<const R: usize, const T: usize>(
        w: [&[u8]; R],
        scales: [&[u8]; R],
        x: [&[f32]; T],
    ) -> [[f32; T]; R] {
        use crate::fp4::{e8m0, E2M1, GROUP};
        let k = x[0].len();
        let lut = _mm512_loadu_ps(E2M1.as_ptr());
        let shift = _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let mut xv = [[_mm512_setzero_ps(); T]; 2];
        for b in 0..k / GROUP {
            let i = b * GROUP;
            for half in 0..2 {
                for t in 0..T {
                    xv[half][t] = _mm512_loadu_ps(x[t].as_ptr().add(i + 16 * half));
                }
            }
            for r in 0..R {
                // the next R rows into L2, as the other tiles do
                _mm_prefetch::<_MM_HINT_T1>(
                    w[r].as_ptr().wrapping_add(i / 2 + R * k / 2) as *const i8
                );
                let scaled = _mm512_mul_ps(lut, _mm512_set1_ps(e8m0(scales[r][b])));
                let bytes = _mm_loadu_si128(w[r].as_ptr().add(i / 2) as *const __m128i);
                for (half, pairs) in [
                    _mm_unpacklo_epi8(bytes, bytes),
                    _mm_unpackhi_epi8(bytes, bytes),
                ]
                .into_iter()
                .enumerate()
                {
                    let idx = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(pairs), shift);
                    let wv = _mm512_permutexvar_ps(idx, scaled);
                    for t in 0..T {
                        acc[r][t] = _mm512_fmadd_ps(wv, xv[half][t], acc[r][t]);
                    }
                }
            }
        }
        reduce(acc)
    }

    /// `dot_fp4_lanes`: a group's 16 code bytes widened one to a lane (`vpmovzxbd`), so each
    /// lane's low nibble is an even column's code and the next four bits the odd one's (the
    /// table lookup reads only an index's low four bits, so one shift serves). The group's scale
    /// is a power of two: added to the table's exponent fields (its zeros masked out), exact
    /// where the scaled values stay normal floats; a multiply at the extremes, where they need
    /// not. The scales of 16 groups are turned into exponent increments at a time.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // constant indices once unrolled
    pub unsafe fn dot_fp4_lanes_avx512<const R: usize, const T: usize>(
        w: [&[u8]; R],
        scales: [&[u8]; R],
        x: [&[f32]; T],
    ) -> [[f32; T]; R] {
        use crate::fp4::{e8m0, E2M1, GROUP};
        let k = x[0].len();
        let groups = k / GROUP;
        let lut = _mm512_loadu_ps(E2M1.as_ptr());
        let lut_bits = _mm512_castps_si512(lut);
        // the entries that are zeros keep their bits
        const NONZERO: __mmask16 = !((1 << 0) | (1 << 8));
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let mut inc = [[0i32; 16]; R];
        for g in 0..groups {
            if g % 16 == 0 {
                // exponent increments (e - 127) << 23 of the next 16 groups, 0 past the end
                for r in 0..R {
                    let n = (groups - g).min(16);
                    let mut e = [127u8; 16];
                    e[..n].copy_from_slice(&scales[r][g..g + n]);
                    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(e.as_ptr() as *const __m128i));
                    let v = _mm512_slli_epi32(_mm512_sub_epi32(v, _mm512_set1_epi32(127)), 23);
                    _mm512_storeu_si512(inc[r].as_mut_ptr() as *mut __m512i, v);
                }
            }
            let i = g * GROUP;
            let mut xv = [[_mm512_setzero_ps(); T]; 2];
            for t in 0..T {
                xv[0][t] = _mm512_loadu_ps(x[t].as_ptr().add(i));
                xv[1][t] = _mm512_loadu_ps(x[t].as_ptr().add(i + 16));
            }
            for r in 0..R {
                _mm_prefetch::<_MM_HINT_T1>(
                    w[r].as_ptr().wrapping_add(i / 2 + R * k / 2) as *const i8
                );
                let e = scales[r][g];
                // 0.5 * 2^(e-127) stays normal for e >= 3; 6 * 2^(e-127) finite for e <= 252
                let scaled = if (3..=252).contains(&e) {
                    _mm512_castsi512_ps(_mm512_mask_add_epi32(
                        lut_bits,
                        NONZERO,
                        lut_bits,
                        _mm512_set1_epi32(inc[r][g % 16]),
                    ))
                } else {
                    _mm512_mul_ps(lut, _mm512_set1_ps(e8m0(e)))
                };
                let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                    w[r].as_ptr().add(i / 2) as *const __m128i
                ));
                let even = _mm512_permutexvar_ps(bytes, scaled);
                let odd = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), scaled);
                for t in 0..T {
                    acc[r][t] = _mm512_fmadd_ps(even, xv[0][t], acc[r][t]);
                    acc[r][t] = _mm512_fmadd_ps(odd, xv[1][t], acc[r][t]);
                }
            }
        }
        reduce(acc)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc = _mm512_fmadd_ps(
                _mm512_loadu_ps(a.as_ptr().add(i)),
                _mm512_loadu_ps(b.as_ptr().add(i)),
                acc,
            );
            i += 16;
        }
        let mut s = _mm512_reduce_add_ps(acc);
        for j in i..n {
            s += a[j] * b[j];
        }
        s
    }

    /// Eight bf16 values widened to f32.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn widen8(p: *const u16) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)),
            16,
        ))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8 * k)),
                    _mm256_loadu_ps(pb.add(i + 8 * k)),
                    *acc,
                );
            }
            i += 32;
        }
        let mut s = hsum256(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    /// A weight row as the AVX2 tiles read it, eight values at a time.
    pub trait Row8: Copy {
        /// Values per 64-byte line.
        const LINE: usize;
        /// Values i..i + 8 as f32; `scale` is what `block_scale` gave for their block.
        unsafe fn load(self, i: usize, scale: __m256) -> __m256;
        /// Values i..i + 16, as two `load`s give them.
        #[inline(always)]
        unsafe fn load2(self, i: usize, scale: __m256) -> [__m256; 2] {
            [self.load(i, scale), self.load(i + 8, scale)]
        }
        /// The multiplier of block b (FP8; the others have none).
        fn block_scale(self, _b: usize) -> f32 {
            1.0
        }
        /// Value j alone, for a row's last few columns.
        fn tail(self, j: usize) -> f32;
        /// Pulls value j into L2 (any j: past the row's end it fetches nothing useful).
        unsafe fn prefetch(self, j: usize);
    }

    #[derive(Clone, Copy)]
    pub struct F32Row<'a>(pub &'a [f32]);

    #[derive(Clone, Copy)]
    pub struct Bf16Row<'a>(pub &'a [u16]);

    /// float8_e4m3fn codes with one multiplier per `block` columns (a multiple of 16).
    #[derive(Clone, Copy)]
    pub struct Fp8Row<'a> {
        pub codes: &'a [u8],
        pub scales: &'a [f32],
        pub block: usize,
    }

    /// MXFP4 codes (two per byte) with one E8M0 scale per 32 values (see `fp4`).
    #[derive(Clone, Copy)]
    pub struct Fp4Row<'a> {
        pub codes: &'a [u8],
        pub scales: &'a [u8],
    }

    impl Row8 for Fp4Row<'_> {
        const LINE: usize = 128;
        #[inline(always)]
        unsafe fn prefetch(self, j: usize) {
            _mm_prefetch::<_MM_HINT_T1>(self.codes.as_ptr().wrapping_add(j / 2) as *const i8);
        }
        /// Four bytes doubled and widened to eight lanes, shifted by 0 or 4 to each lane's code;
        /// its low three bits pick the magnitude from an eight-entry table, bit 3 is the sign.
        #[inline(always)]
        unsafe fn load(self, i: usize, scale: __m256) -> __m256 {
            let four = (self.codes.as_ptr().add(i / 2) as *const i32).read_unaligned();
            let b = _mm_cvtsi32_si128(four);
            let lanes = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
            let code = _mm256_and_si256(
                _mm256_srlv_epi32(lanes, _mm256_set_epi32(4, 0, 4, 0, 4, 0, 4, 0)),
                _mm256_set1_epi32(15),
            );
            let mag = _mm256_permutevar8x32_ps(_mm256_loadu_ps(crate::fp4::E2M1.as_ptr()), code);
            let sign = _mm256_and_si256(_mm256_slli_epi32(code, 28), _mm256_set1_epi32(i32::MIN));
            _mm256_mul_ps(_mm256_or_ps(mag, _mm256_castsi256_ps(sign)), scale)
        }
        fn block_scale(self, b: usize) -> f32 {
            crate::fp4::e8m0(self.scales[b])
        }
        #[inline(always)]
        fn tail(self, j: usize) -> f32 {
            crate::fp4::value(self.codes, self.scales, j)
        }
    }

    impl Row8 for F32Row<'_> {
        const LINE: usize = 16;
        #[inline(always)]
        unsafe fn prefetch(self, j: usize) {
            _mm_prefetch::<_MM_HINT_T1>(self.0.as_ptr().wrapping_add(j) as *const i8);
        }
        #[inline(always)]
        unsafe fn load(self, i: usize, _: __m256) -> __m256 {
            _mm256_loadu_ps(self.0.as_ptr().add(i))
        }
        #[inline(always)]
        fn tail(self, j: usize) -> f32 {
            self.0[j]
        }
    }

    impl Row8 for Bf16Row<'_> {
        const LINE: usize = 32;
        #[inline(always)]
        unsafe fn prefetch(self, j: usize) {
            _mm_prefetch::<_MM_HINT_T1>(self.0.as_ptr().wrapping_add(j) as *const i8);
        }
        #[inline(always)]
        unsafe fn load(self, i: usize, _: __m256) -> __m256 {
            widen8(self.0.as_ptr().add(i))
        }
        #[inline(always)]
        fn tail(self, j: usize) -> f32 {
            f32::from_bits((self.0[j] as u32) << 16)
        }
    }

    impl Row8 for Fp8Row<'_> {
        const LINE: usize = 64;
        /// 16 codes widened to i16 in one register, then to f32 eight at a time.
        #[inline(always)]
        unsafe fn load2(self, i: usize, scale: __m256) -> [__m256; 2] {
            let b = _mm_loadu_si128(self.codes.as_ptr().add(i) as *const __m128i);
            let h = _mm256_and_si256(
                _mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7),
                _mm256_set1_epi16(0xBF80u16 as i16),
            );
            [
                _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), scale),
                _mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256::<1>(h)), scale),
            ]
        }
        #[inline(always)]
        unsafe fn prefetch(self, j: usize) {
            _mm_prefetch::<_MM_HINT_T1>(self.codes.as_ptr().wrapping_add(j) as *const i8);
        }
        /// As `widen_e4m3_16`, eight at a time: `(e4m3 * 2^-8) * (scale * 2^8)`, the table's bits.
        #[inline(always)]
        unsafe fn load(self, i: usize, scale: __m256) -> __m256 {
            let b = _mm_loadl_epi64(self.codes.as_ptr().add(i) as *const __m128i);
            let h = _mm_and_si128(
                _mm_slli_epi16(_mm_cvtepi8_epi16(b), 7),
                _mm_set1_epi16(0xBF80u16 as i16),
            );
            _mm256_mul_ps(_mm256_cvtph_ps(h), scale)
        }
        fn block_scale(self, b: usize) -> f32 {
            self.scales[b] * 256.0
        }
        #[inline(always)]
        fn tail(self, j: usize) -> f32 {
            crate::fp8::e4m3_table()[self.codes[j] as usize] * self.scales[j / self.block]
        }
    }

    /// `dot_rxt` on AVX2: out[r][t] = dot(w[r], x[t]). Each cell sums its even and odd runs of
    /// eight values in two 8-lane FMA chains (one chain waits 4 cycles per 8 values: two rows of
    /// bf16 at decode fell below the memory's pace), adds the two, reduces them in a fixed order,
    /// then adds the tail in order: the same bits in any tile. With one token, rows go four at a
    /// time; with two, two at a time; with three or four, two rows by two tokens, then by the rest
    /// (2 * rows * tokens accumulators fit the 16 registers). `block`: the columns per FP8
    /// multiplier (a multiple of 16), or usize::MAX.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rxt_avx2<L: Row8, const R: usize, const T: usize>(
        w: [L; R],
        block: usize,
        x: [&[f32]; T],
    ) -> [[f32; T]; R] {
        let mut out = [[0f32; T]; R];
        let mut r = 0;
        if T == 1 {
            while r + 4 <= R {
                [out[r], out[r + 1], out[r + 2], out[r + 3]] =
                    rows_avx2([w[r], w[r + 1], w[r + 2], w[r + 3]], block, x);
                r += 4;
            }
        }
        if T <= 2 {
            while r + 2 <= R {
                [out[r], out[r + 1]] = rows_avx2([w[r], w[r + 1]], block, x);
                r += 2;
            }
        } else {
            // two rows by two tokens, then by the other one or two: each weight load serves two
            // tokens and each activation load two rows (one row by four tokens spent more loads
            // than FMAs)
            while r + 2 <= R {
                let pair = [w[r], w[r + 1]];
                let a = rows_avx2(pair, block, [x[0], x[1]]);
                let b = if T == 4 {
                    rows_avx2(pair, block, [x[2], x[T - 1]])
                } else {
                    rows_avx2(pair, block, [x[2]]).map(|[v]| [v, 0.0])
                };
                for j in 0..2 {
                    for t in 0..T {
                        out[r + j][t] = if t < 2 { a[j][t] } else { b[j][t - 2] };
                    }
                }
                r += 2;
            }
        }
        while r < R {
            [out[r]] = rows_avx2([w[r]], block, x);
            r += 1;
        }
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn rows_avx2<L: Row8, const N: usize, const T: usize>(
        w: [L; N],
        block: usize,
        x: [&[f32]; T],
    ) -> [[f32; T]; N] {
        let k = x[0].len();
        // [even, odd] runs of eight
        let mut acc = [[[_mm256_setzero_ps(); 2]; T]; N];
        let mut sv = [_mm256_setzero_ps(); N];
        let (mut i, mut next_block, mut b) = (0, 0, 0);
        // runs of eight, the even one into acc[..][0] and the odd one into [1]; a last even run
        // alone; a block starts on a multiple of 16 columns
        while i + 8 <= k {
            if i == next_block {
                for r in 0..N {
                    sv[r] = _mm256_set1_ps(w[r].block_scale(b));
                }
                next_block = next_block.saturating_add(block);
                b += 1;
            }
            if i % L::LINE < 16 {
                for row in &w {
                    // the matrix's next N rows (rows are contiguous, k apart), as the AVX-512
                    // tiles do, a line at a time
                    row.prefetch(i + N * k);
                }
            }
            let runs = if i + 16 <= k { 2 } else { 1 };
            for r in 0..N {
                let wv = if runs == 2 {
                    w[r].load2(i, sv[r])
                } else {
                    [w[r].load(i, sv[r]), _mm256_setzero_ps()]
                };
                #[allow(clippy::needless_range_loop)] // constant indices once unrolled
                for run in 0..2 {
                    if run == runs {
                        break;
                    }
                    for t in 0..T {
                        let xv = _mm256_loadu_ps(x[t].as_ptr().add(i + 8 * run));
                        acc[r][t][run] = _mm256_fmadd_ps(wv[run], xv, acc[r][t][run]);
                    }
                }
            }
            i += 8 * runs;
        }
        let mut out = [[0f32; T]; N];
        for r in 0..N {
            for t in 0..T {
                let mut s = hsum256(_mm256_add_ps(acc[r][t][0], acc[r][t][1]));
                for (j, xj) in x[t].iter().enumerate().skip(i) {
                    s += w[r].tail(j) * xj;
                }
                out[r][t] = s;
            }
        }
        out
    }

    /// R weight rows x T activation rows, R*T accumulators.
    macro_rules! dot_rxt {
        ($name:ident, $wt:ty, $load_w:expr, $tail_w:expr) => {
            #[target_feature(enable = "avx512f")]
            pub unsafe fn $name<const R: usize, const T: usize>(
                w: [&[$wt]; R],
                x: [&[f32]; T],
            ) -> [[f32; T]; R] {
                let k = x[0].len();
                let mut acc = [[_mm512_setzero_ps(); T]; R];
                let mut i = 0;
                // a loop rather than `array::from_fn`: a closure's loads are not always inlined
                let mut xv = [_mm512_setzero_ps(); T];
                while i + 16 <= k {
                    for t in 0..T {
                        xv[t] = _mm512_loadu_ps(x[t].as_ptr().add(i));
                    }
                    for r in 0..R {
                        // the matrix's next R rows (rows are contiguous, k apart) into L2
                        // while these are worked on; past the end it fetches nothing useful
                        _mm_prefetch::<_MM_HINT_T1>(
                            w[r].as_ptr().wrapping_add(i + R * k) as *const i8
                        );
                        let wv = $load_w(w[r].as_ptr().add(i));
                        for t in 0..T {
                            acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
                        }
                    }
                    i += 16;
                }
                let mut out = [[0f32; T]; R];
                for r in 0..R {
                    for t in 0..T {
                        let mut s = _mm512_reduce_add_ps(acc[r][t]);
                        for j in i..k {
                            s += $tail_w(w[r][j]) * x[t][j];
                        }
                        out[r][t] = s;
                    }
                }
                out
            }
        };
    }

    dot_rxt!(
        dot_rxt_f32_avx512,
        f32,
        |p: *const f32| _mm512_loadu_ps(p),
        |v: f32| v
    );
    dot_rxt!(
        dot_rxt_bf16_avx512,
        u16,
        |p: *const u16| widen16(p),
        |v: u16| f32::from_bits((v as u32) << 16)
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn xor_fold_reads_every_byte_in_every_build() {
        let b: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for n in [0, 1, 7, 8, 9, 511, 512, 513, 1024, 2999, 3000] {
            let want = portable::xor_fold(&b[..n]);
            assert_eq!(xor_fold(&b[..n]), want, "{n}");
            if n > 0 {
                // flipping any byte changes the fold
                let mut c = b[..n].to_vec();
                c[n - 1] ^= 0x40;
                assert_ne!(xor_fold(&c), want, "{n}");
            }
        }
    }

    /// Deterministic values in [-1, 1] (also used by the other kernels' tests).
    pub(crate) fn seq(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(747796405).wrapping_add(2891336453);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 20001) as f32 / 10000.0 - 1.0
            })
            .collect()
    }

    /// f32 sums of n products of magnitude <= 1 in different orders differ by at most about
    /// n * eps * sum|a_i b_i|; the bound below is that with eps = 2^-23.
    fn close(a: f32, b: f32, n: usize) -> bool {
        (a - b).abs() <= n as f32 * f32::EPSILON * (n as f32) + 1e-6
    }

    #[test]
    fn four_by_four_cells_equal_single_dots_bit_for_bit() {
        for n in [5usize, 16, 45, 130] {
            let xs: Vec<Vec<f32>> = (0..4).map(|t| seq(n, 30 + t)).collect();
            let x = [&xs[0][..], &xs[1][..], &xs[2][..], &xs[3][..]];
            let wf: Vec<Vec<f32>> = (0..4).map(|r| seq(n, 40 + r)).collect();
            let wb: Vec<Vec<bf16>> = wf
                .iter()
                .map(|r| r.iter().map(|&v| bf16::from_f32(v)).collect())
                .collect();
            let gf = dot_rxt(
                Rows::F32([&wf[0][..], &wf[1][..], &wf[2][..], &wf[3][..]]),
                x,
            );
            let gb = dot_rxt(
                Rows::Bf16([&wb[0][..], &wb[1][..], &wb[2][..], &wb[3][..]]),
                x,
            );
            // fewer tokens per tile (a bucket of 1-3 tokens) give the same bits too
            let g3 = dot_rxt(
                Rows::Bf16([&wb[0][..], &wb[1][..], &wb[2][..], &wb[3][..]]),
                [x[0], x[1], x[2]],
            );
            // and rows alone, or two at a time (decode), as well
            let pair = dot_rxt(Rows::Bf16([&wb[1][..], &wb[2][..]]), [x[3]]);
            assert_eq!([pair[0][0], pair[1][0]], [gb[1][3], gb[2][3]]);
            for r in 0..4 {
                for t in 0..4 {
                    let one_f = dot_rxt(Rows::F32([&wf[r][..]]), [x[t]])[0][0];
                    let one_b = dot_rxt(Rows::Bf16([&wb[r][..]]), [x[t]])[0][0];
                    assert_eq!(gf[r][t].to_bits(), one_f.to_bits());
                    assert_eq!(gb[r][t].to_bits(), one_b.to_bits());
                }
                for t in 0..3 {
                    assert_eq!(g3[r][t].to_bits(), gb[r][t].to_bits());
                }
            }
        }
    }

    #[test]
    fn simd_dots_agree_with_portable_ones_at_every_length() {
        for n in [0usize, 1, 7, 15, 16, 17, 33, 63, 64, 65, 200, 2048] {
            let a = seq(n, 1);
            let b = seq(n, 2);
            let wb: Vec<bf16> = a.iter().map(|&v| bf16::from_f32(v)).collect();
            let wf: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            assert!(
                close(dot_f32(&a, &b), portable::dot_f32(&a, &b), n),
                "f32 n={n}"
            );
            let bf = dot_rxt(Rows::Bf16([&wb[..]]), [&b[..]])[0][0];
            assert!(close(bf, portable::dot_f32(&wf, &b), n), "bf16 n={n}");
            let ff = dot_rxt(Rows::F32([&a[..]]), [&b[..]])[0][0];
            assert!(close(ff, portable::dot_f32(&a, &b), n), "f32 tile n={n}");
            if n % QK == 0 {
                let (mut q8, mut s8, mut q4, mut s4) = (vec![], vec![], vec![], vec![]);
                crate::quant::quantize_q8_0(&a, &mut q8, &mut s8);
                crate::quant::quantize_q4_0(&a, &mut q4, &mut s4);
                let mut deq = vec![0f32; n];
                crate::quant::dequantize_q8_0(&q8, &s8, &mut deq);
                assert!(
                    close(dot_q8_0(&q8, &s8, &b), portable::dot_f32(&deq, &b), n),
                    "q8_0 n={n}"
                );
                crate::quant::dequantize_q4_0(&q4, &s4, &mut deq);
                assert!(
                    close(dot_q4_0(&q4, &s4, &b), portable::dot_f32(&deq, &b), n),
                    "q4_0 n={n}"
                );
            }
            if n > 0 {
                let xs: Vec<Vec<f32>> = (0..4).map(|t| seq(n, 10 + t)).collect();
                let x = [&xs[0][..], &xs[1][..], &xs[2][..], &xs[3][..]];
                let ws: Vec<Vec<bf16>> = (0..4)
                    .map(|r| seq(n, 20 + r).iter().map(|&v| bf16::from_f32(v)).collect())
                    .collect();
                let got = dot_rxt(
                    Rows::Bf16([&ws[0][..], &ws[1][..], &ws[2][..], &ws[3][..]]),
                    x,
                );
                for r in 0..4 {
                    let wf: Vec<f32> = ws[r].iter().map(|v| v.to_f32()).collect();
                    for t in 0..4 {
                        let want = portable::dot_f32(&wf, x[t]);
                        assert!(close(got[r][t], want, n), "4x4 n={n}");
                    }
                }
            }
        }
    }
}
