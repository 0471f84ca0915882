//! Generation on top of `whale-model`: the checkpoint's tokenizer and chat template, sampling,
//! incremental detokenisation, stop strings, and the split of streamed text into reasoning
//! (before `</think>`) and answer; grammar-constrained decoding; tool-call parsing.

pub mod draft;
pub mod generate;
pub mod grammar;
pub mod native_chat;
pub mod pyjson;
pub mod reasoning;
pub mod sampler;
pub mod stream;
pub mod tiktoken;
pub mod tokenizer;
pub mod tools;

pub use generate::{
    Drafter, Engine, FinishReason, GenerateParams, Generation, MtpDrafter, SpecStats,
};
pub use reasoning::{Part, ReasoningSplitter};
pub use sampler::{Sampler, SamplingParams};
pub use tokenizer::{ChatTokenizer, Message};
