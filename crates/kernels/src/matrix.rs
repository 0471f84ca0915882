//! A weight matrix W[rows, cols] (the `nn.Linear` convention: y = x W^T) in its stored format,
//! and the product of a batch of f32 activation rows with it.

use half::{bf16, f16};

use crate::quant::{self, QK};
use rayon::prelude::*;
use std::sync::OnceLock;

use crate::bdot;
use crate::qdot::{self, QAct, QRows};
use crate::qdot_avx2::{self, I8Act};
use crate::simd::{self, Rows};
use crate::{fp8, Buf};

pub enum WeightData {
    F32(Buf<f32>),
    F16(Buf<f16>),
    BF16(Buf<bf16>),
    /// bf16 weights whose products round the activations to bf16 first (see `bdot`): twice the
    /// multiply rate on CPUs with AVX512-BF16, at about 2^-9 relative error per activation.
    BF16Fast(Buf<bf16>),
    /// float8_e4m3fn codes with one f32 multiplier per `block_rows x block_cols` block
    /// (row-major over blocks; edge blocks may be partial).
    Fp8Block {
        codes: Buf<u8>,
        scale_inv: Vec<f32>,
        block_rows: usize,
        block_cols: usize,
    },
    /// MXFP4 (see `fp4`): packed E2M1 codes, `cols / 2` bytes a row, and one E8M0 scale per
    /// 32 values of a row (`cols` a multiple of 32)
    Fp4 {
        codes: Buf<u8>,
        scales: Buf<u8>,
    },
    /// int8 in blocks of 32 per row with an f16 scale each (see `quant`)
    Q8_0 {
        qs: Buf<i8>,
        scales: Buf<f16>,
    },
    /// int4 in blocks of 32 per row with an f16 scale each (see `quant`)
    Q4_0 {
        qs: Buf<u8>,
        scales: Buf<f16>,
    },
}

/// Formats weights can be converted to at load (`--dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    F32,
    Bf16,
    Bf16Fast,
    F16,
    Q8_0,
    Q4_0,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "f32" => Format::F32,
            "bf16" => Format::Bf16,
            "bf16-fast" => Format::Bf16Fast,
            "f16" => Format::F16,
            "int8" | "q8_0" => Format::Q8_0,
            "int4" | "q4_0" => Format::Q4_0,
            _ => return None,
        })
    }

    fn is_block(self) -> bool {
        matches!(self, Format::Q8_0 | Format::Q4_0)
    }
}

pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: WeightData,
}

impl Matrix {
    pub fn from_f32(rows: usize, cols: usize, v: Vec<f32>) -> Self {
        assert_eq!(v.len(), rows * cols, "matrix data does not match its shape");
        Matrix {
            rows,
            cols,
            data: WeightData::F32(Buf::owned(v)),
        }
    }

    /// Bytes the stored weights occupy (what one full read of the matrix costs).
    pub fn stored_bytes(&self) -> usize {
        let n = self.rows * self.cols;
        match &self.data {
            WeightData::F32(_) => 4 * n,
            WeightData::F16(_) | WeightData::BF16(_) | WeightData::BF16Fast(_) => 2 * n,
            WeightData::Fp8Block { scale_inv, .. } => n + 4 * scale_inv.len(),
            WeightData::Fp4 { .. } => n / 2 + n / crate::fp4::GROUP,
            WeightData::Q8_0 { scales, .. } => n + 2 * scales.len(),
            WeightData::Q4_0 { scales, .. } => n / 2 + 2 * scales.len(),
        }
    }

    /// The matrix's values as stored (codes, without their block scales).
    pub fn data_bytes(&self) -> &[u8] {
        match &self.data {
            WeightData::F32(b) => bytemuck::cast_slice(b.as_slice()),
            WeightData::F16(b) => bytemuck::cast_slice(b.as_slice()),
            WeightData::BF16(b) | WeightData::BF16Fast(b) => bytemuck::cast_slice(b.as_slice()),
            WeightData::Fp8Block { codes, .. } | WeightData::Fp4 { codes, .. } => codes.as_slice(),
            WeightData::Q8_0 { qs, .. } => bytemuck::cast_slice(qs.as_slice()),
            WeightData::Q4_0 { qs, .. } => qs.as_slice(),
        }
    }

    /// The format as a conversion target names it (None for FP8 blocks and MXFP4, which are
    /// load-only).
    pub fn format(&self) -> Option<Format> {
        match &self.data {
            WeightData::F32(_) => Some(Format::F32),
            WeightData::F16(_) => Some(Format::F16),
            WeightData::BF16(_) => Some(Format::Bf16),
            WeightData::BF16Fast(_) => Some(Format::Bf16Fast),
            WeightData::Fp8Block { .. } | WeightData::Fp4 { .. } => None,
            WeightData::Q8_0 { .. } => Some(Format::Q8_0),
            WeightData::Q4_0 { .. } => Some(Format::Q4_0),
        }
    }

