#!/usr/bin/env python3
"""Computes the device maps that Accelerate chooses for device_map="balanced" and "balanced_low_0".

This is what accelerate.load_checkpoint_and_dispatch(model, ..., device_map=MODE, max_memory=..., dtype=...) does
before loading: max_memory is first rebalanced by get_balanced_memory(model, max_memory, no_split_module_classes,
dtype, low_zero=(MODE == "balanced_low_0")), then infer_auto_device_map(model, that max_memory,
no_split_module_classes, dtype) places the modules sequentially. The model is instantiated on the meta device
(accelerate.init_empty_weights, no weights) in the execution dtype, and no_split_module_classes is the model's
_no_split_modules. Each case records the user's max_memory, the rebalanced one and the resulting device map.

Budgets are fractions of the model's size at that dtype (rounded down to whole bytes), for 2, 3 and 4 GPUs, with
and without a cpu entry: roomy GPUs (the balanced split itself), GPUs smaller than the balanced share (spilling to
cpu or disk), and uneven GPUs (one below the balanced share). No budget names "disk": Accelerate's
get_balanced_memory cannot take one (torch.device("disk") raises).

    ~/.cache/bigplan/venv/bin/python3 planner/testdata/make_balanced_fixtures.py            # rewrites the fixtures
    ~/.cache/bigplan/venv/bin/python3 planner/testdata/make_balanced_fixtures.py --out X.json --root DIR
"""
import argparse
import json
import logging
import os
import warnings

from accelerate.utils import compute_module_sizes, get_balanced_memory, infer_auto_device_map

# The meta-device model builder and dtype table shared with the sequential fixtures (same directory).
from make_accelerate_fixtures import TORCH_DTYPES, build

MODELS = [
    # (model directory, exec dtype)
    ("planner/examples/llama-2-7b", "F16"),
    ("planner/examples/gpt-j-6b", "F16"),
    ("planner/testdata/configs/mistral-7b", "BF16"),
    ("planner/testdata/configs/qwen2-0.5b", "BF16"),
    ("planner/testdata/configs/gpt2", "F32"),
    # Phi-4-mini's shape (model_type phi3: fused qkv/gate_up, GQA, partial rotary, tied embeddings); its longrope
    # factors are placeholders (they do not change sizes).
    ("planner/testdata/configs/phi4-mini-shape", "BF16"),
]

# Fractions of the model's total size.
BUDGETS = [
    {0: 1.0, 1: 1.0},                                   # 2 GPUs, roomy: the balanced split
    {0: 0.35, 1: 0.35, "cpu": 0.5},                     # 2 GPUs below the balanced share, then cpu
    {0: 0.3, 1: 0.9, "cpu": 0.5},                       # 2 uneven GPUs
    {0: 1.0, 1: 1.0, 2: 1.0},                           # 3 GPUs, roomy
    {0: 0.3, 1: 0.3, 2: 0.3, "cpu": 0.3},               # 3 GPUs, then cpu
    {0: 0.2, 1: 0.5, 2: 0.5},                           # 3 uneven GPUs, no cpu: what is left goes to disk
    {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.5},                   # 4 GPUs, roomy
    {0: 0.2, 1: 0.2, 2: 0.2, 3: 0.2, "cpu": 0.4},       # 4 GPUs, then cpu
    {0: 0.123456, 1: 0.3, 2: 0.3, 3: 0.3, "cpu": 0.25}, # 4 uneven GPUs
]

MODES = ["balanced", "balanced_low_0"]

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_root = os.path.dirname(os.path.dirname(here))
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=default_root, help="workspace root (model paths are relative to it)")
    parser.add_argument("--out", default=os.path.join(here, "accelerate_balanced_maps.json"))
    args = parser.parse_args()

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    cases = []
    for model_dir, dtype in MODELS:
        model = build(args.root, model_dir, dtype)
        torch_dtype = TORCH_DTYPES[dtype]
        total = compute_module_sizes(model, dtype=torch_dtype)[""]
        no_split = list(model._no_split_modules or [])
        for fractions in BUDGETS:
            max_memory = {k: int(total * f) for k, f in fractions.items()}
            for mode in MODES:
                balanced = get_balanced_memory(model, max_memory=dict(max_memory), no_split_module_classes=no_split,
                                               dtype=torch_dtype, low_zero=(mode == "balanced_low_0"))
                device_map = infer_auto_device_map(model, max_memory=dict(balanced),
                                                   no_split_module_classes=no_split, dtype=torch_dtype)
                cases.append({
                    "model": model_dir,
                    "dtype": dtype,
                    "strategy": mode,
                    "max_memory": {str(k): v for k, v in max_memory.items()},
                    "balanced_max_memory": {str(k): int(v) for k, v in balanced.items()},
                    "accelerate_device_map": dict(device_map),
                })
    with open(args.out, "w") as f:
        f.write('{"generator": "planner/testdata/make_balanced_fixtures.py (accelerate %s, transformers %s)",\n'
                % (__import__("accelerate").__version__, __import__("transformers").__version__))
        f.write(' "cases": [\n')
        for i, c in enumerate(cases):
            f.write("  " + json.dumps(c) + (",\n" if i + 1 < len(cases) else "\n"))
        f.write(" ]}\n")
    print(f"{args.out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
