"""Orthogonal matrices for rotations: Hadamard constructions and their random variants. Pure functions.

``hadamard(n)`` is a normalized Hadamard matrix, entries +-1/sqrt(n), in float64: a Kronecker
product of Sylvester's H2 and Paley's construction I (order q + 1 for a prime q = 3 mod 4: 4, 8,
12, 20, 24, 32, 44, 48, 60, 68, 72, ...). The Kronecker product of Hadamard matrices is Hadamard,
so every n = 2^k * (product of Paley orders) is covered, the largest Paley factor first:
64 = 2^6, 576 = 72 * 8, 768 = 384 * 2, 1536 = 384 * 4, 3072 = 384 * 8. Sizes with no construction
(odd n > 1, 2 mod 4, ...) raise ``ValueError``; ``random_orthogonal`` (QR of a Gaussian) is the
documented alternative (``rotate_model(kind="orthogonal")``).

Every matrix here has a constant first column 1/sqrt(n) (rows are negated where needed): GPT-2's
mean-fixing rotation (:func:`mean_fixing`) relies on it.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["hadamard", "has_hadamard", "mean_fixing", "random_hadamard", "random_orthogonal", "random_signs"]


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, int(q ** 0.5) + 1))


def _paley_orders(n: int) -> list[int]:
    """Orders q + 1 <= n dividing n with q prime, q = 3 mod 4 (Paley I applies), largest first."""
    return [m for m in range(n, 3, -1) if n % m == 0 and _is_prime(m - 1) and (m - 1) % 4 == 3]


@lru_cache(maxsize=None)
def _factors(n: int) -> tuple[int, ...] | None:
    """Base orders (2 or Paley orders) whose Kronecker product has order ``n``; None if there are none."""
    if n == 1:
        return ()
    if n & (n - 1) == 0:           # a power of two: Sylvester, the cheapest and best known
        return (2,) * (n.bit_length() - 1)
    for m in _paley_orders(n):
        rest = _factors(n // m)
        if rest is not None:
            return (m, *rest)
    return None


def has_hadamard(n: int) -> bool:
    """Whether :func:`hadamard` has a construction for order ``n``."""
    return n >= 1 and _factors(n) is not None


def _paley(m: int) -> Tensor:
    """Paley construction I, order m = q + 1: H = I + S with S = [[0, 1^T], [-1, Q]], Q the Jacobsthal
    matrix Q[i, j] = chi(j - i) (quadratic character mod q). Entries +-1, (m, m)."""
    q = m - 1
    residues = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in residues else -1.0 for a in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    jac = chi[(idx[None, :] - idx[:, None]) % q]            # (q, q), antisymmetric since q = 3 mod 4
    s = torch.zeros(m, m, dtype=torch.float64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, jac
    return torch.eye(m, dtype=torch.float64) + s


def hadamard(n: int) -> Tensor:
    """Normalized Hadamard matrix (n, n), float64, orthogonal, entries +-1/sqrt(n), first column constant.

    Raises ``ValueError`` when no construction covers ``n`` (see the module docstring)."""
    factors = _factors(n) if n >= 1 else None
    if factors is None:
        raise ValueError(f"no Hadamard construction for size {n}: sizes 2^k * (q + 1) products with q a prime "
                         "= 3 mod 4 are covered (e.g. 64, 576, 768, 1536, 3072)")
    h = torch.ones(1, 1, dtype=torch.float64)
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    for m in factors:
        h = torch.kron(h, h2 if m == 2 else _paley(m))
    h = h * torch.sign(h[:, :1])           # rows negated so the first column is all +1 (still Hadamard)
    return h / n ** 0.5


def random_signs(n: int, generator: torch.Generator) -> Tensor:
    """(n,) float64 of independent +-1."""
    return torch.randint(0, 2, (n,), generator=generator).double() * 2 - 1


def random_hadamard(n: int, generator: torch.Generator) -> Tensor:
    """``hadamard(n) @ diag(s)``, s random +-1: (n, n) orthogonal, every entry +-1/sqrt(n).

    A row vector x rotated as ``x @ Q`` sends one outlier coordinate x_j to the row Q[j], whose
    entries all have magnitude |x_j|/sqrt(n): the flattest possible spread."""
    return hadamard(n) * random_signs(n, generator)[None, :]


def random_orthogonal(n: int, generator: torch.Generator) -> Tensor:
    """Haar-random orthogonal (n, n) float64: QR of a Gaussian with R's diagonal signs fixed."""
    g = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r))[None, :]


def mean_fixing(n: int, generator: torch.Generator, kind: str = "hadamard") -> Tensor:
    """A random orthogonal (n, n) Q with ``Q @ 1 = 1``: it maps zero-mean vectors to zero-mean vectors.

    ``hadamard``: ``Q = H diag(1, s) H^T`` with H = :func:`hadamard` (first column 1/sqrt(n)) and s
    random +-1 over the other n - 1 columns: ``H^T 1/sqrt(n) = e1``, which diag(1, s) keeps, and H maps
    back. No Q with every entry +-1/sqrt(n) can fix 1 unless sqrt(n) is an integer (a row would have
    to sum to 1), so the spread is Gaussian-like (entries ~ N(0, 1/n)), as a random rotation's.
    ``orthogonal``: ``Q = B diag(1, R) B^T``, B the Householder reflection whose first column is
    1/sqrt(n), R Haar-random orthogonal on the other n - 1 directions."""
    if kind == "hadamard":
        h = hadamard(n)
        d = torch.cat([torch.ones(1, dtype=torch.float64), random_signs(n - 1, generator)])
        return (h * d[None, :]) @ h.T
    if kind == "orthogonal":
        u = torch.full((n,), n ** -0.5, dtype=torch.float64)
        v = u - torch.nn.functional.one_hot(torch.tensor(0), n).double()    # reflection mapping e1 <-> u
        b = torch.eye(n, dtype=torch.float64) - 2 * torch.outer(v, v) / (v @ v) if v.norm() > 0 \
            else torch.eye(n, dtype=torch.float64)
        r = torch.eye(n, dtype=torch.float64)
        r[1:, 1:] = random_orthogonal(n - 1, generator)
        return b @ r @ b.T
    raise ValueError(f"unknown rotation kind {kind!r}: use hadamard or orthogonal")
