"""Algebraic connectivity λ2 of a batch of connected graphs, on any torch device, never unconverged.

λ2 is the second-smallest eigenvalue of the Laplacian L = D − A (Fiedler 1973; Chung 1997). For a batch of
``(B, n, n)`` boolean adjacencies of equal size, :func:`lambda2_batch` returns every graph's λ2 in float64:

* up to ``dense_limit`` nodes, from a batched dense ``torch.linalg.eigvalsh`` of L;
* above it, by **Lanczos** on the whole batch at once: one batched matrix-vector product per iteration, the
  Krylov basis kept orthogonal to the constant vector (the null space of L, so the smallest Ritz value tends to
  λ2) and fully re-orthogonalised (classical Gram-Schmidt, twice). Convergence is checked every few
  iterations from the tridiagonal matrix (LAPACK's ``stebz``/``stein`` on the host): with θ₁ ≤ θ₂ the two
  smallest Ritz values and r = β‖s₁‖ₙ the residual norm of θ₁'s Ritz vector, θ₁ ≥ λ2 always and
  θ₁ − λ2 ≤ min(r, r² / (θ₂ − θ₁)) (Kato–Temple, with the Ritz gap for the spectral gap); a graph is done when
  that bound is at most ``rtol``·θ₁, or when its Krylov space became invariant (β = 0: its Ritz values are
  exact). Converged graphs leave the batch.
* Graphs still unconverged after ``max_iter`` iterations (path-like graphs, whose λ2 sits in a dense cluster
  of tiny eigenvalues) fall back to the dense solve, on the device up to ``fallback_limit`` nodes and above it
  to the sparse ARPACK solver of :func:`lambda2_scipy`. No value that failed its convergence test is returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch

from topo.graph.bitsets import csr_of
from topo.graph.products import adjacency_product

#: Krylov sizes at which convergence is checked (and :data:`MAX_ITER` itself).
CHECKPOINTS = (24, 48, 80, 120, 170, 230)
MAX_ITER = 300


def laplacians(adjacency: torch.Tensor) -> torch.Tensor:
    """Float64 Laplacians D − A of a ``(B, n, n)`` boolean adjacency batch."""
    a = adjacency.to(torch.float64)
    return torch.diag_embed(a.sum(-1)) - a


def lambda2_dense(adjacency: torch.Tensor) -> torch.Tensor:
    """λ2 of each graph of a ``(B, n, n)`` batch from a dense float64 ``eigvalsh`` (n ≥ 2)."""
    return torch.linalg.eigvalsh(laplacians(adjacency))[:, 1]


def _lanczos(
    operands: tuple[torch.Tensor, ...],
    product: Callable[[tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    scale: torch.Tensor,
    steps: int,
    accept: Callable[[np.ndarray, np.ndarray, int, bool], object | None],
    *,
    orthogonal_to_constant: bool = False,
) -> dict[int, object]:
    """Batched Lanczos with full re-orthogonalisation, until every matrix of the batch is accepted or ``steps``.

    ``operands`` are the batch's tensors (sliced together as matrices leave it) and ``product(operands, q)`` is
    M·q for a ``(B, n)`` block of vectors; ``start`` the ``(B, n)`` start vectors; ``scale`` (B) at least each
    matrix's spectral radius, which sets the size of "zero" for β. At each size of :data:`CHECKPOINTS` (and at
    ``steps``) ``accept(alpha, beta, length, invariant)`` sees one matrix's tridiagonal on the host and returns its
    result, or None to go on. Each step orthogonalises M·q_j against the whole basis by classical Gram-Schmidt,
    twice (and against the constant vector with ``orthogonal_to_constant``). Returns {index in the batch: result}
    for the matrices accepted.
    """
    batch, n = start.shape
    device = start.device
    basis = torch.zeros(batch, steps + 1, n, dtype=torch.float64, device=device)
    basis[:, 0] = start / start.norm(dim=1, keepdim=True)
    alpha = torch.zeros(batch, steps, dtype=torch.float64, device=device)
    beta = torch.zeros(batch, steps, dtype=torch.float64, device=device)
    alive = np.arange(batch)  # original index of each row still iterating
    checkpoints = sorted({c for c in CHECKPOINTS if c < steps} | {steps})
    accepted: dict[int, object] = {}
    for j in range(steps):
        qj = basis[:, j]
        w = product(operands, qj)
        alpha[:, j] = (w * qj).sum(1)
        span = basis[:, : j + 1]
        for _ in range(2):
            w -= torch.bmm(span.transpose(1, 2), torch.bmm(span, w.unsqueeze(2))).squeeze(2)
            if orthogonal_to_constant:
                w -= w.mean(1, keepdim=True)
        norm = w.norm(dim=1)
        beta[:, j] = norm
        basis[:, j + 1] = w / norm.clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(1)
        length = j + 1
        if length not in checkpoints:
            continue
        host_alpha, host_beta = alpha[:, :length].cpu().numpy(), beta[:, :length].cpu().numpy()
        host_scale = scale.cpu().numpy()
        keep = []
        for row in range(len(alive)):
            invariant = bool(host_beta[row, length - 1] <= 1e-12 * host_scale[row])
            result = accept(host_alpha[row], host_beta[row], length, invariant)
            if result is None:
                keep.append(row)
            else:
                accepted[int(alive[row])] = result
        if not keep or length == steps:
            break
        if len(keep) < len(alive):
            index = torch.tensor(keep, device=device)
            operands = tuple(t[index] for t in operands)
            basis, alpha, beta, scale = basis[index], alpha[index], beta[index], scale[index]
            alive = alive[keep]
    return accepted


def _ritz_bound(alpha: np.ndarray, beta: np.ndarray, length: int) -> tuple[float, float]:
    """Smallest Ritz value of the Lanczos tridiagonal of ``length`` and a bound on its distance to λ2."""
    if length == 1:
        return float(alpha[0]), abs(float(beta[0]))
    values, vectors = scipy.linalg.eigh_tridiagonal(
        alpha[:length], beta[: length - 1], select="i", select_range=(0, 1)
    )
    residual = abs(float(beta[length - 1]) * float(vectors[-1, 0]))
    gap = float(values[1] - values[0])
    bound = min(residual, residual**2 / gap) if gap > 0 else residual
    return float(values[0]), bound


def lambda2_lanczos(
    adjacency: torch.Tensor, *, rtol: float = 1e-10, max_iter: int = MAX_ITER, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Lanczos for λ2 of connected graphs (see the module docstring).

    Returns ``(values, converged)``: float64 λ2 estimates on the host and a boolean tensor saying which met the
    convergence test; unconverged entries are NaN.
    """
    batch, n, _ = adjacency.shape
    device = adjacency.device
    a = adjacency.to(torch.float64)
    degrees = a.sum(-1)
    generator = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(batch, n, dtype=torch.float64, device=device, generator=generator)
    q -= q.mean(1, keepdim=True)

    def accept(alpha: np.ndarray, beta: np.ndarray, length: int, invariant: bool) -> float | None:
        theta, bound = _ritz_bound(alpha, beta, length)
        return theta if invariant or bound <= rtol * max(theta, 0.0) else None

    accepted = _lanczos((a, degrees), lambda t, x: t[1] * x - torch.bmm(t[0], x.unsqueeze(2)).squeeze(2), q,
                        2.0 * degrees.amax(1), min(max_iter, n - 1), accept, orthogonal_to_constant=True)
    values = torch.full((batch,), math.nan, dtype=torch.float64)
    converged = torch.zeros(batch, dtype=torch.bool)
    for index, theta in accepted.items():
        values[index], converged[index] = theta, True
    return values, converged


