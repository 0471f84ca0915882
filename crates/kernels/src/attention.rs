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
    let rows = || chunks.iter().flat_map(|ch| ch.chunks_exact(width));
    out.par_chunks_mut(dl).enumerate().for_each(|(i, o)| {
        let ql = &q_lat[i * dl..][..dl];
        let qp = &q_pos[i * dp..][..dp];
        let ctx = c.q_offset + i / h_n + 1;
        let mut p: Vec<f32> = rows()
            .take(ctx)
            .map(|row| c.scale * (dot(ql, &row[..dl]) + dot(qp, &row[dl..])))
            .collect();
        softmax(&mut p);
        o.fill(0.0);
        for (row, &pj) in rows().zip(&p) {
            axpy(pj, &row[..dl], o);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
