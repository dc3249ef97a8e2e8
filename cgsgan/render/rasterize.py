"""The project's differentiable CPU rasterizer: per-pixel, depth-sorted lists of Gaussians.

Same semantics as gsplat's 3DGS rasterizer: Gaussians are composited front to back per pixel;
alpha = min(0.999, o exp(-sigma)); a (Gaussian, pixel) pair with alpha < 1/255 (or sigma < 0)
is skipped; a pixel stops at the Gaussian that would bring its transmittance to 1e-4 or below
(that Gaussian excluded).

Where gsplat bins Gaussians into 16x16 tiles and evaluates every pixel of every tile a Gaussian
touches, this enumerates only the pixels inside each Gaussian's opacity-aware box (the box
bounds the region where alpha >= 1/255, so nothing is lost). The generator's Gaussians are a
pixel or two wide, so that is several times fewer evaluations than whole tiles. The pairs are
generated in depth order and stably sorted by pixel, so each pixel's list is contiguous and
front to back; compositing is then segmented sums over the flat list:

    log T_q (before pair q) = sum of log(1 - alpha_j) over earlier pairs j of q's pixel
    colour[p] = sum_q [q included] T_q alpha_q f_q,   log T_final[p] = sum over included of log(1 - alpha_q)

computed as one float64 cumulative sum minus each pixel's offset. Like gsplat's
`rasterize_to_pixels`, compositing is one autograd Function with a closed-form backward (see
_Composite), so no per-pair graph is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cgsgan.render.projection import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_EPS, Projected

_LOG_EPS = math.log(TRANSMITTANCE_EPS)
# Candidate pairs per pass: bounds the memory of one pass (about 60 bytes a pair) for scenes of
# large Gaussians; cameras are split into passes to stay under it.
MAX_PAIRS_PER_PASS = 16_000_000

# A compositor: Projected Gaussians of c cameras, their features [c, N, F] (colours and depth)
# -> acc [c, H, W, F] (sum over each pixel's Gaussians of T alpha f, front to back) and the final
# transmittance [c, H, W]. composite_torch below, native.composite_native, dense.composite_dense.
Composite = Callable[[Projected, torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Pairs:
    """Candidate (Gaussian, pixel) pairs in depth order: one per pixel of each visible Gaussian's box.

    Arrays are flat and 1-D (structure of arrays): on CPU, gathering and scattering 1-D arrays
    with int32 indices is several times faster than rows of a [Q, k] table.
    """

    rows: torch.Tensor  # [M] table row (camera * N + Gaussian) of each visible Gaussian, front to back
    gauss: torch.Tensor  # [Q] int32: which of the M Gaussians the pair belongs to (non-decreasing)
    pixel: torch.Tensor  # [Q] int32: camera * H * W + y * W + x
    dx: torch.Tensor  # [Q] mean x - pixel centre x
    dy: torch.Tensor  # [Q]


def candidate_pairs(p: Projected, width: int, height: int) -> _Pairs:
    """Pairs of the Gaussians seen by p's cameras with the pixels where they may reach
    alpha >= 1/255: on each pixel row of a Gaussian's box, the span of the ellipse
    sigma <= ln(255 o) (a hair wider against rounding; the alpha test in _Composite decides)."""
    N = p.radii.shape[1]
    radii = p.radii  # [C, N, 2]
    cam, gauss = (radii > 0).any(-1).nonzero(as_tuple=True)
    # Front to back: the stable sort by pixel in _Composite keeps this order inside each pixel.
    order = torch.argsort(p.depths.detach()[cam, gauss])
    cam, gauss = cam[order], gauss[order]
    rows = cam * N + gauss
    m = p.means2d.detach().reshape(-1, 2)[rows]  # [M, 2]
    ry = radii[cam, gauss][:, 1].to(m.dtype)
    a, b, c = p.conics.detach().reshape(-1, 3)[rows].unbind(1)
    # sigma at alpha = 1/255, a hair larger so that rounding never drops a pixel the alpha test would keep
    level = torch.log(255.0 * p.opacities.detach().reshape(-1)[rows]).clamp(min=0) * (1 + 1e-5) + 1e-5
    # Pixel rows whose centres (y + 0.5) lie within the box [m_y - r_y, m_y + r_y], clipped.
    y0 = torch.ceil(m[:, 1] - ry - 0.5).clamp(0, height)
    y1 = torch.floor(m[:, 1] + ry - 0.5).clamp(-1, height - 1) + 1
    ny = (y1 - y0).clamp(min=0).int()
    row_g = torch.repeat_interleave(ny).int()  # [R] Gaussian of each pixel row
    y = y0.index_select(0, row_g) + (torch.arange(len(row_g), dtype=torch.int32, device=row_g.device)
                                     - (torch.cumsum(ny, 0) - ny).int().index_select(0, row_g))
    # sigma(dx) = a dx^2 / 2 + b dy dx + c dy^2 / 2 <= level  <=>  dx in [(-b dy -+ sqrt(disc)) / a]
    ag, bg, cg = a.index_select(0, row_g), b.index_select(0, row_g), c.index_select(0, row_g)
    dy_row = m[:, 1].index_select(0, row_g) - (y + 0.5)
    half = torch.sqrt(((bg * bg - ag * cg) * dy_row * dy_row + 2 * ag * level.index_select(0, row_g)).clamp(min=0)) / ag
    centre = m[:, 0].index_select(0, row_g) + bg * dy_row / ag  # mean x - (-b dy / a): the span's middle
    x0 = torch.ceil(centre - half - 0.5).clamp(0, width)
    x1 = (torch.floor(centre + half - 0.5) + 1).clamp(0, width)  # exclusive
    nx = (x1 - x0).clamp(min=0).int()
    g = torch.repeat_interleave(row_g, nx)  # [Q] Gaussian of each pair
    pair_row = torch.repeat_interleave(nx)
    lx = torch.arange(len(g), dtype=torch.int32, device=g.device) - (torch.cumsum(nx, 0) - nx).int().index_select(0, pair_row)
    x = x0.int().index_select(0, pair_row) + lx
    yq = y.index_select(0, pair_row)
    pixel = cam.int().index_select(0, g) * (width * height) + yq.int() * width + x
    return _Pairs(rows=rows, gauss=g, pixel=pixel,
                  dx=m[:, 0].index_select(0, g) - (x.to(m.dtype) + 0.5),
                  dy=dy_row.index_select(0, pair_row))


class _Composite(torch.autograd.Function):
    """table [R, 6 + F] (means2d, conics, opacity, features) -> acc [num_pixels, F], log T [num_pixels].

    Backward, with w_q = [q included] T_q alpha_q, gf_q = dL/dacc[pixel_q] . f_q:
        dL/df_q      = w_q dL/dacc[pixel_q]
        dL/dalpha_q  = [q included] T_q gf_q - (S_q + [q included] dL/dlog T[pixel_q]) / (1 - alpha_q)
        S_q          = sum over later pairs k of q's pixel of w_k gf_k   (d log T_k / d log(1 - alpha_q) = 1)
    then through alpha = o exp(-sigma) (zero where clamped at 0.999) to the opacity, the 2D mean
    and the conic.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, pairs: _Pairs, num_pixels: int):
        with torch.no_grad():
            cols = table.index_select(0, pairs.rows).t().contiguous()  # [6 + F, M]: the visible Gaussians, by column
            a, b, c, o = (cols[k].index_select(0, pairs.gauss) for k in range(2, 6))
            dx, dy = pairs.dx, pairs.dy
            sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
            alpha = (o * torch.exp(-sigma)).clamp_(max=MAX_ALPHA)
            # gsplat skips pairs with alpha < 1/255 (and sigma < 0): they neither add nor occlude,
            # and with alpha 0 they take no gradient either. Order the pairs by pixel (stable: the
            # depth order stays inside each pixel).
            alpha = alpha.mul_(((alpha >= ALPHA_THRESHOLD) & (sigma >= 0)).to(alpha.dtype))
            pixel, perm = torch.sort(pairs.pixel, stable=True)
            gauss = pairs.gauss.index_select(0, perm)
            # One gather of the stacked columns: random access costs per call more than per column.
            alpha, dx, dy = torch.stack([alpha, dx, dy]).index_select(1, perm)
            if len(pixel) == 0:  # nothing in view
                ctx.empty = True
                ctx.save_for_backward(table)
                return table.new_zeros(num_pixels, table.shape[1] - 6), table.new_zeros(num_pixels)
            ctx.empty = False
            count = torch.bincount(pixel, minlength=num_pixels)
            first = torch.cumsum(count, 0) - count  # [P] first pair of each pixel (meaningless where count = 0)
            first = first.clamp(max=len(pixel) - 1)
            # log T after each pair: one float64 cumulative sum minus its value before the pixel's
            # run (all in float64: mixing precisions costs more than the wider type).
            lt = torch.log1p(-alpha.double())
            cs = torch.cumsum(lt, 0)
            incl = cs - (cs - lt).index_select(0, first).index_select(0, pixel)
            included = incl > _LOG_EPS
            trans = torch.exp(incl - lt).mul_(included).to(alpha.dtype)  # T before each pair; 0 if excluded
            log_t_pairs = lt.mul_(included).to(alpha.dtype)
            w = trans * alpha
            feats = cols[6:].index_select(1, gauss)  # [F, Q]
            acc = table.new_zeros(feats.shape[0], num_pixels)
            for k in range(feats.shape[0]):
                acc[k].index_add_(0, pixel, feats[k] * w)
            log_t = table.new_zeros(num_pixels).index_add_(0, pixel, log_t_pairs)
        ctx.save_for_backward(table, cols, pairs.rows, gauss, pixel, alpha, trans, dx, dy, feats, first, count)
        return acc.t(), log_t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_acc: torch.Tensor, g_log_t: torch.Tensor):
        if ctx.empty:
            return torch.zeros_like(ctx.saved_tensors[0]), None, None
        table, cols, rows, gauss, pixel, alpha, trans, dx, dy, feats, first, count = ctx.saved_tensors
        w = trans * alpha
        g_pix = g_acc.t().contiguous().index_select(1, pixel)  # [F, Q]
        gf = (g_pix * feats).sum(0)
        wg = w * gf
        # S_q: the rest of q's run, from one float64 cumulative sum and its value at the run's end.
        cs = torch.cumsum(wg, 0, dtype=torch.float64)
        last = (first + count - 1).clamp(min=0)
        later = (cs.index_select(0, last).index_select(0, pixel) - cs).to(alpha.dtype)
        included = (trans > 0).to(trans.dtype)  # T > 1e-4 wherever included, exactly 0 elsewhere
        g_alpha = trans * gf - (later + included * g_log_t.index_select(0, pixel)) / (1.0 - alpha)
        # dL/dalpha * alpha, zero where alpha was clamped at 0.999; dL/dsigma = -that.
        g_raw = g_alpha.mul_(alpha).mul_((alpha < MAX_ALPHA).to(alpha.dtype))
        a, b, c, o = (cols[k].index_select(0, gauss) for k in range(2, 6))
        per_pair = [
            -g_raw * (a * dx + b * dy),  # mean x: dL/dsigma * d sigma / d dx
            -g_raw * (c * dy + b * dx),  # mean y
            -g_raw * 0.5 * dx * dx,  # conic a
            -g_raw * dx * dy,  # conic b
            -g_raw * 0.5 * dy * dy,  # conic c
            g_raw / o,  # opacity: d alpha / d o = alpha / o
        ] + [w * g_pix[k] for k in range(len(g_pix))]  # features
        g_cols = torch.zeros_like(cols)  # [6 + F, M]
        for k, g in enumerate(per_pair):
            g_cols[k].index_add_(0, gauss, g)
        g_table = torch.zeros_like(table)
        g_table[rows] = g_cols.t()
        return g_table, None, None


