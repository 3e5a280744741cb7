#!/usr/bin/env python3
"""Writes planner/testdata/tiny_models.json: small configs of every supported model_type and variant, each with
the tensors (name, shape, dtype) that the pinned transformers' save_pretrained actually writes for it. The
importer test checks that ImportHfConfig synthesizes exactly these tensors from the config alone.

    ~/.cache/bigplan/venv/bin/python3 planner/testdata/make_tiny_models.py
"""
import json
import logging
import os
import tempfile
import warnings

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

BASE_LLAMA = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=100, max_position_embeddings=128)
# Phi3Config's token ids default to 32000/32064, outside a tiny vocabulary.
PHI3_TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
CASES = {
    "llama_bias_headdim_llama3": dict(model_type="llama", **BASE_LLAMA, head_dim=32, attention_bias=True, mlp_bias=True,
                                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                                      rope_theta=500000.0, dtype="bfloat16"),
    "llama_tied_linear": dict(model_type="llama", **BASE_LLAMA, tie_word_embeddings=True,
                              rope_scaling={"rope_type": "linear", "factor": 2.0}, dtype="float16"),
    "llama_dynamic_mha": dict(model_type="llama", **{**BASE_LLAMA, "num_key_value_heads": 4},
                              rope_scaling={"type": "dynamic", "factor": 2.0}),
    "mistral": dict(model_type="mistral", **BASE_LLAMA, head_dim=None, sliding_window=32, dtype="bfloat16"),
    "qwen2_tied": dict(model_type="qwen2", **BASE_LLAMA, tie_word_embeddings=True, dtype="bfloat16"),
    "qwen2_untied": dict(model_type="qwen2", **BASE_LLAMA, tie_word_embeddings=False),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32),
    "gpt2_untied_inner": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32,
                              n_inner=80, tie_word_embeddings=False, dtype="float16"),
    "gptj": dict(model_type="gptj", n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32, rotary_dim=8),
    # Phi-3: fused qkv_proj / gate_up_proj, GQA.
    "phi3": dict(model_type="phi3", **BASE_LLAMA, **PHI3_TOKENS, dtype="bfloat16"),
    # Phi-3-128k / Phi-4-mini style: longrope (legacy "type" key), partial rotary (8 of head_dim 16), tied embeddings.
    "phi3_longrope_partial_tied": dict(model_type="phi3", **BASE_LLAMA, **PHI3_TOKENS, tie_word_embeddings=True,
                                       partial_rotary_factor=0.5, original_max_position_embeddings=64,
                                       rope_scaling={"type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.3],
                                                     "long_factor": [1.5, 2.0, 3.0, 4.0]}),
    "gptj_default_rotary": dict(model_type="gptj", n_embd=128, n_layer=2, n_head=2, vocab_size=100, n_positions=32,
                                n_inner=96, dtype="float16"),
}

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def main():
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    out = {}
    for name, kwargs in CASES.items():
        kwargs = dict(kwargs)
        model_type = kwargs.pop("model_type")
        dtype = kwargs.pop("dtype", None)
        config = AutoConfig.for_model(model_type, **kwargs)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype) if dtype else None)
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            with open(os.path.join(d, "config.json")) as f:
                saved_config = json.load(f)
            tensors = []
            with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
                for key in sorted(f.keys()):
                    sl = f.get_slice(key)
                    tensors.append({"name": key, "shape": list(sl.get_shape()), "dtype": sl.get_dtype()})
        out[name] = {"config": saved_config, "tensors": tensors}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_models.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{path}: {len(out)} models")


if __name__ == "__main__":
    main()
