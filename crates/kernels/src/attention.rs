//! Causal softmax attention in three layouts: per-head keys and values (plain, or grouped:
//! several query heads sharing one key/value head), cached grouped rows read in place, and a
//! single shared latent row per position that serves as key (with a separate positional part)
//! and value.

use rayon::prelude::*;

use crate::matrix::{matmul_batch, Matrix, Product};
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

/// Query tokens per pass of `multi_head`, at most: fewer where the pass's scores and weights
/// (tokens x keys x heads each) would pass `SCORE_BYTES` (long contexts, many heads).
const QUERY_BLOCK: usize = 256;
const SCORE_BYTES: usize = 256 << 20;

/// Plain multi-head attention. q: [n_q, heads, dk], k: [n_kv, heads, dk], v: [n_kv, heads, dv],
/// out: [n_q, heads, dv]. Per head, a block of queries times the keys it can see is one matrix
/// product and the softmax weights times the values another, so a long prompt runs at the
/// product kernels' rate.
pub fn multi_head(
    c: Causal,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dk: usize,
    dv: usize,
    out: &mut [f32],
) {
    grouped(c, c.heads, q, k, v, dk, dv, out)
}

/// Grouped-query attention: as `multi_head`, but k: [n_kv, kv_heads, dk] and v: [n_kv,
/// kv_heads, dv], query head h reading key/value head h / (heads / kv_heads).
#[allow(clippy::too_many_arguments)]
pub fn grouped(
    c: Causal,
    kv_heads: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dk: usize,
    dv: usize,
    out: &mut [f32],
) {
    let h_n = c.heads;
    assert!(kv_heads > 0 && h_n.is_multiple_of(kv_heads));
    let group = h_n / kv_heads;
    assert_eq!(q.len(), c.n_q * h_n * dk);
    assert_eq!(out.len(), c.n_q * h_n * dv);
    let n_kv = c.q_offset + c.n_q;
    assert!(k.len() >= n_kv * kv_heads * dk && v.len() >= n_kv * kv_heads * dv);
    if c.n_q == 0 {
        return;
    }
    // The values are padded with zero keys to a multiple of 32 (the widest step of the dot
    // products: AVX2's 4 x 8 lanes): a query's weighted sum then runs in the same vector lanes
    // however many keys the call holds, so its bits do not depend on how a prompt is cut into
    // chunks.
    let n_pad = n_kv.next_multiple_of(32);
    // per key/value head: its keys [n_kv, dk] and its values transposed [dv, n_pad], as matrices
    let (keys, values_t): (Vec<Matrix>, Vec<Matrix>) = (0..kv_heads)
        .into_par_iter()
        .map(|h| {
            let kh: Vec<f32> = (0..n_kv)
                .flat_map(|j| &k[(j * kv_heads + h) * dk..][..dk])
                .copied()
                .collect();
            let mut vt = vec![0f32; dv * n_pad];
            for j in 0..n_kv {
                for (d, &x) in v[(j * kv_heads + h) * dv..][..dv].iter().enumerate() {
                    vt[d * n_pad + j] = x;
                }
            }
            (
                Matrix::from_f32(n_kv, dk, kh),
                Matrix::from_f32(dv, n_pad, vt),
            )
        })
        .unzip();
    let block = (SCORE_BYTES / (2 * 4 * h_n * n_pad)).clamp(16, QUERY_BLOCK);
    for t0 in (0..c.n_q).step_by(block) {
        let nb = (c.n_q - t0).min(block);
        // the keys the block's last query sees; earlier queries' later scores are dropped
        let seen = c.q_offset + t0 + nb;
        let queries: Vec<Vec<f32>> = (0..h_n)
            .map(|h| {
                (t0..t0 + nb)
                    .flat_map(|t| &q[(t * h_n + h) * dk..][..dk])
                    .copied()
                    .collect()
            })
            .collect();
        let mut scores: Vec<Vec<f32>> = (0..h_n).map(|_| vec![0f32; nb * seen]).collect();
        matmul_batch(
            queries
                .iter()
                .zip(scores.iter_mut())
                .enumerate()
                .map(|(h, (x, out))| Product {
                    x,
                    n_tok: nb,
                    w: &keys[h / group],
                    rows: 0..seen,
                    out,
                })
                .collect(),
        );
        // softmax over each query's keys, zeros after them
        let weights: Vec<Vec<f32>> = scores
            .par_iter()
            .map(|s| {
                let mut p = vec![0f32; nb * n_pad];
                for (i, (pr, sr)) in p
                    .chunks_exact_mut(n_pad)
                    .zip(s.chunks_exact(seen))
                    .enumerate()
                {
                    let ctx = c.q_offset + t0 + i + 1;
                    for (a, &b) in pr[..ctx].iter_mut().zip(&sr[..ctx]) {
                        *a = c.scale * b;
                    }
                    softmax(&mut pr[..ctx]);
                }
                p
            })
            .collect();
        let mut outs: Vec<Vec<f32>> = (0..h_n).map(|_| vec![0f32; nb * dv]).collect();
        matmul_batch(
            weights
                .iter()
                .zip(outs.iter_mut())
                .enumerate()
                .map(|(h, (x, o))| Product::new(x, nb, &values_t[h / group], o))
                .collect(),
        );
        for (h, oh) in outs.iter().enumerate() {
            for (i, o) in oh.chunks_exact(dv).enumerate() {
                out[((t0 + i) * h_n + h) * dv..][..dv].copy_from_slice(o);
            }
        }
    }
}

