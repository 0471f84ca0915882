//! MXFP4 as DeepSeek-V4 ships its routed experts: E2M1 codes (1 sign bit, 2 exponent bits, 1
//! mantissa bit; values 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives) two to a byte, the even
//! column in the low nibble, and one E8M0 scale (a bare power of two, 2^(e - 127)) per 32
//! values of a row. A weight is `e2m1(code) * scale`, exact in f32.

/// Values per scale.
pub const GROUP: usize = 32;

/// E2M1's values by code (bit 3 is the sign).
pub const E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// The scale an E8M0 byte stands for: 2^(e - 127); e = 0 is 2^-127 (an f32 subnormal). 0xFF is
/// E8M0's NaN and comes out as +inf: a loader refuses it (`is_nan_e8m0`).
#[inline(always)]
pub fn e8m0(e: u8) -> f32 {
    if e == 0 {
        f32::from_bits(1 << 22)
    } else {
        f32::from_bits((e as u32) << 23)
    }
}

/// E8M0's one NaN code.
pub fn is_nan_e8m0(e: u8) -> bool {
    e == 0xff
}

/// Value j of a packed row.
#[inline(always)]
pub fn value(codes: &[u8], scales: &[u8], j: usize) -> f32 {
    let code = (codes[j / 2] >> (4 * (j % 2))) & 0x0f;
    E2M1[code as usize] * e8m0(scales[j / GROUP])
}

/// A packed row of `out.len()` values (a multiple of 32) decoded into `out`.
pub fn decode_row(codes: &[u8], scales: &[u8], out: &mut [f32]) {
    for ((o, c), &s) in out
        .chunks_exact_mut(GROUP)
        .zip(codes.chunks_exact(GROUP / 2))
        .zip(scales)
    {
        let s = e8m0(s);
        for (pair, &b) in o.chunks_exact_mut(2).zip(c) {
            pair[0] = E2M1[(b & 0x0f) as usize] * s;
            pair[1] = E2M1[(b >> 4) as usize] * s;
        }
    }
}

/// Activations in the order the AVX-512 MXFP4 kernel multiplies them (`simd::dot_fp4_lanes`):
/// within each group of 32, the even columns then the odd ones, so the 16 code bytes of a group
/// widened one to a lane give the even codes in their low nibbles and the odd ones above.
pub fn to_lanes(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (o, g) in out.chunks_exact_mut(GROUP).zip(x.chunks_exact(GROUP)) {
        for i in 0..GROUP / 2 {
            o[i] = g[2 * i];
            o[GROUP / 2 + i] = g[2 * i + 1];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2m1_codes_decode_by_their_fields() {
        for code in 0u8..16 {
            let (s, e, m) = (code >> 3, (code >> 1) & 3, code & 1);
            let mag = if e == 0 {
                0.5 * m as f32
            } else {
                (1.0 + 0.5 * m as f32) * 2f32.powi(e as i32 - 1)
            };
            assert_eq!(E2M1[code as usize], if s == 1 { -mag } else { mag });
        }
    }

    #[test]
    fn e8m0_is_a_power_of_two() {
        for e in 0u8..255 {
            assert_eq!(e8m0(e), 2f64.powi(e as i32 - 127) as f32, "{e}");
        }
        assert!(is_nan_e8m0(0xff) && !is_nan_e8m0(0xfe));
    }

    #[test]
    fn rows_decode_low_nibble_first() {
        let codes = [0x21u8; 16];
        let mut scales = [127u8; 1];
        let mut out = [0f32; 32];
        decode_row(&codes, &scales, &mut out);
        assert_eq!(&out[..4], &[0.5, 1.0, 0.5, 1.0]);
        scales[0] = 128;
        decode_row(&codes, &scales, &mut out);
        assert_eq!(out[1], 2.0);
        assert_eq!(value(&codes, &scales, 3), 2.0);
    }
}
