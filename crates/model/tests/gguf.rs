//! GGUF files as llama.cpp writes them: ggml's block formats decoded bit for bit as the `gguf`
//! Python package decodes them (testdata/ggml, made by tools/make_ggml_references.py).

use safetensors::SafeTensors;
use std::path::PathBuf;
use whale_kernels::ggml::{dequantize, GgmlType};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/ggml")
            .join(name),
    )
    .unwrap()
}

#[test]
fn every_format_decodes_to_the_gguf_packages_bits() {
    let bytes = data("dequantize.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for t in GgmlType::ALL {
        let blocks = st.tensor(&format!("{}.blocks", t.name())).unwrap();
        let want: Vec<f32> = st
            .tensor(&format!("{}.values", t.name()))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(want.len() >= 300, "{}", t.name());
        let mut got = vec![0f32; want.len()];
        dequantize(t, blocks.data(), &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{} value {i}: {g} vs {w}",
                t.name()
            );
        }
    }
}

mod file {
    use super::*;
    use proptest::prelude::*;
    use whale_model::gguf::{write, Gguf, Meta};

    /// A small GGUF: metadata of each kind, a Q4_K, a Q8_0 and an F16 tensor from the
    /// reference blocks.
    fn sample(dir: &std::path::Path) -> std::path::PathBuf {
        let bytes = data("dequantize.safetensors");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let q4k = st.tensor("Q4_K.blocks").unwrap().data().to_vec(); // 12 blocks
        let q8 = st.tensor("Q8_0.blocks").unwrap().data().to_vec();
        let f16 = st.tensor("F16.blocks").unwrap().data().to_vec();
        let p = dir.join("m.gguf");
        write(
            &p,
            &[
                ("general.architecture", Meta::Str("llama".into())),
                ("general.name", Meta::Str("tiny".into())),
                ("llama.block_count", Meta::U32(2)),
                ("llama.rope.freq_base", Meta::F32(10000.0)),
                (
                    "tokenizer.ggml.tokens",
                    Meta::Strs(vec!["a".into(), "b".into()]),
                ),
            ],
            &[
                ("blk.0.ffn_down.weight", GgmlType::Q4_K, vec![3, 1024], &q4k),
                ("blk.0.attn_q.weight", GgmlType::Q8_0, vec![4, 96], &q8),
                (
                    "token_embd.weight",
                    GgmlType::F16,
                    vec![10, 30],
                    &f16[..600],
                ),
            ],
        )
        .unwrap();
        p
    }

    #[test]
    fn tensors_and_metadata_come_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let g = Gguf::open(&sample(dir.path())).unwrap();
        assert_eq!(g.string("general.architecture").unwrap(), "llama");
        assert_eq!(g.uint("llama.block_count").unwrap(), 2);
        assert_eq!(g.float("llama.rope.freq_base").unwrap(), 10000.0);
        let t = g.tensor("blk.0.ffn_down.weight").unwrap();
        assert_eq!(
            (t.ty, t.shape.clone(), t.len),
            (GgmlType::Q4_K, vec![3, 1024], 12 * 144)
        );
        let bytes = data("dequantize.safetensors");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(
            g.bytes("blk.0.ffn_down.weight").unwrap(),
            st.tensor("Q4_K.blocks").unwrap().data()
        );
        assert_eq!(g.tensor("token_embd.weight").unwrap().shape, vec![10, 30]);
        // typed reads name the key
        let e = g.uint("general.name").unwrap_err().to_string();
        assert!(e.contains("general.name") && e.contains("integer"), "{e}");
        let e = g.string("llama.context_length").unwrap_err().to_string();
        assert!(
            e.contains("llama.context_length") && e.contains("missing"),
            "{e}"
        );
        assert_eq!(g.by_type().len(), 3);
    }

    #[test]
    fn damaged_files_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = sample(dir.path());
        let good = std::fs::read(&p).unwrap();
        let err = |bytes: &[u8]| {
            let q = dir.path().join("bad.gguf");
            std::fs::write(&q, bytes).unwrap();
            let e = format!("{:#}", Gguf::open(&q).err().expect("refused"));
            assert_eq!(e.lines().count(), 1, "{e}");
            e
        };
        // the data cut short: the last tensor runs past the end
        let e = err(&good[..good.len() - 700]);
        assert!(e.contains("past the end"), "{e}");
        // not GGUF, an unknown version
        assert!(err(b"GGML\x03\x00\x00\x00").contains("GGUF"));
        let mut v = good.clone();
        v[4] = 9;
        assert!(err(&v).contains("version"));
        // a ggml type whale does not read (IQ2_XXS is 16)
        // (the type follows the name, the dimension count and two u64 dimensions)
        let name = b"blk.0.ffn_down.weight";
        let at = good.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 16;
        assert_eq!(good[at..at + 4], 12u32.to_le_bytes());
        let mut t = good.clone();
        t[at..at + 4].copy_from_slice(&16u32.to_le_bytes());
        assert!(err(&t).contains("16"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The header reader never panics on damaged bytes.
        #[test]
        fn damaged_headers_never_panic(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..6), cut in 0usize..2000) {
            let dir = tempfile::tempdir().unwrap();
            let mut bytes = std::fs::read(sample(dir.path())).unwrap();
            for (i, b) in flips {
                let i = i % bytes.len();
                bytes[i] = b;
            }
            bytes.truncate(bytes.len().saturating_sub(cut));
            let q = dir.path().join("f.gguf");
            std::fs::write(&q, &bytes).unwrap();
            let _ = Gguf::open(&q);
        }
    }
}

