"""Autograd and fake (meta) registration for an operator pair of the lam_ops schema.

Every compiled backend exposes `forward(x, f, sigma, radius, key_mask) -> (out, lse)` and
`backward(grad_out, x, f, sigma, radius, key_mask, out, lse) -> (dx, df, dsigma)` as torch
library operators; registering the formula here once lets torch.compile trace them without graph
breaks (the forward saves lse; the backward recomputes the window weights from it).
"""

from __future__ import annotations

import torch


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The saved log-sum-exp is float32, float64 for float64 inputs (where gradcheck needs it)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _backward_with_lse_grad(backward_op, grad_out, grad_lse, x, f, sigma, radius, key_mask, out, lse):
    """The backward when lse is differentiated too. d lse_j / d logit(i, j) = A(i, j), so the lse
    gradient adds A(i, j) glse_j to dS(i, j) = A(i, j) (g_j . x_i - Delta_j). A constant key channel
    x_i = 1 with output gradient glse_j adds exactly glse_j to g_j . x_i, and passing its output
    channel as 0 leaves Delta_j = g_j . out_j unchanged: one call of the same kernels, C + 1 channels."""
    B, C, H, W = x.shape
    x1 = torch.cat([x, x.new_ones(B, 1, H, W)], 1)
    g1 = torch.cat([grad_out.to(x.dtype), grad_lse.to(x.dtype)[:, None]], 1)
    out1 = torch.cat([out, out.new_zeros(B, 1, H, W)], 1)
    dx1, df, dsigma = backward_op(g1, x1, f, sigma, radius, key_mask, out1, lse)
    return dx1[:, :C], df, dsigma


def register_lam_op(forward_name: str, backward_op) -> None:
    """Registers the autograd formula of `forward_name` (e.g. "lam_ops::forward") in terms of
    `backward_op`, and fake kernels for both."""

    def setup_context(ctx, inputs, output):
        x, f, sigma, radius, key_mask = inputs
        out, lse = output
        ctx.save_for_backward(x, f, sigma, key_mask, out, lse)
        ctx.radius = radius
        ctx.set_materialize_grads(False)  # an unused lse has no gradient: the common case costs nothing

    def backward(ctx, grad_out, grad_lse):
        x, f, sigma, key_mask, out, lse = ctx.saved_tensors
        if grad_out is None and grad_lse is None:
            return None, None, None, None, None
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        if grad_lse is None:
            dx, df, dsigma = backward_op(grad_out, x, f, sigma, ctx.radius, key_mask, out, lse)
        else:
            dx, df, dsigma = _backward_with_lse_grad(
                backward_op, grad_out, grad_lse, x, f, sigma, ctx.radius, key_mask, out, lse
            )
        need = ctx.needs_input_grad
        return (dx if need[0] else None, df if need[1] else None, dsigma if need[2] else None, None, None)

    torch.library.register_autograd(forward_name, backward, setup_context=setup_context)

    @torch.library.register_fake(forward_name)
    def _forward_fake(x, f, sigma, radius, key_mask):
        B, _, H, W = x.shape
        return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(
            (B, H, W), dtype=lse_dtype(x.dtype)
        )


def register_first_order_only(backward_name: str, backends: dict[str, str]) -> None:
    """Makes a fused backward operator raise when it is itself differentiated (a second derivative:
    `create_graph=True`, then a gradient of that gradient), instead of the dispatcher's warning and
    silent zeros. `backends` maps a device type to the backend name the error reports.

    The error comes when a second derivative actually flows through the operator, as with
    torch.autograd.function.once_differentiable: `create_graph=True` alone still gives correct
    first derivatives (it is also used for penalties on other parameters)."""

    def setup_context(ctx, inputs, output):
        ctx.device_type = inputs[1].device.type

    def backward(ctx, *grads):
        name = backends.get(ctx.device_type, ctx.device_type)
        raise RuntimeError(
            f"lam_ops: backend {name!r} has no second derivatives: its backward ({backward_name}) is not "
            'differentiable. Use backend="reference", which supports them through autograd.'
        )

    torch.library.register_autograd(backward_name, backward, setup_context=setup_context)


def register_backward_fake(backward_name: str) -> None:
    @torch.library.register_fake(backward_name)
    def _backward_fake(grad_out, x, f, sigma, radius, key_mask, out, lse):
        return (
            torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(f, memory_format=torch.contiguous_format),
            torch.empty_like(sigma),
        )