def lambda2_scipy(adjacency: np.ndarray, dense_limit: int = 256, split: int | None = None) -> float:
    """λ2 of one connected graph (numpy boolean adjacency, n ≥ 2) with scipy, on the CPU.

    LAPACK's ``eigh`` restricted to the second eigenvalue up to ``dense_limit`` nodes. Above it ARPACK's Lanczos for
    the two smallest eigenvalues of the Laplacian (its products on every core,
    :func:`topo.graph.products.adjacency_product`: a bipartite graph's, when ``split`` gives its first side, from
    its block held dense when that is faster), to ARPACK's tolerance 1e-8 and at most 50 restarts of a 40-vector
    basis (twice ARPACK's default: half the matrix products on the clustered spectra of N:M layers, measured on a
    2:4 Llama MLP layer); when that does not converge (λ2 inside a cluster of tiny eigenvalues, as in path-like
    graphs), ARPACK in shift-invert mode around a small negative shift, where 0 and λ2 are the eigenvalues nearest
    the shift and converge at once; if even that fails, the dense solve. Of the eigenvalues either solve returns,
    λ2 is the smallest above 1/n² (a connected graph's λ2 is at least 4/(n·diameter) > 4/n², Mohar 1991), not
    the larger of the two: for graphs whose λ2 is repeated (cycles, grids, tori) ARPACK returned λ2 and λ4, missing
    0 and λ2's second copy, and the larger was twice to four times λ2.

    ARPACK's tolerance bounds the Ritz residual relative to the eigenvalue; the eigenvalue's own error is of the
    order of the residual's square over the spectral gap: λ2 of 2:4 layers (3,776 and 7,552 nodes) came out equal
    to 1e-15 with tolerances 1e-10 and 1e-8, the second with 22–33 % fewer products.
    """
    n = adjacency.shape[0]
    degrees = adjacency.sum(1, dtype=np.float64)
    if n <= dense_limit:
        return _lambda2_lapack(adjacency, degrees)
    product = adjacency_product(adjacency, split)
    laplacian_operator = scipy.sparse.linalg.LinearOperator(
        (n, n), matvec=lambda x: degrees * x.ravel() - product(x.ravel()), dtype=np.float64)
    start = np.random.default_rng(0).standard_normal(n)
    try:
        values = scipy.sparse.linalg.eigsh(laplacian_operator, k=2, which="SA", tol=1e-8, maxiter=50,
                                           ncv=min(n - 1, 40), v0=start, return_eigenvectors=False)
        if (found := _smallest_nonzero(values, n)) is not None:
            return found
    except scipy.sparse.linalg.ArpackNoConvergence:
        pass
    laplacian = scipy.sparse.diags_array(degrees) - csr_of(adjacency).astype(np.float64)
    shift = -1e-3 * max(1.0, degrees.mean())
    try:
        values = scipy.sparse.linalg.eigsh(laplacian.tocsc(), k=2, sigma=shift, which="LM", v0=start,
                                           return_eigenvectors=False)
        if (found := _smallest_nonzero(values, n)) is not None:
            return found
    except scipy.sparse.linalg.ArpackNoConvergence:
        pass
    return _lambda2_lapack(adjacency, degrees)


