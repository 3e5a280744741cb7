#!/usr/bin/env python3
"""Computes the device maps that Accelerate's infer_auto_device_map chooses for the parity cases.

Each case is a model (a directory with config.json, relative to the workspace root), an execution dtype and a
max_memory dict. The model is instantiated on the meta device (accelerate.init_empty_weights, no weights) in that
dtype, and the map is infer_auto_device_map(model, max_memory, no_split_module_classes=model._no_split_modules,
dtype=dtype), Accelerate's defaults otherwise. Budgets are fractions of the model's size at that dtype (rounded
to whole bytes), chosen to exercise: several GPUs, the reserve for the largest layer on GPU 0 and on cpu, spilling
to cpu and to disk, no cpu entry (GPU -> disk), a GPU too small for any layer, and tied embeddings (GPT-2, Qwen2).

    ~/.cache/bigplan/venv/bin/python3 planner/testdata/make_accelerate_fixtures.py            # rewrites the fixtures
    ~/.cache/bigplan/venv/bin/python3 planner/testdata/make_accelerate_fixtures.py --out X.json --root DIR
"""
import argparse
import json
import logging
import os
import warnings

import torch
from accelerate import init_empty_weights
from accelerate.utils import compute_module_sizes, infer_auto_device_map
from transformers import AutoConfig, AutoModelForCausalLM

MODELS = [
    # (model directory, exec dtype)
    ("planner/examples/llama-2-7b", "F16"),
    ("planner/examples/gpt-j-6b", "F16"),
    ("planner/examples/gpt-j-6b", "F32"),
    ("planner/testdata/configs/gpt2", "F32"),
    ("planner/testdata/configs/mistral-7b", "BF16"),
    ("planner/testdata/configs/qwen2-0.5b", "BF16"),
    # Phi-4-mini's shape (model_type phi3: fused qkv/gate_up, GQA, partial rotary, tied embeddings); its longrope
    # factors are placeholders (they do not change sizes).
    ("planner/testdata/configs/phi4-mini-shape", "BF16"),
]

# Fractions of the model's total size.
BUDGETS = [
    {0: 0.55, 1: 0.55},                    # two GPUs, everything fits
    {0: 0.30, 1: 0.25, "cpu": 0.30},       # two GPUs, then cpu, then disk
    {0: 0.40, "cpu": 1.0},                 # one GPU, the rest on cpu
    {0: 0.35},                             # no cpu entry: GPU, then disk
    {0: 0.01, 1: 0.6, "cpu": 0.2},         # GPU 0 too small for the largest layer
    {0: 1.25, "cpu": 0.5},                 # everything on GPU 0 as one module
    {0: 0.123456, 1: 0.2345678, 2: 0.3456789, "cpu": 0.1234567},
]

TORCH_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def build(root, model_dir, dtype):
    config = AutoConfig.from_pretrained(os.path.join(root, model_dir))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=TORCH_DTYPES[dtype])
    model.tie_weights()
    return model


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_root = os.path.dirname(os.path.dirname(here))
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=default_root, help="workspace root (model paths are relative to it)")
    parser.add_argument("--out", default=os.path.join(here, "accelerate_device_maps.json"))
    args = parser.parse_args()

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    cases = []
    for model_dir, dtype in MODELS:
        model = build(args.root, model_dir, dtype)
        total = compute_module_sizes(model, dtype=TORCH_DTYPES[dtype])[""]
        no_split = list(model._no_split_modules or [])
        for fractions in BUDGETS:
            max_memory = {k: int(total * f) for k, f in fractions.items()}
            device_map = infer_auto_device_map(
                model, max_memory=dict(max_memory), no_split_module_classes=no_split, dtype=TORCH_DTYPES[dtype])
            cases.append({
                "model": model_dir,
                "dtype": dtype,
                "max_memory": {str(k): v for k, v in max_memory.items()},
                "accelerate_device_map": dict(device_map),
            })
    with open(args.out, "w") as f:
        f.write('{"generator": "planner/testdata/make_accelerate_fixtures.py (accelerate %s, transformers %s)",\n'
                % (__import__("accelerate").__version__, __import__("transformers").__version__))
        f.write(' "cases": [\n')
        for i, c in enumerate(cases):
            f.write("  " + json.dumps(c) + (",\n" if i + 1 < len(cases) else "\n"))
        f.write(" ]}\n")
    print(f"{args.out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
