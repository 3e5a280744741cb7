#!/usr/bin/env python3
"""Writes tensors.json for the bundled examples (and test configs) from their config.json, with no weights.

For each directory given (default: the example directories that have no tensors.json yet, plus any named), the
model is instantiated on the meta device with the pinned transformers, in the dtype its config names, and the
tensors save_pretrained would write are listed: every parameter once (a tied parameter under its first name, the
one transformers keeps) and every persistent buffer. Non-persistent buffers (rotary tables, GPT-J's
attn.embed_positions) are not saved by transformers, and neither are the attn.bias/attn.masked_bias buffers that old
GPT-2/GPT-J checkpoints carry.

    ~/.cache/bigplan/venv/bin/python3 planner/examples/make_examples.py planner/examples/llama-2-7b planner/examples/gpt-j-6b
"""
import json
import os
import sys

import torch
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModelForCausalLM

SAFETENSORS_DTYPE = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def config_dtype(cfg_json):
    name = cfg_json.get("dtype") or cfg_json.get("torch_dtype") or "float32"
    return getattr(torch, name.replace("torch.", ""))


def saved_tensors(directory):
    with open(os.path.join(directory, "config.json")) as f:
        cfg_json = json.load(f)
    config = AutoConfig.from_pretrained(directory)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=config_dtype(cfg_json))
    tensors = []
    for name, p in model.named_parameters(remove_duplicate=True):
        tensors.append((name, list(p.shape), SAFETENSORS_DTYPE[p.dtype]))
    for module_name, module in model.named_modules():
        for buf_name, b in module.named_buffers(recurse=False):
            if buf_name in module._non_persistent_buffers_set:
                continue
            full = f"{module_name}.{buf_name}" if module_name else buf_name
            tensors.append((full, list(b.shape), SAFETENSORS_DTYPE[b.dtype]))
    tensors.sort()
    return tensors


def write(directory):
    tensors = saved_tensors(directory)
    path = os.path.join(directory, "tensors.json")
    with open(path, "w") as f:
        f.write("[\n")
        for i, (name, shape, dtype) in enumerate(tensors):
            entry = json.dumps({"name": name, "shape": shape, "dtype": dtype})
            f.write("  " + entry + (",\n" if i + 1 < len(tensors) else "\n"))
        f.write("]\n")
    total = sum(_numel(s) for _, s, _ in tensors)
    print(f"{path}: {len(tensors)} tensors, {total} elements, dtypes {sorted(set(d for _, _, d in tensors))}")


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    dirs = sys.argv[1:]
    if not dirs:
        here = os.path.dirname(os.path.abspath(__file__))
        dirs = [os.path.join(here, d) for d in ("llama-2-7b", "gpt-j-6b")]
    for d in dirs:
        write(d)
