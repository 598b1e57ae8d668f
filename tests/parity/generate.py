#!/usr/bin/env python3
"""Generate kiln's parity fixtures: tiny seeded random-weight HF transformers models + their outputs.

For every family listed in FAMILIES this builds a tiny model from a config (no model hub needed),
re-initialises EVERY parameter/buffer with non-trivial random values (norm weights ~U(0.5, 1.5),
biases ~N(0, 0.2), matrices ~N(0, 1/sqrt(fan_in)) -- HF would set norms to 1/0 and biases to 0, which
would hide bias/norm bugs), saves it with `save_pretrained` (config.json + model.safetensors), and
writes the reference outputs to expected.safetensors plus meta.json and tensors.txt:

    tests/parity/fixtures/<family>/{config.json, model.safetensors, expected.safetensors, meta.json, tensors.txt}

Every fixture is validated before it is written:
  * logits_incremental (prefill first half, then one token at a time with the KV cache) must equal the
    full-sequence logits within 1e-5 * max(1, max|logits| / 10) (decoders and seq2seq decoders);
  * the saved directory is re-loaded with `from_pretrained` and must reproduce the outputs bit-for-bit
    (within 1e-6), i.e. config.json + model.safetensors fully determine the model.

usage (see tests/parity/README.md):
    HF_HUB_OFFLINE=1 /work/venv-parity/bin/python tests/parity/generate.py [family ...]
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures"

SEQ = 10  # test sequence length (batch 1)
PAD_LEN = 6  # real length of the second (right-padded) row of the batch-2 encoder case
DEC_SEQ = 6  # decoder length for seq2seq
INCR_TOL = 1e-5
RELOAD_TOL = 1e-6

torch.set_num_threads(1)  # deterministic reductions, and the cores are busy anyway
transformers.utils.logging.disable_progress_bar()


# --------------------------------------------------------------------------------------------------
# family definitions
# --------------------------------------------------------------------------------------------------

def fam_bert():
    cfg = transformers.BertConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, type_vocab_size=2,
        hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return transformers.BertModel, cfg, "encoder", {"pooler": True}


def fam_roberta():
    # max_position_embeddings includes RoBERTa's padding_idx+1 = 2 offset (like roberta-base's 514)
    cfg = transformers.RobertaConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=66, type_vocab_size=1,
        hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return transformers.RobertaModel, cfg, "encoder", {"pooler": True}


def fam_distilbert():
    cfg = transformers.DistilBertConfig(
        vocab_size=256, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64,
        activation="gelu", sinusoidal_pos_embds=False, pad_token_id=0, dropout=0.0, attention_dropout=0.0,
    )
    return transformers.DistilBertModel, cfg, "encoder", {"pooler": False}


def fam_gpt2():
    cfg = transformers.GPT2Config(
        vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=64,
        activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel, cfg, "decoder", {}


def fam_gpt_neox():
    cfg = transformers.GPTNeoXConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, hidden_act="gelu",
        rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
        layer_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=True,
        hidden_dropout=0.0, attention_dropout=0.0,
    )
    return transformers.GPTNeoXForCausalLM, cfg, "decoder", {"rot_dims": 4}


def fam_llama():
    cfg = transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
        hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=None,
    )
    return transformers.LlamaForCausalLM, cfg, "decoder", {"rot_dims": 16}


def fam_mistral():
    cfg = transformers.MistralConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
        hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        sliding_window=4,
    )
    return transformers.MistralForCausalLM, cfg, "decoder", {"rot_dims": 16}


def fam_mixtral():
    cfg = transformers.MixtralConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
        hidden_act="silu", rms_norm_eps=1e-5, rope_theta=1e6, tie_word_embeddings=False,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=None, router_jitter_noise=0.0,
    )
    return transformers.MixtralForCausalLM, cfg, "decoder", {"rot_dims": 16, "moe": True}


def fam_qwen2():
    cfg = transformers.Qwen2Config(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
        hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
        use_sliding_window=False,
    )
    return transformers.Qwen2ForCausalLM, cfg, "decoder", {"rot_dims": 16}


def fam_gemma():
    # head_dim 16 != hidden/heads (32/4 = 8), MQA like gemma-2b
    cfg = transformers.GemmaConfig(
        vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, intermediate_size=128, max_position_embeddings=64,
        hidden_activation="gelu_pytorch_tanh", hidden_act="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    return transformers.GemmaForCausalLM, cfg, "decoder", {"rot_dims": 16}


def fam_gemma2():
    # query_pre_attn_scalar 24 deliberately != head_dim 16 so a scale bug cannot hide
    cfg = transformers.Gemma2Config(
        vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=64,
        hidden_activation="gelu_pytorch_tanh", hidden_act="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
        query_pre_attn_scalar=24, sliding_window=4,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    return transformers.Gemma2ForCausalLM, cfg, "decoder", {"rot_dims": 16}


def fam_phi():
    # head_dim 20, partial_rotary_factor 0.4 -> 8 rotary dims per head
    cfg = transformers.PhiConfig(
        vocab_size=256, hidden_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=128, max_position_embeddings=64,
        hidden_act="gelu_new", layer_norm_eps=1e-5, rope_theta=10000.0, partial_rotary_factor=0.4,
        tie_word_embeddings=False, qk_layernorm=False,
        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
    )
    return transformers.PhiForCausalLM, cfg, "decoder", {"rot_dims": 8}


def fam_t5():
    # T5 v1.0 style: ReLU FFN, lm_head tied to `shared`, decoder output scaled by d_model^-0.5
    cfg = transformers.T5Config(
        vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
        feed_forward_proj="relu", layer_norm_epsilon=1e-6, tie_word_embeddings=True,
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return transformers.T5ForConditionalGeneration, cfg, "seq2seq", {"tied_lm_head": True}


def fam_t5_gated():
    # T5 v1.1 style: gated-gelu (GeGLU with tanh GELU) FFN, separate lm_head, no output scaling
    cfg = transformers.T5Config(
        vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False,
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return transformers.T5ForConditionalGeneration, cfg, "seq2seq", {"tied_lm_head": False}


def fam_bart():
    cfg = transformers.BartConfig(
        vocab_size=256, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64,
        activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        forced_bos_token_id=None, forced_eos_token_id=None,
    )
    return transformers.BartForConditionalGeneration, cfg, "seq2seq", {"tied_lm_head": True}


# ---- families added with the data-file importer (issue 16): odd sizes on purpose -----------------
# Decoders: d 48, 6 query heads (not a power of two), GQA where the family has it, head_dim decoupled
# where the config allows it, untied heads where the family allows them.

def _enc_kw(**kw):
    base = dict(vocab_size=256, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                intermediate_size=80, max_position_embeddings=64, hidden_act="gelu",
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base.update(kw)
    return base


def fam_bert_mlm():
    cfg = transformers.BertConfig(**_enc_kw(type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0))
    return transformers.BertForMaskedLM, cfg, "mlm", {}


def fam_roberta_mlm_untied():
    # untied: lm_head.decoder.weight / lm_head.decoder.bias are saved and differ from the embedding /
    # lm_head.bias (transformers uses the decoder's own bias then)
    cfg = transformers.RobertaConfig(**_enc_kw(max_position_embeddings=66, type_vocab_size=1, layer_norm_eps=1e-5,
                                               pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                               tie_word_embeddings=False))
    return transformers.RobertaForMaskedLM, cfg, "mlm", {}


def fam_xlm_roberta():
    cfg = transformers.XLMRobertaConfig(**_enc_kw(max_position_embeddings=66, type_vocab_size=1, layer_norm_eps=1e-5,
                                                  pad_token_id=1, bos_token_id=0, eos_token_id=2))
    return transformers.XLMRobertaForMaskedLM, cfg, "mlm", {}


def fam_camembert():
    cfg = transformers.CamembertConfig(**_enc_kw(max_position_embeddings=66, type_vocab_size=1, layer_norm_eps=1e-5,
                                                 pad_token_id=1, bos_token_id=5, eos_token_id=6))
    return transformers.CamembertForMaskedLM, cfg, "mlm", {}


def fam_distilbert_mlm():
    cfg = transformers.DistilBertConfig(
        vocab_size=256, dim=48, n_layers=2, n_heads=3, hidden_dim=80, max_position_embeddings=64,
        activation="gelu", sinusoidal_pos_embds=False, pad_token_id=0, dropout=0.0, attention_dropout=0.0,
    )
    return transformers.DistilBertForMaskedLM, cfg, "mlm", {}


def fam_megatron_bert():
    cfg = transformers.MegatronBertConfig(**_enc_kw(type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0))
    return transformers.MegatronBertForMaskedLM, cfg, "mlm", {}


def fam_roberta_prelayernorm():
    cfg = transformers.RobertaPreLayerNormConfig(**_enc_kw(max_position_embeddings=66, type_vocab_size=2,
                                                           layer_norm_eps=1e-5, pad_token_id=1,
                                                           bos_token_id=0, eos_token_id=2))
    return transformers.RobertaPreLayerNormForMaskedLM, cfg, "mlm", {}


def _dec_kw(**kw):
    base = dict(vocab_size=256, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                num_key_value_heads=2, intermediate_size=80, max_position_embeddings=64,
                hidden_act="silu", tie_word_embeddings=False)
    base.update(kw)
    return base


def fam_qwen3():
    cfg = transformers.Qwen3Config(**_dec_kw(head_dim=10, rms_norm_eps=1e-6, rope_theta=1e6,
                                             attention_bias=False, use_sliding_window=False))
    return transformers.Qwen3ForCausalLM, cfg, "decoder", {"rot_dims": 10}


def fam_ministral():
    cfg = transformers.MinistralConfig(**_dec_kw(num_hidden_layers=3, head_dim=8, rms_norm_eps=1e-5, rope_theta=1e4,
                                                 sliding_window=4,
                                                 layer_types=["sliding_attention", "full_attention", "sliding_attention"]))
    return transformers.MinistralForCausalLM, cfg, "decoder", {"rot_dims": 8}


def fam_seed_oss():
    cfg = transformers.SeedOssConfig(**_dec_kw(head_dim=10, rms_norm_eps=1e-6, rope_theta=1e4,
                                               attention_bias=True, attention_out_bias=False, mlp_bias=False,
                                               attention_dropout=0.0, residual_dropout=0.0,
                                               pad_token_id=1, bos_token_id=0, eos_token_id=2))
    return transformers.SeedOssForCausalLM, cfg, "decoder", {"rot_dims": 10}


def fam_qwen2_moe():
    # layer 0 dense (mlp_only_layers), layer 1 MoE: 4 experts top-2, NOT renormalised, sigmoid-gated shared expert
    cfg = transformers.Qwen2MoeConfig(**_dec_kw(rms_norm_eps=1e-6, rope_theta=1e6, use_sliding_window=False,
                                                num_experts=4, num_experts_per_tok=2, moe_intermediate_size=40,
                                                shared_expert_intermediate_size=56, norm_topk_prob=False,
                                                decoder_sparse_step=1, mlp_only_layers=[0],
                                                router_jitter_noise=0.0))
    return transformers.Qwen2MoeForCausalLM, cfg, "decoder", {"rot_dims": 8, "moe": True}


def fam_qwen3_moe():
    cfg = transformers.Qwen3MoeConfig(**_dec_kw(head_dim=10, rms_norm_eps=1e-6, rope_theta=1e6,
                                                num_experts=5, num_experts_per_tok=2, moe_intermediate_size=40,
                                                norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[]))
    return transformers.Qwen3MoeForCausalLM, cfg, "decoder", {"rot_dims": 10, "moe": True}


def fam_olmo():
    cfg = transformers.OlmoConfig(**_dec_kw(num_key_value_heads=6, rope_theta=1e4, attention_bias=False,
                                            clip_qkv=None, pad_token_id=1, eos_token_id=2))
    return transformers.OlmoForCausalLM, cfg, "decoder", {"rot_dims": 8}


def fam_stablelm():
    # head_dim 8, partial 0.5 -> 4 rotary dims; q/k/v biases; sequential residual
    cfg = transformers.StableLmConfig(**_dec_kw(layer_norm_eps=1e-5, use_qkv_bias=True, qk_layernorm=False,
                                                use_parallel_residual=False, hidden_dropout=0.0,
                                                rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                                 "partial_rotary_factor": 0.5}))
    return transformers.StableLmForCausalLM, cfg, "decoder", {"rot_dims": 4}


def fam_starcoder2():
    cfg = transformers.Starcoder2Config(**_dec_kw(hidden_act="gelu_pytorch_tanh", norm_epsilon=1e-5,
                                                  rope_theta=1e4, sliding_window=4, use_bias=True,
                                                  residual_dropout=0.0, embedding_dropout=0.0,
                                                  bos_token_id=0, eos_token_id=0))
    return transformers.Starcoder2ForCausalLM, cfg, "decoder", {"rot_dims": 8}


def fam_helium():
    cfg = transformers.HeliumConfig(**_dec_kw(head_dim=8, rms_norm_eps=1e-8, rope_theta=1e5,
                                              attention_bias=False, mlp_bias=False,
                                              pad_token_id=3, eos_token_id=2, bos_token_id=1))
    return transformers.HeliumForCausalLM, cfg, "decoder", {"rot_dims": 8}


def fam_ernie4_5():
    cfg = transformers.Ernie4_5Config(**_dec_kw(head_dim=10, rms_norm_eps=1e-5, rope_theta=5e5, use_bias=False,
                                                pad_token_id=0, bos_token_id=1, eos_token_id=2))
    return transformers.Ernie4_5ForCausalLM, cfg, "decoder", {"rot_dims": 10}


def fam_gpt_neo():
    # global / local layers, window 4; attention NOT scaled by 1/sqrt(head_dim); untied head impossible (tied)
    cfg = transformers.GPTNeoConfig(
        vocab_size=256, hidden_size=48, num_layers=2, num_heads=6, intermediate_size=80,
        max_position_embeddings=64, attention_types=[[["global", "local"], 1]], window_size=4,
        activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0,
    )
    return transformers.GPTNeoForCausalLM, cfg, "decoder", {}


def fam_opt():
    cfg = transformers.OPTConfig(
        vocab_size=256, hidden_size=48, num_hidden_layers=2, ffn_dim=80, num_attention_heads=6,
        max_position_embeddings=64, do_layer_norm_before=True, word_embed_proj_dim=48,
        activation_function="relu", enable_bias=True, layer_norm_elementwise_affine=True,
        dropout=0.0, attention_dropout=0.0, pad_token_id=1, bos_token_id=2, eos_token_id=2,
        tie_word_embeddings=True,
    )
    return transformers.OPTForCausalLM, cfg, "decoder", {}


def fam_biogpt():
    cfg = transformers.BioGptConfig(
        vocab_size=256, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=80,
        hidden_act="gelu", max_position_embeddings=64, layer_norm_eps=1e-12, scale_embedding=True,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, activation_dropout=0.0,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    return transformers.BioGptForCausalLM, cfg, "decoder", {}


def fam_gptj():
    # rotary_dim 4 of head_dim 8, interleaved; one shared ln_1 for the parallel branches; lm_head bias
    cfg = transformers.GPTJConfig(
        vocab_size=256, n_positions=64, n_embd=48, n_layer=2, n_head=6, rotary_dim=4, n_inner=80,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
    )
    return transformers.GPTJForCausalLM, cfg, "decoder", {}


def fam_mt5():
    # mT5: gated-gelu, tied lm_head, and (unlike T5 v1.0) never rescaled before the head
    cfg = transformers.MT5Config(
        vocab_size=256, d_model=48, d_kv=10, d_ff=80, num_layers=2, num_decoder_layers=2,
        num_heads=3, relative_attention_num_buckets=32, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=True,
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return transformers.MT5ForConditionalGeneration, cfg, "seq2seq", {}


def fam_mbart():
    # pre-norm, layernorm_embedding, a final layer_norm in both stacks, scaled embeddings
    cfg = transformers.MBartConfig(
        vocab_size=256, d_model=48, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=3, decoder_attention_heads=3,
        encoder_ffn_dim=80, decoder_ffn_dim=80, max_position_embeddings=64,
        activation_function="gelu", scale_embedding=True, tie_word_embeddings=True,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        forced_bos_token_id=None, forced_eos_token_id=None,
    )
    return transformers.MBartForConditionalGeneration, cfg, "seq2seq", {}


def fam_gpt_bigcode():
    # multi-query attention: c_attn = [q (d) | k (head_dim) | v (head_dim)]
    cfg = transformers.GPTBigCodeConfig(
        vocab_size=256, n_embd=48, n_layer=2, n_head=6, n_inner=80, n_positions=64,
        activation_function="gelu_pytorch_tanh", layer_norm_epsilon=1e-5, multi_query=True,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        scale_attn_weights=True, tie_word_embeddings=True,
    )
    return transformers.GPTBigCodeForCausalLM, cfg, "decoder", {}


def fam_codegen():
    # qkv_proj in 4 model-parallel groups of [q | v | k]; interleaved partial RoPE; parallel block
    cfg = transformers.CodeGenConfig(
        vocab_size=256, n_positions=64, n_ctx=64, n_embd=64, n_layer=2, n_head=8, rotary_dim=4,
        n_inner=80, activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        tie_word_embeddings=False,
    )
    return transformers.CodeGenForCausalLM, cfg, "decoder", {}


def fam_phi3():
    # fused qkv_proj ([q | k | v], GQA) and gate_up_proj ([gate | up]); partial rotary 0.75
    cfg = transformers.Phi3Config(**_dec_kw(rms_norm_eps=1e-5, resid_pdrop=0.0, embd_pdrop=0.0,
                                            attention_dropout=0.0, sliding_window=None,
                                            pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                            rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                             "partial_rotary_factor": 0.75}))
    return transformers.Phi3ForCausalLM, cfg, "decoder", {"rot_dims": 6}


def fam_glm():
    # fused gate_up_proj; interleaved RoPE on half of each head; q/k/v biases
    cfg = transformers.GlmConfig(**_dec_kw(head_dim=8, rms_norm_eps=1e-5, attention_bias=True,
                                           pad_token_id=0, eos_token_id=2, bos_token_id=1,
                                           rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                            "partial_rotary_factor": 0.5}))
    return transformers.GlmForCausalLM, cfg, "decoder", {"rot_dims": 4}


def fam_glm4():
    # glm + sandwich norms (post_self_attn_layernorm, post_mlp_layernorm)
    cfg = transformers.Glm4Config(**_dec_kw(head_dim=8, rms_norm_eps=1e-5, attention_bias=True,
                                            pad_token_id=0, eos_token_id=2, bos_token_id=1,
                                            rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                             "partial_rotary_factor": 0.5}))
    return transformers.Glm4ForCausalLM, cfg, "decoder", {"rot_dims": 4}


def fam_cohere():
    # parallel attention + MLP from one bias-free LayerNorm, interleaved RoPE, logit_scale, tied
    cfg = transformers.CohereConfig(**_dec_kw(layer_norm_eps=1e-5, logit_scale=0.25, use_qk_norm=False,
                                              attention_bias=False, tie_word_embeddings=True,
                                              rope_theta=1e4, pad_token_id=0, bos_token_id=5, eos_token_id=6))
    return transformers.CohereForCausalLM, cfg, "decoder", {"rot_dims": 8}


def fam_falcon():
    # Falcon-7B form: multi-query fused query_key_value, parallel attention + MLP, one norm, RoPE
    cfg = transformers.FalconConfig(
        vocab_size=256, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
        new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False,
        alibi=False, layer_norm_epsilon=1e-5, max_position_embeddings=64, rope_theta=1e4,
        hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0,
        tie_word_embeddings=True,
    )
    return transformers.FalconForCausalLM, cfg, "decoder", {}


def fam_falcon_new():
    # new_decoder_architecture: grouped query_key_value per KV group, ln_attn + ln_mlp, parallel
    cfg = transformers.FalconConfig(
        vocab_size=256, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_kv_heads=2,
        new_decoder_architecture=True, parallel_attn=True, bias=False, alibi=False,
        layer_norm_epsilon=1e-5, max_position_embeddings=64, rope_theta=1e4,
        hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0,
        tie_word_embeddings=False, ffn_hidden_size=80,
    )
    return transformers.FalconForCausalLM, cfg, "decoder", {}


def fam_olmo2():
    # norms on the branch outputs only (post_attention / post_feedforward), full q/k RMSNorm
    cfg = transformers.Olmo2Config(**_dec_kw(rms_norm_eps=1e-6, rope_theta=1e4, attention_bias=False,
                                             pad_token_id=1, eos_token_id=2))
    return transformers.Olmo2ForCausalLM, cfg, "decoder", {"rot_dims": 8}


def fam_arcee():
    # Llama with an ungated relu² MLP
    cfg = transformers.ArceeConfig(**_dec_kw(head_dim=10, hidden_act="relu2", rms_norm_eps=1e-5,
                                             rope_theta=1e4, bos_token_id=1, eos_token_id=2))
    return transformers.ArceeForCausalLM, cfg, "decoder", {"rot_dims": 10}


def fam_persimmon():
    # relu² MLP with biases, per-head [q, k, v] fused query_key_value, shared per-head q/k LayerNorm,
    # partial rotary 0.5
    cfg = transformers.PersimmonConfig(
        vocab_size=256, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=80,
        hidden_act="relu2", max_position_embeddings=64, layer_norm_eps=1e-5, qk_layernorm=True,
        hidden_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 25000.0, "partial_rotary_factor": 0.5},
        pad_token_id=None, bos_token_id=1, eos_token_id=2,
    )
    return transformers.PersimmonForCausalLM, cfg, "decoder", {"rot_dims": 4}


def fam_granite():
    # every multiplier off its neutral value
    cfg = transformers.GraniteConfig(**_dec_kw(rms_norm_eps=1e-6, rope_theta=1e4, attention_bias=False,
                                               embedding_multiplier=3.0, residual_multiplier=0.4,
                                               attention_multiplier=0.2, logits_scaling=2.5,
                                               tie_word_embeddings=True, pad_token_id=0,
                                               bos_token_id=1, eos_token_id=2))
    return transformers.GraniteForCausalLM, cfg, "decoder", {"rot_dims": 8}


def fam_granitemoe():
    cfg = transformers.GraniteMoeConfig(**_dec_kw(rms_norm_eps=1e-6, rope_theta=1e4, attention_bias=False,
                                                  embedding_multiplier=3.0, residual_multiplier=0.4,
                                                  attention_multiplier=0.2, logits_scaling=2.5,
                                                  num_local_experts=4, num_experts_per_tok=2,
                                                  tie_word_embeddings=True, pad_token_id=0,
                                                  bos_token_id=1, eos_token_id=2))
    return transformers.GraniteMoeForCausalLM, cfg, "decoder", {"rot_dims": 8, "moe": True}


def fam_smollm3():
    # every 2nd layer without RoPE (no_rope_layer_interval 2), tied head
    cfg = transformers.SmolLM3Config(**_dec_kw(num_hidden_layers=4, rms_norm_eps=1e-6, rope_theta=1e4,
                                               no_rope_layer_interval=2, use_sliding_window=False,
                                               tie_word_embeddings=True, pad_token_id=0,
                                               bos_token_id=1, eos_token_id=2))
    return transformers.SmolLM3ForCausalLM, cfg, "decoder", {"rot_dims": 8}


def fam_cohere2():
    # Cohere's parallel block; sliding layers (window 4) with RoPE, the full layer without
    cfg = transformers.Cohere2Config(**_dec_kw(num_hidden_layers=3, layer_norm_eps=1e-5, logit_scale=0.25,
                                               sliding_window=4,
                                               layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                               tie_word_embeddings=True, rope_theta=1e4,
                                               pad_token_id=0, bos_token_id=5, eos_token_id=6))
    return transformers.Cohere2ForCausalLM, cfg, "decoder", {"rot_dims": 8}


def fam_exaone4():
    # output-placement norms, per-head q/k RMSNorm, sliding layers with RoPE, the full layer without
    cfg = transformers.Exaone4Config(**_dec_kw(num_hidden_layers=3, rms_norm_eps=1e-5, sliding_window=4,
                                               layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                               rope_theta=1e4, bos_token_id=0, eos_token_id=2))
    return transformers.Exaone4ForCausalLM, cfg, "decoder", {"rot_dims": 8}


def fam_gemma3_text():
    # sandwich (1 + w) norms, per-head q/k norm, local layers (window 4, base 1e4) and a global
    # layer (base 1e6 with linear scaling 2), query_pre_attn_scalar 24, √d embeddings, tied
    cfg = transformers.Gemma3TextConfig(
        vocab_size=256, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
        head_dim=8, intermediate_size=80, max_position_embeddings=64, hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, query_pre_attn_scalar=24, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    return transformers.Gemma3ForCausalLM, cfg, "decoder", {}


def fam_olmo3():
    # OLMo-2's block with sliding layers (window 4) and a full layer
    cfg = transformers.Olmo3Config(**_dec_kw(num_hidden_layers=3, rms_norm_eps=1e-6, sliding_window=4,
                                             layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                             rope_theta=1e4, pad_token_id=1, eos_token_id=2))
    return transformers.Olmo3ForCausalLM, cfg, "decoder", {}


def _s2s_kw(**kw):
    base = dict(vocab_size=256, d_model=48, encoder_layers=2, decoder_layers=2,
                encoder_attention_heads=3, decoder_attention_heads=3,
                encoder_ffn_dim=80, decoder_ffn_dim=80, max_position_embeddings=64,
                dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    base.update(kw)
    return base


def fam_bloom():
    # ALiBi (6 heads: not a power of two), per-head fused query_key_value, embedding LayerNorm
    cfg = transformers.BloomConfig(vocab_size=256, hidden_size=48, n_layer=2, n_head=6,
                                   layer_norm_epsilon=1e-5, hidden_dropout=0.0, attention_dropout=0.0,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return transformers.BloomForCausalLM, cfg, "decoder", {}


def fam_mpt():
    # ALiBi (alibi_bias_max 8, 6 heads), fused Wqkv, LayerNorm without bias, no biases
    cfg = transformers.MptConfig(d_model=48, n_heads=6, n_layers=2, expansion_ratio=4, max_seq_len=64,
                                 vocab_size=256, layer_norm_epsilon=1e-5, no_bias=True,
                                 attn_config={"alibi": True, "alibi_bias_max": 8, "attn_type": "multihead_attention"},
                                 resid_pdrop=0.0, emb_pdrop=0.0, use_cache=True)
    return transformers.MptForCausalLM, cfg, "decoder", {}


def fam_pegasus():
    # pre-norm with final norms, sinusoidal positions ([sin | cos] halves), √d embeddings
    cfg = transformers.PegasusConfig(**_s2s_kw(activation_function="relu", scale_embedding=True,
                                               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                                               forced_eos_token_id=None))
    return transformers.PegasusForConditionalGeneration, cfg, "seq2seq", {}


def fam_marian():
    # post-norm, sinusoidal positions, √d embeddings, final_logits_bias
    cfg = transformers.MarianConfig(**_s2s_kw(activation_function="swish", scale_embedding=True,
                                              pad_token_id=255, eos_token_id=0, decoder_start_token_id=255,
                                              forced_eos_token_id=None))
    return transformers.MarianMTModel, cfg, "seq2seq", {}


def fam_plbart():
    cfg = transformers.PLBartConfig(**_s2s_kw(activation_function="gelu", scale_embedding=True,
                                              pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                              decoder_start_token_id=2, forced_eos_token_id=None))
    return transformers.PLBartForConditionalGeneration, cfg, "seq2seq", {}


def fam_m2m_100():
    # pre-norm, fairseq sinusoidal positions (offset 2, log(10000) / (d/2 - 1) spacing)
    cfg = transformers.M2M100Config(**_s2s_kw(activation_function="relu", scale_embedding=True,
                                              encoder_layerdrop=0.0, decoder_layerdrop=0.0,
                                              pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                              decoder_start_token_id=2))
    return transformers.M2M100ForConditionalGeneration, cfg, "seq2seq", {}


def fam_xglm():
    cfg = transformers.XGLMConfig(vocab_size=256, max_position_embeddings=64, d_model=48, ffn_dim=80,
                                  num_layers=2, attention_heads=6, activation_function="gelu",
                                  dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                  scale_embedding=True, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return transformers.XGLMForCausalLM, cfg, "decoder", {}


def fam_nomic_bert():
    # post-norm BERT with RoPE, SwiGLU, bias-free attention and MLP, embedding LayerNorm
    cfg = transformers.NomicBertConfig(vocab_size=256, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                       intermediate_size=80, hidden_act="silu", max_position_embeddings=64,
                                       type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
                                       rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    return transformers.NomicBertForMaskedLM, cfg, "mlm", {}


def fam_electra():
    # ELECTRA generator: 32-wide embeddings projected to d 48 (embeddings_project), the MLM head
    # back to 32 wide and tied to the word embeddings
    cfg = transformers.ElectraConfig(**_enc_kw(embedding_size=32, type_vocab_size=2, layer_norm_eps=1e-12,
                                               pad_token_id=0))
    return transformers.ElectraForMaskedLM, cfg, "mlm", {}


def fam_albert():
    # ALBERT: 32-wide embeddings, 3 layers sharing one parameter group, gelu_new
    cfg = transformers.AlbertConfig(vocab_size=256, embedding_size=32, hidden_size=48, num_hidden_layers=3,
                                    num_hidden_groups=1, inner_group_num=1, num_attention_heads=3,
                                    intermediate_size=80, hidden_act="gelu_new", max_position_embeddings=64,
                                    type_vocab_size=2, layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0,
                                    pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return transformers.AlbertForMaskedLM, cfg, "mlm", {}


def fam_umt5():
    # UMT5: mT5 with a relative-position bias table in every layer; the head is tied and the
    # decoder output always rescaled by d^-0.5 (transformers forces tie_word_embeddings)
    cfg = transformers.UMT5Config(
        vocab_size=256, d_model=48, d_kv=10, d_ff=80, num_layers=2, num_decoder_layers=2,
        num_heads=3, relative_attention_num_buckets=16, relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return transformers.UMT5ForConditionalGeneration, cfg, "seq2seq", {}


def fam_modernbert():
    # ModernBERT: pre-norm without an attention norm in layer 0, bias-free LayerNorms and
    # projections, fused Wqkv and GeGLU Wi, global layer 0 (base 160000) and local layers 1-2
    # (window |i - j| <= 2, base 10000), an MLM head whose dense has no bias
    cfg = transformers.ModernBertConfig(vocab_size=256, hidden_size=48, intermediate_size=40, num_hidden_layers=3,
                                        num_attention_heads=3, hidden_activation="gelu", max_position_embeddings=64,
                                        norm_eps=1e-5, norm_bias=False, local_attention=4,
                                        global_attn_every_n_layers=3, global_rope_theta=160000.0,
                                        local_rope_theta=10000.0, pad_token_id=0, bos_token_id=1,
                                        eos_token_id=2, cls_token_id=1, sep_token_id=2)
    return transformers.ModernBertForMaskedLM, cfg, "mlm", {}


# Variants shaped as llama.cpp reads their GGUF files (tests/parity/gguf_convert.py converts
# them): where llama.cpp's graph differs from transformers' for a config the base fixture
# deliberately has, a second fixture without that setting — real checkpoints of these families
# do not have it either.
def fam_gemma2_gguf():
    # llama.cpp scales queries by 1/sqrt(head_dim) (query_pre_attn_scalar = head_dim, as in
    # Gemma 2 2B/9B); the 27B's scalar comes from its block count.
    cls, cfg, kind, opts = fam_gemma2()
    cfg.query_pre_attn_scalar = 16
    return cls, cfg, kind, opts


def fam_gemma3_gguf():
    # six layers in llama.cpp's default pattern (five sliding, then global), scalar = head_dim,
    # final soft-cap 30 (which llama.cpp reads; it keeps six layers of logits in f32 range)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=256, hidden_size=48, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
        head_dim=8, intermediate_size=80, max_position_embeddings=64, hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, query_pre_attn_scalar=8, sliding_window=4, final_logit_softcapping=30.0,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    # six sandwich-normed layers with sharp attention: transformers' own KV-cache path drifts
    # ~5e-5 from its full pass here (f32), so that check gets 5x the usual slack
    return transformers.Gemma3ForCausalLM, cfg, "decoder", {"incr_tol": 5e-5}


def fam_starcoder2_gguf():
    # llama.cpp's starcoder2 graph has no sliding window
    cls, cfg, kind, opts = fam_starcoder2()
    cfg.sliding_window = None
    return cls, cfg, kind, opts


def fam_qwen2_moe_gguf():
    # llama.cpp's qwen2moe has experts in every layer (no mlp_only_layers)
    cls, cfg, kind, opts = fam_qwen2_moe()
    cfg.mlp_only_layers = []
    return cls, cfg, kind, opts


FAMILIES = {
    "bert": fam_bert,
    "roberta": fam_roberta,
    "distilbert": fam_distilbert,
    "gpt2": fam_gpt2,
    "gpt_neox": fam_gpt_neox,
    "llama": fam_llama,
    "mistral": fam_mistral,
    "mixtral": fam_mixtral,
    "qwen2": fam_qwen2,
    "gemma": fam_gemma,
    "gemma2": fam_gemma2,
    "phi": fam_phi,
    "t5": fam_t5,
    "t5-gated": fam_t5_gated,
    "bart": fam_bart,
    "bert-mlm": fam_bert_mlm,
    "roberta-mlm-untied": fam_roberta_mlm_untied,
    "xlm-roberta": fam_xlm_roberta,
    "camembert": fam_camembert,
    "distilbert-mlm": fam_distilbert_mlm,
    "megatron-bert": fam_megatron_bert,
    "roberta-prelayernorm": fam_roberta_prelayernorm,
    "qwen3": fam_qwen3,
    "ministral": fam_ministral,
    "seed_oss": fam_seed_oss,
    "qwen2_moe": fam_qwen2_moe,
    "qwen3_moe": fam_qwen3_moe,
    "olmo": fam_olmo,
    "stablelm": fam_stablelm,
    "starcoder2": fam_starcoder2,
    "helium": fam_helium,
    "ernie4_5": fam_ernie4_5,
    "gpt_neo": fam_gpt_neo,
    "opt": fam_opt,
    "biogpt": fam_biogpt,
    "gptj": fam_gptj,
    "mt5": fam_mt5,
    "mbart": fam_mbart,
    "gpt_bigcode": fam_gpt_bigcode,
    "codegen": fam_codegen,
    "phi3": fam_phi3,
    "glm": fam_glm,
    "glm4": fam_glm4,
    "cohere": fam_cohere,
    "falcon": fam_falcon,
    "falcon-new": fam_falcon_new,
    "olmo2": fam_olmo2,
    "arcee": fam_arcee,
    "persimmon": fam_persimmon,
    "granite": fam_granite,
    "granitemoe": fam_granitemoe,
    "smollm3": fam_smollm3,
    "cohere2": fam_cohere2,
    "exaone4": fam_exaone4,
    "gemma3_text": fam_gemma3_text,
    "olmo3": fam_olmo3,
    "bloom": fam_bloom,
    "mpt": fam_mpt,
    "pegasus": fam_pegasus,
    "marian": fam_marian,
    "plbart": fam_plbart,
    "m2m_100": fam_m2m_100,
    "xglm": fam_xglm,
    "nomic_bert": fam_nomic_bert,
    "electra": fam_electra,
    "albert": fam_albert,
    "umt5": fam_umt5,
    "modernbert": fam_modernbert,
    "gemma2-gguf": fam_gemma2_gguf,
    "gemma3-gguf": fam_gemma3_gguf,
    "starcoder2-gguf": fam_starcoder2_gguf,
    "qwen2_moe-gguf": fam_qwen2_moe_gguf,
}


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def is_norm_weight(name: str, p: torch.Tensor) -> bool:
    low = name.lower()
    return p.ndim == 1 and name.endswith("weight") and ("norm" in low or "ln" in low)


def randomize(model: torch.nn.Module, family: str, gen: torch.Generator) -> dict:
    """Overwrite every parameter and persistent float buffer with non-trivial random values."""
    rules = {}

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean

    # Fixed sinusoidal tables that happen to be parameters (Marian) keep their values: HF
    # recomputes them at load time, they are not weights.
    fixed = {f"{m}.{n}" for m, mod in model.named_modules() if "Sinusoidal" in type(mod).__name__
             for n, _ in mod.named_parameters(recurse=False)}
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters are visited once
            if name in fixed:
                rules.setdefault("fixed sinusoidal table (kept)", []).append(name)
                continue
            if is_norm_weight(name, p):
                v = torch.rand(p.shape, generator=gen) + 0.5  # U(0.5, 1.5)
                rule = "norm weight ~ U(0.5, 1.5)"
            elif p.ndim == 1:
                v = normal(p.shape, 0.2)
                rule = "bias ~ N(0, 0.2)"
            elif "relative_attention_bias" in name:
                v = normal(p.shape, 1.0)
                rule = "T5 relative bias table ~ N(0, 1)"
            elif any(k in name for k in ("embed", "wte", "wpe", "shared")) or name.endswith("embeddings.weight"):
                v = normal(p.shape, 0.5)
                rule = "embedding ~ N(0, 0.5)"
            else:
                # nn.Linear weights are [out, in]; GPT-2's Conv1D stores [in, out]
                fan_in = p.shape[0] if (family == "gpt2" and ".h." in f".{name}" and p.ndim == 2
                                        and "c_" in name) else p.shape[-1]
                v = normal(p.shape, 1.0 / math.sqrt(fan_in))
                rule = "matrix ~ N(0, 1/sqrt(fan_in))"
            p.copy_(v)
            rules.setdefault(rule, []).append(name)
        for name, b in model.named_buffers():
            if name.endswith("final_logits_bias"):
                b.copy_(normal(b.shape, 0.5))
                rules.setdefault("BART final_logits_bias buffer ~ N(0, 0.5)", []).append(name)
    return rules


def untie_t5_lm_head(model):
    """transformers 5 always ties T5's lm_head to `shared` at construction (tie_word_embeddings is forced
    True; `scale_decoder_outputs` records the v1.0/v1.1 difference). Give it its own parameter, like a
    real T5 v1.1 checkpoint has."""
    model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    for attr in ("all_tied_weights_keys", "_tied_weights_keys"):
        d = getattr(model, attr, None)
        if isinstance(d, dict) and "lm_head.weight" in d:
            d = dict(d)
            d.pop("lm_head.weight")
            setattr(model, attr, d)


def make_inputs(kind: str, vocab: int, pad_id: int, gen: torch.Generator, dec_start: int | None):
    ids = torch.randint(4, vocab, (1, SEQ), generator=gen, dtype=torch.int64)
    inp = {"input_ids": ids}
    if kind in ("encoder", "mlm", "seq2seq"):
        row1 = torch.randint(4, vocab, (1, SEQ), generator=gen, dtype=torch.int64)
        row1[0, PAD_LEN:] = pad_id
        ids2 = torch.cat([ids, row1], 0)
        mask2 = torch.ones_like(ids2)
        mask2[1, PAD_LEN:] = 0
        inp["input_ids_batch2"] = ids2
        inp["attention_mask_batch2"] = mask2
    if kind == "seq2seq":
        d = torch.randint(4, vocab, (2, DEC_SEQ), generator=gen, dtype=torch.int64)
        d[:, 0] = dec_start
        inp["decoder_input_ids"] = d[:1].clone()
        inp["decoder_input_ids_batch2"] = d
    return inp


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@torch.no_grad()
def run_encoder(model, inp, opts):
    out = {}
    o = model(input_ids=inp["input_ids"], output_hidden_states=True)
    out["last_hidden_state"] = o.last_hidden_state
    out["hidden_states"] = torch.stack([h[0] for h in o.hidden_states])
    if opts.get("pooler"):
        out["pooler_output"] = o.pooler_output
    o2 = model(input_ids=inp["input_ids_batch2"], attention_mask=inp["attention_mask_batch2"])
    out["last_hidden_state_batch2"] = o2.last_hidden_state
    if opts.get("pooler"):
        out["pooler_output_batch2"] = o2.pooler_output
    # sanity: row 0 of the batch must reproduce the batch-1 run
    assert max_diff(o2.last_hidden_state[0], o.last_hidden_state[0]) < 1e-5
    return out


@torch.no_grad()
def run_mlm(model, inp, opts):
    """Encoders through their MaskedLM head: the base model's states plus the head's logits."""
    out = run_encoder(model.base_model, inp, {"pooler": False})
    out["logits"] = model(input_ids=inp["input_ids"]).logits
    o2 = model(input_ids=inp["input_ids_batch2"], attention_mask=inp["attention_mask_batch2"])
    out["logits_batch2"] = o2.logits
    assert max_diff(o2.logits[0], out["logits"][0]) < 1e-5
    return out


@torch.no_grad()
def run_decoder(model, inp, opts):
    out = {}
    ids = inp["input_ids"]
    o = model(input_ids=ids, output_hidden_states=True, use_cache=False,
              **({"output_router_logits": True} if opts.get("moe") else {}))
    out["logits"] = o.logits
    out["hidden_states"] = torch.stack([h[0] for h in o.hidden_states])
    base = model.base_model(input_ids=ids, use_cache=False)
    out["last_hidden_state"] = base.last_hidden_state
    extra = {"hidden_states_last_is_final_normed":
             max_diff(o.hidden_states[-1], base.last_hidden_state) < 1e-6}
    if opts.get("moe"):
        margins = []
        for rl in o.router_logits:
            top = torch.topk(rl.float(), k=3, dim=-1).values
            margins.append(float((top[..., 1] - top[..., 2]).min()))
        extra["min_router_top2_vs_top3_margin"] = min(margins)
        out["router_logits"] = torch.stack([rl.reshape(ids.shape[1], -1) for rl in o.router_logits])
    # incremental: prefill the first half, then one token at a time through the KV cache
    half = ids.shape[1] // 2
    o1 = model(input_ids=ids[:, :half], use_cache=True)
    pkv = o1.past_key_values
    chunks = [o1.logits]
    for t in range(half, ids.shape[1]):
        ot = model(input_ids=ids[:, t:t + 1], past_key_values=pkv, use_cache=True)
        pkv = ot.past_key_values
        chunks.append(ot.logits)
    inc = torch.cat(chunks, 1)
    d = max_diff(inc, o.logits)
    tol = opts.get("incr_tol", INCR_TOL) * max(1.0, float(o.logits.abs().max()) / 10)
    assert d < tol, f"incremental logits differ from full logits by {d} (tolerance {tol})"
    out["logits_incremental"] = inc
    extra["incremental_max_abs_diff"] = d
    extra["prefill_len"] = half
    return out, extra


@torch.no_grad()
def run_seq2seq(model, inp, opts):
    out = {}
    ids, dec = inp["input_ids"], inp["decoder_input_ids"]
    o = model(input_ids=ids, decoder_input_ids=dec, use_cache=False)
    out["logits"] = o.logits
    out["encoder_last_hidden_state"] = o.encoder_last_hidden_state
    o2 = model(input_ids=inp["input_ids_batch2"], attention_mask=inp["attention_mask_batch2"],
               decoder_input_ids=inp["decoder_input_ids_batch2"], use_cache=False)
    out["logits_batch2"] = o2.logits
    out["encoder_last_hidden_state_batch2"] = o2.encoder_last_hidden_state
    assert max_diff(o2.encoder_last_hidden_state[0], o.encoder_last_hidden_state[0]) < 1e-5
    # incremental decoding: encoder once, decoder prefill of the first half, then token by token
    enc = model.get_encoder()(input_ids=ids)
    half = dec.shape[1] // 2
    o1 = model(encoder_outputs=enc, decoder_input_ids=dec[:, :half], use_cache=True)
    pkv = o1.past_key_values
    chunks = [o1.logits]
    for t in range(half, dec.shape[1]):
        ot = model(encoder_outputs=enc, decoder_input_ids=dec[:, t:t + 1], past_key_values=pkv, use_cache=True)
        pkv = ot.past_key_values
        chunks.append(ot.logits)
    inc = torch.cat(chunks, 1)
    d = max_diff(inc, o.logits)
    tol = opts.get("incr_tol", INCR_TOL) * max(1.0, float(o.logits.abs().max()) / 10)
    assert d < tol, f"incremental logits differ from full logits by {d} (tolerance {tol})"
    out["logits_incremental"] = inc
    return out, {"incremental_max_abs_diff": d, "prefill_len": half}


TENSOR_DOCS = {
    "input_ids": "int64 [1, T]: the test input (random ids in [4, vocab), seeded)",
    "input_ids_batch2": "int64 [2, T]: row 0 = input_ids, row 1 = other ids, right-padded with pad_token_id after position %d" % PAD_LEN,
    "attention_mask_batch2": "int64 [2, T]: 1 = real token, 0 = padding (row 1 from position %d)" % PAD_LEN,
    "last_hidden_state": "f32 [1, T, d]: final hidden state of the base model (after the final norm where the model has one)",
    "hidden_states": "f32 [L+1, T, d]: HF output_hidden_states for batch row 0: [0] = embedding output (after embedding LN / scaling), [i] = output of layer i; see meta.hidden_states_last_is_final_normed for whether [L] already has the final norm applied",
    "pooler_output": "f32 [1, d]: tanh(dense(last_hidden_state[:, 0]))",
    "last_hidden_state_batch2": "f32 [2, T, d]: last_hidden_state of the padded batch; compare only positions where attention_mask_batch2 == 1 (padding positions are computed by HF but meaningless)",
    "pooler_output_batch2": "f32 [2, d]: pooler output of the padded batch",
    "logits": "f32 [1, T, V] (seq2seq: [1, T_dec, V]): full-sequence logits",
    "logits_incremental": "f32, same shape as logits: prefill of the first prefill_len positions, then one token at a time with the KV cache, concatenated (validated == logits within 1e-5 * max(1, max|logits| / 10); meta.checks.incremental_max_abs_diff)",
    "router_logits": "f32 [L, T, E]: MoE router logits per layer (before softmax/top-k)",
    "decoder_input_ids": "int64 [1, T_dec]: decoder input, position 0 = decoder_start_token_id",
    "decoder_input_ids_batch2": "int64 [2, T_dec]: row 0 = decoder_input_ids; no decoder padding",
    "encoder_last_hidden_state": "f32 [1, T, d]: encoder output (after the encoder final norm / last post-norm)",
    "encoder_last_hidden_state_batch2": "f32 [2, T, d]: encoder output of the padded batch (compare where attention_mask_batch2 == 1)",
    "logits_batch2": "f32 [2, T_dec, V]: decoder logits with the padded encoder batch (encoder padding masked in cross-attention)",
}


def tensor_listing(path: Path) -> list[tuple[str, str, list[int]]]:
    rows = []
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            sl = f.get_slice(k)
            rows.append((k, sl.get_dtype(), list(sl.get_shape())))
    return sorted(rows, key=lambda r: natural_key(r[0]))


def natural_key(s: str):
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


# Knob ablations: re-run the same weights with one feature switched off and record how much the
# logits move, to prove each fixture actually exercises the feature it is meant to test.
def _set_rope(key, val):
    def f(cfg):
        cfg.rope_parameters = {**cfg.rope_parameters, key: val}
    return f


def _zero_params(substr):
    def f(model):
        with torch.no_grad():
            for n, p in list(model.named_parameters()) + list(model.named_buffers()):
                if substr in n:
                    p.zero_()
    return f


ABLATIONS = {
    "gpt_neox": [("partial_rotary_factor 1.0 (full rotary)", _set_rope("partial_rotary_factor", 1.0), None),
                 ("rope_theta 500", _set_rope("rope_theta", 500.0), None)],
    "phi": [("partial_rotary_factor 1.0 (full rotary)", _set_rope("partial_rotary_factor", 1.0), None)],
    "gpt2": [("activation exact erf gelu", lambda c: setattr(c, "activation_function", "gelu"), None)],
    "gemma": [("hidden_act exact erf gelu", lambda c: setattr(c, "hidden_act", "gelu"), None),
              ("RMSNorm scaled by w instead of (1 + w)", None,
               lambda m: [p.sub_(1.0) for n, p in m.named_parameters() if n.endswith("norm.weight")])],
    "llama": [("rope_theta 500", _set_rope("rope_theta", 500.0), None)],
    "mistral": [("sliding_window None", lambda c: setattr(c, "sliding_window", None), None)],
    "mixtral": [("num_experts_per_tok 1", lambda c: setattr(c, "num_experts_per_tok", 1), None)],
    "qwen2": [("q/k/v biases zeroed", None, _zero_params("_proj.bias"))],
    "gemma2": [("sliding_window 64 (no window)", lambda c: setattr(c, "sliding_window", 64), None),
               ("attn_logit_softcapping None", lambda c: setattr(c, "attn_logit_softcapping", None), None),
               ("final_logit_softcapping None", lambda c: setattr(c, "final_logit_softcapping", None), None),
               ("query_pre_attn_scalar 16 (= head_dim)", lambda c: setattr(c, "query_pre_attn_scalar", 16), None)],
    "t5": [("relative_attention_bias zeroed", None, _zero_params("relative_attention_bias"))],
    "t5-gated": [("relative_attention_bias zeroed", None, _zero_params("relative_attention_bias"))],
    "bart": [("final_logits_bias zeroed", None, _zero_params("final_logits_bias"))],
    "roberta": [("attention_mask_batch2 omitted (pads attended)", "nomask", None)],
    "bert": [("attention_mask_batch2 omitted (pads attended)", "nomask", None)],
    "distilbert": [("attention_mask_batch2 omitted (pads attended)", "nomask", None)],
    "roberta-mlm-untied": [("lm_head.decoder.bias zeroed (lm_head.bias kept)", None, _zero_params("lm_head.decoder.bias"))],
    "qwen3": [("q_norm/k_norm weights set to 1", None,
               lambda m: [p.fill_(1.0) for n, p in m.named_parameters() if n.endswith(("q_norm.weight", "k_norm.weight"))])],
    "ministral": [("layer_types all full", lambda c: setattr(c, "layer_types", ["full_attention"] * 3), None)],
    "seed_oss": [("q/k/v biases zeroed", None, _zero_params("_proj.bias"))],
    "qwen2_moe": [("norm_topk_prob True", lambda c: setattr(c, "norm_topk_prob", True), None),
                  ("shared_expert_gate zeroed (gate 0.5)", None, _zero_params("shared_expert_gate"))],
    "qwen3_moe": [("norm_topk_prob False", lambda c: setattr(c, "norm_topk_prob", False), None)],
    "starcoder2": [("sliding_window None", lambda c: setattr(c, "sliding_window", None), None)],
    "stablelm": [("partial_rotary_factor 1.0", _set_rope("partial_rotary_factor", 1.0), None)],
    "gpt_neo": [("all layers global", lambda c: setattr(c, "attention_layers", ["global", "global"]), None)],
    "biogpt": [("scale_embedding False", lambda c: setattr(c, "scale_embedding", False), None)],
    "cohere": [("logit_scale 1.0", lambda c: setattr(c, "logit_scale", 1.0), None)],
    "glm4": [("post_self_attn/post_mlp norms set to 1", None,
              lambda m: [p.fill_(1.0) for n, p in m.named_parameters() if "post_self_attn" in n or "post_mlp" in n])],
    "granite": [("residual_multiplier 1.0", lambda c: setattr(c, "residual_multiplier", 1.0), None),
                ("logits_scaling 1.0", lambda c: setattr(c, "logits_scaling", 1.0), None)],
    "persimmon": [("qk_layernorm weights set to 1, biases 0", None,
                   lambda m: [p.fill_(1.0 if n.endswith("weight") else 0.0) for n, p in m.named_parameters() if "q_layernorm" in n or "k_layernorm" in n])],
    "smollm3": [("RoPE in every layer", lambda c: setattr(c, "no_rope_layers", [1, 1, 1, 1]), None)],
    "gemma3_text": [("all layers full attention", lambda c: setattr(c, "layer_types", ["full_attention"] * 3), None)],
    "umt5": [("layer 1's relative_attention_bias zeroed", None, _zero_params("block.1.layer.0.SelfAttention.relative_attention_bias"))],
    "mbart": [("scale_embedding False", lambda c: setattr(c, "scale_embedding", False), None)],
}


@torch.no_grad()
def ablation_sensitivity(cls, cfg, model, family, kind, inp, expected) -> dict:
    import copy
    res = {}
    for desc, cfg_fn, model_fn in ABLATIONS.get(family, []):
        if cfg_fn == "nomask":
            o = model(input_ids=inp["input_ids_batch2"])
            res[desc] = max_diff(o.last_hidden_state[1, :PAD_LEN], expected["last_hidden_state_batch2"][1, :PAD_LEN])
            continue
        c2 = copy.deepcopy(model.config)
        if cfg_fn is not None:
            cfg_fn(c2)
        m2 = cls._from_config(c2, attn_implementation="eager", dtype=torch.float32).eval()
        if family == "t5-gated":
            untie_t5_lm_head(m2)
        m2.load_state_dict(model.state_dict())
        if model_fn is not None:
            model_fn(m2)
        if kind == "decoder":
            got = m2(input_ids=inp["input_ids"], use_cache=False).logits
        elif kind == "mlm":
            got = m2(input_ids=inp["input_ids"]).logits
        else:
            got = m2(input_ids=inp["input_ids"], decoder_input_ids=inp["decoder_input_ids"], use_cache=False).logits
        res[desc] = max_diff(got, expected["logits"])
    return {k: round(v, 5) for k, v in res.items()}


def reload_check(cls, d: Path, inp: dict, kind: str, expected: dict, opts: dict) -> float:
    m2 = cls.from_pretrained(str(d), attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        if kind == "encoder":
            o = m2(input_ids=inp["input_ids"])
            ref, got = expected["last_hidden_state"], o.last_hidden_state
            if opts.get("pooler"):
                got = torch.cat([got.flatten(), o.pooler_output.flatten()])
                ref = torch.cat([ref.flatten(), expected["pooler_output"].flatten()])
        elif kind == "decoder":
            ref, got = expected["logits"], m2(input_ids=inp["input_ids"], use_cache=False).logits
        elif kind == "mlm":
            ref, got = expected["logits"], m2(input_ids=inp["input_ids"]).logits
        else:
            ref = expected["logits"]
            got = m2(input_ids=inp["input_ids"], decoder_input_ids=inp["decoder_input_ids"], use_cache=False).logits
    d = max_diff(got, ref)
    assert d < RELOAD_TOL, f"reloaded model differs from the generated one by {d}"
    return d


def config_summary(cfg) -> dict:
    keys = [
        "model_type", "vocab_size", "hidden_size", "d_model", "dim", "n_embd", "num_hidden_layers", "n_layer",
        "n_layers", "num_layers", "num_decoder_layers", "encoder_layers", "decoder_layers",
        "num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
        "num_key_value_heads", "head_dim", "d_kv", "intermediate_size", "n_inner", "hidden_dim", "d_ff",
        "encoder_ffn_dim", "max_position_embeddings", "n_positions", "hidden_act", "hidden_activation",
        "activation_function", "activation", "feed_forward_proj", "layer_norm_eps", "layer_norm_epsilon",
        "rms_norm_eps", "rope_parameters", "rope_theta", "partial_rotary_factor", "rotary_pct",
        "use_parallel_residual", "sliding_window", "layer_types", "attn_logit_softcapping",
        "final_logit_softcapping", "query_pre_attn_scalar", "num_local_experts", "num_experts_per_tok",
        "tie_word_embeddings", "scale_decoder_outputs", "attention_bias", "qk_layernorm", "scale_embedding",
        "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "type_vocab_size",
        "relative_attention_num_buckets", "relative_attention_max_distance", "sinusoidal_pos_embds",
    ]
    out = {}
    for k in keys:
        if hasattr(cfg, k):
            try:
                v = getattr(cfg, k)
            except Exception:
                continue
            if v is not None or k in ("sliding_window",):
                out[k] = v
    return out


def generate(family: str) -> dict:
    cls, cfg, kind, opts = FAMILIES[family]()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = cls._from_config(cfg, attn_implementation="eager", dtype=torch.float32) \
        if hasattr(cls, "_from_config") else cls(cfg)
    model.eval()
    if family == "t5-gated":
        untie_t5_lm_head(model)
    rules = randomize(model, family, gen)

    # rotary sanity: number of rotated dims per head
    if "rot_dims" in opts:
        inv = [b for n, b in model.named_buffers() if n.endswith("inv_freq")]
        assert inv and inv[0].numel() * 2 == opts["rot_dims"], (family, [i.shape for i in inv])

    pad_id = cfg.pad_token_id if getattr(cfg, "pad_token_id", None) is not None else 0
    dec_start = getattr(cfg, "decoder_start_token_id", None)
    inp = make_inputs(kind, cfg.vocab_size, pad_id, torch.Generator().manual_seed(1234), dec_start)

    extra = {}
    if kind == "encoder":
        res = run_encoder(model, inp, opts)
    elif kind == "mlm":
        res = run_mlm(model, inp, opts)
    elif kind == "decoder":
        res, extra = run_decoder(model, inp, opts)
    else:
        res, extra = run_seq2seq(model, inp, opts)

    d = OUT / family
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    model.save_pretrained(str(d), safe_serialization=True)
    for f in d.iterdir():  # only config.json + model.safetensors
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()
    if family == "t5-gated":
        # write the untied form real T5 v1.1 checkpoints use (transformers 5 forces tie_word_embeddings=True
        # in the config object, reading `tie_word_embeddings: false` from the file gives scale_decoder_outputs=False)
        cj = json.loads((d / "config.json").read_text())
        cj["tie_word_embeddings"] = False
        cj.pop("scale_decoder_outputs", None)
        (d / "config.json").write_text(json.dumps(cj, indent=2, sort_keys=True) + "\n")

    expected = {**{k: v for k, v in inp.items()}, **res}
    expected = {k: v.detach().contiguous() for k, v in expected.items()}
    save_file(expected, str(d / "expected.safetensors"), metadata={"family": family})

    extra["reload_max_abs_diff"] = reload_check(cls, d, inp, kind, expected, opts)
    abl = ablation_sensitivity(cls, cfg, model, family, kind, inp, expected)
    if abl:
        extra["ablation_max_abs_logit_change"] = abl
        for k, v in abl.items():
            assert v > 1e-3, f"{family}: switching off '{k}' does not change the output ({v}); fixture too weak"

    listing = tensor_listing(d / "model.safetensors")
    with open(d / "tensors.txt", "w") as f:
        f.write(f"# {family}: {cls.__name__} model.safetensors ({len(listing)} tensors) name dtype shape\n")
        for name, dt, shape in listing:
            f.write(f"{name} {dt} {shape}\n")

    stats = {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                 **({"max_abs": round(float(v.abs().max()), 4), "std": round(float(v.float().std()), 4)}
                    if v.is_floating_point() else {})}
             for k, v in expected.items()}
    meta = {
        "family": family,
        "hf_class": cls.__name__,
        "kind": kind,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "safetensors": safetensors.__version__, "numpy": np.__version__},
        "attn_implementation": "eager",
        "dtype": "float32",
        "seed": {"torch.manual_seed": 0, "weights_generator": 0, "inputs_generator": 1234},
        "init": {rule: len(names) for rule, names in rules.items()},
        "config": config_summary(model.config),
        "expected_tensors": {k: {**stats[k], "doc": TENSOR_DOCS.get(k, "")} for k in expected},
        "checks": extra,
        "notes": notes_for(family),
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"{family:10s} {cls.__name__:34s} {size / 1024:8.1f} KiB  checks={extra}")
    return meta


def notes_for(family: str) -> list[str]:
    n = {
        "bert": ["token_type_ids are all 0 (HF default when not passed)", "checkpoint saved from BertModel: no `bert.` prefix"],
        "roberta": ["position ids = cumsum(input_ids != pad) * mask + pad_token_id (pad_token_id = 1): the first real token uses row 2 of position_embeddings",
                    "padding rows of input_ids_batch2 use pad_token_id 1, which also drives RoBERTa's position ids",
                    "checkpoint saved from RobertaModel: no `roberta.` prefix"],
        "distilbert": ["no pooler, no token types; checkpoint saved from DistilBertModel: no `distilbert.` prefix"],
        "gpt2": ["Conv1D weights are stored [in, out]; c_attn fuses Q|K|V along out", "lm_head tied to wte (absent from the file)"],
        "gpt_neox": ["query_key_value is interleaved per head: rows [h*3*hd : h*3*hd+hd] = q_h, then k_h, then v_h",
                     "partial rotary: first 4 of 16 dims per head rotated (rotate_half on those 4)", "parallel residual with separate norms"],
        "llama": ["GQA 4 query heads / 2 kv heads, untied lm_head"],
        "mistral": ["sliding_window 4 (window includes the current token: position i attends to i-3..i), all layers", "T=10 > window"],
        "mixtral": ["4 experts top-2: softmax over 4 router logits, top-2, renormalise to sum 1",
                    "transformers 5 holds experts fused in memory (experts.gate_up_proj/down_proj) but save_pretrained writes the legacy per-expert names listed in tensors.txt"],
        "qwen2": ["q/k/v biases, no o_proj bias; lm_head tied to embed_tokens"],
        "gemma": ["RMSNorm scales by (1 + w); embeddings multiplied by sqrt(hidden_size) (computed in the model dtype)",
                  "head_dim 16 while hidden/heads = 8; MQA (1 kv head); GeGLU with tanh GELU; lm_head tied"],
        "gemma2": ["sandwich norms (input/post_attention/pre_feedforward/post_feedforward), (1 + w) RMSNorm",
                   "attention scale = query_pre_attn_scalar^-0.5 = 24^-0.5 (not head_dim^-0.5)",
                   "attention logit softcap 50: s = 50 * tanh(s / 50) before masking; final logit softcap 30",
                   "layer_types: layer 0 sliding (window 4), layer 1 full attention"],
        "phi": ["parallel residual with one shared input_layernorm: x + attn(ln(x)) + mlp(ln(x))",
                "partial rotary: first 8 of 20 dims per head", "lm_head has a bias; final_layernorm before the head"],
        "t5": ["T5 v1.0 style: relu FFN, lm_head tied to shared, decoder output scaled by d_model^-0.5 before the head",
               "no attention scaling; relative position bias only in block 0 of each stack (bidirectional encoder, causal decoder)"],
        "t5-gated": ["T5 v1.1 style: gated-gelu FFN = wo(gelu_tanh(wi_0 x) * wi_1 x), separate lm_head, NO output scaling",
                     "config.json says tie_word_embeddings=false (as real v1.1 checkpoints do); transformers 5 maps that to scale_decoder_outputs=False"],
        "bart": ["post-norm; learned positions with offset 2 (row = position + 2); layernorm_embedding on both stacks; no final norm",
                 "scale_embedding False; final_logits_bias (random here) added to the logits; lm_head tied to shared"],
    }
    return n.get(family, [])


def main(argv):
    fams = argv[1:] or list(FAMILIES)
    for f in fams:
        if f not in FAMILIES:
            sys.exit(f"unknown family {f}; known: {', '.join(FAMILIES)}")
    OUT.mkdir(parents=True, exist_ok=True)
    for f in fams:
        generate(f)


if __name__ == "__main__":
    main(sys.argv)
