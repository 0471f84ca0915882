//! The block formats of GGUF files (ggml's types), decoded to f32 exactly as the `gguf` Python
//! package's `dequantize` decodes them (the same products and sums in the same order, so the
//! same bits; testdata/ggml holds its output). Layouts are llama.cpp's: a block of `block_size`
//! values in `type_size` bytes, f16 scales little-endian; the k-quants' super-blocks are 256
//! values in sub-blocks of 16 or 32.

use half::{bf16, f16};

/// The k-quants' super-block.
pub const QK_K: usize = 256;

/// A ggml tensor type whale reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl GgmlType {
    /// The type of a ggml type id (`ggml_type` in ggml.h), where whale reads it.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
        }
    }

    pub const ALL: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// Values a block holds.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            _ => QK_K,
        }
    }

    /// Bytes a block takes.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2_K => 84,
            GgmlType::Q3_K => 110,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
        }
    }

    /// Bytes `n` values take (`n` a multiple of the block size).
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        n.is_multiple_of(self.block_size())
            .then(|| n / self.block_size() * self.type_size())
    }
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `bytes` (whole blocks of `t`) decoded into `out` (their values).
pub fn dequantize(t: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (bs, ts) = (t.block_size(), t.type_size());
    assert_eq!(
        bytes.len() / ts * bs,
        out.len(),
        "blocks and values disagree"
    );
    assert!(bytes.len().is_multiple_of(ts), "not whole blocks");
    for (b, o) in bytes.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
        match t {
            GgmlType::F32 => o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            GgmlType::F16 => o[0] = h(b, 0),
            GgmlType::BF16 => o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            GgmlType::Q4_0 => q4_0(b, o),
            GgmlType::Q4_1 => q4_1(b, o),
            GgmlType::Q5_0 => q5_0(b, o),
            GgmlType::Q5_1 => q5_1(b, o),
            GgmlType::Q8_0 => {
                let d = h(b, 0);
                for (o, &q) in o.iter_mut().zip(&b[2..34]) {
                    *o = q as i8 as f32 * d;
                }
            }
            GgmlType::Q2_K => q2_k(b, o),
            GgmlType::Q3_K => q3_k(b, o),
            GgmlType::Q4_K => q4_k(b, o),
            GgmlType::Q5_K => q5_k(b, o),
            GgmlType::Q6_K => q6_k(b, o),
        }
    }
}

/// Value j of a 32-value block packed in 16 bytes: low nibbles first, then high.
fn nibble(qs: &[u8], j: usize) -> u8 {
    (qs[j % 16] >> (4 * (j / 16))) & 0x0f
}

fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = h(b, 0);
    for (j, o) in o.iter_mut().enumerate() {
        *o = d * (nibble(&b[2..18], j) as i32 - 8) as f32;
    }
}

fn q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (h(b, 0), h(b, 2));
    for (j, o) in o.iter_mut().enumerate() {
        *o = d * nibble(&b[4..20], j) as f32 + m;
    }
}

/// The fifth bits of a Q5 block: bit j of a little-endian u32.
fn fifth(qh: &[u8], j: usize) -> u8 {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    ((qh >> j) & 1) as u8
}

fn q5_0(b: &[u8], o: &mut [f32]) {
    let d = h(b, 0);
    for (j, o) in o.iter_mut().enumerate() {
        let q = nibble(&b[6..22], j) | (fifth(&b[2..6], j) << 4);
        *o = d * (q as i32 - 16) as f32;
    }
}

fn q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (h(b, 0), h(b, 2));
    for (j, o) in o.iter_mut().enumerate() {
        let q = nibble(&b[8..24], j) | (fifth(&b[4..8], j) << 4);
        *o = d * q as f32 + m;
    }
}

