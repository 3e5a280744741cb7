#!/usr/bin/env python3
"""transformers' greedy generations with SmolLM2-135M-Instruct (float32, CPU): the reference for run/serve tests.

    smollm2_reference.py MODEL_DIR OUT.json

Writes {"cases": [{"name", "kind": "chat"|"text", "prompt", "max_new_tokens", "text", "ids"}]}: the text is the
new tokens decoded with skip_special_tokens=True (generation stops at generation_config's eos_token_id).
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

CASES = [
    ("capital", "chat", "What is the capital of France?", 16),
    ("colors", "text", "The three primary colors are", 8),
]


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    results = []
    for name, kind, prompt, n in CASES:
        if kind == "chat":
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        else:
            ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
        new = gen[0, len(ids):].tolist()
        results.append({"name": name, "kind": kind, "prompt": prompt, "max_new_tokens": n, "prompt_ids": ids,
                        "ids": new, "text": tok.decode(new, skip_special_tokens=True)})
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"cases": results}, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
