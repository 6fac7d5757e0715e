"""Inputs and comparisons shared by the tests of every LAM backend against the reference (the
shared part lives in lam_ops/testing.py, which `python -m lam_ops.check` uses too)."""

from lam_ops.testing import TOLERANCES, Case, assert_matches_reference, make_inputs, run_with_grads, tolerance_for

__all__ = [
    "EDGE_CASES",
    "TOLERANCES",
    "Case",
    "assert_matches_reference",
    "make_inputs",
    "run_with_grads",
    "tolerance_for",
]

# The edge cases every backend is tested on: borders, r = 0, windows larger than the image, radius None,
# key masks (with queries that see no key), B = 1, odd sizes, non-contiguous inputs.
EDGE_CASES = [
    Case(1, 3, 4, 5, 7, 0),
    Case(2, 3, 4, 6, 5, 1),
    Case(2, 5, 3, 7, 9, 2, "random"),
    Case(1, 2, 8, 4, 4, 10),
    Case(2, 3, 4, 5, 6, None),
    Case(2, 3, 4, 5, 6, None, "random"),
    Case(2, 4, 5, 9, 8, 3, "sparse"),
    Case(2, 3, 4, 6, 7, 2, "empty"),
    Case(1, 21, 16, 11, 13, 4, contiguous=False),
    Case(2, 1, 1, 1, 1, 0),
    Case(1, 3, 2, 1, 9, 2),
    Case(1, 6, 4, 8, 8, 3, sigma=0.7),
]
