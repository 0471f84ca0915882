//! Block quantisation of weight rows, in blocks of 32 consecutive values of a row, each with an
//! f16 scale (llama.cpp's Q8_0 and Q4_0 layouts, so bytes per weight match: 1.0625 and 0.5625).
//! - Q8_0: q = round(w / d), d = max|w| / 127, w ~ d * q.
//! - Q4_0: d = m / -8 where m is the block's value of largest magnitude, q = clamp(round(w / d)
//!   + 8, 0, 15), w ~ d * (q - 8); byte j of a block holds value j (low nibble) and j + 16 (high).

use half::f16;

pub const QK: usize = 32;

pub fn quantize_q8_0(row: &[f32], qs: &mut Vec<i8>, scales: &mut Vec<f16>) {
    debug_assert_eq!(row.len() % QK, 0);
    for b in row.chunks_exact(QK) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        qs.extend(
            b.iter()
                .map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8),
        );
        scales.push(f16::from_f32(d));
    }
}

pub fn quantize_q4_0(row: &[f32], qs: &mut Vec<u8>, scales: &mut Vec<f16>) {
    debug_assert_eq!(row.len() % QK, 0);
    for b in row.chunks_exact(QK) {
        let m = b
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = m / -8.0;
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q = |v: f32| ((v * inv).round() + 8.0).clamp(0.0, 15.0) as u8;
        qs.extend((0..QK / 2).map(|j| q(b[j]) | (q(b[j + QK / 2]) << 4)));
        scales.push(f16::from_f32(d));
    }
}

#[inline(always)]
pub fn dequantize_q8_0(qs: &[i8], scales: &[f16], out: &mut [f32]) {
    for ((o, q), d) in out
        .chunks_exact_mut(QK)
        .zip(qs.chunks_exact(QK))
        .zip(scales)
    {
        let d = d.to_f32();
        for (o, &q) in o.iter_mut().zip(q) {
            *o = d * q as f32;
        }
    }
}

#[inline(always)]
pub fn dequantize_q4_0(qs: &[u8], scales: &[f16], out: &mut [f32]) {
    for ((o, q), d) in out
        .chunks_exact_mut(QK)
        .zip(qs.chunks_exact(QK / 2))
        .zip(scales)
    {
        let d = d.to_f32();
        for j in 0..QK / 2 {
            o[j] = d * ((q[j] & 0x0f) as i32 - 8) as f32;
            o[j + QK / 2] = d * ((q[j] >> 4) as i32 - 8) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_errors_are_within_half_a_step() {
        let row: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let (mut q8, mut s8) = (vec![], vec![]);
        quantize_q8_0(&row, &mut q8, &mut s8);
        let mut back = vec![0f32; 64];
        dequantize_q8_0(&q8, &s8, &mut back);
        for (b, blk) in row.chunks(32).enumerate() {
            let d = s8[b].to_f32();
            for (j, v) in blk.iter().enumerate() {
                // half a step, plus the f16 rounding of the scale (2^-11 relative) times |q| <= 127
                assert!((back[b * 32 + j] - v).abs() <= 0.5 * d + 127.0 * d * 1e-3);
            }
        }
        let (mut q4, mut s4) = (vec![], vec![]);
        quantize_q4_0(&row, &mut q4, &mut s4);
        dequantize_q4_0(&q4, &s4, &mut back);
        for (b, blk) in row.chunks(32).enumerate() {
            let d = s4[b].to_f32().abs();
            for (j, v) in blk.iter().enumerate() {
                // values of the sign opposite to the largest one saturate at 7|d| (they can
                // reach 8|d|), so the bound is one step rather than half a step
                assert!(
                    (back[b * 32 + j] - v).abs() <= d + 8.0 * d * 1e-3,
                    "{} vs {v}",
                    back[b * 32 + j]
                );
            }
        }
    }
}
