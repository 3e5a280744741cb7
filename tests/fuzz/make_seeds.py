"""Writes seed corpora for the fuzzers: valid and nearly valid safetensors files and index JSONs."""
import json
import os
import struct
import sys


def st(header, data=b"", length=None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def main(out):
    st_dir = os.path.join(out, "safetensors")
    ix_dir = os.path.join(out, "index")
    os.makedirs(st_dir, exist_ok=True)
    os.makedirs(ix_dir, exist_ok=True)
    seeds = [
        st({"__metadata__": {"format": "pt"},
            "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
            "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}, bytes(range(22))),
        st({"x": {"dtype": "F8_E4M3", "shape": [], "data_offsets": [0, 1]},
            "y": {"dtype": "BOOL", "shape": [0, 5], "data_offsets": [1, 1]},
            "z": {"dtype": "I64", "shape": [1], "data_offsets": [1, 9]}}, bytes(9)),
        st({"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}, bytes(4)),  # truncated
        st({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
            "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}, bytes(12)),  # overlap
        st({"w": {"dtype": "F64", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}}),
        st(b'{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
           bytes(2)),
        st({}, length=1000),
        st(b"[1,2,3]"),
        st(b'{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}    ', bytes(4)),
    ]
    for i, s in enumerate(seeds):
        with open(os.path.join(st_dir, f"seed{i}"), "wb") as f:
            f.write(s)
    indexes = [
        {"metadata": {"total_size": 10}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                                        "b.weight": "model-00002-of-00002.safetensors"}},
        {"a.weight": "s1.safetensors", "b": "s2.safetensors"},
        {"weight_map": []},
        {"weight_map": {"a": 3}},
        {"a": {"dtype": "float32", "shape": [3]}},
    ]
    for i, ix in enumerate(indexes):
        with open(os.path.join(ix_dir, f"seed{i}"), "w") as f:
            json.dump(ix, f)
    with open(os.path.join(ix_dir, "dup"), "w") as f:
        f.write('{"weight_map":{"a":"x.safetensors","a":"y.safetensors"}}')


if __name__ == "__main__":
    main(sys.argv[1])