def composite_torch(p: Projected, features: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain-PyTorch compositor (a `Composite`): candidate pairs, then _Composite."""
    C, N = p.depths.shape
    table = torch.cat([p.means2d, p.conics, p.opacities[..., None], features], dim=-1)  # [C, N, 6 + F]
    pairs = candidate_pairs(p, width, height)
    acc, log_t = _Composite.apply(table.reshape(C * N, -1), pairs, C * width * height)
    return acc.reshape(C, height, width, -1), log_t.exp().reshape(C, height, width)


def rasterize(
    p: Projected, backgrounds: torch.Tensor, width: int, height: int, *, composite: Composite
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Composite projected Gaussians of C cameras with `composite` (composite_torch here,
    native.composite_native, dense.composite_dense: the same pairs, order and stop, so the same
    images and gradients up to rounding).

    backgrounds [C, D] -> colors [C, H, W, D], alphas [C, H, W], expected depth [C, H, W]
    """
    C, N, D = p.colors.shape
    features = torch.cat([p.colors, p.depths[..., None]], dim=-1)  # [C, N, D + 1]: depth composited as a colour
    # Cameras in passes of bounded memory (the candidate count is known from the boxes).
    boxes = ((2 * p.radii[..., 0] + 1) * (2 * p.radii[..., 1] + 1) * (p.radii > 0).any(-1)).sum(1)  # [C]
    passes, start, size = [], 0, 0
    for cam, n in enumerate(boxes.tolist()):
        if cam > start and size + n > MAX_PAIRS_PER_PASS:
            passes.append(slice(start, cam))
            start, size = cam, 0
        size += n
    passes.append(slice(start, C))
    parts = [composite(p.cameras(cs), features[cs], width, height) for cs in passes]
    acc = torch.cat([a for a, _ in parts])  # [C, H, W, D + 1]
    final_t = torch.cat([t for _, t in parts])  # [C, H, W]
    colors = acc[..., :D] + final_t[..., None] * backgrounds[:, None, None, :]
    alphas = 1.0 - final_t
    depths = acc[..., D] / alphas.clamp(min=1e-10)
    return colors, alphas, depths