    pub fn format_name(&self) -> &'static str {
        match &self.data {
            WeightData::F32(_) => "f32",
            WeightData::F16(_) => "f16",
            WeightData::BF16(_) => "bf16",
            WeightData::BF16Fast(_) => "bf16-fast",
            WeightData::Fp8Block { .. } => "fp8-e4m3-block",
            WeightData::Fp4 { .. } => "mxfp4",
            WeightData::Q8_0 { .. } => "q8_0",
            WeightData::Q4_0 { .. } => "q4_0",
        }
    }

    /// The rows as the integer block kernels read them (block-quantised formats only).
    pub fn qrows(&self) -> Option<QRows<'_>> {
        let (layout, bytes, scales) = match &self.data {
            WeightData::Q8_0 { qs, scales } => (
                qdot::Layout::Q8_0,
                bytemuck::cast_slice(qs.as_slice()),
                scales,
            ),
            WeightData::Q4_0 { qs, scales } => (qdot::Layout::Q4_0, qs.as_slice(), scales),
            _ => return None,
        };
        Some(QRows {
            layout,
            bytes,
            scales: scales.as_slice(),
            cols: self.cols,
        })
    }

    /// Row `r` widened to f32. Returns the stored row itself for f32 weights, else decodes into `buf`.
    #[inline(always)]
    pub fn row<'a>(&'a self, r: usize, buf: &'a mut [f32]) -> &'a [f32] {
        let c = self.cols;
        let span = r * c..(r + 1) * c;
        match &self.data {
            WeightData::F32(b) => &b.as_slice()[span],
            WeightData::F16(b) => {
                for (o, v) in buf.iter_mut().zip(&b.as_slice()[span]) {
                    *o = v.to_f32();
                }
                &buf[..c]
            }
            WeightData::BF16(b) | WeightData::BF16Fast(b) => {
                for (o, v) in buf.iter_mut().zip(&b.as_slice()[span]) {
                    *o = v.to_f32();
                }
                &buf[..c]
            }
            WeightData::Fp8Block { .. } => {
                let Some(Rows::Fp8 {
                    codes: [row],
                    scales: [scales],
                    block,
                }) = self.rows_in_place::<1>(r)
                else {
                    unreachable!("FP8 rows are read in place");
                };
                let table = fp8::e4m3_table();
                for ((out, codes), s) in buf.chunks_mut(block).zip(row.chunks(block)).zip(scales) {
                    for (o, &code) in out.iter_mut().zip(codes) {
                        *o = table[code as usize] * s;
                    }
                }
                &buf[..c]
            }
            WeightData::Fp4 { codes, scales } => {
                let g = crate::fp4::GROUP;
                crate::fp4::decode_row(
                    &codes.as_slice()[r * c / 2..(r + 1) * c / 2],
                    &scales.as_slice()[r * c / g..(r + 1) * c / g],
                    &mut buf[..c],
                );
                &buf[..c]
            }
            WeightData::Q8_0 { qs, scales } => {
                let nb = c / QK;
                quant::dequantize_q8_0(
                    &qs.as_slice()[span],
                    &scales.as_slice()[r * nb..(r + 1) * nb],
                    &mut buf[..c],
                );
                &buf[..c]
            }
            WeightData::Q4_0 { qs, scales } => {
                let nb = c / QK;
                quant::dequantize_q4_0(
                    &qs.as_slice()[r * c / 2..(r + 1) * c / 2],
                    &scales.as_slice()[r * nb..(r + 1) * nb],
                    &mut buf[..c],
                );
                &buf[..c]
            }
        }
    }

    /// The same matrix in another format, converted once. Block formats need rows that are a
    /// multiple of 32 long; other matrices stay as they are (returns None).
    pub fn convert(&self, to: Format) -> Option<Matrix> {
        if to.is_block() && !self.cols.is_multiple_of(QK) {
            return None;
        }
        let data = match to {
            Format::F32 => WeightData::F32(Buf::owned(
                self.map_rows(|row, out: &mut Vec<f32>, _: &mut Vec<()>| {
                    out.extend_from_slice(row)
                })
                .0,
            )),
            Format::Bf16 => WeightData::BF16(Buf::owned(self.to_bf16())),
            Format::Bf16Fast => WeightData::BF16Fast(Buf::owned(self.to_bf16())),
            Format::F16 => WeightData::F16(Buf::owned(
                self.map_rows(|row, out: &mut Vec<f16>, _: &mut Vec<()>| {
                    out.extend(row.iter().map(|&x| f16::from_f32(x)))
                })
                .0,
            )),
            Format::Q8_0 => {
                let (qs, scales) = self.map_rows(quant::quantize_q8_0);
                WeightData::Q8_0 {
                    qs: Buf::owned(qs),
                    scales: Buf::owned(scales),
                }
            }
            Format::Q4_0 => {
                let (qs, scales) = self.map_rows(quant::quantize_q4_0);
                WeightData::Q4_0 {
                    qs: Buf::owned(qs),
                    scales: Buf::owned(scales),
                }
            }
        };
        Some(Matrix {
            rows: self.rows,
            cols: self.cols,
            data,
        })
    }

    /// The same matrix with its weight bytes (and block-format scales) copied into `arena` (see
    /// `arena`); FP8's small per-block multipliers stay where they are.
    pub fn packed_into(self, arena: &crate::arena::Arena) -> Matrix {
        let Matrix { rows, cols, data } = self;
        let data = match data {
            WeightData::F32(b) => WeightData::F32(b.packed_into(arena)),
            WeightData::F16(b) => WeightData::F16(b.packed_into(arena)),
            WeightData::BF16(b) => WeightData::BF16(b.packed_into(arena)),
            WeightData::BF16Fast(b) => WeightData::BF16Fast(b.packed_into(arena)),
            WeightData::Q8_0 { qs, scales } => WeightData::Q8_0 {
                qs: qs.packed_into(arena),
                scales: scales.packed_into(arena),
            },
            WeightData::Q4_0 { qs, scales } => WeightData::Q4_0 {
                qs: qs.packed_into(arena),
                scales: scales.packed_into(arena),
            },
            WeightData::Fp4 { codes, scales } => WeightData::Fp4 {
                codes: codes.packed_into(arena),
                scales: scales.packed_into(arena),
            },
            WeightData::Fp8Block {
                codes,
                scale_inv,
                block_rows,
                block_cols,
            } => WeightData::Fp8Block {
                codes: codes.packed_into(arena),
                scale_inv,
                block_rows,
                block_cols,
            },
        };
        Matrix { rows, cols, data }
    }

    /// The same stored bytes under another format that differs only in how products are computed
    /// (bf16 <-> bf16-fast), with no copy; any other change is not a retag (returns self).
    pub fn retag(self, to: Format) -> Result<Matrix, Matrix> {
        let Matrix { rows, cols, data } = self;
        let data = match (data, to) {
            (WeightData::BF16(b) | WeightData::BF16Fast(b), Format::Bf16) => WeightData::BF16(b),
            (WeightData::BF16(b) | WeightData::BF16Fast(b), Format::Bf16Fast) => {
                WeightData::BF16Fast(b)
            }
            (data, _) => return Err(Matrix { rows, cols, data }),
        };
        Ok(Matrix { rows, cols, data })
    }

    fn to_bf16(&self) -> Vec<bf16> {
        self.map_rows(|row, out: &mut Vec<bf16>, _: &mut Vec<()>| {
            out.extend(row.iter().map(|&x| bf16::from_f32(x)))
        })
        .0
    }

    /// Applies `f` to every row (widened to f32), in parallel over bands of rows, and
    /// concatenates what it appends to its two outputs in row order.
    fn map_rows<A: Send, B: Send>(
        &self,
        f: impl Fn(&[f32], &mut Vec<A>, &mut Vec<B>) + Sync,
    ) -> (Vec<A>, Vec<B>) {
        const BAND: usize = 64;
        let parts: Vec<(Vec<A>, Vec<B>)> = (0..self.rows.div_ceil(BAND))
            .into_par_iter()
            .map(|band| {
                let (mut a, mut b, mut buf) = (Vec::new(), Vec::new(), vec![0f32; self.cols]);
                for r in band * BAND..((band + 1) * BAND).min(self.rows) {
                    f(self.row(r, &mut buf), &mut a, &mut b);
                }
                (a, b)
            })
            .collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (pa, pb) in parts {
            a.extend(pa);
            b.extend(pb);
        }
        (a, b)
    }

    /// The whole matrix as f32, row-major.
    /// The values of a matrix made by `from_f32`, handed back (so a scratch matrix's storage can
    /// be used again); None for any other.
    pub fn into_f32_vec(self) -> Option<Vec<f32>> {
        match self.data {
            WeightData::F32(b) => b.into_owned(),
            _ => None,
        }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let mut buf = vec![0f32; self.cols];
        for r in 0..self.rows {
            let row = self.row(r, &mut buf);
            out[r * self.cols..(r + 1) * self.cols].copy_from_slice(row);
        }
        out
    }
}

