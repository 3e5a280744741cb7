"""Repository rule exposing LibTorch from the installed PyPI `torch` package.

The Python interpreter is, in order: $BIGPLAN_PYTHON, the virtual environment made by tools/setup.sh
($HOME/.cache/bigplan/venv), then `python3` on PATH. The rule asks that interpreter where torch is installed,
so no machine's path is written anywhere. It also exposes the interpreter itself as `@torch//:python3`
for tests that compare against the Python reference packages.
"""

_BUILD = """
package(default_visibility = ["//visibility:public"])

# Linked by -L/-l against the torch package's own lib/ (not copied into Bazel's solib tree), so the libraries'
# own RUNPATH ($ORIGIN/...) still finds their dependencies (nvshmem, cuBLAS, ... from the nvidia-* wheels).
# On another machine (the GPU machine) LD_LIBRARY_PATH points at that machine's torch lib/ instead.
cc_library(
    name = "torch",
    hdrs = glob(["include/**/*.h", "include/**/*.hpp", "include/**/*.cuh"], allow_empty = True),
    includes = [
        "include",
        "include/torch/csrc/api/include",
    ],
    linkopts = [
        "-L{libdir}",
        "-Wl,-rpath,{libdir}",
        "-Wl,--no-as-needed",
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
        "-Wl,--as-needed",
        "-pthread",
    ],
)

# CUDA parts of LibTorch; linked with --no-as-needed so its CUDA hooks register at start.
cc_library(
    name = "torch_cuda",
    linkopts = [
        "-L{libdir}",
        "-Wl,--no-as-needed",
        "-ltorch_cuda",
        "-lc10_cuda",
        "-Wl,--as-needed",
    ],
    deps = [":torch"],
)

sh_binary(
    name = "python3",
    srcs = ["python3.sh"],
)

exports_files(["python3.sh", "torch_info.txt"])
"""

def _find_python(ctx):
    explicit = ctx.os.environ.get("BIGPLAN_PYTHON", "")
    if explicit:
        return explicit
    home = ctx.os.environ.get("HOME", "")
    venv = home + "/.cache/bigplan/venv/bin/python3"
    if home and ctx.path(venv).exists:
        return venv
    found = ctx.which("python3")
    if found == None:
        fail("No Python found: run tools/setup.sh, or set BIGPLAN_PYTHON to a Python that has torch installed.")
    return str(found)

def _torch_repository_impl(ctx):
    python = _find_python(ctx)
    res = ctx.execute([python, "-c", "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__); print(int(torch.compiled_with_cxx11_abi()))"])
    if res.return_code != 0:
        fail("Python %s cannot import torch (run tools/setup.sh): %s" % (python, res.stderr))
    lines = res.stdout.strip().split("\n")
    torch_dir = lines[0]
    ctx.symlink(torch_dir + "/include", "include")
    ctx.symlink(torch_dir + "/lib", "lib")
    ctx.file("torch_info.txt", "python=%s\ntorch_dir=%s\nversion=%s\ncxx11_abi=%s\n" % (python, torch_dir, lines[1], lines[2]))
    ctx.file("python3.sh", "#!/bin/sh\nexec \"%s\" \"$@\"\n" % python, executable = True)
    ctx.file("BUILD", _BUILD.replace("{libdir}", torch_dir + "/lib"))

torch_repository = repository_rule(
    implementation = _torch_repository_impl,
    environ = ["BIGPLAN_PYTHON", "HOME"],
    local = True,
)
