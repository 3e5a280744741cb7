"""Times the pieces of bigplan's int4 decode product on one GPU (executor/kernels_quant.cc's tinygemm path) for the
Llama-3-8B layer shapes: the unpacking copy of the row-interleaved values, tinygemm's repack, the scale/zero
transpose and the product itself, against a bf16 GEMV of the same matrix. Prints a JSON line per shape.

    python3 benchmarks/gpu/int4_path_bench.py
"""
import json

import torch


def timed(fn, reps=50):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e3  # microseconds


def main():
    dev = torch.device("cuda")
    group = 128
    for n, k in [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)]:
        groups = k // group
        rows = torch.randint(0, 256, (n, k // 2 + 4 * groups), dtype=torch.uint8, device=dev)
        data = rows[:, : k // 2]
        sz = torch.randn(n, groups, 2, device=dev).to(torch.bfloat16)
        x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        inner = 8 if k % 128 == 0 else 4
        packed = torch._convert_weight_to_int4pack(data.contiguous(), inner)
        szt = sz.transpose(0, 1).contiguous()
        r = {
            "n": n, "k": k,
            "contiguous_us": timed(lambda: data.contiguous()),
            "repack_us": timed(lambda: torch._convert_weight_to_int4pack(data.contiguous(), inner)),
            "transpose_us": timed(lambda: sz.transpose(0, 1).contiguous()),
            "tinygemm_us": timed(lambda: torch._weight_int4pack_mm(x, packed, group, szt)),
            "bf16_gemv_us": timed(lambda: torch.nn.functional.linear(x, w)),
        }
        r["int4_bytes"] = n * (k // 2 + 4 * groups)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