/// A band of rows (what a thread claims at a time) holds at least this many rows and about
/// `BAND_BYTES` of weights: large enough to amortise its setup (a band of MLA's 64-byte int4 rows
/// at 16 rows was 1 KB, and the per-head products ran at half the bandwidth), small enough to
/// balance the threads' ends.
const BAND_MIN_ROWS: usize = 16;
const BAND_BYTES: usize = 32 << 10;

impl Matrix {
    /// Rows per band: a multiple of 16 (the kernels' tiles divide it).
    fn band_rows(&self) -> usize {
        let row_bytes = self.stored_bytes() / self.rows.max(1);
        (BAND_BYTES / row_bytes.max(1) / 16 * 16).max(BAND_MIN_ROWS)
    }

    /// dot(W[r], x), reading f32, bf16 and FP8 rows in place and decoding other formats into `buf`.
    #[inline]
    fn row_dot(&self, r: usize, x: &[f32], buf: &mut [f32]) -> f32 {
        if let Some(row) = self.rows_in_place::<1>(r) {
            return simd::dot_rxt(row, [x])[0][0];
        }
        let span = r * self.cols..(r + 1) * self.cols;
        match &self.data {
            WeightData::Q8_0 { qs, scales } => {
                let nb = self.cols / QK;
                simd::dot_q8_0(
                    &qs.as_slice()[span],
                    &scales.as_slice()[r * nb..(r + 1) * nb],
                    x,
                )
            }
            WeightData::Q4_0 { qs, scales } => {
                let (nb, c) = (self.cols / QK, self.cols);
                simd::dot_q4_0(
                    &qs.as_slice()[r * c / 2..(r + 1) * c / 2],
                    &scales.as_slice()[r * nb..(r + 1) * nb],
                    x,
                )
            }
            // as `rows4` decodes and multiplies them, for the same bits in any tile
            _ => simd::dot_rxt(Rows::F32([self.row(r, buf)]), [x])[0][0],
        }
    }

    /// Whether the kernels read this format's rows where they are stored (`rows_in_place`).
    fn reads_in_place(&self) -> bool {
        matches!(
            self.data,
            WeightData::F32(_)
                | WeightData::BF16(_)
                | WeightData::Fp8Block { .. }
                | WeightData::Fp4 { .. }
        )
    }

