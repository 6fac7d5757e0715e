"""The fused C++ CPU kernels (backend "cpp") against the reference."""

import os
import subprocess
import sys

import pytest
import torch
from lam_cases import EDGE_CASES, Case, assert_matches_reference, make_inputs, run_with_grads

import lam_ops

pytestmark = pytest.mark.skipif(
    "cpp" not in lam_ops.available_backends("cpu"), reason="lam_ops._C is not built (pip install -e .)"
)

# radius=None, and windows much larger than the image, run the tiled kernels (lam_cpu.cpp); the
# other windowed radii the offset kernels (lam_offsets.cpp), whose TILING_CASES are those with a radius.
# The tiled kernels work on square query tiles (side 4 for radius <= 2, else 8) against key blocks of at
# most 1024 pixels (whole rows of the tile's key rectangle, or 1024 columns of one row).
TILING_CASES = [
    Case(1, 3, 4, 9, 7, 2),  # side-4 tiles, partial at both borders
    Case(2, 3, 5, 13, 11, 3),  # side-8 tiles, partial at both borders
    Case(1, 4, 3, 20, 19, 5, "random"),  # windows crossing several tiles
    Case(1, 3, 4, 19, 17, None),  # radius None, 9 tiles, one key block
    Case(1, 2, 3, 36, 30, None, "random"),  # radius None, 2 key blocks: online softmax across blocks
    Case(1, 2, 3, 36, 35, 13),  # key rectangle of 34 x 34 > 1024: 2 key blocks
    Case(1, 2, 3, 2, 1100, None),  # rows wider than a key block: blocks split columns
    Case(2, 21, 16, 17, 18, 6, "sparse"),  # BLPSeg's C = 21, heavy key mask
    Case(1, 3, 4, 21, 22, None, "sparse"),  # heavy key mask, global
    Case(1, 21, 256, 9, 10, 3),  # the authors' D = 256 on a small image
    Case(2, 5, 6, 15, 14, 4, "random", contiguous=False),
]

# The offset kernels run strips of L columns x R rows of queries (AVX-512: L 16 float32, 8 float64,
# R 4; AVX2: L 8 and 4, R 3) over a copy of the image padded by r, in passes of 32 channels.
OFFSET_CASES = [
    Case(1, 3, 4, 7, 17, 3, "random"),  # one column past a strip; rows not a multiple of 4
    Case(2, 5, 6, 13, 33, 5, "sparse"),  # 3 strips, the last of one column
    Case(1, 2, 3, 40, 9, 8),  # windows wider than the image: still the offset kernels
    Case(1, 2, 3, 30, 5, 10, "random"),  # windows far larger than the image: the tiled kernels
    Case(1, 4, 40, 9, 18, 3, "random"),  # D = 40: two passes of the dot products
    Case(2, 21, 16, 10, 20, 2, "sparse", contiguous=False),
    Case(1, 2, 128, 11, 30, 13, "random"),  # AVX2: D >= 128 and r > 12 run the tiled kernels
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", EDGE_CASES + TILING_CASES + OFFSET_CASES, ids=str)
def test_matches_reference(case, dtype):
    assert_matches_reference(case, "cpp", dtype)


def gradcheck(case, **kwargs):
    x, f, sigma, key_mask = make_inputs(case, torch.float64)
    fn = lambda x, f, sigma: lam_ops.local_aggregate(x, f, sigma, case.radius, key_mask, backend="cpp")
    return torch.autograd.gradcheck(fn, (x, f, sigma), **kwargs)


@pytest.mark.parametrize(
    "case",
    [Case(2, 3, 4, 5, 6, 1, "sparse"), Case(1, 2, 3, 4, 5, None, "random"), Case(1, 2, 3, 10, 9, 2, "random")],
    ids=str,
)
def test_gradcheck(case):
    assert gradcheck(case)


@pytest.mark.parametrize(
    "case",
    [Case(1, 2, 3, 36, 30, None, "random"), Case(1, 3, 4, 20, 19, 5, "sparse"), Case(1, 2, 3, 7, 18, 2, "random")],
    ids=str,
)
def test_gradcheck_multi_tile(case):
    # Full gradcheck costs one forward per input element; a random projection covers every tile.
    assert gradcheck(case, fast_mode=True)


DETERMINISM_CASE = Case(2, 21, 16, 24, 20, 5, "random")  # 2 x 12 tiles: several parallel chunks


def test_backward_is_bitwise_deterministic():
    a, b = run_with_grads(DETERMINISM_CASE, "cpp"), run_with_grads(DETERMINISM_CASE, "cpp")
    for name in a:
        assert torch.equal(a[name], b[name]), name


# Windows of more than 1024 keys (radius None, or r = 20 on 48 x 48): MKL summed such long products
# in blocks chosen by the calling context, which gave other bits with 1 and 2 threads.
@pytest.mark.parametrize(
    "case", [DETERMINISM_CASE, Case(2, 21, 16, 40, 40, None), Case(1, 21, 16, 48, 48, 20, "random")], ids=str
)
def test_results_do_not_depend_on_thread_count(case):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_with_grads(case, "cpp")
        torch.set_num_threads(2)
        two = run_with_grads(case, "cpp")
    finally:
        torch.set_num_threads(threads)
    for name in one:
        assert torch.equal(one[name], two[name]), name


# Each SIMD level (the CPU's, or lower through LAM_OPS_CPU_ISA, read once per process: the offset
# kernels' AVX-512 and AVX2 builds; baseline runs the tiled kernels at every radius) on the cases of the
# offset kernels and the non-finite contract.
ISA_SCRIPT = """
import torch
from lam_cases import EDGE_CASES, NONFINITE_CASES, assert_matches_reference, assert_nonfinite_case_matches_the_contract
from test_cpp import OFFSET_CASES
for case in EDGE_CASES + OFFSET_CASES:
    for dtype in (torch.float32, torch.float64):
        assert_matches_reference(case, "cpp", dtype)
for case in NONFINITE_CASES:
    assert_nonfinite_case_matches_the_contract(case, "cpp")
print("ok")
"""


def run_with_isa(isa, script):
    env = dict(os.environ, LAM_OPS_CPU_ISA=isa)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, os.path.join(root, "tests"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_simd_path_matches_the_reference(isa):
    done = run_with_isa(isa, ISA_SCRIPT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


def test_unknown_simd_path_is_an_error():
    ones = "torch.ones(1, 1, 3, 3)"
    done = run_with_isa(
        "sse9", f"import torch, lam_ops; lam_ops.local_aggregate({ones}, {ones}, 1.0, 1, backend='cpp')"
    )
    assert done.returncode != 0 and "LAM_OPS_CPU_ISA" in done.stderr, done.stderr
