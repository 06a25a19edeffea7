"""The factorisations that generated modules use for inverses, solves and determinants.

A model's inverse, the inverse of its transpose, its determinant, its log-determinant and
its products with the inverse all come from one factorisation of the matrix
(``symgrad/codegen/factor.py`` groups them).  ``sg_factor`` chooses it at run time:

* **Cholesky** (``np.linalg.cholesky``, LAPACK) when the matrix is symmetric, either by
  construction (the caller passes ``symmetric=True``: ``B B^T``, ``B^T B``, the identity, an
  elementwise function of symmetric pieces such as an RBF kernel matrix plus noise) or because
  it is exactly symmetric at run time (every entry equal to its mirror).  Cholesky reads one
  triangle only, so symmetry must be certain; positive definiteness is not assumed but
  tested by the factorisation itself, which fails on a matrix that is not numerically
  positive definite.
* **LU with partial pivoting** otherwise, and where that Cholesky fails.

Only numpy and numba are used (``np.linalg.cholesky`` is one of the LAPACK routines Numba
compiles); the triangular solves and inverses are loops here, along contiguous rows.  This
file's text below the marker line is copied into a generated module that needs it.
"""

import numba
import numpy as np

# --- symgrad linear algebra: copied into generated modules that factorise a matrix -------
_SG_LINALG_FLAGS = {"nsz", "arcp", "contract", "reassoc"}


@numba.njit(cache=True, fastmath=_SG_LINALG_FLAGS, error_model="numpy")
def sg_is_symmetric(a):
    n = a.shape[0]
    for i in range(n):
        for j in range(i):
            if a[i, j] != a[j, i]:
                return False
    return True


# columns per panel of the blocked LU: the update of the rest is one BLAS product per panel
_SG_LU_BLOCK = 48


@numba.njit(cache=True, fastmath=_SG_LINALG_FLAGS, error_model="numpy")
def sg_lu(a):
    """(LU packed in one matrix, the row swapped with row k at step k): a = P^T L U with L
    unit lower triangular.  Blocked as LAPACK's getrf: each panel of columns is factorised
    by loops (whole rows swapped), its block row of U solved, and the rest of the matrix
    updated by one matrix product.  A zero pivot is left in place (the determinant is then
    0; a solve or an inverse raises)."""
    lu = a.copy()
    n = lu.shape[0]
    piv = np.empty(n, dtype=np.int64)
    for k0 in range(0, n, _SG_LU_BLOCK):
        k1 = min(k0 + _SG_LU_BLOCK, n)
        for k in range(k0, k1):
            p = k
            best = abs(lu[k, k])
            for i in range(k + 1, n):
                if abs(lu[i, k]) > best:
                    best = abs(lu[i, k])
                    p = i
            piv[k] = p
            if p != k:
                for j in range(n):
                    lu[k, j], lu[p, j] = lu[p, j], lu[k, j]
            pivot = lu[k, k]
            if pivot == 0.0:
                continue
            for i in range(k + 1, n):
                factor = lu[i, k] / pivot
                lu[i, k] = factor
                for j in range(k + 1, k1):
                    lu[i, j] -= factor * lu[k, j]
        if k1 < n:
            for k in range(k0, k1):             # U12 = L11^-1 A12
                for i in range(k + 1, k1):
                    factor = lu[i, k]
                    for j in range(k1, n):
                        lu[i, j] -= factor * lu[k, j]
            lower = lu[k1:, k0:k1].copy()
            upper = lu[k0:k1, k1:].copy()
            product = np.dot(lower, upper)
            for i in range(k1, n):
                for j in range(k1, n):
                    lu[i, j] -= product[i - k1, j - k1]
    return lu, piv


@numba.njit(cache=True, error_model="numpy")
def sg_factor(a, symmetric):
    """(factor, pivots, whether it is a Cholesky factor) of the square matrix a."""
    if a.shape[0] != a.shape[1]:
        raise ValueError("a factorised matrix must be square")
    if symmetric or sg_is_symmetric(a):
        try:
            lower = np.linalg.cholesky(np.ascontiguousarray(a))
            return lower, np.empty(0, dtype=np.int64), True
        except Exception:  # noqa: BLE001 - not positive definite: LU below
            pass
    lu, piv = sg_lu(np.ascontiguousarray(a))
    return lu, piv, False


@numba.njit(cache=True, fastmath=_SG_LINALG_FLAGS, error_model="numpy")
def sg_factor_logdet(f, piv, cholesky):
    """log(det(a)) from its factor; NaN where det(a) is not positive (as symgrad's logdet)."""
    n = f.shape[0]
    total = 0.0
    if cholesky:
        for i in range(n):
            total += np.log(f[i, i])
        return 2.0 * total
    negative = False
    for i in range(n):
        d = f[i, i]
        if d == 0.0:
            return np.nan
        if d < 0.0:
            negative = not negative
        if piv[i] != i:
            negative = not negative
        total += np.log(abs(d))
    return np.nan if negative else total


@numba.njit(cache=True, fastmath=_SG_LINALG_FLAGS, error_model="numpy")
def sg_factor_det(f, piv, cholesky):
    n = f.shape[0]
    product = 1.0
    if cholesky:
        for i in range(n):
            product *= f[i, i]
        return product * product
    for i in range(n):
        product *= f[i, i]
        if piv[i] != i:
            product = -product
    return product


@numba.njit(cache=True, error_model="numpy")
def _sg_check_pivots(f):
    for i in range(f.shape[0]):
        if f[i, i] == 0.0:
            raise np.linalg.LinAlgError("singular matrix: a solve or an inverse of a matrix "
                                        "whose LU factorisation has a zero pivot")