    /// Rows `r0..r0 + R` in a form the tile kernels read where they are stored, for the formats
    /// that have one (f32, bf16, FP8 blocks).
    fn rows_in_place<const R: usize>(&self, r0: usize) -> Option<Rows<'_, R>> {
        if !self.reads_in_place() {
            return None;
        }
        let c = self.cols;
        let span = |i: usize| (r0 + i) * c..(r0 + i + 1) * c;
        Some(match &self.data {
            WeightData::F32(b) => Rows::F32(std::array::from_fn(|i| &b.as_slice()[span(i)])),
            WeightData::BF16(b) => Rows::Bf16(std::array::from_fn(|i| &b.as_slice()[span(i)])),
            WeightData::Fp8Block {
                codes,
                scale_inv,
                block_rows,
                block_cols,
            } => {
                let col_blocks = c.div_ceil(*block_cols);
                Rows::Fp8 {
                    codes: std::array::from_fn(|i| &codes.as_slice()[span(i)]),
                    scales: std::array::from_fn(|i| {
                        &scale_inv[(r0 + i) / block_rows * col_blocks..][..col_blocks]
                    }),
                    block: *block_cols,
                }
            }
            WeightData::Fp4 { codes, scales } => {
                let g = crate::fp4::GROUP;
                Rows::Fp4 {
                    codes: std::array::from_fn(|i| {
                        &codes.as_slice()[(r0 + i) * c / 2..(r0 + i + 1) * c / 2]
                    }),
                    scales: std::array::from_fn(|i| {
                        &scales.as_slice()[(r0 + i) * c / g..(r0 + i + 1) * c / g]
                    }),
                }
            }
            _ => unreachable!("reads_in_place lists the formats matched here"),
        })
    }
}

/// Rows `r0..r0 + 4` of `w` for the 4x4 kernel, decoding into `bufs` when the format needs it.
fn rows4<'a>(w: &'a Matrix, r0: usize, bufs: &'a mut [Vec<f32>; 4]) -> Rows<'a, 4> {
    if let Some(rows) = w.rows_in_place::<4>(r0) {
        return rows;
    }
    let c = w.cols;
    for (i, buf) in bufs.iter_mut().enumerate() {
        w.row(r0 + i, buf);
    }
    let [a, b, cc, d] = bufs;
    Rows::F32([&a[..c], &b[..c], &cc[..c], &d[..c]])
}

/// Dots of weight rows `rows` with all `n_tok` activation rows, written W-row-major into `o`
/// (`o[i * n_tok + t]`). Four rows by four tokens at a time so each load serves four products.
fn rows_times_tokens(
    w: &Matrix,
    x: &[f32],
    n_tok: usize,
    rows: std::ops::Range<usize>,
    o: &mut [f32],
    bufs: &mut [Vec<f32>; 4],
) {
    let k = w.cols;
    let tok = |t: usize| &x[t * k..(t + 1) * k];
    let mut r = rows.start;
    // Block-quantised rows scale per block in their single-row dot, which the 4-row kernel does
    // not reproduce: they go row by row so a token gets the same bits alone and in a batch.
    let blocked = !matches!(w.data, WeightData::Q8_0 { .. } | WeightData::Q4_0 { .. });
    // Fewer than four tokens (a batch's decode step) also go row by row: four rows in lockstep
    // are four memory streams per core, which fetch below one stream's bandwidth.
    while blocked && n_tok >= 4 && r + 4 <= rows.end {
        let i0 = r - rows.start;
        let w4 = rows4(w, r, bufs);
        token_tiles(w4, x, (n_tok, k), |t, ri, yr| {
            o[(i0 + ri) * n_tok + t..][..yr.len()].copy_from_slice(yr)
        });
        r += 4;
    }
    // The rest row by row; f32 and bf16 rows serve up to four tokens per load (a batched decode
    // step's 1-3 tokens per expert), the same bits as `row_dot` gives each.
    for r in r..rows.end {
        let i = r - rows.start;
        let Some(row) = w.rows_in_place::<1>(r) else {
            for t in 0..n_tok {
                o[i * n_tok + t] = w.row_dot(r, tok(t), &mut bufs[0]);
            }
            continue;
        };
        token_tiles(row, x, (n_tok, k), |t, _, yr| {
            o[i * n_tok + t..][..yr.len()].copy_from_slice(yr)
        });
    }
}

/// R rows times every one of `n_tok` activation rows `k` long, up to four tokens per kernel call; `put(t, r, values)` receives row
/// r's dots with tokens t..t + values.len().
fn token_tiles<const R: usize>(
    w: Rows<R>,
    x: &[f32],
    (n_tok, k): (usize, usize),
    mut put: impl FnMut(usize, usize, &[f32]),
) {
    let tok = |t: usize| &x[t * k..(t + 1) * k];
    let mut t = 0;
    while t < n_tok {
        let m = (n_tok - t).min(4);
        macro_rules! tile {
            ($m:literal) => {
                for (ri, yr) in simd::dot_rxt::<R, $m>(w, std::array::from_fn(|j| tok(t + j)))
                    .iter()
                    .enumerate()
                {
                    put(t, ri, yr);
                }
            };
        }
        match m {
            1 => tile!(1),
            2 => tile!(2),
            3 => tile!(3),
            _ => tile!(4),
        }
        t += m;
    }
}

/// One product of a batch: `n_tok` activation rows `x` times the band `rows` of W, written
/// token-major into `out` ([n_tok, rows.len()]).
pub struct Product<'a> {
    pub x: &'a [f32],
    pub n_tok: usize,
    pub w: &'a Matrix,
    pub rows: std::ops::Range<usize>,
    pub out: &'a mut [f32],
}

impl<'a> Product<'a> {
    /// The whole of W.
    pub fn new(x: &'a [f32], n_tok: usize, w: &'a Matrix, out: &'a mut [f32]) -> Self {
        Product {
            x,
            n_tok,
            w,
            rows: 0..w.rows,
            out,
        }
    }
}

/// Activations converted once for the kernels a weight format needs: int8 blocks for Q8_0/Q4_0
/// (laid out for AVX-512 VNNI, or in order for AVX2), bf16 for bf16-fast weights, MXFP4's lane
/// order on AVX-512.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Converted {
    Int(qdot::Layout),
    Int8,
    Bf16,
    Fp4Lanes,
}