mod models {
    use std::path::{Path, PathBuf};
    use whale_kernels::ggml::GgmlType;
    use whale_model::{gguf, AttentionForm, Checkpoint, Format, Logits, Model};

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/fixtures")
            .join(name)
    }

    fn logits(ck: &Checkpoint) -> Vec<f32> {
        let m = Model::load(ck).unwrap();
        let ids: Vec<u32> = (3..40).collect();
        let mut cache = m.new_cache(ids.len());
        m.forward(&ids, &mut cache, AttentionForm::Plain, Logits::All)
            .unwrap()
    }

    /// tiny-llama without its llama3 rope scaling (which llama.cpp keeps as a tensor of its own)
    pub fn plain_llama(dir: &Path) -> PathBuf {
        let out = dir.join("llama");
        std::fs::create_dir_all(&out).unwrap();
        for e in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
        }
        let p = out.join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        c.as_object_mut().unwrap().remove("rope_scaling");
        std::fs::write(&p, c.to_string()).unwrap();
        out
    }

    /// A checkpoint written as GGUF by whale and read back computes what the checkpoint does:
    /// the same bits from F32 / F16 / BF16 files (llama's q and k rows permuted as llama.cpp
    /// permutes them, and put back), and from Q8_0 the very blocks `--dtype int8` makes.
    #[test]
    fn dense_checkpoints_round_trip_through_gguf() {
        let tmp = tempfile::tempdir().unwrap();
        let llama = plain_llama(tmp.path());
        // (each in a type that holds its stored values exactly: tiny-llama is f16)
        for (src, ty) in [
            (fixture("tiny-qwen2"), GgmlType::BF16),
            (fixture("tiny-qwen3"), GgmlType::F32),
            (llama.clone(), GgmlType::F16),
            (llama.clone(), GgmlType::F32),
        ] {
            let ck = Checkpoint::open(&src).unwrap();
            let file = tmp.path().join(format!("m-{}.gguf", ty.name()));
            gguf::export(&ck, &file, ty).unwrap();
            let back = Checkpoint::open(&file).unwrap();
            assert_eq!(back.config.model_type, ck.config.model_type);
            let (a, b) = (logits(&ck), logits(&back));
            let same = a
                .iter()
                .zip(&b)
                .filter(|(x, y)| x.to_bits() == y.to_bits())
                .count();
            assert_eq!(
                (a.len(), same),
                (b.len(), a.len()),
                "{} {}",
                src.display(),
                ty.name()
            );
        }
        // Q8_0: the linear layers are the blocks whale's own int8 conversion makes
        let src = fixture("tiny-qwen2");
        let mut ck = Checkpoint::open(&src).unwrap();
        let file = tmp.path().join("m-q8.gguf");
        gguf::export(&ck, &file, GgmlType::Q8_0).unwrap();
        let back = Model::load(&Checkpoint::open(&file).unwrap()).unwrap();
        ck.dtype = Some(Format::Q8_0);
        let converted = Model::load(&ck).unwrap();
        for l in 0..back.layers.len() {
            let (a, b) = (
                back.layers[l].self_attn.o_proj(),
                converted.layers[l].self_attn.o_proj(),
            );
            assert_eq!(a.format(), Some(Format::Q8_0));
            assert_eq!(a.data_bytes(), b.data_bytes(), "layer {l}");
        }
        // llama3 scaling is refused on the way out, with the reason
        let e = gguf::export(
            &Checkpoint::open(&fixture("tiny-llama")).unwrap(),
            &file,
            GgmlType::F32,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("llama3"), "{e}");
    }
}

