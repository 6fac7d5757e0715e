"""Triton kernels of the LAM operator (notation of docs/operator.md: j a query pixel, i a key).

A program owns a tile of TH x TW pixels of one image and visits, one TKH x TKW tile at a time,
the pixels in the union of their windows (the host passes R = max(H, W) for radius=None, a window
that holds the whole image from every pixel).
f_q . f_k and A x are tl.dot products on these tiles; the distance term, the window, the border
and the key mask are applied in registers. Channel counts are padded to powers of two in
registers by masked loads, never in memory, and inputs are read through their strides.

Sizes and strides that change with the image (H, W and every stride but the innermost) are not
specialised on (do_not_specialize): a new image size reuses the compiled kernel. Offsets within
an image are 32-bit unless the host sets I64 (an image's tensor of 2^31 elements or more).

Non-finite inputs follow the contract (docs/operator.md, edge cases): everything a key contributes goes
through a select on its admissibility (window and key mask), never through a product with a zero
weight alone, since 0 * inf = NaN would let an excluded key reach a query. In the tl.dot products
that cannot select per pair, the key operand is made finite first and a non-finite value's terms
are added back for the pairs of the sum only (rare: a branch per key tile in the forward, a second
pass over the key tiles in the backward, taken only when f holds a non-finite value anywhere).

The backward is one gather pass, not the query-side + key-side pair of flash attention: the
logit f_i . f_j - |s_i - s_j|^2 / (2 sigma^2) is symmetric and so is the clipped window, so a
program that meets a pixel pair (p, q) once computes both A(q, p) (p as query) and A(p, q) (p as
key) from one f_p . f_q tile, and accumulates every gradient of p with no atomics.
"""

import triton
import triton.language as tl

# Not specialised on (see the module docstring): the image size, R (max(H, W) for radius=None)
# and the outer strides.
_VARYING = ["H", "W", "R", "sxb", "sxc", "sxh", "sfb", "sfc", "sfh", "sgb", "sgc", "sgh", "smb", "smh"]


def _jit(fn):
    names = [a for a in fn.__code__.co_varnames[: fn.__code__.co_argcount] if a in _VARYING]
    return triton.jit(do_not_specialize=names)(fn)


