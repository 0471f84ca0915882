//! Differentiable building blocks composed from candle's primitive ops. candle's fused
//! softmax / rms_norm have no backward pass (gradients would stop silently), so these are
//! written out of ops that do.

use candle_core::{DType, Result, Tensor, D};

/// x * rsqrt(mean(x^2) + eps) * w over the last dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
}

pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let z = x.broadcast_sub(&m)?;
    z.broadcast_sub(&z.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

/// log p(target) per position: logits [N, V], targets [N] (u32) -> [N].
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let lp = log_softmax_last(logits)?;
    lp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)
}

/// Quantise-dequantise through FP8 E4M3 as the V3 recipe does (spec §4.4), with a
/// straight-through gradient: the forward pass sees the rounded values, the backward pass the
/// identity. `tile` = (rows, cols) of one scale block: (1, 128) for activations, (128, 128) for
/// weights; a dimension smaller than its tile is one tile.
pub fn fake_fp8(x: &Tensor, tile: (usize, usize)) -> Result<Tensor> {
    let (rows, cols) = x.dims2()?;
    let v: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut q = v.clone();
    let (tr, tc) = (tile.0.min(rows), tile.1.min(cols));
    for r0 in (0..rows).step_by(tr) {
        for c0 in (0..cols).step_by(tc) {
            let (r1, c1) = ((r0 + tr).min(rows), (c0 + tc).min(cols));
            let mut amax = 0f32;
            for r in r0..r1 {
                for c in c0..c1 {
                    amax = amax.max(v[r * cols + c].abs());
                }
            }
            if amax == 0.0 {
                continue;
            }
            // 448 is the largest finite E4M3 value: the tile's max maps onto it
            let scale = amax / 448.0;
            for r in r0..r1 {
                for c in c0..c1 {
                    let i = r * cols + c;
                    q[i] = whale_kernels::fp8::round_e4m3(v[i] / scale) * scale;
                }
            }
        }
    }
    let q = Tensor::from_vec(q, (rows, cols), x.device())?.to_dtype(x.dtype())?;
    x + (q - x)?.detach()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fake_fp8_rounds_forward_and_passes_gradients_through() -> Result<()> {
        let x = Var::from_vec(
            vec![0.1f32, 1.0, -3.3, 200.0, 0.013, 7.7],
            (2, 3),
            &Device::Cpu,
        )?;
        let q = fake_fp8(x.as_tensor(), (1, 128))?;
        let qv: Vec<f32> = q.flatten_all()?.to_vec1()?;
        let xv: Vec<f32> = x.as_tensor().flatten_all()?.to_vec1()?;
        for (a, b) in qv.iter().zip(&xv) {
            // E4M3 keeps 3 mantissa bits: relative error at most 2^-4 (ignoring subnormals)
            assert!((a - b).abs() <= b.abs() / 16.0 + 1e-6, "{a} vs {b}");
        }
        assert!(
            qv.iter().zip(&xv).any(|(a, b)| a != b),
            "nothing was rounded"
        );
        let g = q.sum_all()?.backward()?;
        let gx: Vec<f32> = g.get(&x).unwrap().flatten_all()?.to_vec1()?;
        assert!(gx.iter().all(|&v| v == 1.0));
        Ok(())
    }
}
