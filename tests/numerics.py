"""Tolerances for float32 results that two runs may legitimately compute differently.

Byte identity holds only where the computation guarantees it: the same process repeating the same
call on the same shapes. Across batch sizes, thread counts, processes and CPUs, MKL and oneDNN
pick other kernels (GEMV vs GEMM, AVX2 vs AVX-512 vs AMX tiles, another split of the reduction over
threads), i.e. they add the same terms in another order. Issue 21 saw it on an Intel Xeon (AMX):
one FLAME decode row alone vs inside a batch of 3 differed in 68 of 786 values by up to 7e-9 m.

The tolerance of such a comparison is the rounding error analysis of a float32 dot product: for any
order of summation (blocked, pairwise, SIMD lanes, FMA or not), the computed
``s^ = fl(sum_i x_i y_i)`` of ``n`` terms satisfies ``|s^ - s| <= gamma_n * sum_i |x_i y_i|`` with
``gamma_n = n u / (1 - n u)`` and ``u = 2**-24`` (Higham, "Accuracy and Stability of Numerical
Algorithms", 2nd ed., eq. (3.5)); two evaluations therefore differ by at most twice that. Where this
worst case is too loose to test anything (long reductions that cancel: a random linear layer of 5832
inputs), the probabilistic bound of Higham & Mary ("A new approach to probabilistic rounding error
analysis", SIAM J. Sci. Comput. 41(5), 2019, Thm 3.1) replaces ``gamma_n`` by
``exp(lam sqrt(n) u + n u^2 / (1 - u)) - 1``, violated with probability at most
``2 n exp(-lam^2 (1 - u)^2 / 2)`` per value: < 1e-17 for ``lam = 10`` and n <= 10^5, so never flaky.
"""
from __future__ import annotations

import math

import numpy as np

U32 = 2.0 ** -24  # float32 unit roundoff


def gamma(n: int) -> float:
    """Deterministic worst case: relative error of an n-term float32 dot product, any order."""
    return n * U32 / (1 - n * U32)


def gamma_probabilistic(n: int, lam: float = 10.0) -> float:
    """Higham & Mary's probabilistic gamma (see the module docstring), lam = 10."""
    return math.expm1(lam * math.sqrt(n) * U32 + n * U32 * U32 / (1 - U32))


def reorder_bound(abs_sum: np.ndarray, n: int, probabilistic: bool = False) -> np.ndarray:
    """Bound on ``|a - b|`` for two float32 evaluations of the same n-term sums whose absolute
    terms add up to ``abs_sum`` (elementwise), computed in float64."""
    g = gamma_probabilistic(n) if probabilistic else gamma(n)
    return 2.0 * g * np.asarray(abs_sum, dtype=np.float64)


def ulp32(x: np.ndarray) -> np.ndarray:
    """One float32 unit in the last place at ``x`` (for the final rounding of a stored value)."""
    return np.spacing(np.abs(np.asarray(x, dtype=np.float32))).astype(np.float64)