def _smallest_nonzero(values: np.ndarray, n: int) -> float | None:
    """The smallest Laplacian eigenvalue among ``values`` above 1/n² (below it only the null one of a connected
    graph of n nodes, see :func:`lambda2_scipy`); None when there is none."""
    nonzero = values[values > 1.0 / n**2]
    return float(nonzero.min()) if nonzero.size else None


def _lambda2_lapack(adjacency: np.ndarray, degrees: np.ndarray) -> float:
    laplacian = np.diag(degrees) - adjacency.astype(np.float64)
    return float(scipy.linalg.eigh(laplacian, eigvals_only=True, subset_by_index=[1, 1], driver="evx")[0])


def lambda2_batch(
    adjacency: torch.Tensor,
    *,
    dense_limit: int = 32,
    fallback_limit: int = 16384,
    rtol: float = 1e-10,
    max_iter: int = MAX_ITER,
) -> np.ndarray:
    """λ2 (float64, on the host) of every graph of a ``(B, n, n)`` batch of connected graphs with n ≥ 2."""
    batch, n, _ = adjacency.shape
    if batch == 0:
        return np.zeros(0)
    if n <= dense_limit:
        return lambda2_dense(adjacency).cpu().numpy()
    values, converged = lambda2_lanczos(adjacency, rtol=rtol, max_iter=max_iter)
    result = values.numpy()
    for index in torch.nonzero(~converged).flatten().tolist():
        if n <= fallback_limit:
            result[index] = float(lambda2_dense(adjacency[index : index + 1])[0])
        else:
            result[index] = lambda2_scipy(adjacency[index].cpu().numpy())
    return result


