//! Causal softmax attention in two layouts: per-head keys and values, and a single shared
//! latent row per position that serves as key (with a separate positional part) and value.

use rayon::prelude::*;

use crate::ops::{axpy, dot, softmax};

/// Shapes of a causal attention call. Query `t` sits at absolute position `q_offset + t` and
/// sees keys `0..=q_offset + t`.
#[derive(Clone, Copy, Debug)]
pub struct Causal {
    pub n_q: usize,
    pub heads: usize,
    pub q_offset: usize,
    pub scale: f32,
}

/// Plain multi-head attention. q: [n_q, heads, dk], k: [n_kv, heads, dk], v: [n_kv, heads, dv],
/// out: [n_q, heads, dv].
pub fn multi_head(
    c: Causal,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dk: usize,
    dv: usize,
    out: &mut [f32],
) {
    let h_n = c.heads;
    assert_eq!(q.len(), c.n_q * h_n * dk);
    assert_eq!(out.len(), c.n_q * h_n * dv);
    let n_kv = c.q_offset + c.n_q;
    assert!(k.len() >= n_kv * h_n * dk && v.len() >= n_kv * h_n * dv);
    out.par_chunks_mut(dv).enumerate().for_each(|(i, o)| {
        let (t, h) = (i / h_n, i % h_n);
        let qh = &q[(t * h_n + h) * dk..][..dk];
        let ctx = c.q_offset + t + 1;
        let mut p: Vec<f32> = (0..ctx)
            .map(|j| c.scale * dot(qh, &k[(j * h_n + h) * dk..][..dk]))
            .collect();
        softmax(&mut p);
        o.fill(0.0);
        for (j, &pj) in p.iter().enumerate() {
            axpy(pj, &v[(j * h_n + h) * dv..][..dv], o);
        }
    });
}

/// Attention over one shared row per position (multi-query style): row j = [latent_j (dl);
/// pos_j (dp)]. Score(t, h, j) = scale * (q_lat[t,h] . latent_j + q_pos[t,h] . pos_j); the value
/// is latent_j. q_lat: [n_q, heads, dl], q_pos: [n_q, heads, dp], out: [n_q, heads, dl]. The rows
/// come as consecutive runs of whole rows (`chunks`), so a paged cache is read in place.
pub fn shared_latent(
    c: Causal,
    q_lat: &[f32],
    q_pos: &[f32],
    chunks: &[&[f32]],
    dl: usize,
    dp: usize,
    out: &mut [f32],
) {
    let h_n = c.heads;
    let width = dl + dp;
    assert_eq!(q_lat.len(), c.n_q * h_n * dl);
    assert_eq!(q_pos.len(), c.n_q * h_n * dp);
    assert_eq!(out.len(), c.n_q * h_n * dl);
    assert!(chunks.iter().map(|ch| ch.len()).sum::<usize>() >= (c.q_offset + c.n_q) * width);
    out.par_chunks_mut(dl).enumerate().for_each(|(i, o)| {
        let ql = &q_lat[i * dl..][..dl];
        let qp = &q_pos[i * dp..][..dp];
        let ctx = c.q_offset + i / h_n + 1;
        one_latent_query(c.scale, ql, qp, chunks, ctx, o);
    });
}

/// One (query, head) of `shared_latent`: scores against the first `ctx` rows, softmax, and the
/// weighted sum of their latent parts into `o`.
fn one_latent_query(
    scale: f32,
    ql: &[f32],
    qp: &[f32],
    chunks: &[&[f32]],
    ctx: usize,
    o: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::isa() == crate::simd::Isa::Avx512
        && ql.len().is_multiple_of(16)
        && qp.len().is_multiple_of(16)
    {
        // SAFETY: AVX-512F was detected; `shared_latent` checked that the chunks hold `ctx`
        // whole rows of ql.len() + qp.len() values.
        unsafe { x86::one_latent_query(scale, ql, qp, chunks, ctx, o) };
        return;
    }
    let (dl, width) = (ql.len(), ql.len() + qp.len());
    let rows = || {
        chunks
            .iter()
            .flat_map(|ch| ch.chunks_exact(width))
            .take(ctx)
    };
    let mut p: Vec<f32> = rows()
        .map(|row| scale * (dot(ql, &row[..dl]) + dot(qp, &row[dl..])))
        .collect();
    softmax(&mut p);
    o.fill(0.0);
    for (row, &pj) in rows().zip(&p) {
        axpy(pj, &row[..dl], o);
    }
}

