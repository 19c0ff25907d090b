"""The convex setting of section 5: T strongly convex quadratic upstream tasks with noisy samples.

Task t has loss ``l_t(theta, z) = 0.5 ||B_t (theta - c_t)||^2 + z_t^T B_t (theta - c_t)`` with
``z ~ N(0, sigma^2 I)``, so its expected risk ``E l_t = 0.5 ||B_t (theta - c_t)||^2`` is
``mu``-strongly convex, ``L``-smooth (``mu``, ``L`` the extreme eigenvalues of ``B_t^T B_t``) and
minimised at ``c_t`` with value 0, as section 5 assumes. Downstream task ``lambda`` in the simplex has
loss ``sum_t lambda_t l_t`` (eq. 9).

Two regimes (``kind``). ``random`` (full rank, the default) and ``remark52``: every sample's loss has the
full-rank Hessian ``B_t^T B_t``, so the empirical risk of any N samples is strongly convex with one
minimiser, whatever theta_0. ``underdetermined`` (:class:`RegressionTasks`): the same expected risks, but
each sample is one random linear measurement, ``l_t(theta, (u, e)) = 0.5 (x^T (theta - c_t))^2 - sigma e
x^T (theta - c_t)`` with ``x = B^T u``; with fewer samples than dimensions the empirical risk has an affine
set of minimisers, and gradient descent from theta_0 ends at the one nearest theta_0.

The heterogeneity dial ``minority`` (:func:`minority_optima`), for ``random`` and ``underdetermined``: the
curvatures as drawn, but the T-1 tasks 1..T-1 share one optimum and task 0 (the minority) sits
``minority * spread * sqrt(2 d)`` away from it (``spread * sqrt(2 d)`` is the root-mean-square distance between
two optima of the default family). ``minority=0`` is a homogeneous family (one optimum for every task: every
balancer has the same target); towards 1 the average of the losses out-votes task 0 by T-1 to 1, and its
risk at the minimiser of the average loss (``none``'s target) grows as ``minority^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from data.loading import resumable_loader
from utils.errors import ConfigError


@dataclass
class QuadraticTasks:
    """``B``: (T, d, d) task matrices, ``c``: (T, d) task optima, ``sigma``: sample noise."""

    B: torch.Tensor
    c: torch.Tensor
    sigma: float

    @property
    def num_tasks(self) -> int:
        return self.B.shape[0]

    @property
    def dim(self) -> int:
        return self.B.shape[-1]

    @property
    def A(self) -> torch.Tensor:
        """Hessians ``B_t^T B_t``, (T, d, d)."""
        return self.B.transpose(1, 2) @ self.B

    def residual(self, theta: torch.Tensor) -> torch.Tensor:
        """``B_t (theta - c_t)`` for every task, (T, d)."""
        return torch.einsum("tij,tj->ti", self.B, theta.unsqueeze(0) - self.c)

    def risks(self, theta: torch.Tensor) -> torch.Tensor:
        """Expected risks ``E l_t(theta)``, (T,)."""
        return 0.5 * self.residual(theta).pow(2).sum(-1)

    def sample_losses(self, theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-sample losses for noise ``z`` of shape (n, T, d): (n, T)."""
        r = self.residual(theta)
        return 0.5 * r.pow(2).sum(-1) + torch.einsum("ntd,td->nt", z, r)

    def mixture_optimum(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``argmin`` and ``min`` of the downstream risk ``sum_t lam_t E l_t``, in closed form."""
        A = torch.einsum("t,tij->ij", lam, self.A)
        b = torch.einsum("t,tij,tj->i", lam, self.A, self.c)
        theta = torch.linalg.solve(A, b)
        return theta, (lam * self.risks(theta)).sum()

    def sample_one(self, g: torch.Generator) -> torch.Tensor:
        """One sample ``z``: the noise of every task, (T, d)."""
        return self.sigma * torch.randn(self.num_tasks, self.dim, generator=g)

    def to(self, dtype: torch.dtype) -> QuadraticTasks:
        return type(self)(B=self.B.to(dtype), c=self.c.to(dtype), sigma=self.sigma)


@dataclass
class RegressionTasks(QuadraticTasks):
    """``kind=underdetermined``: noisy linear measurements of the quadratic tasks, one shared design.

    A sample is ``z = (u, e)`` with ``u ~ N(0, I_d)``, ``e ~ N(0, 1)``, and every task sees it through the
    same ``B`` (``B_t = B`` for all t): ``x = B^T u``,
    ``l_t(theta, z) = 0.5 (x^T (theta - c_t))^2 - sigma e x^T (theta - c_t)``, i.e. least squares on
    ``y_t = x^T c_t + sigma e`` less a term that does not depend on theta. The expected risk is the same
    ``0.5 ||B (theta - c_t)||^2`` as in :class:`QuadraticTasks` (minimum 0 at ``c_t``), and eq. 9's
    ``l_lambda = sum_t lambda_t l_t`` is again one measurement per sample, of ``c_lambda = sum_t lambda_t
    c_t`` (up to a term constant in theta): the empirical risk of N samples is least squares with N rows in d
    unknowns, which has a whole affine set of minimisers when N < d.
    """

    def sample_losses(self, theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-sample losses for samples ``z`` of shape (n, d + 1): (n, T)."""
        u, e = z[:, : self.dim], z[:, self.dim]
        s = u @ self.residual(theta).T  # (n, T): u^T B (theta - c_t) = x^T (theta - c_t)
        return 0.5 * s.pow(2) - self.sigma * e.unsqueeze(1) * s

    def sample_one(self, g: torch.Generator) -> torch.Tensor:
        """One sample ``z = (u, e)``, (d + 1,)."""
        return torch.randn(self.dim + 1, generator=g)

    def least_squares(self, lam: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Design ``X`` (n, d) and targets ``y`` (n,) of downstream task ``lam``'s empirical risk on ``z``:
        ``(1/n) sum_i l_lambda(theta, z_i) = (1/2n) ||X theta - y||^2 + const``."""
        u, e = z[:, : self.dim], z[:, self.dim]
        X = u @ self.B[0]  # rows x_i^T = u_i^T B
        c_lam = lam @ self.c
        return X, X @ c_lam + self.sigma * e


def make_tasks(
    kind: str = "random",
    num_tasks: int = 4,
    dim: int = 8,
    sigma: float = 1.0,
    curvature: tuple[float, float] = (0.2, 2.0),
    spread: float = 2.0,
    seed: int = 0,
    minority: float | None = None,
) -> QuadraticTasks:
    """Build an instance.

    ``random``: diagonal curvatures log-uniform in ``curvature`` under a random rotation per task,
    optima ``c_t ~ N(0, spread^2 I)``.
    ``underdetermined``: one curvature matrix for every task, drawn as for ``random``, and optima
    ``c_t ~ N(0, spread^2 I)``, observed through linear measurements (:class:`RegressionTasks`).
    ``remark52``: the family behind Remark 5.2: task 0 has curvature 1 and optimum ``e_1``; the other
    T-1 tasks have curvature ``1/(T-1)`` and optimum 0. Average pre-training lands at ``e_1/2`` (worst
    risk 1/8), minimax at ``e_1/(1+1/sqrt(T-1))`` (worst risk ``1/(2 (sqrt(T-1)+1)^2)``): the ratio of
    the worst-case downstream initial risks is ``(sqrt(T-1)+1)^2 / 4``, linear in T.
    ``minority`` (in [0, 1], ``random`` and ``underdetermined`` only; None: the optima as drawn): the
    heterogeneity dial, the optima of :func:`minority_optima` (the curvatures stay as drawn).
    """
    if num_tasks < 1:
        raise ConfigError(f"data.num_tasks must be >= 1, got {num_tasks}.")
    if dim < 1:
        raise ConfigError(f"data.dim must be >= 1, got {dim}.")
    if sigma < 0:
        raise ConfigError(f"data.sigma must be >= 0, got {sigma}.")
    g = torch.Generator().manual_seed(int(seed))
    if kind == "random":
        B = _random_curvatures(num_tasks, dim, curvature, g)
    elif kind == "remark52":
        return _remark52(num_tasks, dim, sigma, minority)
    elif kind == "underdetermined":
        B = _random_curvatures(1, dim, curvature, g).expand(num_tasks, dim, dim).contiguous()
    else:
        raise ConfigError(f"data.kind must be 'random', 'remark52' or 'underdetermined', got {kind!r}.")
    c = spread * torch.randn(num_tasks, dim, generator=g)
    c = c if minority is None else minority_optima(c, minority, spread, g)
    cls = RegressionTasks if kind == "underdetermined" else QuadraticTasks
    return cls(B=B.float(), c=c.float(), sigma=float(sigma))


def _random_curvatures(n: int, dim: int, curvature, g: torch.Generator) -> torch.Tensor:
    """``n`` square roots ``B`` of curvature matrices: eigenvalues log-uniform in ``curvature`` under a random
    rotation each, (n, dim, dim)."""
    lo, hi = _curvature_range(curvature)
    eig = torch.exp(torch.empty(n, dim).uniform_(torch.tensor(lo).log(), torch.tensor(hi).log(), generator=g))
    q, _ = torch.linalg.qr(torch.randn(n, dim, dim, generator=g))
    return q @ torch.diag_embed(eig.sqrt()) @ q.transpose(1, 2)


def _remark52(num_tasks: int, dim: int, sigma: float, minority) -> QuadraticTasks:
    """Remark 5.2's family (see :func:`make_tasks`)."""
    if minority is not None:
        raise ConfigError(
            "data.minority applies to data.kind=random and underdetermined; kind=remark52 is a minority "
            "family already (its dial is data.num_tasks)."
        )
    if num_tasks < 2:
        raise ConfigError("data.num_tasks must be >= 2 for kind=remark52.")
    scale = torch.full((num_tasks,), 1.0 / (num_tasks - 1))
    scale[0] = 1.0
    B = torch.diag_embed(scale.sqrt().unsqueeze(1).expand(num_tasks, dim).contiguous())
    c = torch.zeros(num_tasks, dim)
    c[0, 0] = 1.0
    return QuadraticTasks(B=B.float(), c=c.float(), sigma=float(sigma))


def minority_distance(spread: float, dim: int) -> float:
    """The minority task's distance to the others' optimum at ``minority=1``: ``spread * sqrt(2 d)``."""
    return float(spread) * (2.0 * dim) ** 0.5


def minority_optima(c: torch.Tensor, minority: float, spread: float, g: torch.Generator) -> torch.Tensor:
    """The optima of the heterogeneity dial from the drawn ones ``c`` (T, d): every task at ``c[1]`` (the
    majority's optimum) except task 0, moved ``minority * minority_distance(spread, d)`` along a random unit
    direction (drawn from ``g``)."""
    num_tasks, dim = c.shape
    minority = float(minority)
    if not 0.0 <= minority <= 1.0:
        raise ConfigError(f"data.minority must be in [0, 1] (or null: no dial), got {minority}.")
    if num_tasks < 2:
        raise ConfigError("data.minority needs data.num_tasks >= 2 (one minority task against the others).")
    u = torch.randn(dim, generator=g)
    out = c[1].expand(num_tasks, dim).clone()
    out[0] += minority * minority_distance(spread, dim) * u / u.norm()
    return out


def _curvature_range(curvature) -> tuple[float, float]:
    lo, hi = (float(x) for x in curvature)
    if not 0 < lo <= hi:
        raise ConfigError(f"data.curvature must be 0 < low <= high, got {list(curvature)}.")
    return lo, hi


class _NoiseSamples(Dataset):
    """Sample i is ``z_i`` (``tasks.sample_one``), a deterministic function of (seed, i)."""

    def __init__(self, tasks: QuadraticTasks, size: int, seed: int) -> None:
        self.tasks, self.size, self.seed = tasks, size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return self.tasks.sample_one(g)


class ConvexDataModule(L.LightningDataModule):
    """Noise samples of the quadratic tasks; ``tasks`` is the problem instance shared with the module."""

    def __init__(
        self,
        kind: str = "random",
        num_tasks: int = 4,
        dim: int = 8,
        sigma: float = 1.0,
        curvature: tuple[float, float] = (0.2, 2.0),
        spread: float = 2.0,
        batch_size: int = 16,
        train_size: int = 4096,
        val_size: int = 512,
        seed: int = 0,
        minority: float | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}.")
        self.tasks = make_tasks(kind, num_tasks, dim, sigma, tuple(curvature), spread, seed, minority)
        self.batch_size = batch_size
        self.train_size, self.val_size = train_size, val_size
        self.seed = seed

    def validate(self) -> None:
        """Start-up check of the inputs (``runner/pipeline.py``): generated data, nothing to read."""

    @property
    def task_names(self) -> list[str]:
        return [f"task{t}" for t in range(self.tasks.num_tasks)]

    @property
    def reference_risks(self) -> dict[str, float]:
        """The default reference of ``balancer.normalize=reference`` (minimax_ref): every task's minimum
        expected risk, 0 by construction, so minimax_ref weighs the same losses as minimax here."""
        return {name: 0.0 for name in self.task_names}

    def train_dataloader(self):
        data = _NoiseSamples(self.tasks, self.train_size, self.seed)
        return resumable_loader(data, batch_size=self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_NoiseSamples(self.tasks, self.val_size, self.seed + 7919), batch_size=256)