/// GGUF files written by llama.cpp's own converter (testdata/gguf, made by
/// tools/make_gguf_references.py from the fixtures): F32 files give the checkpoint's logits bit
/// for bit; the Q8_0 blocks llama.cpp writes are the very blocks whale's int8 conversion makes.
mod llama_cpp_files {
    use std::path::PathBuf;
    use whale_model::{AttentionForm, Checkpoint, Format, Logits, Model};

    fn data(path: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata")
            .join(path)
    }

    fn logits(m: &Model) -> Vec<f32> {
        let ids: Vec<u32> = (3..60).collect();
        let mut cache = m.new_cache(ids.len());
        m.forward(&ids, &mut cache, AttentionForm::Plain, Logits::All)
            .unwrap()
    }

    #[test]
    fn llama_cpp_ggufs_compute_what_their_checkpoints_do() {
        let tmp = tempfile::tempdir().unwrap();
        // the llama case: tiny-llama without its llama3 rope scaling (llama.cpp's q and k rows
        // are permuted; whale puts them back)
        let plain = super::models::plain_llama(tmp.path());
        for case in ["tiny-qwen2", "tiny-qwen3", "tiny-llama-plain"] {
            let dir = if case == "tiny-llama-plain" {
                plain.clone()
            } else {
                data(&format!("fixtures/{case}"))
            };
            let src = Checkpoint::open(&dir).unwrap();
            let want = logits(&Model::load(&src).unwrap());
            let f32 = Checkpoint::open(&data(&format!("gguf/{case}-F32.gguf"))).unwrap();
            assert_eq!(f32.config, src.config, "{case}");
            assert_eq!(logits(&Model::load(&f32).unwrap()), want, "{case}");
            // Q8_0 where the rows are whole blocks (llama.cpp writes the rest in F16)
            let q8 =
                Model::load(&Checkpoint::open(&data(&format!("gguf/{case}-Q8_0.gguf"))).unwrap())
                    .unwrap();
            let mut conv = Checkpoint::open(&dir).unwrap();
            conv.dtype = Some(Format::Q8_0);
            let conv = Model::load(&conv).unwrap();
            let mut blocks = 0;
            for (a, b) in q8.layers.iter().zip(&conv.layers) {
                let (a, b) = (a.self_attn.o_proj(), b.self_attn.o_proj());
                if a.format() == Some(Format::Q8_0) {
                    assert_eq!(a.data_bytes(), b.data_bytes(), "{case}");
                    blocks += 1;
                }
            }
            assert!(
                case != "tiny-qwen2" || blocks == q8.layers.len(),
                "{case}: {blocks}"
            );
            let got = logits(&q8);
            assert!(got.iter().all(|v| v.is_finite()));
            let err = got
                .iter()
                .zip(&want)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            eprintln!("{case}: {blocks} Q8_0 o_proj matrices equal whale's; largest logit change {err:.4}");
        }
    }
}

/// A metadata key whale does not read, or a head shape it does not run, is refused by its key
/// rather than dropped.
#[test]
fn unread_or_unsupported_metadata_is_refused_by_name() {
    use whale_model::gguf::{write, Gguf, Meta};
    let dir = tempfile::tempdir().unwrap();
    let base = |extra: Vec<(&'static str, Meta)>| {
        let mut m = vec![
            ("general.architecture", Meta::Str("qwen2".into())),
            ("qwen2.context_length", Meta::U32(64)),
            ("qwen2.embedding_length", Meta::U32(64)),
            ("qwen2.block_count", Meta::U32(1)),
            ("qwen2.feed_forward_length", Meta::U32(128)),
            ("qwen2.attention.head_count", Meta::U32(4)),
            ("qwen2.attention.layer_norm_rms_epsilon", Meta::F32(1e-6)),
            ("qwen2.vocab_size", Meta::U32(384)),
        ];
        m.extend(extra);
        let p = dir.path().join("h.gguf");
        write(&p, &m, &[]).unwrap();
        Gguf::open(&p).unwrap().hub_config()
    };
    assert!(base(vec![]).is_ok());
    for (extra, key) in [
        (
            vec![("qwen2.attention.sliding_window", Meta::U32(8))],
            "qwen2.attention.sliding_window",
        ),
        (
            vec![("qwen2.rope.dimension_count", Meta::U32(8))],
            "qwen2.rope.dimension_count",
        ),
        (
            vec![("qwen2.attention.value_length", Meta::U32(32))],
            "qwen2.attention.value_length",
        ),
    ] {
        let e = base(extra).unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
}
