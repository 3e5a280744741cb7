"""Writes seed corpora for the formats and hardening fuzzers: valid and nearly valid safetensors files and index
JSONs, the repository's config.json files and a few device maps. Run from the repository root: make_seeds.py OUT_DIR
(the planner fuzzers' seeds come from planner_seed_gen)."""
import json
import glob
import os
import shutil
import struct
import sys


def st(header, data=b"", length=None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def main(out):
    st_dir = os.path.join(out, "safetensors")
    ix_dir = os.path.join(out, "index")
    os.makedirs(st_dir, exist_ok=True)
    os.makedirs(ix_dir, exist_ok=True)
    seeds = [
        st({"__metadata__": {"format": "pt"},
            "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
            "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}, bytes(range(22))),
        st({"x": {"dtype": "F8_E4M3", "shape": [], "data_offsets": [0, 1]},
            "y": {"dtype": "BOOL", "shape": [0, 5], "data_offsets": [1, 1]},
            "z": {"dtype": "I64", "shape": [1], "data_offsets": [1, 9]}}, bytes(9)),
        st({"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}, bytes(4)),  # truncated
        st({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
            "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}, bytes(12)),  # overlap
        st({"w": {"dtype": "F64", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}}),
        st(b'{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
           bytes(2)),
        st({}, length=1000),
        st(b"[1,2,3]"),
        st(b'{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}    ', bytes(4)),
    ]
    for i, s in enumerate(seeds):
        with open(os.path.join(st_dir, f"seed{i}"), "wb") as f:
            f.write(s)
    indexes = [
        {"metadata": {"total_size": 10}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                                        "b.weight": "model-00002-of-00002.safetensors"}},
        {"a.weight": "s1.safetensors", "b": "s2.safetensors"},
        {"weight_map": []},
        {"weight_map": {"a": 3}},
        {"a": {"dtype": "float32", "shape": [3]}},
    ]
    for i, ix in enumerate(indexes):
        with open(os.path.join(ix_dir, f"seed{i}"), "w") as f:
            json.dump(ix, f)
    with open(os.path.join(ix_dir, "dup"), "w") as f:
        f.write('{"weight_map":{"a":"x.safetensors","a":"y.safetensors"}}')

    # config.json: the bundled examples, the test configs and two that switch on config keys that change the math.
    cfg_dir = os.path.join(out, "config")
    os.makedirs(cfg_dir, exist_ok=True)
    configs = sorted(glob.glob("planner/examples/*/config.json") + glob.glob("planner/testdata/configs/*/config.json")
                     + glob.glob("tools/testdata/tiny-llama/config.json"))
    for i, c in enumerate(configs):
        shutil.copyfile(c, os.path.join(cfg_dir, f"seed{i}.json"))
    extra_configs = {
        "qwen2_sliding.json": {"model_type": "qwen2", "hidden_size": 16, "num_hidden_layers": 3,
                               "num_attention_heads": 2, "intermediate_size": 8, "vocab_size": 8,
                               "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
        "gpt2_scaled.json": {"model_type": "gpt2", "n_embd": 8, "n_layer": 2, "n_head": 2, "vocab_size": 8,
                             "scale_attn_by_inverse_layer_idx": True},
    }
    for name, c in extra_configs.items():
        with open(os.path.join(cfg_dir, name), "w") as f:
            json.dump(c, f, separators=(",", ":"))

    # --device-map files.
    map_dir = os.path.join(out, "map")
    os.makedirs(map_dir, exist_ok=True)
    maps = {
        "all_cpu.json": {"": "cpu"},
        "mixed.json": {"model.embed_tokens": 0, "model.layers.0": "cpu", "model.layers.1": "disk",
                       "model.layers.2": 1, "model.norm": 0, "lm_head": "cuda:0"},
    }
    for name, m in maps.items():
        with open(os.path.join(map_dir, name), "w") as f:
            json.dump(m, f, separators=(",", ":"))
    if os.path.isfile("tools/testdata/tiny-llama-device-map.json"):
        shutil.copyfile("tools/testdata/tiny-llama-device-map.json", os.path.join(map_dir, "tiny-llama.json"))


if __name__ == "__main__":
    main(sys.argv[1])
