#!/usr/bin/env python3
"""Writes the hostile inputs of hostile_tools_test.sh (plain Python, no torch): a tiny runnable Llama checkpoint and
variants of it that attack the tools.

  make_inputs.py WORK_DIR
"""
import json
import os
import random
import struct
import sys

CONFIG = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
          "num_key_value_heads": 2, "intermediate_size": 32, "vocab_size": 32, "max_position_embeddings": 64,
          "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float32"}


def llama_tensors(cfg):
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    t = {"model.embed_tokens.weight": [vocab, h], "model.norm.weight": [h], "lm_head.weight": [vocab, h]}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for m in ("q", "k", "v", "o"):
            t[p + f"self_attn.{m}_proj.weight"] = [h, h]
        t[p + "mlp.gate_proj.weight"] = [inter, h]
        t[p + "mlp.up_proj.weight"] = [inter, h]
        t[p + "mlp.down_proj.weight"] = [h, inter]
        t[p + "input_layernorm.weight"] = [h]
        t[p + "post_attention_layernorm.weight"] = [h]
    return t


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def safetensors_bytes(entries):
    """entries: list of (name, dtype, shape, data bytes)."""
    header, data = {}, b""
    for name, dtype, shape, raw in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def f32(shape, rng, norm):
    n = numel(shape)
    vals = [1.0 + rng.uniform(-0.1, 0.1) if norm else rng.uniform(-0.3, 0.3) for _ in range(n)]
    return struct.pack(f"<{n}f", *vals)


def write_model(d, cfg=CONFIG, shards=2, int_tensor=None):
    """A Llama checkpoint of `shards` shards with an HF index. int_tensor: a tensor written as I32 instead."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    rng = random.Random(7)
    names = sorted(llama_tensors(cfg).items())
    per = (len(names) + shards - 1) // shards
    weight_map = {}
    for s in range(shards):
        part = names[s * per:(s + 1) * per]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        entries = []
        for name, shape in part:
            if name == int_tensor:
                entries.append((name, "I32", shape, struct.pack(f"<{numel(shape)}i", *([1] * numel(shape)))))
            else:
                entries.append((name, "F32", shape, f32(shape, rng, name.endswith("norm.weight"))))
            weight_map[name] = fname
        with open(os.path.join(d, fname), "wb") as f:
            f.write(safetensors_bytes(entries))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def write_index(d, weight_map):
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def main(work):
    write_model(os.path.join(work, "tiny"))
    # Index traversal: one tensor's shard name replaced, the rest as in tiny.
    base = json.load(open(os.path.join(work, "tiny", "model.safetensors.index.json")))["weight_map"]
    outside = os.path.join(work, "outside")
    write_model(outside, shards=1)
    for tag, target in [("trav_passwd", "../../../../../../etc/passwd"), ("trav_abs", "/etc/passwd"),
                        ("trav_outside", "../outside/model-00001-of-00001.safetensors")]:
        d = os.path.join(work, tag)
        write_model(d)
        wm = dict(base)
        wm["lm_head.weight"] = target
        write_index(d, wm)
    # 100k zero-size tensors in one header, plus a real model around it.
    d = os.path.join(work, "many_tensors")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(CONFIG, f)
    entries = [(f"extra.t{i}", "F32", [0], b"") for i in range(100000)]
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(safetensors_bytes(entries))
    # Deep nesting.
    deep = "[" * 100000 + "]" * 100000
    for name in ("deep_config.json", "deep_map.json", "deep_profile.json"):
        with open(os.path.join(work, name), "w") as f:
            f.write(deep)
    d = os.path.join(work, "deep_config")
    write_model(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write('{"model_type": "llama", "x": ' + deep + "}")
    d = os.path.join(work, "deep_index")
    write_model(d)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        f.write('{"weight_map": ' + "[" * 100000 + "]" * 100000 + "}")
    # Config keys that change the math, refused at plan time.
    refused = {
        "rope_zero": {"rope_scaling": {"rope_type": "linear", "factor": 0.0}},
        "rope_llama3_equal": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0,
                                               "high_freq_factor": 2.0, "original_max_position_embeddings": 32}},
        # longrope is implemented; factor lists of the wrong length are refused.
        "rope_longrope": {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 3,
                                           "long_factor": [1.0] * 3, "original_max_position_embeddings": 16}},
        "act_unknown": {"hidden_act": "quick_gelu"},
        "partial_rotary": {"partial_rotary_factor": 0.5},
        "quantized": {"quantization_config": {"quant_method": "gptq", "bits": 4}},
    }
    for tag, extra in refused.items():
        cfg = dict(CONFIG)
        cfg.update(extra)
        write_model(os.path.join(work, tag), cfg=cfg)
    write_model(os.path.join(work, "int_weight"), int_tensor="model.layers.1.mlp.up_proj.weight")
    # A huge context: run shapes whose KV cache overflows 64 bits, or comes to petabytes.
    cfg = dict(CONFIG)
    cfg["max_position_embeddings"] = 4294967295
    write_model(os.path.join(work, "long_context"), cfg=cfg)


if __name__ == "__main__":
    main(sys.argv[1])