enum Acts {
    Int(Vec<QAct>),
    Int8(Vec<I8Act>),
    Bf16(Vec<u16>),
    Fp4(Vec<f32>),
}

impl Converted {
    fn of(w: &Matrix) -> Option<Self> {
        match &w.data {
            WeightData::BF16Fast(_) => Some(Converted::Bf16),
            #[cfg(target_arch = "x86_64")]
            WeightData::Fp4 { .. } if simd::fp4_lanes_available() => Some(Converted::Fp4Lanes),
            _ => w.qrows().and_then(|q| {
                if qdot::available() {
                    Some(Converted::Int(q.layout))
                } else {
                    qdot_avx2::available().then_some(Converted::Int8)
                }
            }),
        }
    }

    fn convert(self, x: &[f32], k: usize) -> Acts {
        match self {
            Converted::Int(layout) => {
                Acts::Int(x.chunks_exact(k).map(|r| QAct::new(r, layout)).collect())
            }
            Converted::Int8 => Acts::Int8(x.chunks_exact(k).map(I8Act::new).collect()),
            Converted::Bf16 => Acts::Bf16(bdot::round(x)),
            Converted::Fp4Lanes => Acts::Fp4(crate::fp4::to_lanes(x)),
        }
    }
}

/// What one product's row bands read, and where they write: `out` is the product's output (one
/// token) or a W-row-major scratch ([n, n_tok], several tokens) that is transposed after.
struct Input<'a> {
    x: &'a [f32],
    n_tok: usize,
    w: &'a Matrix,
    rows: std::ops::Range<usize>,
    /// which of the batch's converted activations it reads, where its format converts them
    acts: Option<usize>,
    out: Shared,
    /// its bands' indices among the batch's bands, and rows per band
    bands: std::ops::Range<usize>,
    band: usize,
}

/// An output slice that threads write at disjoint bands.
struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `Shared` is only written through `band`, whose callers write disjoint ranges (each band
// index is claimed by one thread, and bands of one product do not overlap).
unsafe impl Sync for Shared {}

impl Shared {
    fn new(s: &mut [f32]) -> Self {
        Shared {
            ptr: s.as_mut_ptr(),
            len: s.len(),
        }
    }

    /// SAFETY: no other live reference may overlap `at..at + len`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn band(&self, at: usize, len: usize) -> &mut [f32] {
        assert!(at + len <= self.len, "band outside the output");
        std::slice::from_raw_parts_mut(self.ptr.add(at), len)
    }
}

/// Several products in one parallel pass: their row bands are claimed by all threads in runs
/// (see `guided`), so a MoE layer's active experts cost one fork-join instead of one per matrix.
/// out[t, i] = sum_j x[t, j] * W[rows.start + i, j]. Each weight row is read (and widened) once
/// per product, however many activation rows there are. Every output is one fixed-order dot
/// product, so the result depends neither on the number of threads nor on what else is in the
/// batch. Products that share an activation slice (gate and up of one expert) convert it once,
/// on the first thread to need it (or on two, where both get there together).
pub fn matmul_batch(products: Vec<Product>) {
    // Several tokens are computed W-row-major ([n, n_tok]) so bands write disjoint slices, then
    // transposed into the product's output; a single token's output already is that layout.
    let mut scratch: Vec<Vec<f32>> = products
        .iter()
        .map(|p| match p.n_tok {
            1 => Vec::new(),
            _ => vec![0f32; p.out.len()],
        })
        .collect();
    let mut inputs = Vec::with_capacity(products.len());
    let mut transposes = Vec::new();
    // activations converted once per (slice address, conversion), shared by the products that
    // read them
    let mut to_convert: Vec<(Converted, &[f32], usize)> = Vec::new();
    let mut bands = 0;
    for (pi, (p, tmp)) in products.into_iter().zip(scratch.iter_mut()).enumerate() {
        let (k, n) = (p.w.cols, p.rows.len());
        assert!(p.rows.end <= p.w.rows, "row band outside the matrix");
        assert_eq!(
            p.x.len(),
            p.n_tok * k,
            "activation length does not match the matrix width"
        );
        assert_eq!(
            p.out.len(),
            p.n_tok * n,
            "output length does not match the row band"
        );
        let acts = Converted::of(p.w).map(|c| {
            to_convert
                .iter()
                .position(|e: &(Converted, &[f32], usize)| (e.0, e.1.as_ptr()) == (c, p.x.as_ptr()))
                .unwrap_or_else(|| {
                    to_convert.push((c, p.x, k));
                    to_convert.len() - 1
                })
        });
        let out = if p.n_tok > 1 {
            transposes.push((p.out, pi, p.n_tok));
            Shared::new(tmp)
        } else {
            Shared::new(p.out)
        };
        let band = p.w.band_rows();
        let first = bands;
        bands += n.div_ceil(band);
        inputs.push(Input {
            x: p.x,
            n_tok: p.n_tok,
            w: p.w,
            rows: p.rows,
            acts,
            out,
            bands: first..bands,
            band,
        });
    }
    let converted: Vec<OnceLock<Acts>> = to_convert.iter().map(|_| OnceLock::new()).collect();
    // rows decoded to f32 for the kernels (formats without kernels of their own), allocated
    // only where a thread needs them
    let bufs = || -> [Vec<f32>; 4] { Default::default() };
    crate::guided::for_runs(bands, bufs, |bufs, run| {
        let mut pi = inputs.partition_point(|i| i.bands.end <= run.start);
        for band in run {
            while band >= inputs[pi].bands.end {
                pi += 1;
            }
            let inp = &inputs[pi];
            let off = (band - inp.bands.start) * inp.band;
            let r0 = inp.rows.start + off;
            let rows = r0..(r0 + inp.band).min(inp.rows.end);
            // SAFETY: band indices are claimed once each, and a product's bands are disjoint.
            let chunk = unsafe { inp.out.band(off * inp.n_tok, rows.len() * inp.n_tok) };
            // A thread that finds an activation not converted yet converts it itself rather than
            // wait for another that is at it (a wait is a futex sleep and wake, ~10 us here); the
            // two results are the same bits, and the first one stored is kept.
            let acts = inp.acts.map(|a| {
                converted[a].get().unwrap_or_else(|| {
                    let (c, x, k) = to_convert[a];
                    let _ = converted[a].set(c.convert(x, k));
                    converted[a].get().expect("just set")
                })
            });
            band_product(inp, acts, rows, chunk, bufs);
        }
    });
    if transposes.is_empty() {
        return;
    }
    transposes
        .into_par_iter()
        .for_each(|(o, pi, n_tok)| transpose_into(&scratch[pi], o.len() / n_tok, n_tok, o));
}

