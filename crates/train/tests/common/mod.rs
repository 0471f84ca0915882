#![allow(dead_code)]
use whale_model::ModelConfig;

/// A V3-shaped config small enough for finite differences: q and kv compression, 4 experts in
/// 2 groups (keep 1), top-2, a shared expert, a dense first layer, one MTP module.
pub fn tiny_config(vocab: usize) -> ModelConfig {
    ModelConfig::from_json(&serde_json::json!({
        "model_type": "deepseek_v3", "vocab_size": vocab, "hidden_size": 16,
        "intermediate_size": 24, "moe_intermediate_size": 8, "num_hidden_layers": 2,
        "num_attention_heads": 2, "q_lora_rank": 8, "kv_lora_rank": 8, "qk_nope_head_dim": 4,
        "qk_rope_head_dim": 4, "v_head_dim": 4, "n_routed_experts": 4, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
        "first_k_dense_replace": 1, "moe_layer_freq": 1, "num_nextn_predict_layers": 1,
        "max_position_embeddings": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "bos_token_id": 0, "eos_token_id": 1
    }))
    .unwrap()
}
