"""Log-domain Sinkhorn: a numpy solver for plans, a batched differentiable torch one for the distillation loss."""
from __future__ import annotations

import math

import numpy as np

from hubscout.ot._validation import _as_matrix, _logsumexp

# Probabilities below this are treated as this in log space: keeps log-domain Sinkhorn and its gradients finite
# for (near) one-hot predictions.
LOG_PROB_FLOOR = math.log(1e-12)


def sinkhorn_log(a, b, M, reg: float, n_iter: int = 1000, tol: float = 1e-9) -> np.ndarray:
    r"""Entropic OT plan by log-domain Sinkhorn iterations.

    Solves :math:`\min_{P \in U(a,b)} \langle P, M\rangle - \mathrm{reg}\, H(P)`, with
    :math:`H(P) = -\sum_{ij} P_{ij}(\log P_{ij} - 1)`, the same problem as ``ot.sinkhorn(a, b, M, reg)``.
    The scalings are kept as dual potentials ``f, g`` and updated with log-sum-exp, so small ``reg`` does not
    underflow ``exp(-M/reg)`` (Peyré & Cuturi, "Computational Optimal Transport", 2019, Sec. 4.4; Schmitzer,
    "Stabilized sparse scaling algorithms for entropy regularized transport problems", SIAM J. Sci. Comput. 2019).

    The update order (column scaling first, then row scaling) is POT's, so after the same number of iterations
    the plans coincide with ``ot.bregman.sinkhorn_knopp`` and the row marginals are exactly ``a``.

    Parameters
    ----------
    a : (K,) source histogram (non-negative).
    b : (C,) target histogram, same total mass as ``a``.
    M : (K, C) ground cost.
    reg : entropic regularisation, > 0. As ``reg -> 0`` the plan tends to the exact (``ot.emd``) plan.
    n_iter : maximum number of iterations.
    tol : stop when the L1 violation of the column marginal falls below this.

    Returns
    -------
    (K, C) transport plan; rows/columns where ``a``/``b`` are zero are zero.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    M = _as_matrix(M, "M")
    if M.shape != (a.size, b.size):
        raise ValueError(f"M must have shape (len(a), len(b)) = ({a.size}, {b.size}), got {M.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("a and b must be finite")
    if a.min() < 0 or b.min() < 0:
        raise ValueError("a and b must be non-negative")
    if not reg > 0:
        raise ValueError(f"reg must be > 0, got {reg}")
    ma, mb = a.sum(), b.sum()
    if ma <= 0 or abs(ma - mb) > 1e-6 * max(ma, mb):
        raise ValueError(f"a and b must have the same positive mass, got {ma:.10g} and {mb:.10g}")

    # log(0) = -inf would poison the log-sum-exp; zero-mass rows/columns carry nothing, so solve on the support.
    ia, ib = np.flatnonzero(a > 0), np.flatnonzero(b > 0)
    la, lb = np.log(a[ia]), np.log(b[ib])
    Mr = M[np.ix_(ia, ib)] / reg
    bs = b[ib]

    f = np.zeros(ia.size)  # potentials in units of reg
    g = np.zeros(ib.size)
    for it in range(n_iter):
        g = lb - _logsumexp(f[:, None] - Mr, axis=0)
        f = la - _logsumexp(g[None, :] - Mr, axis=1)
        if it % 10 == 0 or it == n_iter - 1:
            col = np.exp(f[:, None] + g[None, :] - Mr).sum(axis=0)
            if np.abs(col - bs).sum() < tol:
                break

    P = np.zeros(M.shape)
    P[np.ix_(ia, ib)] = np.exp(f[:, None] + g[None, :] - Mr)
    return P


def sinkhorn_log_torch(log_a, log_b, M, reg: float, n_iter: int = 50):
    r"""Batched, differentiable entropic OT cost :math:`\langle P_\mathrm{reg}(a_i, b_i), M\rangle` in torch.

    For each sample ``i`` of the batch, runs ``n_iter`` log-domain Sinkhorn iterations between the teacher's
    softened prediction ``a_i = exp(log_a[i])`` (over K teacher classes) and the student's prediction
    ``b_i = exp(log_b[i])`` (over C target classes), and returns the transport cost of the resulting plan
    (without the entropy term, like ``ot.sinkhorn2``). The iterations are unrolled, so autograd differentiates
    through them to ``log_b``, ``log_a`` and ``M`` (Genevay, Peyré & Cuturi, "Learning Generative Models with
    Sinkhorn Divergences", AISTATS 2018). This is the cross-task distillation loss of Lu, Ye & Zhan
    (arXiv 2204.11526).

    Log probabilities are clamped at ``log(1e-12)`` and renormalised first, so exact zeros (``-inf``, a hard
    one-hot teacher) and float32 underflow give the same problem with strictly positive marginals, finite
    potentials and finite gradients, while the masses still balance; entries below the floor get no gradient.
    Because of the renormalisation, unnormalised log-weights (e.g. raw logits) give the same result as their
    ``log_softmax``.

    Memory: autograd keeps about one ``(B, K, C)`` tensor per half-iteration, i.e. ``2 * n_iter * B * K * C``
    elements; shrink the batch (or ``n_iter``) for K=1000 teachers.

    Parameters
    ----------
    log_a : (B, K) teacher log-probabilities (e.g. ``log_softmax(teacher_logits / T)``).
    log_b : (B, C) student log-probabilities (``log_softmax``; pass log-softmax output, not ``log(softmax)``,
        whose gradient is NaN at exact zeros).
    M : (K, C) ground cost, a tensor (or array) on any device; cast to ``log_b``'s dtype/device.
    reg : entropic regularisation, > 0, in the units of ``M``.
    n_iter : number of Sinkhorn iterations (each: column then row scaling, as in POT).

    Returns
    -------
    (B,) tensor of per-sample transport costs.
    """
    import torch

    if not isinstance(log_b, torch.Tensor):
        log_b = torch.as_tensor(log_b)
    if not isinstance(log_a, torch.Tensor):
        log_a = torch.as_tensor(log_a)
    M = torch.as_tensor(M, dtype=log_b.dtype, device=log_b.device)
    log_a = log_a.to(dtype=log_b.dtype, device=log_b.device)
    if log_a.dim() != 2 or log_b.dim() != 2 or log_a.shape[0] != log_b.shape[0]:
        raise ValueError(f"log_a (B,K) and log_b (B,C) must be 2-D with the same B, got {tuple(log_a.shape)} "
                         f"and {tuple(log_b.shape)}")
    if M.shape != (log_a.shape[1], log_b.shape[1]):
        raise ValueError(f"M must have shape (K, C) = ({log_a.shape[1]}, {log_b.shape[1]}), got {tuple(M.shape)}")
    if not reg > 0:
        raise ValueError(f"reg must be > 0, got {reg}")
    if n_iter < 1:
        raise ValueError("n_iter must be >= 1")

    la = log_a.clamp_min(LOG_PROB_FLOOR)
    lb = log_b.clamp_min(LOG_PROB_FLOOR)
    la = la - torch.logsumexp(la, dim=1, keepdim=True)
    lb = lb - torch.logsumexp(lb, dim=1, keepdim=True)
    Mr = (M / reg).unsqueeze(0)  # (1, K, C)

    f = torch.zeros_like(la)  # potentials in units of reg
    g = torch.zeros_like(lb)
    for _ in range(n_iter):
        g = lb - torch.logsumexp(f.unsqueeze(2) - Mr, dim=1)
        f = la - torch.logsumexp(g.unsqueeze(1) - Mr, dim=2)
    P = torch.exp(f.unsqueeze(2) + g.unsqueeze(1) - Mr)
    return (P * M.unsqueeze(0)).sum(dim=(1, 2))