/// A k-quant's 2-bit (or high-mask) value e of a 256-value super-block: 32-byte rows of `q`
/// give 4 values a byte, by shift 0, 2, 4, 6, for 128 values a half.
fn crumb(q: &[u8], e: usize) -> u8 {
    let (half, s, j) = (e / 128, (e % 128) / 32, e % 32);
    (q[half * 32 + j] >> (2 * s)) & 3
}

fn q2_k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (h(b, 80), h(b, 82));
    for (e, o) in o.iter_mut().enumerate() {
        let s = scales[e / 16];
        let dl = d * (s & 0x0f) as f32;
        let ml = dmin * (s >> 4) as f32;
        *o = dl * crumb(qs, e) as f32 - ml;
    }
}

fn q3_k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs, sc) = (&b[..32], &b[32..96], &b[96..108]);
    let d = h(b, 108);
    // 16 six-bit scales: low four bits from bytes 0-7 (low then high nibbles), high two from
    // bytes 8-11 (by shift 0, 2, 4, 6)
    let scale = |i: usize| {
        let lo = (sc[i % 8] >> (4 * (i / 8))) & 0x0f;
        let hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
        ((lo | (hi << 4)) as i8 - 32) as f32
    };
    for (e, o) in o.iter_mut().enumerate() {
        let dl = d * scale(e / 16);
        // the offset of 4 applies where the high bit is clear
        let high = (hmask[e % 32] >> (e / 32)) & 1;
        let q = crumb(qs, e) as i8 - (((high ^ 1) << 2) as i8);
        *o = dl * q as f32;
    }
}

/// Q4_K / Q5_K's eight 6-bit scales and mins from their 12 bytes.
fn scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for i in 0..4 {
        sc[i] = s[i] & 0x3f;
        m[i] = s[4 + i] & 0x3f;
        sc[4 + i] = (s[8 + i] & 0x0f) | ((s[i] >> 2) & 0x30);
        m[4 + i] = (s[8 + i] >> 4) | ((s[4 + i] >> 2) & 0x30);
    }
    (sc, m)
}

/// Value e of 128 bytes of nibbles in 32-byte chunks: a chunk's low nibbles, then its high.
fn k_nibble(qs: &[u8], e: usize) -> u8 {
    let (k, j) = (e / 32, e % 32);
    (qs[(k / 2) * 32 + j] >> (4 * (k % 2))) & 0x0f
}

fn q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (h(b, 0), h(b, 2));
    let (sc, m) = scale_min(&b[4..16]);
    let qs = &b[16..144];
    for (e, o) in o.iter_mut().enumerate() {
        let k = e / 32;
        let (dk, mk) = (d * sc[k] as f32, dmin * m[k] as f32);
        *o = dk * k_nibble(qs, e) as f32 - mk;
    }
}

fn q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (h(b, 0), h(b, 2));
    let (sc, m) = scale_min(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (e, o) in o.iter_mut().enumerate() {
        let k = e / 32;
        let (dk, mk) = (d * sc[k] as f32, dmin * m[k] as f32);
        let q = k_nibble(qs, e) | (((qh[e % 32] >> k) & 1) << 4);
        *o = dk * q as f32 - mk;
    }
}

fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = h(b, 208);
    for (e, o) in o.iter_mut().enumerate() {
        let (half, s, j) = (e / 128, (e % 128) / 64, e % 64);
        let lo = (ql[half * 64 + j] >> (4 * s)) & 0x0f;
        let q = ((lo | (crumb(qh, e) << 4)) as i8 - 32) as f32;
        let ds = d * scales[e / 16] as i8 as f32;
        *o = ds * q;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_ggml_s() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q8_0.bytes_for(33), None);
        // types whale does not read (IQ2_XXS, MXFP4)
        assert_eq!(GgmlType::from_id(16), None);
        assert_eq!(GgmlType::from_id(39), None);
    }

    #[test]
    fn q8_0_is_code_times_scale() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = 3;
        b[3] = (-4i8) as u8;
        let mut o = [0f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut o);
        assert_eq!(&o[..3], &[1.5, -2.0, 0.0]);
    }
}