/// The decode-time hot loop of MLA in AVX-512: dots with four accumulators, and the weighted
/// sum in blocks of 128 output values held in registers while the rows stream past, instead of
/// a load-add-store of the whole output per row (the portable loops compile to SSE).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn one_latent_query(
        scale: f32,
        ql: &[f32],
        qp: &[f32],
        chunks: &[&[f32]],
        ctx: usize,
        o: &mut [f32],
    ) {
        let (dl, dp) = (ql.len(), qp.len());
        let width = dl + dp;
        let mut rows = Vec::with_capacity(ctx);
        'chunks: for ch in chunks {
            let mut off = 0;
            while off + width <= ch.len() {
                if rows.len() == ctx {
                    break 'chunks;
                }
                rows.push(ch.as_ptr().add(off));
                off += width;
            }
        }
        let mut p: Vec<f32> = Vec::with_capacity(ctx);
        for &row in &rows {
            let s = dot(ql.as_ptr(), row, dl) + dot(qp.as_ptr(), row.add(dl), dp);
            p.push(scale * s);
        }
        super::softmax(&mut p);
        let mut b = 0;
        while b + 128 <= dl {
            block::<8>(&p, &rows, b, o.as_mut_ptr());
            b += 128;
        }
        while b < dl {
            block::<1>(&p, &rows, b, o.as_mut_ptr());
            b += 16;
        }
    }

    /// a . b over n values (a multiple of 16).
    #[inline(always)]
    unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let j = i + 16 * k;
                *acc = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(j)), _mm512_loadu_ps(b.add(j)), *acc);
            }
            i += 64;
        }
        while i < n {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), acc[0]);
            i += 16;
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }

    /// o[b .. b + 16 N] = sum_j p[j] * row_j[b .. b + 16 N]
    #[inline(always)]
    unsafe fn block<const N: usize>(p: &[f32], rows: &[*const f32], b: usize, o: *mut f32) {
        let mut acc = [_mm512_setzero_ps(); N];
        for (&row, &pj) in rows.iter().zip(p) {
            let w = _mm512_set1_ps(pj);
            for (k, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(w, _mm512_loadu_ps(row.add(b + 16 * k)), *acc);
            }
        }
        for (k, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(o.add(b + 16 * k), *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::tests::seq;

    /// The same query in f64, straight from the definition.
    fn latent_reference(scale: f32, ql: &[f32], qp: &[f32], rows: &[f32], ctx: usize) -> Vec<f64> {
        let (dl, width) = (ql.len(), ql.len() + qp.len());
        let dot = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum::<f64>()
        };
        let s: Vec<f64> = (0..ctx)
            .map(|j| {
                let r = &rows[j * width..][..width];
                scale as f64 * (dot(ql, &r[..dl]) + dot(qp, &r[dl..]))
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..dl)
            .map(|d| {
                (0..ctx)
                    .map(|j| e[j] / z * rows[j * width + d] as f64)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn latent_queries_match_an_f64_reference_in_every_shape_and_paging() {
        // MLA widths of V3 (512 + 64), tiny models (32 + 16), a partial 128-block, and odd
        // widths that take the portable path
        for (dl, dp, ctx, page) in [
            (512, 64, 300, 64),
            (32, 16, 5, 1),
            (144, 16, 40, 7),
            (20, 6, 9, 4),
        ] {
            let width = dl + dp;
            let rows = seq(ctx * width, dl as u32);
            let (ql, qp) = (seq(dl, 1), seq(dp, 2));
            let chunks: Vec<&[f32]> = rows.chunks(page * width).collect();
            let mut o = vec![f32::NAN; dl];
            one_latent_query(0.1, &ql, &qp, &chunks, ctx, &mut o);
            let want = latent_reference(0.1, &ql, &qp, &rows, ctx);
            for (d, (a, b)) in o.iter().zip(&want).enumerate() {
                assert!(
                    (*a as f64 - b).abs() < 1e-5,
                    "dl {dl} dp {dp} value {d}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn single_key_returns_its_value_and_causality_holds() {
        // heads = 1, dk = dv = 2, two positions.
        let c = Causal {
            n_q: 2,
            heads: 1,
            q_offset: 0,
            scale: 1.0,
        };
        let q = [1.0, 0.0, 0.0, 1.0];
        let k = [1.0, 0.0, 0.0, 1.0];
        let v = [5.0, 6.0, 7.0, 8.0];
        let mut out = [0f32; 4];
        multi_head(c, &q, &k, &v, 2, 2, &mut out);
        assert_eq!(&out[..2], &[5.0, 6.0]); // first query sees only the first key
        let e = 1f32.exp();
        let w1 = e / (1.0 + e);
        assert!((out[3] - (6.0 * (1.0 - w1) + 8.0 * w1)).abs() < 1e-5);
    }
}