@triton.jit
def _tile_origin(H, W, TH: tl.constexpr, TW: tl.constexpr):
    """(batch, first row, first column) of this program's pixel tile. The grid is one-dimensional,
    tiles of an image then images (the host checks its size): no 65535 limit on the batch."""
    t = tl.program_id(0)
    n_tx = tl.cdiv(W, TW)
    n_t = tl.cdiv(H, TH) * n_tx
    b = t // n_t
    t = t % n_t
    return b.to(tl.int64), (t // n_tx) * TH, (t % n_tx) * TW


@triton.jit
def _wide(i, I64: tl.constexpr):
    """i as the type of in-image offsets: int64 where an image's tensor may exceed 2^31 elements."""
    if I64:
        i = i.to(tl.int64)
    return i


@triton.jit
def _pixels(y0, x0, TH: tl.constexpr, TW: tl.constexpr):
    """Rows and columns of the TH * TW pixels of the tile at (y0, x0), row-major."""
    p = tl.arange(0, TH * TW)
    return y0 + p // TW, x0 + p % TW


@triton.jit
def _neighbour_range(y0, x0, H, W, R, TH: tl.constexpr, TW: tl.constexpr):
    """Rows [ylo, yhi) and columns [xlo, xhi) of the union of the windows of a tile, clipped."""
    # Plain min / max of scalars: triton 3.6's interpreter cannot loop over a tl.where of scalars.
    ylo = tl.maximum(y0 - R, 0)
    yhi = tl.minimum(y0 + TH + R, H)
    xlo = tl.maximum(x0 - R, 0)
    xhi = tl.minimum(x0 + TW + R, W)
    return ylo, yhi, xlo, xhi


@triton.jit
def _load_channels(ptr, ys, xs, inside, n, s_c, s_h, s_w, BLOCK: tl.constexpr, I64: tl.constexpr):
    """(pixels, BLOCK) tile of an (n, H, W) channel stack; 0 outside the image and past n."""
    c = tl.arange(0, BLOCK)
    offs = _wide(c[None, :], I64) * s_c + _wide(ys[:, None], I64) * s_h + _wide(xs[:, None], I64) * s_w
    return tl.load(ptr + offs, mask=inside[:, None] & (c[None, :] < n), other=0.0)


@triton.jit
def _store_channels(ptr, val, ys, xs, inside, n, H, W, BLOCK: tl.constexpr, I64: tl.constexpr):
    """Stores a (pixels, BLOCK) tile into a contiguous (n, H, W) channel stack."""
    c = tl.arange(0, BLOCK)
    offs = _wide(c[None, :], I64) * (_wide(H, I64) * W) + _wide((ys * W + xs)[:, None], I64)
    tl.store(ptr + offs, val.to(ptr.dtype.element_ty), mask=inside[:, None] & (c[None, :] < n))


@triton.jit
def _load_pixels(ptr, ys, xs, inside, s_h, s_w, other, I64: tl.constexpr):
    return tl.load(ptr + _wide(ys, I64) * s_h + _wide(xs, I64) * s_w, mask=inside, other=other)


@triton.jit
def _admissible(mask, ys, xs, inside, s_h, s_w, HAS_MASK: tl.constexpr, I64: tl.constexpr):
    """Pixels that may be aggregated from: in the image and, with a key mask, set in it."""
    if HAS_MASK:
        return inside & (_load_pixels(mask, ys, xs, inside, s_h, s_w, 0, I64) != 0)
    return inside


@triton.jit
def _finite(v):
    return (v == v) & (tl.abs(v) != float("inf"))


@triton.jit
def _nonfinite_terms(acc, p, adm, vals, finite, n, BLOCK: tl.constexpr):
    """acc + the terms p[j, i] * vals[i, c] of the non-finite vals, for the admissible pairs only,
    one channel at a time (a key tile with a non-finite value is rare)."""
    cols = tl.arange(0, BLOCK)
    bad = tl.where(finite, 0.0, vals.to(acc.dtype))
    for c in range(0, n):
        col = tl.sum(tl.where(cols[None, :] == c, bad, 0.0), 1)  # one non-zero term per row: exact
        term = tl.sum(tl.where(adm & (col[None, :] != 0), p * col[None, :], 0.0), 1)
        acc += tl.where(cols[None, :] == c, term[:, None], 0.0)
    return acc


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b accumulated in float32 (float64 for float64 tiles)."""
    if UPCAST:
        # triton 3.8's interpreter multiplies bfloat16 tiles as their raw bits: multiply them in
        # float32 instead, which is what a GPU's bf16 MMA does (exact products, float32 sums).
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _window(ya, xa, yb, xb, R):
    """|s_a - s_b|^2 for all pairs (rows a, columns b), and whether b lies in a's window (iff a lies
    in b's)."""
    dy = ya[:, None] - yb[None, :]
    dx = xa[:, None] - xb[None, :]
    return dy * dy + dx * dx, (tl.abs(dy) <= R) & (tl.abs(dx) <= R)


@triton.jit
def _pair_logits(fa, fb, ya, xa, yb, xb, coef, R, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """logit(a, b) = f_a . f_b + coef |s_a - s_b|^2 for all pairs (rows a, columns b), the squared
    distances, and whether b lies in a's window (iff a lies in b's)."""
    d2, in_window = _window(ya, xa, yb, xb, R)
    s = _dot(fa, tl.trans(fb), PRECISION, UPCAST)
    return s + coef * d2.to(s.dtype), d2, in_window


@triton.jit
def _sigma_coef(sigma):
    """-1 / (2 sigma^2), read on the device (no host sync); sigma comes in the accumulation type.
    Clamped to the lowest finite value, as in csrc/include/lam/math.h: where sigma^2 underflows, a
    pixel's own distance term stays exactly 0 (never -inf * 0) and the keys at distance 1 keep a
    finite logit, so a query whose own pixel is masked out averages its nearest keys."""
    s = tl.load(sigma)
    if s.dtype == tl.float64:
        lowest = -1.7976931348623157e308
    else:
        lowest = -3.4028234663852886e38
    return tl.maximum(-0.5 / (s * s), lowest)


@_jit
def lam_forward_kernel(
    x,
    f,
    sigma,
    mask,
    out,
    lse,
    H,
    W,
    C,
    D,
    R,
    sxb,
    sxc,
    sxh,
    sxw,
    sfb,
    sfc,
    sfh,
    sfw,
    smb,
    smh,
    smw,
    HAS_MASK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    I64: tl.constexpr,
    TH: tl.constexpr,
    TW: tl.constexpr,
    TKH: tl.constexpr,
    TKW: tl.constexpr,
):
    b, y0, x0 = _tile_origin(H, W, TH, TW)
    yq, xq = _pixels(y0, x0, TH, TW)
    q_in = (yq < H) & (xq < W)
    x += b * sxb
    f += b * sfb
    mask += b * smb
    fq = _load_channels(f, yq, xq, q_in, D, sfc, sfh, sfw, BLOCK_D, I64)
    coef = _sigma_coef(sigma)

    # Online softmax (flash attention): running max m, normaliser l, and acc = sum_i e^(s_i - m) x_i.
    m = tl.full([TH * TW], float("-inf"), coef.dtype)
    l = tl.zeros([TH * TW], coef.dtype)
    acc = tl.zeros([TH * TW, BLOCK_C], coef.dtype)
    ylo, yhi, xlo, xhi = _neighbour_range(y0, x0, H, W, R, TH, TW)
    for ky in range(ylo, yhi, TKH):
        for kx in range(xlo, xhi, TKW):
            yk, xk = _pixels(ky, kx, TKH, TKW)
            k_in = (yk < yhi) & (xk < xhi)
            k_ok = _admissible(mask, yk, xk, k_in, smh, smw, HAS_MASK, I64)
            fk = _load_channels(f, yk, xk, k_in, D, sfc, sfh, sfw, BLOCK_D, I64)
            s, d2, in_window = _pair_logits(fq, fk, yq, xq, yk, xk, coef, R, PRECISION, UPCAST)
            adm = in_window & k_ok[None, :]
            s = tl.where(adm, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            # While a query has seen no admissible key its max is -inf: shift by 0 instead (no NaN).
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m - m_ref)
            p = tl.exp(s - m_ref[:, None])
            l = l * alpha + tl.sum(p, 1)
            xk_ = _load_channels(x, yk, xk, k_in, C, sxc, sxh, sxw, BLOCK_C, I64)
            finite = _finite(xk_)
            acc = acc * alpha[:, None] + _dot(p.to(xk_.dtype), tl.where(finite, xk_, 0.0), PRECISION, UPCAST).to(
                acc.dtype
            )
            if tl.sum((~finite).to(tl.int32)) > 0:
                acc = _nonfinite_terms(acc, p, adm, xk_, finite, C, BLOCK_C)
            m = m_new

    # A query with no admissible key, or whose keys all have weight 0: out = 0 (also where such a key
    # had a non-finite x: 0 * inf), lse = -inf. A NaN l (a NaN logit) is not 0: it reaches out and lse.
    seen = l != 0
    l = tl.where(seen, l, 1.0)
    acc = tl.where(seen[:, None], acc / l[:, None], 0.0)
    _store_channels(out + b * C * H * W, acc, yq, xq, q_in, C, H, W, BLOCK_C, I64)
    tl.store(lse + b * H * W + _wide(yq * W + xq, I64), tl.where(seen, m + tl.log(l), float("-inf")), mask=q_in)


@_jit
def lam_delta_kernel(
    g,
    out,
    delta,
    H,
    W,
    C,
    sgb,
    sgc,
    sgh,
    sgw,
    BLOCK_C: tl.constexpr,
    I64: tl.constexpr,
    TH: tl.constexpr,
    TW: tl.constexpr,
):
    """Delta_j = g_j . out_j (out is contiguous, delta has lse's dtype)."""
    b, y0, x0 = _tile_origin(H, W, TH, TW)
    ys, xs = _pixels(y0, x0, TH, TW)
    inside = (ys < H) & (xs < W)
    n = H * W
    gt = _load_channels(g + b * sgb, ys, xs, inside, C, sgc, sgh, sgw, BLOCK_C, I64).to(delta.dtype.element_ty)
    ot = _load_channels(out + b * C * n, ys, xs, inside, C, n, W, 1, BLOCK_C, I64).to(delta.dtype.element_ty)
    tl.store(delta + b * n + _wide(ys * W + xs, I64), tl.sum(gt * ot, 1), mask=inside)


@triton.jit
def _backward_operands(
    g,
    x,
    f,
    mask,
    lse,
    delta,
    ys,
    xs,
    inside,
    C,
    D,
    W,
    sgc,
    sgh,
    sgw,
    sxc,
    sxh,
    sxw,
    sfc,
    sfh,
    sfw,
    smh,
    smw,
    HAS_MASK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    I64: tl.constexpr,
):
    """What the backward reads of a tile: admissible as a key, f, x, g, L and Delta."""
    ok = _admissible(mask, ys, xs, inside, smh, smw, HAS_MASK, I64)
    ft = _load_channels(f, ys, xs, inside, D, sfc, sfh, sfw, BLOCK_D, I64)
    xt = _load_channels(x, ys, xs, inside, C, sxc, sxh, sxw, BLOCK_C, I64)
    gt = _load_channels(g, ys, xs, inside, C, sgc, sgh, sgw, BLOCK_C, I64).to(xt.dtype)
    # L = +inf for a query with no admissible key (and outside the image): its A is 0, not NaN.
    lse_t = _load_pixels(lse, ys, xs, inside, W, 1, float("inf"), I64)
    lse_t = tl.where(lse_t == float("-inf"), float("inf"), lse_t)
    return ok, ft, xt, gt, lse_t, _load_pixels(delta, ys, xs, inside, W, 1, 0.0, I64)


@triton.jit
def _nonfinite_f_terms(
    df_acc,
    f,
    mask,
    lse,
    yp,
    xp,
    p_in,
    p_ok,
    lse_p,
    ylo,
    yhi,
    xlo,
    xhi,
    D,
    W,
    R,
    sfc,
    sfh,
    sfw,
    smh,
    smw,
    HAS_MASK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    I64: tl.constexpr,
    TKH: tl.constexpr,
    TKW: tl.constexpr,
):
    """df_acc, NaN where a pair of the sums meets a non-finite f_q (the backward left those terms
    out): f_q makes the pair's logit +-inf or NaN, so its dS is NaN, or 0 at weight 0, and the term
    dS f_q is NaN in IEEE arithmetic, in the channels where f_q is not finite. The pairs of the sums
    are those of the backward: q admissible for a query p with weight, or p for a q with weight."""
    p_live = lse_p != float("inf")  # L as the backward holds it: +inf for a query without weight
    for ky in range(ylo, yhi, TKH):
        for kx in range(xlo, xhi, TKW):
            yq, xq = _pixels(ky, kx, TKH, TKW)
            q_in = (yq < yhi) & (xq < xhi)
            q_ok = _admissible(mask, yq, xq, q_in, smh, smw, HAS_MASK, I64)
            fq = _load_channels(f, yq, xq, q_in, D, sfc, sfh, sfw, BLOCK_D, I64)
            q_live = _load_pixels(lse, yq, xq, q_in, W, 1, float("-inf"), I64) != float("-inf")
            _, in_window = _window(yp, xp, yq, xq, R)
            pair = in_window & p_in[:, None] & q_in[None, :]
            in_sums = pair & ((q_ok[None, :] & p_live[:, None]) | (p_ok[:, None] & q_live[None, :]))
            hits = _dot(in_sums.to(fq.dtype), (~_finite(fq)).to(fq.dtype), PRECISION, UPCAST)
            df_acc = tl.where(hits > 0, float("nan"), df_acc)
    return df_acc


@_jit
def lam_backward_kernel(
    g,
    x,
    f,
    sigma,
    mask,
    lse,
    delta,
    dx,
    df,
    dsig,
    nonfinite_f,
    H,
    W,
    C,
    D,
    R,
    sgb,
    sgc,
    sgh,
    sgw,
    sxb,
    sxc,
    sxh,
    sxw,
    sfb,
    sfc,
    sfh,
    sfw,
    smb,
    smh,
    smw,
    HAS_MASK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    I64: tl.constexpr,
    TH: tl.constexpr,
    TW: tl.constexpr,
    TKH: tl.constexpr,
    TKW: tl.constexpr,
):
    """dx, df and the per-pixel partial sums of dsigma (dsig[b, j] = sum_i dS(i, j) d2(i, j)) of
    the program's pixel tile P, gathered over the neighbour tiles Q:
        p as query: A(q, p) = exp(logit - L_p),  dS(q, p) = A(q, p) (g_p . x_q - Delta_p)
        p as key:   A(p, q) = exp(logit - L_q),  dS(p, q) = A(p, q) (g_q . x_p - Delta_q)
        dx_p = sum_q A(p, q) g_q,   df_p = sum_q (dS(q, p) + dS(p, q)) f_q
    """
    b, y0, x0 = _tile_origin(H, W, TH, TW)
    yp, xp = _pixels(y0, x0, TH, TW)
    p_in = (yp < H) & (xp < W)
    g += b * sgb
    x += b * sxb
    f += b * sfb
    mask += b * smb
    n = H * W
    lse += b * n
    delta += b * n
    p_ok, fp, xp_, gp, lse_p, delta_p = _backward_operands(
        g,
        x,
        f,
        mask,
        lse,
        delta,
        yp,
        xp,
        p_in,
        C,
        D,
        W,
        sgc,
        sgh,
        sgw,
        sxc,
        sxh,
        sxw,
        sfc,
        sfh,
        sfw,
        smh,
        smw,
        HAS_MASK,
        BLOCK_C,
        BLOCK_D,
        I64,
    )
    coef = _sigma_coef(sigma)

    dx_acc = tl.zeros([TH * TW, BLOCK_C], coef.dtype)
    df_acc = tl.zeros([TH * TW, BLOCK_D], coef.dtype)
    dsig_acc = tl.zeros([TH * TW], coef.dtype)
    ylo, yhi, xlo, xhi = _neighbour_range(y0, x0, H, W, R, TH, TW)
    for ky in range(ylo, yhi, TKH):
        for kx in range(xlo, xhi, TKW):
            yq, xq = _pixels(ky, kx, TKH, TKW)
            q_in = (yq < yhi) & (xq < xhi)
            q_ok, fq, xq_, gq, lse_q, delta_q = _backward_operands(
                g,
                x,
                f,
                mask,
                lse,
                delta,
                yq,
                xq,
                q_in,
                C,
                D,
                W,
                sgc,
                sgh,
                sgw,
                sxc,
                sxh,
                sxw,
                sfc,
                sfh,
                sfw,
                smh,
                smw,
                HAS_MASK,
                BLOCK_C,
                BLOCK_D,
                I64,
            )

            s, d2, in_window = _pair_logits(fp, fq, yp, xp, yq, xq, coef, R, PRECISION, UPCAST)
            pair = in_window & p_in[:, None] & q_in[None, :]
            # The pairs of the sums: q admissible for query p, p admissible for query q, each where
            # that query has weight (L != inf, NaN included: a query without any has no pair in the gradients).
            q_key = pair & q_ok[None, :] & (lse_p != float("inf"))[:, None]
            p_key = pair & p_ok[:, None] & (lse_q != float("inf"))[None, :]
            a_q = tl.where(q_key, tl.exp(s - lse_p[:, None]), 0.0)  # A(q, p)
            a_p = tl.where(p_key, tl.exp(s - lse_q[None, :]), 0.0)  # A(p, q)
            ds_q = tl.where(q_key, a_q * (_dot(gp, tl.trans(xq_), PRECISION, UPCAST) - delta_p[:, None]), 0.0)
            ds_p = tl.where(p_key, a_p * (_dot(xp_, tl.trans(gq), PRECISION, UPCAST) - delta_q[None, :]), 0.0)
            dx_acc += _dot(a_p.to(gq.dtype), gq, PRECISION, UPCAST).to(dx_acc.dtype)
            fq_ok = _finite(fq)  # non-finite f_q: left out here, see _nonfinite_f_terms
            df_acc += _dot((ds_q + ds_p).to(fq.dtype), tl.where(fq_ok, fq, 0.0), PRECISION, UPCAST).to(df_acc.dtype)
            dsig_acc += tl.sum(ds_q * d2.to(ds_q.dtype), 1)
    if tl.load(nonfinite_f) != 0:  # rare: f holds a non-finite value; a pass of its own keeps its
        # registers out of the loop above
        df_acc = _nonfinite_f_terms(
            df_acc,
            f,
            mask,
            lse,
            yp,
            xp,
            p_in,
            p_ok,
            lse_p,
            ylo,
            yhi,
            xlo,
            xhi,
            D,
            W,
            R,
            sfc,
            sfh,
            sfw,
            smh,
            smw,
            HAS_MASK,
            BLOCK_D,
            PRECISION,
            UPCAST,
            I64,
            TKH,
            TKW,
        )

    _store_channels(dx + b * C * n, dx_acc, yp, xp, p_in, C, H, W, BLOCK_C, I64)
    _store_channels(df + b * D * n, df_acc, yp, xp, p_in, D, H, W, BLOCK_D, I64)
    tl.store(dsig + b * n + _wide(yp * W + xp, I64), dsig_acc, mask=p_in)
