//! CPU kernels for whale. Nothing here knows about DeepSeek or any model: these are
//! products of f32 activations with weight matrices stored in the formats that real
//! checkpoints ship (f32, f16, bf16, float8_e4m3fn with block scales, MXFP4), plus the small
//! elementwise operations a transformer needs.
//!
//! Hand-written rather than taken from a tensor crate because the formats we must read
//! without conversion (FP8 128x128 blocks, memory-mapped bf16) and the decode-time
//! memory-bandwidth target need control over how each weight byte is read exactly once.

pub mod arena;
pub mod attention;
pub mod bdot;
pub mod buf;
pub mod fp4;
pub mod fp8;
pub mod ggml;
pub mod guided;
pub mod matrix;
pub mod ops;
pub mod probe;
pub mod qdot;
pub mod qdot_avx2;
pub mod quant;
pub mod simd;
pub mod vexp;

pub use buf::Buf;
pub use matrix::{matmul, matmul_batch, Format, Matrix, Product, WeightData};
