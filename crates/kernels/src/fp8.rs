//! float8_e4m3fn: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits, no infinities,
//! S.1111.111 is NaN, largest finite value 448.

use std::sync::OnceLock;

pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let e = ((b >> 3) & 0x0f) as i32;
    let m = (b & 0x07) as f32;
    if e == 0x0f && (b & 0x07) == 0x07 {
        return f32::NAN;
    }
    if e == 0 {
        sign * (m / 8.0) * 2f32.powi(-6)
    } else {
        sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
    }
}

/// All 256 values, decoded once.
pub fn e4m3_table() -> &'static [f32; 256] {
    static TABLE: OnceLock<[f32; 256]> = OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|i| e4m3_to_f32(i as u8)))
}

/// Nearest e4m3 value (round to nearest, ties to even mantissa), saturating at +-448.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let table = e4m3_table();
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs().min(448.0);
    // Positive codes 0..=0x7e are increasing in value; pick the nearest.
    let mut lo = 0u8;
    let mut hi = 0x7eu8;
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if table[mid as usize] <= a {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (dl, dh) = (a - table[lo as usize], table[hi as usize] - a);
    let code = if dl < dh || (dl == dh && lo.is_multiple_of(2)) {
        lo
    } else {
        hi
    };
    sign | code
}

/// `e4m3_to_f32(f32_to_e4m3(x))` without the table search: the f32 mantissa rounded to 3 bits
/// (ties to even) in the normal range, to multiples of 2^-9 below 2^-6, saturating at +-448.
/// Simulated FP8 training rounds every activation through this, so it must be cheap.
#[inline]
pub fn round_e4m3(x: f32) -> f32 {
    let a = x.abs();
    let r = if a >= 0.015625 {
        let bits = a.to_bits();
        let lsb = (bits >> 20) & 1;
        f32::from_bits((bits + 0x7ffff + lsb) & !0xfffff).min(448.0)
    } else {
        (a * 512.0).round_ties_even() / 512.0
    };
    if x.is_nan() {
        f32::NAN
    } else {
        r.copysign(x)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_rounding_equals_the_table_round_trip() {
        use super::{e4m3_to_f32, f32_to_e4m3, round_e4m3};
        let mut z = 0x1234_5678u32;
        let mut xs: Vec<f32> = (0..=255u8)
            .map(e4m3_to_f32)
            .filter(|v| v.is_finite())
            .collect();
        // midpoints between neighbours (the ties), and random values over the whole range
        let mut t = xs.clone();
        t.sort_by(f32::total_cmp);
        xs.extend(t.windows(2).map(|w| (w[0] + w[1]) / 2.0));
        for _ in 0..200_000 {
            z ^= z << 13;
            z ^= z >> 17;
            z ^= z << 5;
            let m = (z >> 8) as f32 / (1u32 << 24) as f32;
            let e = (z % 24) as i32 - 14;
            xs.push((m * 2f32.powi(e)).copysign(if z & 1 == 0 { 1.0 } else { -1.0 }));
        }
        xs.extend([0.0, -0.0, 448.0, 449.0, 460.0, 1e6, -1e6, 1e-9]);
        for x in xs {
            let want = e4m3_to_f32(f32_to_e4m3(x));
            assert_eq!(round_e4m3(x).to_bits(), want.to_bits(), "{x:e}");
        }
    }
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0); // e=7, m=0
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0xfe), -448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert!(e4m3_to_f32(0x7f).is_nan());
        assert_eq!(e4m3_to_f32(0x3c), 1.5);
    }

    #[test]
    fn round_trip_every_code() {
        for b in 0u8..=255 {
            let v = e4m3_to_f32(b);
            if v.is_nan() || v == 0.0 {
                continue;
            }
            assert_eq!(f32_to_e4m3(v), b, "code {b:#x} value {v}");
        }
        assert_eq!(f32_to_e4m3(1000.0), 0x7e);
        assert_eq!(f32_to_e4m3(1.06), 0x38); // 1.0 is nearer than 1.125
    }
}
