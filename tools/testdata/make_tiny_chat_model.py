#!/usr/bin/env python3
"""A tiny random-weight Llama (2 layers, hidden 64) with the SmolLM2 tokenizer and chat template, for fast server
load tests: OUT_DIR gets config.json, model.safetensors, generation_config.json and the tokenizer files of
SMOLLM2_DIR (its vocabulary of 49152 ids is the model's).

    make_tiny_chat_model.py SMOLLM2_DIR OUT_DIR
"""
import os
import shutil
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(5)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), out)


if __name__ == "__main__":
    main()
