"""`aligned-mtl`: Aligned-MTL (Senushkin, Patakin, Kuznetsov and Konushin, "Independent
Component Alignment for Multi-Task Learning", CVPR 2023, Algorithm 1).

The tasks' gradients on the shared parameters, G (K × P), are made orthogonal and of equal
size before they are summed, which removes both their conflicts and their dominance: with the
Gram matrix M = G Gᵀ = V Λ Vᵀ (eigenvalues above the numerical rank's tolerance only),
B = √λ_min V Λ^(-1/2) Vᵀ, and the step is Σ_t α_t g_t with α = 1ᵀ B (the coefficients
recorded as the weights). The condition number of the aligned system is 1, the scale that of
the smallest singular value, as the paper's "stable" variant. A closed form: no inner solver,
one backward pass per task, and one K × K eigendecomposition per step. LibMTL's version
calls torch.symeig, which torch removed in 2.0; this one uses torch.linalg.eigh.
"""

from __future__ import annotations

import torch

from dmtcore.hooks.kinds import Kinds, WeightingKind
from dmtcore.hooks.specs import hookimpl
from dmtcore.train.weighting import Weighting


def aligned_coefficients(grads: torch.Tensor) -> torch.Tensor:
    """α (K) for gradients `grads` (K × P): zeros if every gradient is zero."""
    gram = (grads @ grads.T).double()
    eigenvalues, vectors = torch.linalg.eigh(gram)
    tolerance = eigenvalues.max() * max(gram.shape) * torch.finfo(torch.float32).eps
    keep = eigenvalues > tolerance
    if not bool(keep.any()):
        return torch.zeros(grads.shape[0], dtype=grads.dtype)
    eigenvalues, vectors = eigenvalues[keep], vectors[:, keep]
    balance = vectors @ torch.diag(eigenvalues.rsqrt()) @ vectors.T
    return (eigenvalues.min().sqrt() * balance).sum(0).to(grads.dtype)


class AlignedMTL(Weighting):
    uses_gradients = True

    def combine(self, losses: dict[str, torch.Tensor], grads: torch.Tensor) -> torch.Tensor:
        alpha = aligned_coefficients(grads.detach().cpu()).to(grads)
        self.last = {**self.last, **dict(zip(losses, alpha.tolist(), strict=True))}
        return alpha @ grads


@hookimpl
def dmt_register_weightings(kinds: Kinds) -> None:
    kinds.add_weighting(
        WeightingKind(
            name="aligned-mtl",
            description="align the tasks' gradients: orthogonal, of equal size, then summed",
            paper="Senushkin et al., CVPR 2023",
            build=AlignedMTL,
        )
    )