def _extremes_bound(alpha: np.ndarray, beta: np.ndarray, length: int) -> tuple[np.ndarray, float]:
    """The Ritz values (θ_top, θ_second, θ_bottom) of a Lanczos tridiagonal of ``length`` ≥ 3 and the largest of
    their error bounds min(r, r²/gap), r = |β·s_last| the residual norm, gap the distance to the nearest other Ritz
    value (as for λ2 in :func:`_ritz_bound`)."""
    values, vectors = scipy.linalg.eigh_tridiagonal(alpha[:length], beta[: length - 1])
    residuals = np.abs(beta[length - 1] * vectors[-1])
    bounds = []
    for i in (length - 1, length - 2, 0):
        gap = min(abs(values[i] - values[j]) for j in (i - 1, i + 1) if 0 <= j < length)
        bounds.append(min(residuals[i], residuals[i] ** 2 / gap) if gap > 0 else residuals[i])
    return values[[length - 1, length - 2, 0]], float(max(bounds))


def extreme_eigenvalues_batch(
    matrices: torch.Tensor, *, dense_limit: int = 32, rtol: float = 1e-10, max_iter: int = MAX_ITER, seed: int = 0
) -> np.ndarray:
    """(λ1, λ2, λn) of every symmetric matrix of a ``(B, n, n)`` batch (n ≥ 3), float64 on the host, in columns:
    its two largest eigenvalues and its smallest, each with its multiplicity as a distinct value only.

    Up to ``dense_limit`` a batched dense ``eigvalsh``. Above it Lanczos on the whole batch (one ``bmm`` per
    iteration, full re-orthogonalisation as in :func:`lambda2_lanczos`), converged when each of the three Ritz
    values' bounds is at most ``rtol`` times the spectral radius, or when the Krylov space became invariant;
    matrices not converged after ``max_iter`` iterations get the dense solve. A single Lanczos vector finds each
    *distinct* eigenvalue once: λ2 equals λ1 only where the dense solve runs, so callers pass matrices whose top
    eigenvalue is simple (the adjacency or Gram matrix of a connected graph, by Perron–Frobenius).
    """
    batch, n, _ = matrices.shape
    m = matrices.to(torch.float64)
    if n <= dense_limit:
        values = torch.linalg.eigvalsh(m)
        return values[:, [-1, -2, 0]].cpu().numpy()
    device = m.device
    generator = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(batch, n, dtype=torch.float64, device=device, generator=generator)

    def accept(alpha: np.ndarray, beta: np.ndarray, length: int, invariant: bool) -> np.ndarray | None:
        theta, bound = _extremes_bound(alpha, beta, length)
        return theta if invariant or bound <= rtol * max(abs(theta[0]), abs(theta[2])) else None

    accepted = _lanczos((m,), lambda t, x: torch.bmm(t[0], x.unsqueeze(2)).squeeze(2), q,
                        m.abs().sum(-1).amax(1), min(max_iter, n), accept)  # Gershgorin: ≥ the spectral radius
    result = np.empty((batch, 3))
    for index in range(batch):
        result[index] = accepted[index] if index in accepted else \
            torch.linalg.eigvalsh(m[index]).cpu().numpy()[[-1, -2, 0]]
    return result
