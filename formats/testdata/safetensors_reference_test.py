"""Cross-checks bigplan's safetensors reader and writer against the Python `safetensors` package.

Usage: safetensors_reference_test.py CHECKER  (CHECKER is the reference_check binary)
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
FROM_NAME = {v: k for k, v in DTYPES.items()}

failures = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def tensor_sha(t):
    raw = t.contiguous().reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()


def run_checker(checker, *args, expect_ok=True):
    proc = subprocess.run([checker, *args], capture_output=True, text=True)
    if expect_ok:
        if proc.returncode != 0:
            raise SystemExit(f"checker {args} failed ({proc.returncode}): {proc.stderr}")
        return json.loads(proc.stdout)
    return proc


def make_tensors(gen):
    t = {}
    t["model.embed_tokens.weight"] = torch.randn(37, 16, generator=gen).to(torch.bfloat16)
    t["layers.0.attn.q_proj.weight"] = torch.randn(16, 16, generator=gen).to(torch.float16)
    t["layers.0.mlp.up_proj.weight"] = torch.randn(5, 7, generator=gen)
    t["double"] = torch.randn(3, generator=gen, dtype=torch.float64)
    t["ids"] = torch.randint(-(2**40), 2**40, (4, 3), generator=gen, dtype=torch.int64)
    t["i32"] = torch.randint(-(2**30), 2**30, (6,), generator=gen, dtype=torch.int32)
    t["i16"] = torch.randint(-(2**14), 2**14, (2, 2, 2), generator=gen, dtype=torch.int16)
    t["i8"] = torch.randint(-128, 127, (9,), generator=gen, dtype=torch.int8)
    t["u8"] = torch.randint(0, 255, (10,), generator=gen, dtype=torch.uint8)
    t["mask"] = torch.rand(13, generator=gen) > 0.5
    t["fp8_e4m3"] = torch.randn(8, generator=gen).to(torch.float8_e4m3fn)
    t["fp8_e5m2"] = torch.randn(8, generator=gen).to(torch.float8_e5m2)
    t["scalar"] = torch.tensor(3.5, dtype=torch.float32)
    t["empty"] = torch.zeros(0, 4, dtype=torch.bfloat16)
    t["unicode.ünï.weight"] = torch.ones(2, dtype=torch.float16)
    return t


def compare_read(result, tensors, shard_of, what):
    got = {t["name"]: t for t in result["tensors"]}
    check(set(got) == set(tensors), f"{what}: tensor names {sorted(got)} != {sorted(tensors)}")
    check([t["name"] for t in result["tensors"]] == sorted(got), f"{what}: tensors not sorted by name")
    total = 0
    for name, t in tensors.items():
        if name not in got:
            continue
        g = got[name]
        check(g["dtype"] == DTYPES[t.dtype], f"{what}: {name} dtype {g['dtype']} != {DTYPES[t.dtype]}")
        check(g["shape"] == list(t.shape), f"{what}: {name} shape {g['shape']} != {list(t.shape)}")
        nbytes = t.numel() * t.element_size()
        total += nbytes
        check(g["size"] == nbytes, f"{what}: {name} size {g['size']} != {nbytes}")
        check(g["sha256"] == tensor_sha(t), f"{what}: {name} bytes differ")
        if shard_of is not None:
            check(g["shard"] == shard_of[name], f"{what}: {name} in {g['shard']}, expected {shard_of[name]}")
    check(result["total_bytes"] == total, f"{what}: total_bytes {result['total_bytes']} != {total}")


def header_sha(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(0)
        return hashlib.sha256(f.read(8 + n)).hexdigest()


def main():
    checker = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
    gen = torch.Generator().manual_seed(1234)
    tensors = make_tensors(gen)

    # 1. One file written by safetensors, with metadata.
    single = os.path.join(work, "single", "model.safetensors")
    os.makedirs(os.path.dirname(single))
    metadata = {"format": "pt", "source": "reference", "empty": ""}
    save_file(tensors, single, metadata=metadata)
    result = run_checker(checker, "read", single)
    check(result["metadata"] == metadata, f"metadata {result['metadata']} != {metadata}")
    compare_read(result, tensors, None, "single file")
    check(result["shards"][0]["header_sha256"] == header_sha(single), "single: header digest")
    check(result["shards"][0]["size"] == os.path.getsize(single), "single: size")
    # The directory form finds the same file.
    compare_read(run_checker(checker, "read", os.path.dirname(single)), tensors, None, "single dir")

    # 2. Sharded with a Hugging Face index.
    sharded = os.path.join(work, "sharded")
    os.makedirs(sharded)
    names = sorted(tensors)
    parts = [names[::2], names[1::2]]
    shard_of = {}
    weight_map = {}
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({n: tensors[n] for n in part}, os.path.join(sharded, fname), metadata={"format": "pt"})
        for n in part:
            shard_of[n] = fname
            weight_map[n] = fname
    with open(os.path.join(sharded, "model.safetensors.index.json"), "w") as f:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    result = run_checker(checker, "read", sharded)
    compare_read(result, tensors, shard_of, "sharded")
    check(result["index"].endswith("model.safetensors.index.json"), f"index path {result['index']}")
    expected_digest = hashlib.sha256(
        "".join(f"{s['file']}\n{s['size']}\n{header_sha(os.path.join(sharded, s['file']))}\n"
                for s in result["shards"]).encode()).hexdigest()
    check(result["digest"] == expected_digest, "sharded: fingerprint digest")

    # 3. A truncated copy is an error naming the file, not a crash.
    with open(single, "rb") as f:
        data = f.read()
    for cut in (4, 20, len(data) // 2, len(data) - 1):
        bad = os.path.join(work, f"cut{cut}.safetensors")
        with open(bad, "wb") as f:
            f.write(data[:cut])
        proc = run_checker(checker, "read", bad, expect_ok=False)
        check(proc.returncode == 1 and "corrupt" in proc.stderr and bad in proc.stderr,
              f"truncated at {cut}: rc={proc.returncode} stderr={proc.stderr!r}")

    # 4. Our writer, read back by safetensors.
    for seed in (7, 8):
        out = os.path.join(work, f"written{seed}")
        info = run_checker(checker, "write", out, str(seed))
        with open(os.path.join(out, "model.safetensors.index.json")) as f:
            index = json.load(f)
        check(sorted(set(index["weight_map"].values())) == sorted(info["files"]), "writer: index files")
        loaded = {}
        for fname in info["files"]:
            with safe_open(os.path.join(out, fname), framework="pt") as f:
                check(f.metadata() == {"format": "pt"}, f"writer: metadata {f.metadata()}")
                for k in f.keys():
                    check(index["weight_map"][k] == fname, f"writer: {k} listed in the wrong shard")
                    loaded[k] = f.get_tensor(k)
        total = sum(t.numel() * t.element_size() for t in loaded.values())
        check(index["metadata"]["total_size"] == total, "writer: total_size")
        scale = info["scale"]
        for spec in info["tensors"]:
            name = spec["name"]
            check(name in loaded, f"writer: {name} missing")
            if name not in loaded:
                continue
            t = loaded[name]
            check(DTYPES[t.dtype] == spec["dtype"], f"writer: {name} dtype {t.dtype}")
            check(list(t.shape) == spec["shape"], f"writer: {name} shape {list(t.shape)}")
            check(tensor_sha(t) == spec["sha256"], f"writer: {name} bytes differ from GenerateTensorBytes")
            if t.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) and t.numel():
                v = t.double()
                center = 1.0 if spec["norm"] else 0.0
                tol = scale + (2**-7 if t.dtype == torch.bfloat16 else 1e-3)
                check(bool(((v - center).abs() <= tol).all()), f"writer: {name} values out of range")
                check(bool(torch.isfinite(v).all()), f"writer: {name} has non-finite values")
            if t.dtype == torch.bool:
                check(t.view(torch.uint8).max().item() <= 1, f"writer: {name} bool bytes not 0/1")
        # Our reader agrees with what safetensors loaded.
        compare_read(run_checker(checker, "read", out), loaded, {k: index["weight_map"][k] for k in loaded},
                     f"writer seed {seed}")
        if seed == 7:
            first = {k: tensor_sha(v) for k, v in loaded.items()}
        else:
            differ = [k for k, v in loaded.items() if v.numel() and tensor_sha(v) != first[k]]
            check(len(differ) == sum(1 for v in loaded.values() if v.numel()), "writer: seeds give equal tensors")

    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print(f"safetensors reference test: all {checks} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
