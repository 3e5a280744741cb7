"""Saves tiny random Hugging Face models (safetensors) for the tools' end-to-end tests.

usage: make_tiny_hf.py OUT_DIR   -> OUT_DIR/{llama,llama-tied,gptj,gpt2}
"""
import os
import sys

import torch
import transformers as tf


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    models = {
        "llama": tf.LlamaForCausalLM(tf.LlamaConfig(
            hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)),
        "llama-tied": tf.LlamaForCausalLM(tf.LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=300, max_position_embeddings=256, tie_word_embeddings=True)),
        "gptj": tf.GPTJForCausalLM(tf.GPTJConfig(
            n_embd=64, n_layer=3, n_head=4, rotary_dim=8, vocab_size=256, n_positions=256)),
        "gpt2": tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=64, n_layer=3, n_head=4, vocab_size=256, n_positions=256)),
    }
    for name, model in models.items():
        model.to(torch.bfloat16).save_pretrained(os.path.join(out, name), safe_serialization=True)


if __name__ == "__main__":
    main()