@numba.njit(cache=True, fastmath=_SG_LINALG_FLAGS, error_model="numpy")
def _sg_triangular_solve(f, x, unit, lower):
    """x <- T^-1 x in place, T the lower (if lower) or upper triangle of f, with a unit
    diagonal if unit: forward substitution from the first row, or back substitution from
    the last."""
    n, m = x.shape
    for step in range(n):
        i = step if lower else n - 1 - step
        first, stop = (0, i) if lower else (i + 1, n)   # the solved rows row i reads
        if m == 1:                      # a vector: a dot product per row of T
            t = x[i, 0]
            for k in range(first, stop):
                t -= f[i, k] * x[k, 0]
            x[i, 0] = t if unit else t / f[i, i]
            continue
        for k in range(first, stop):
            c = f[i, k]
            for j in range(m):
                x[i, j] -= c * x[k, j]
        if not unit:
            r = 1.0 / f[i, i]
            for j in range(m):
                x[i, j] *= r


@numba.njit(cache=True, fastmath=_SG_LINALG_FLAGS, error_model="numpy")
def sg_factor_solve(f, piv, cholesky, b, transposed):
    """a^-1 b (a^-T b if transposed) from the factor of a, as a new array."""
    x = np.ascontiguousarray(b).copy()
    # the unit-diagonal and direction flags are computed from the run-time cholesky rather
    # than written as constants: Numba would compile a copy of the triangular solve per
    # constant value
    unit = not cholesky
    lower = cholesky or unit            # always true
    upper = not lower
    if cholesky:                        # a = L L^T is symmetric: a^-T = a^-1
        _sg_triangular_solve(f, x, unit, lower)
        _sg_triangular_solve(f.T.copy(), x, unit, upper)
        return x
    _sg_check_pivots(f)
    n, m = x.shape
    if not transposed:                  # a = P^T L U: x = U^-1 L^-1 P b
        for k in range(n):
            p = piv[k]
            if p != k:
                for j in range(m):
                    x[k, j], x[p, j] = x[p, j], x[k, j]
        _sg_triangular_solve(f, x, unit, lower)
        _sg_triangular_solve(f, x, cholesky, upper)
        return x
    # a^T = U^T L^T P: x = P^T L^-T U^-T b; f^T holds U^T below its diagonal, L^T above
    flipped = f.T.copy()
    _sg_triangular_solve(flipped, x, cholesky, lower)
    _sg_triangular_solve(flipped, x, unit, upper)
    for k in range(n - 1, -1, -1):
        p = piv[k]
        if p != k:
            for j in range(m):
                x[k, j], x[p, j] = x[p, j], x[k, j]
    return x


@numba.njit(cache=True, fastmath=_SG_LINALG_FLAGS, error_model="numpy")
def _sg_lower_inverse(f, unit):
    """L^-1 for the lower triangle L of f (unit diagonal if unit), by blocks of rows: each
    diagonal block inverted by loops, the blocks left of it by two BLAS products,
    L^-1[I, :I] = -L[I, I]^-1 (L[I, :I] L^-1[:I, :I])."""
    n = f.shape[0]
    inverse = np.zeros((n, n))
    for k0 in range(0, n, _SG_LU_BLOCK):
        k1 = min(k0 + _SG_LU_BLOCK, n)
        block = _sg_lower_inverse_loops(f[k0:k1, k0:k1].copy(), unit)
        for i in range(k1 - k0):
            for j in range(i + 1):
                inverse[k0 + i, k0 + j] = block[i, j]
        if k0 > 0:
            left = np.dot(block, np.dot(f[k0:k1, :k0].copy(), inverse[:k0, :k0].copy()))
            for i in range(k1 - k0):
                for j in range(k0):
                    inverse[k0 + i, j] = -left[i, j]
    return inverse


@numba.njit(cache=True, fastmath=_SG_LINALG_FLAGS, error_model="numpy")
def _sg_lower_inverse_loops(f, unit):
    """L^-1 for the lower triangle L of f (unit diagonal if unit), row by row (each update
    runs along rows)."""
    n = f.shape[0]
    inverse = np.zeros((n, n))
    for i in range(n):
        for k in range(i):
            c = f[i, k]
            for j in range(k + 1):
                inverse[i, j] -= c * inverse[k, j]
        if unit:
            inverse[i, i] = 1.0
            continue
        r = 1.0 / f[i, i]
        for j in range(i):
            inverse[i, j] *= r
        inverse[i, i] = r
    return inverse


@numba.njit(cache=True, fastmath=_SG_LINALG_FLAGS, error_model="numpy")
def sg_factor_inverse(f, piv, cholesky):
    """a^-1 from the factor of a: from a Cholesky factor L, a^-1 = L^-T L^-1; from
    a = P^T L U, a^-1 = U^-1 L^-1 P.  Triangular inverses by loops, then one BLAS product."""
    unit = not cholesky                 # (run-time flags: one compiled copy, see above)
    if cholesky:
        inverse = _sg_lower_inverse(f, unit)
        return np.dot(inverse.T, inverse)
    _sg_check_pivots(f)
    lower = _sg_lower_inverse(f, unit)
    upper_t = _sg_lower_inverse(f.T.copy(), cholesky)      # (U^-1)^T
    out = np.dot(upper_t.T, lower)
    n = f.shape[0]
    for k in range(n - 1, -1, -1):      # times P: the column swaps in reverse order
        p = piv[k]
        if p != k:
            for i in range(n):
                out[i, k], out[i, p] = out[i, p], out[i, k]
    return out
