"""What every backend provides: a capability check that says why it cannot run an input, and the
forward that returns (out, lse) with gradients attached."""

from __future__ import annotations

import torch
from torch import Tensor


class Backend:
    name: str = ""

    def unavailable(self, device: torch.device) -> str | None:
        """Why this backend cannot run on `device` at all (not built, no GPU, ...), or None."""
        raise NotImplementedError

    def unsupported(
        self, x: Tensor, f: Tensor, sigma: Tensor, radius: int | None, key_mask: Tensor | None
    ) -> str | None:
        """Why this backend cannot run these (already validated) inputs, or None."""
        return self.unavailable(x.device)

    def picked_by_auto(self, device: torch.device) -> bool:
        """Whether backend="auto" may choose this backend on `device` when it can run the input."""
        return True

    def forward(
        self, x: Tensor, f: Tensor, sigma: Tensor, radius: int | None, key_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """(out, lse): out differentiable in x, f and sigma; lse (B, H, W) float32 (float64 for
        float64 inputs), -inf for a query with no admissible key."""
        raise NotImplementedError