/// Query tokens at most for which `cached_grouped` reads the rows in place; longer runs
/// (prefill) gather them into matrices and take `grouped`'s matrix products.
const IN_PLACE_QUERIES: usize = 4;

/// Grouped-query attention over cached rows, row j = [keys_j (kv_heads x dh); values_j
/// (kv_heads x dh)], as consecutive runs of whole rows (`chunks`: a paged cache is read in
/// place). q: [n_q, heads, dh], out: [n_q, heads, dh]; query head h reads key/value head
/// h / (heads / kv_heads).
pub fn cached_grouped(
    c: Causal,
    kv_heads: usize,
    dh: usize,
    q: &[f32],
    chunks: &[&[f32]],
    out: &mut [f32],
) {
    let h_n = c.heads;
    assert!(kv_heads > 0 && h_n.is_multiple_of(kv_heads));
    let (group, width, n_kv) = (h_n / kv_heads, 2 * kv_heads * dh, c.q_offset + c.n_q);
    assert_eq!(q.len(), c.n_q * h_n * dh);
    assert_eq!(out.len(), c.n_q * h_n * dh);
    assert!(chunks.iter().map(|ch| ch.len()).sum::<usize>() >= n_kv * width);
    if c.n_q > IN_PLACE_QUERIES {
        let (mut k, mut v) = (
            Vec::with_capacity(n_kv * width / 2),
            Vec::with_capacity(n_kv * width / 2),
        );
        for row in first_rows(chunks, width, n_kv) {
            k.extend_from_slice(&row[..width / 2]);
            v.extend_from_slice(&row[width / 2..]);
        }
        return grouped(c, kv_heads, q, &k, &v, dh, dh, out);
    }
    out.par_chunks_mut(dh).enumerate().for_each(|(i, o)| {
        let (t, h) = (i / h_n, i % h_n);
        let kv = h / group;
        let qh = &q[i * dh..][..dh];
        let rows = || first_rows(chunks, width, c.q_offset + t + 1);
        let mut p: Vec<f32> = rows()
            .map(|row| c.scale * dot(qh, &row[kv * dh..][..dh]))
            .collect();
        softmax(&mut p);
        o.fill(0.0);
        let v0 = (kv_heads + kv) * dh;
        for (row, &pj) in rows().zip(&p) {
            axpy(pj, &row[v0..][..dh], o);
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
    let width = dl + dp;
    assert!(chunks.iter().map(|ch| ch.len()).sum::<usize>() >= (c.q_offset + c.n_q) * width);
    let rows: Vec<&[f32]> = first_rows(chunks, width, c.q_offset + c.n_q).collect();
    shared_latent_picked(c, q_lat, q_pos, &rows, &vec![None; c.n_q], dl, dp, out)
}

/// As `shared_latent`, over `rows` (every row of the sequence in position order, each at least
/// dl + dp values: whatever follows them is not read) where query t reads the rows `picks[t]`
/// names (positions in ascending order: DeepSeek Sparse Attention's choice) or, where that is
/// None, its whole causal prefix.
#[allow(clippy::too_many_arguments)]
pub fn shared_latent_picked(
    c: Causal,
    q_lat: &[f32],
    q_pos: &[f32],
    rows: &[&[f32]],
    picks: &[Option<Vec<u32>>],
    dl: usize,
    dp: usize,
    out: &mut [f32],
) {
    let h_n = c.heads;
    assert_eq!(q_lat.len(), c.n_q * h_n * dl);
    assert_eq!(q_pos.len(), c.n_q * h_n * dp);
    assert_eq!(out.len(), c.n_q * h_n * dl);
    assert_eq!(picks.len(), c.n_q);
    assert!(rows.len() >= c.q_offset + c.n_q && rows.iter().all(|r| r.len() >= dl + dp));
    // Every head of a query reads the same rows: a task takes up to GROUP heads of one query, so
    // each row is read once per group instead of once per head (at long contexts the rows are
    // far out of cache).
    let groups = h_n.div_ceil(GROUP);
    let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(c.n_q * groups);
    for (t, o_t) in out.chunks_mut(h_n * dl).enumerate() {
        for (g, o) in o_t.chunks_mut(GROUP * dl).enumerate() {
            tasks.push((t, g * GROUP, o));
        }
    }
    tasks.into_par_iter().for_each(|(t, h0, o)| {
        let heads = o.len() / dl;
        let i = t * h_n + h0;
        let picked: Vec<&[f32]>;
        let seen = match &picks[t] {
            None => &rows[..c.q_offset + t + 1],
            Some(p) => {
                picked = p.iter().map(|&j| rows[j as usize]).collect();
                &picked[..]
            }
        };
        latent_heads(
            c.scale,
            heads,
            &q_lat[i * dl..(i + heads) * dl],
            &q_pos[i * dp..(i + heads) * dp],
            seen,
            o,
        );
    });
}

/// Multi-query attention with a learned sink per head (DeepSeek-V4, as gpt-oss): every head of
/// one query scores the same rows, which are its keys and its values (the first `d` values of
/// each row are read); the softmax runs over the scores and the head's sink logit, whose share
/// is dropped. q: [heads, d], sinks: [heads], out: [heads, d].
pub fn sink_heads(scale: f32, q: &[f32], rows: &[&[f32]], sinks: &[f32], out: &mut [f32]) {
    let heads = sinks.len();
    let d = q.len() / heads.max(1);
    assert_eq!(q.len(), heads * d);
    assert_eq!(out.len(), heads * d);
    assert!(rows.iter().all(|r| r.len() >= d));
    out.par_chunks_mut(d).enumerate().for_each(|(h, o)| {
        let qh = &q[h * d..][..d];
        let mut p: Vec<f32> = rows.iter().map(|row| scale * dot(qh, &row[..d])).collect();
        let sink = sinks[h];
        let m = p.iter().copied().fold(sink, f32::max);
        let mut z = (sink - m).exp();
        for v in p.iter_mut() {
            *v = (*v - m).exp();
            z += *v;
        }
        o.fill(0.0);
        for (row, &pj) in rows.iter().zip(&p) {
            axpy(pj / z, &row[..d], o);
        }
    });
}

/// Heads of one query that `shared_latent` computes together.
const GROUP: usize = 4;

/// `heads` heads of one query (`ql` holds their latent parts one after another, `qp` their
/// positional parts, `o` their outputs): each head's scores against the rows it sees, softmax,
/// and the weighted sum of the rows' latent parts. A head's result does not depend on which
/// heads are computed with it.
fn latent_heads(scale: f32, heads: usize, ql: &[f32], qp: &[f32], rows: &[&[f32]], o: &mut [f32]) {
    let (dl, dp) = (ql.len() / heads, qp.len() / heads);
    #[cfg(target_arch = "x86_64")]
    if crate::simd::isa() == crate::simd::Isa::Avx512
        && dl.is_multiple_of(16)
        && dp.is_multiple_of(16)
        && heads <= GROUP
    {
        let rows: Vec<*const f32> = rows.iter().map(|row| row.as_ptr()).collect();
        // SAFETY: AVX-512F was detected; `shared_latent_picked` checked that every row holds
        // dl + dp values; the slices hold `heads` heads of dl, dp and dl values.
        unsafe {
            match heads {
                1 => x86::latent_heads::<1>(scale, ql, qp, &rows, o),
                2 => x86::latent_heads::<2>(scale, ql, qp, &rows, o),
                3 => x86::latent_heads::<3>(scale, ql, qp, &rows, o),
                _ => x86::latent_heads::<GROUP>(scale, ql, qp, &rows, o),
            }
        }
        return;
    }
    for (h, o) in o.chunks_exact_mut(dl).enumerate() {
        one_latent_head(scale, &ql[h * dl..][..dl], &qp[h * dp..][..dp], rows, o);
    }
}

/// The first `ctx` rows (`width` values each) of the runs of rows.
fn first_rows<'a>(
    chunks: &'a [&'a [f32]],
    width: usize,
    ctx: usize,
) -> impl Iterator<Item = &'a [f32]> + 'a {
    chunks
        .iter()
        .flat_map(move |ch| ch.chunks_exact(width))
        .take(ctx)
}

/// One head of `latent_heads` in plain loops (CPUs without AVX-512, odd widths).
fn one_latent_head(scale: f32, ql: &[f32], qp: &[f32], rows: &[&[f32]], o: &mut [f32]) {
    let (dl, width) = (ql.len(), ql.len() + qp.len());
    let mut p: Vec<f32> = rows
        .iter()
        .map(|row| scale * (dot(ql, &row[..dl]) + dot(qp, &row[dl..width])))
        .collect();
    softmax(&mut p);
    o.fill(0.0);
    for (row, &pj) in rows.iter().zip(&p) {
        axpy(pj, &row[..dl], o);
    }
}

/// The decode-time hot loop of MLA in AVX-512: the heads of a group take each row chunk from
/// one load (scores: one accumulator per head; the weighted sum: 4 heads x 64 output values in
/// registers while the rows stream past), instead of every head reading every row.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `super::latent_heads` for G heads; rows are the starts of the `ctx` rows.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn latent_heads<const G: usize>(
        scale: f32,
        ql: &[f32],
        qp: &[f32],
        rows: &[*const f32],
        o: &mut [f32],
    ) {
        let (dl, dp, ctx) = (ql.len() / G, qp.len() / G, rows.len());
        assert!(ql.len() == G * dl && qp.len() == G * dp && o.len() == G * dl);
        // p[h * ctx + j]: head h's score for row j, then its softmax weight
        let mut p = vec![0f32; G * ctx];
        for (j, &row) in rows.iter().enumerate() {
            let mut acc = [_mm512_setzero_ps(); G];
            for (q, part, d) in [(ql.as_ptr(), row, dl), (qp.as_ptr(), row.add(dl), dp)] {
                let mut i = 0;
                while i < d {
                    let r = _mm512_loadu_ps(part.add(i));
                    for (h, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(h * d + i)), r, *acc);
                    }
                    i += 16;
                }
            }
            for (h, acc) in acc.iter().enumerate() {
                p[h * ctx + j] = scale * _mm512_reduce_add_ps(*acc);
            }
        }
        for ph in p.chunks_exact_mut(ctx.max(1)) {
            super::softmax(ph);
        }
        let mut b = 0;
        while b + 64 <= dl {
            weighted_sum::<G, 4>(&p, rows, b, dl, o.as_mut_ptr());
            b += 64;
        }
        while b < dl {
            weighted_sum::<G, 1>(&p, rows, b, dl, o.as_mut_ptr());
            b += 16;
        }
    }

    /// o[h * dl + b .. + 16 N] = sum_j p[h * ctx + j] * row_j[b .. b + 16 N] for the G heads
    #[inline(always)]
    unsafe fn weighted_sum<const G: usize, const N: usize>(
        p: &[f32],
        rows: &[*const f32],
        b: usize,
        dl: usize,
        o: *mut f32,
    ) {
        let ctx = rows.len();
        let mut acc = [[_mm512_setzero_ps(); N]; G];
        for (j, &row) in rows.iter().enumerate() {
            let mut v = [_mm512_setzero_ps(); N];
            for (k, v) in v.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(row.add(b + 16 * k));
            }
            for (h, acc) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*p.get_unchecked(h * ctx + j));
                for (k, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(w, v[k], *acc);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            for (k, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(o.add(h * dl + b + 16 * k), *acc);
            }
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
        // MLA widths of V3 (512 + 64), tiny models (32 + 16), a partial 64-block, and odd
        // widths that take the portable path; head counts below, at and across a group
        for (dl, dp, ctx, page) in [
            (512, 64, 300, 64),
            (32, 16, 5, 1),
            (144, 16, 40, 7),
            (20, 6, 9, 4),
        ] {
            let width = dl + dp;
            let rows = seq(ctx * width, dl as u32);
            let chunks: Vec<&[f32]> = rows.chunks(page * width).collect();
            for heads in [1, 3, 4, 6] {
                let (ql, qp) = (seq(heads * dl, 1), seq(heads * dp, 2));
                let c = Causal {
                    n_q: 1,
                    heads,
                    q_offset: ctx - 1,
                    scale: 0.1,
                };
                let mut o = vec![f32::NAN; heads * dl];
                shared_latent(c, &ql, &qp, &chunks, dl, dp, &mut o);
                for h in 0..heads {
                    let (qlh, qph) = (&ql[h * dl..][..dl], &qp[h * dp..][..dp]);
                    let want = latent_reference(0.1, qlh, qph, &rows, ctx);
                    let got = &o[h * dl..][..dl];
                    for (d, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (*a as f64 - b).abs() < 1e-5,
                            "dl {dl} dp {dp} heads {heads} head {h} value {d}: {a} vs {b}"
                        );
                    }
                    // the same bits when the head is computed alone
                    let mut alone = vec![f32::NAN; dl];
                    let one = Causal { heads: 1, ..c };
                    shared_latent(one, qlh, qph, &chunks, dl, dp, &mut alone);
                    assert!(
                        got.iter()
                            .zip(&alone)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "dl {dl} heads {heads} head {h}: grouped and alone differ"
                    );
                }
            }
        }
    }

    /// Plain attention in f64, straight from the definition: out [n_q, heads, dv].
    fn plain_reference(
        c: Causal,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dk: usize,
        dv: usize,
    ) -> Vec<f64> {
        let h_n = c.heads;
        let mut out = vec![0f64; c.n_q * h_n * dv];
        for t in 0..c.n_q {
            for h in 0..h_n {
                let ctx = c.q_offset + t + 1;
                let qh = &q[(t * h_n + h) * dk..][..dk];
                let s: Vec<f64> = (0..ctx)
                    .map(|j| {
                        let kj = &k[(j * h_n + h) * dk..][..dk];
                        c.scale as f64
                            * qh.iter()
                                .zip(kj)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..dv {
                    out[(t * h_n + h) * dv + d] = (0..ctx)
                        .map(|j| e[j] / z * v[(j * h_n + h) * dv + d] as f64)
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn plain_attention_matches_an_f64_reference_and_chunks_give_the_same_bits() {
        // more queries than one block; widths with and without vector tails
        let (heads, n) = (3, 300);
        for (dk, dv) in [(24, 20), (192, 128)] {
            let q = seq(n * heads * dk, 7);
            let k = seq(n * heads * dk, 8);
            let v = seq(n * heads * dv, 9);
            let c = Causal {
                n_q: n,
                heads,
                q_offset: 0,
                scale: 0.3,
            };
            let mut whole = vec![f32::NAN; n * heads * dv];
            multi_head(c, &q, &k, &v, dk, dv, &mut whole);
            let want = plain_reference(c, &q, &k, &v, dk, dv);
            for (i, (a, b)) in whole.iter().zip(&want).enumerate() {
                assert!(
                    (*a as f64 - b).abs() < 1e-5,
                    "dk {dk} value {i}: {a} vs {b}"
                );
            }
            // the same prompt in three chunks, each attending to the keys so far
            let mut parts = Vec::new();
            for (start, len) in [(0, 1), (1, 130), (131, 169)] {
                let c = Causal {
                    n_q: len,
                    heads,
                    q_offset: start,
                    scale: 0.3,
                };
                let mut o = vec![f32::NAN; len * heads * dv];
                let qs = &q[start * heads * dk..(start + len) * heads * dk];
                multi_head(c, qs, &k, &v, dk, dv, &mut o);
                parts.extend(o);
            }
            assert!(
                whole
                    .iter()
                    .zip(&parts)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "dk {dk}: chunked prefill changed bits"
            );
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

    #[test]
    fn cached_grouped_rows_match_plain_attention_with_repeated_heads() {
        // decode (one query, rows in place) and prefill runs (matrix products), paged unevenly;
        // groups of 1 (plain), 2 and 7 query heads per key/value head
        for (heads, kv_heads, dh, n_q, past, page) in [
            (4, 4, 8, 1, 9, 4),
            (4, 2, 16, 1, 30, 7),
            (14, 2, 32, 3, 5, 3),
            (6, 3, 8, 12, 0, 5),
            (14, 2, 32, 20, 13, 64),
        ] {
            let n_kv = past + n_q;
            let width = 2 * kv_heads * dh;
            let rows = seq(n_kv * width, dh as u32 + heads as u32);
            let chunks: Vec<&[f32]> = rows.chunks(page * width).collect();
            let q = seq(n_q * heads * dh, 3);
            let c = Causal {
                n_q,
                heads,
                q_offset: past,
                scale: 0.3,
            };
            let mut o = vec![f32::NAN; n_q * heads * dh];
            cached_grouped(c, kv_heads, dh, &q, &chunks, &mut o);
            // every query head given its own copy of its key/value head
            let group = heads / kv_heads;
            let (mut k, mut v) = (Vec::new(), Vec::new());
            for row in rows.chunks_exact(width) {
                for h in 0..heads {
                    let kv = h / group;
                    k.extend_from_slice(&row[kv * dh..][..dh]);
                    v.extend_from_slice(&row[(kv_heads + kv) * dh..][..dh]);
                }
            }
            let want = plain_reference(c, &q, &k, &v, dh, dh);
            for (i, (a, b)) in o.iter().zip(&want).enumerate() {
                assert!(
                    (*a as f64 - b).abs() < 1e-5,
                    "heads {heads}/{kv_heads} n_q {n_q} value {i}: {a} vs {b}"
                );
            }
        }
    }
}