/// One band of rows of one product, through the kernel its weight format has.
fn band_product(
    inp: &Input,
    acts: Option<&Acts>,
    rows: std::ops::Range<usize>,
    chunk: &mut [f32],
    bufs: &mut [Vec<f32>; 4],
) {
    let decodes = acts.is_none() && !inp.w.reads_in_place();
    if decodes && bufs[0].len() < inp.w.cols {
        bufs.iter_mut().for_each(|b| b.resize(inp.w.cols, 0.0));
    }
    match (acts, &inp.w.data) {
        (Some(Acts::Int(a)), _) => {
            let q = inp
                .w
                .qrows()
                .expect("int activations go with block weights");
            qdot::rows_times_tokens(q, rows, a, chunk)
        }
        (Some(Acts::Int8(a)), _) => {
            let q = inp
                .w
                .qrows()
                .expect("int activations go with block weights");
            qdot_avx2::rows_times_tokens(q, rows, a, chunk)
        }
        #[cfg(target_arch = "x86_64")]
        (Some(Acts::Fp4(a)), WeightData::Fp4 { codes, scales }) => {
            fp4_rows_times_tokens(codes, scales, inp.w.cols, rows, a, inp.n_tok, chunk)
        }
        (Some(Acts::Bf16(a)), WeightData::BF16Fast(b)) => bdot::rows_times_tokens(
            bytemuck::cast_slice(b.as_slice()),
            inp.w.cols,
            rows,
            a,
            inp.n_tok,
            chunk,
        ),
        _ if inp.n_tok == 1 => {
            // Rows read in place go two at a time: one row's dot is a chain of FMAs, each waiting
            // on the last (4 cycles per 16 weights), which caps an FP8 row below the memory's
            // pace; two rows are two chains. Each cell still sums as its row alone does.
            let mut r = rows.start;
            while r + 2 <= rows.end {
                let Some(w2) = inp.w.rows_in_place::<2>(r) else {
                    break;
                };
                let [[a], [b]] = simd::dot_rxt(w2, [inp.x]);
                chunk[r - rows.start..][..2].copy_from_slice(&[a, b]);
                r += 2;
            }
            for r in r..rows.end {
                chunk[r - rows.start] = inp.w.row_dot(r, inp.x, &mut bufs[0]);
            }
        }
        _ => rows_times_tokens(inp.w, inp.x, inp.n_tok, rows, chunk, bufs),
    }
}

/// MXFP4 rows `rows` times `n_tok` activation rows in `fp4::to_lanes` order, into `chunk`: one
/// token's dots in row order, or several W-row-major (`chunk[i * n_tok + t]`). Rows go two at a
/// time (two FMA chains) and tokens up to four a tile; every cell sums alike in any tile.
#[cfg(target_arch = "x86_64")]
fn fp4_rows_times_tokens(
    codes: &Buf<u8>,
    scales: &Buf<u8>,
    k: usize,
    rows: std::ops::Range<usize>,
    x: &[f32],
    n_tok: usize,
    chunk: &mut [f32],
) {
    let g = crate::fp4::GROUP;
    let (codes, scales) = (codes.as_slice(), scales.as_slice());
    let c = |r: usize| &codes[r * k / 2..(r + 1) * k / 2];
    let s = |r: usize| &scales[r * k / g..(r + 1) * k / g];
    let tok = |t: usize| &x[t * k..(t + 1) * k];
    let mut r = rows.start;
    while r < rows.end {
        let pair = r + 2 <= rows.end;
        let mut t = 0;
        while t < n_tok {
            let m = (n_tok - t).min(4);
            macro_rules! tile {
                ($rr:literal, $m:literal) => {{
                    let out = simd::dot_fp4_lanes::<$rr, $m>(
                        std::array::from_fn(|i| c(r + i)),
                        std::array::from_fn(|i| s(r + i)),
                        std::array::from_fn(|j| tok(t + j)),
                    );
                    for (i, row) in out.iter().enumerate() {
                        let at = (r + i - rows.start) * n_tok + t;
                        chunk[at..at + $m].copy_from_slice(row);
                    }
                }};
            }
            match (pair, m) {
                (true, 1) => tile!(2, 1),
                (true, 2) => tile!(2, 2),
                (true, 3) => tile!(2, 3),
                (true, _) => tile!(2, 4),
                (false, 1) => tile!(1, 1),
                (false, 2) => tile!(1, 2),
                (false, 3) => tile!(1, 3),
                (false, _) => tile!(1, 4),
            }
            t += m;
        }
        r += if pair { 2 } else { 1 };
    }
}

/// out[t * n + i] = tmp[i * n_tok + t], tokens in parallel (the transposes of a batch's products
/// run in parallel too: done serially they kept one thread busy while the others waited)
fn transpose_into(tmp: &[f32], n: usize, n_tok: usize, out: &mut [f32]) {
    out.par_chunks_mut(n).enumerate().for_each(|(t, o)| {
        for (i, v) in o.iter_mut().enumerate() {
            *v = tmp[i * n_tok + t];
        }
    });
}

/// y = x W^T for `n_tok` rows of x: out is [n_tok, W.rows] (one product; see `matmul_batch`).
pub fn matmul(x: &[f32], n_tok: usize, w: &Matrix, out: &mut [f32]) {
    matmul_batch(vec![Product::new(x, n_tok, w, out)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], t: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0f32; t * n];
        for a in 0..t {
            for b in 0..n {
                y[a * n + b] = (0..k).map(|j| x[a * k + j] * w[b * k + j]).sum();
            }
        }
        y
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matmul_matches_naive_for_every_format() {
        let (n, k) = (37, 45);
        let w = pseudo(n * k, 1);
        let bf: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wb: Vec<f32> = bf.iter().map(|v| v.to_f32()).collect();
        let hf: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let wh: Vec<f32> = hf.iter().map(|v| v.to_f32()).collect();
        for t in [1usize, 3, 6] {
            let x = pseudo(t * k, 2 + t as u32);
            let cases = [
                (Matrix::from_f32(n, k, w.clone()), w.clone()),
                (
                    Matrix {
                        rows: n,
                        cols: k,
                        data: WeightData::BF16(Buf::owned(bf.clone())),
                    },
                    wb.clone(),
                ),
                (
                    Matrix {
                        rows: n,
                        cols: k,
                        data: WeightData::F16(Buf::owned(hf.clone())),
                    },
                    wh.clone(),
                ),
            ];
            for (m, dense) in cases {
                let mut y = vec![0f32; t * n];
                matmul(&x, t, &m, &mut y);
                let want = naive(&x, t, &dense, n, k);
                for (a, b) in y.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "{} {a} vs {b}", m.format_name());
                }
            }
            // bf16-fast: the same weights times the activations rounded to bf16, whose products
            // are exact in f32, so only the summation order differs from the naive sum
            let fast = Matrix {
                rows: n,
                cols: k,
                data: WeightData::BF16Fast(Buf::owned(bf.clone())),
            };
            let xr: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
            let mut y = vec![0f32; t * n];
            matmul(&x, t, &fast, &mut y);
            for (a, b) in y.iter().zip(&naive(&xr, t, &wb, n, k)) {
                assert!((a - b).abs() < 1e-5, "bf16-fast {a} vs {b}");
            }
            // and the rounding is really applied: it moves some outputs by more than that
            let exact = naive(&x, t, &wb, n, k);
            assert!(y.iter().zip(&exact).any(|(a, b)| (a - b).abs() > 1e-4));
        }
    }

    #[test]
    fn bf16_and_bf16_fast_retag_the_same_bytes() {
        let m = Matrix {
            rows: 2,
            cols: 3,
            data: WeightData::BF16(Buf::owned(vec![bf16::ONE; 6])),
        };
        let ptr = |m: &Matrix| match &m.data {
            WeightData::BF16(b) | WeightData::BF16Fast(b) => b.as_slice().as_ptr(),
            _ => unreachable!(),
        };
        let before = ptr(&m);
        let fast = m.retag(Format::Bf16Fast).ok().unwrap();
        assert_eq!((fast.format_name(), ptr(&fast)), ("bf16-fast", before));
        let back = fast.retag(Format::Bf16).ok().unwrap();
        assert_eq!((back.format_name(), ptr(&back)), ("bf16", before));
        // a real conversion is not a retag
        assert!(back.retag(Format::Q8_0).is_err());
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (n, t) = (301, 7);
        let bf = |k: usize| Matrix {
            rows: n,
            cols: k,
            data: WeightData::BF16(Buf::owned(
                pseudo(n * k, 5)
                    .iter()
                    .map(|&v| bf16::from_f32(v))
                    .collect(),
            )),
        };
        // 130 columns exercise the bf16 tails; 224 = 7 blocks of 32 leave partial groups in
        // the integer kernels of both block formats
        let cases = [
            bf(130),
            bf(224),
            bf(224).convert(Format::Q8_0).unwrap(),
            bf(224).convert(Format::Q4_0).unwrap(),
            bf(130).retag(Format::Bf16Fast).ok().unwrap(),
        ];
        for m in &cases {
            let k = m.cols;
            let x = pseudo(t * k, 6);
            let run = |threads: usize, tok: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut y = vec![0f32; tok * n];
                pool.install(|| matmul(&x[..tok * k], tok, m, &mut y));
                y
            };
            for tok in [1, t] {
                assert_eq!(run(1, tok), run(2, tok), "{}", m.format_name());
                assert_eq!(run(1, tok), run(3, tok), "{}", m.format_name());
            }
            // a token gets the same bits alone as inside a batch of seven
            let alone = run(2, 1);
            assert_eq!(alone[..], run(2, t)[..n], "{}", m.format_name());
        }
    }

    #[test]
    fn formats_parse_by_name_and_unknown_names_are_none() {
        assert_eq!(Format::parse("int4"), Some(Format::Q4_0));
        assert_eq!(Format::parse("q8_0"), Some(Format::Q8_0));
        assert_eq!(Format::parse("bf16-fast"), Some(Format::Bf16Fast));
        assert_eq!(Format::parse("fp4"), None);
        assert_eq!(Format::parse(""), None);
    }

    #[test]
    fn fp8_products_equal_products_of_the_decoded_weights() {
        // Every finite code (NaN codes 0x7f and 0xff left out), blocks the SIMD kernels take
        // (16 columns on AVX-512; 32 and 128 also on AVX2; partial at the edges) and one they do
        // not (3 columns); 1, 3 and 6 tokens go through the single-row dots and the 4x4 tiles.
        for (n, k, br, bc) in [
            (9usize, 77usize, 4usize, 16usize),
            (6, 300, 4, 128),
            (7, 100, 3, 32),
            (5, 7, 2, 3),
        ] {
            let codes: Vec<u8> = (0..n * k)
                .map(|i| (i * 37 % 256) as u8)
                .map(|c| if c & 0x7f == 0x7f { 0x3a } else { c })
                .collect();
            let blocks = n.div_ceil(br) * k.div_ceil(bc);
            let scales: Vec<f32> = (0..blocks).map(|i| 1e-3 * (1.0 + i as f32 / 3.0)).collect();
            let m = Matrix {
                rows: n,
                cols: k,
                data: WeightData::Fp8Block {
                    codes: Buf::owned(codes),
                    scale_inv: scales,
                    block_rows: br,
                    block_cols: bc,
                },
            };
            let dense = Matrix::from_f32(n, k, m.to_f32());
            for t in [1usize, 3, 6] {
                let x = pseudo(t * k, 5 + t as u32);
                let (mut y, mut want) = (vec![0f32; t * n], vec![0f32; t * n]);
                matmul(&x, t, &m, &mut y);
                matmul(&x, t, &dense, &mut want);
                for (a, b) in y.iter().zip(&want) {
                    // AVX2 sums FP8 rows whose blocks are not a multiple of 32 wide portably,
                    // in another order than its f32 dot
                    if simd::isa() == simd::Isa::Avx2 && bc % 32 != 0 {
                        assert!((a - b).abs() < 1e-5, "{k}x{bc} t={t}: {a} vs {b}");
                    } else {
                        assert_eq!(a.to_bits(), b.to_bits(), "{k}x{bc} t={t}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn mxfp4_products_read_in_place_equal_the_decoded_matrix() {
        // every code in every nibble; 1, 3 and 6 tokens
        for (n, k) in [(9usize, 64usize), (5, 96), (17, 32)] {
            let codes: Vec<u8> = (0..n * k / 2).map(|i| (i * 53 % 256) as u8).collect();
            // scales from 2^-9 to 2^3, and the extremes the exponent trick leaves to a multiply
            let scales: Vec<u8> = (0..n * k / 32)
                .map(|i| match i % 17 {
                    15 => 2,
                    16 => 1,
                    j => 118 + j as u8,
                })
                .collect();
            let m = Matrix {
                rows: n,
                cols: k,
                data: WeightData::Fp4 {
                    codes: Buf::owned(codes.clone()),
                    scales: Buf::owned(scales.clone()),
                },
            };
            let decoded = m.to_f32();
            for (j, v) in decoded.iter().enumerate() {
                let (r, c) = (j / k, j % k);
                let code = codes[(r * k + c) / 2] >> (4 * (c % 2)) & 15;
                let want =
                    crate::fp4::E2M1[code as usize] * crate::fp4::e8m0(scales[(r * k + c) / 32]);
                assert_eq!(v.to_bits(), want.to_bits());
            }
            let dense = Matrix::from_f32(n, k, decoded);
            for t in [1usize, 3, 6] {
                let x = pseudo(t * k, 9 + t as u32);
                let (mut y, mut want) = (vec![0f32; t * n], vec![0f32; t * n]);
                matmul(&x, t, &m, &mut y);
                matmul(&x, t, &dense, &mut want);
                for (a, b) in y.iter().zip(&want) {
                    // AVX-512 sums the same exact products in another lane order than the f32
                    // tile; elsewhere the in-order tiles give the decoded matrix's very bits
                    if simd::fp4_lanes_available() {
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "{n}x{k} t={t}: {a} vs {b}"
                        );
                    } else {
                        assert_eq!(a.to_bits(), b.to_bits(), "{n}x{k} t={t}: {a} vs {b}");
                    }
                }
                // each token gets the same bits alone as in the batch
                for j in 0..t {
                    let mut alone = vec![0f32; n];
                    matmul(&x[j * k..(j + 1) * k], 1, &m, &mut alone);
                    assert_eq!(alone, y[j * n..(j + 1) * n], "{n}x{k} t={t} token {j}");
                }
            }
        }
    }

    #[test]
    fn fp8_blocks_with_partial_edges_dequantize_by_multiplying() {
        // 5 x 7 matrix in 2 x 3 blocks: 3 x 3 blocks, the last row and column blocks partial.
        let (n, k, br, bc) = (5, 7, 2, 3);
        let codes: Vec<u8> = (0..n * k).map(|i| (i * 7 % 120) as u8).collect();
        let scales: Vec<f32> = (0..9).map(|i| 0.5 + i as f32).collect();
        let m = Matrix {
            rows: n,
            cols: k,
            data: WeightData::Fp8Block {
                codes: Buf::owned(codes.clone()),
                scale_inv: scales.clone(),
                block_rows: br,
                block_cols: bc,
            },
        };
        let dense = m.to_f32();
        for r in 0..n {
            for c in 0..k {
                let want = fp8::e4m3_to_f32(codes[r * k + c]) * scales[(r / br) * 3 + c / bc];
                assert_eq!(dense[r * k + c], want);
            }
        }
    }
}
