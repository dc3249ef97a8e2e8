"""The project's differentiable CPU rasterizer: tile binning + depth-sorted alpha compositing.

Same semantics as gsplat's 3DGS rasterizer: a Gaussian touches the tiles its opacity-aware box
overlaps; in each tile Gaussians are composited front to back; alpha = min(0.999, o exp(-sigma));
a pair with alpha < 1/255 is skipped; a pixel stops at the Gaussian that would bring its
transmittance to 1e-4 or below (that Gaussian excluded).

Vectorised over (camera, tile, Gaussian) intersections: no Python loop over images, tiles or
Gaussians. Like gsplat's per-thread early exit, compositing runs in rounds of `chunk`
Gaussians per tile, front to back, and a tile leaves once all its pixels are done; opaque heads
then cost a few rounds instead of every Gaussian behind the surface. Inside a round the tiles
form a padded [A, K, P] block (A tiles, K Gaussians in depth order, P pixels), so transmittance
is a short cumulative sum along K in the working precision.
"""

from __future__ import annotations

import math

import torch

from cgsgan.render.projection import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_EPS, Projected

_LOG_EPS = math.log(TRANSMITTANCE_EPS)


def intersect_tiles(p: Projected, width: int, height: int, tile_size: int):
    """(camera, tile, Gaussian) intersections sorted by (camera, tile, depth).

    Returns cam [I], gauss [I], tile [I] (global id: camera * tiles_per_image + tile) and the
    tile grid size (tiles_x, tiles_y).
    """
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    vis = (p.radii > 0).any(-1)  # [C, N]
    cam, gauss = vis.nonzero(as_tuple=True)  # [M]
    m2d = p.means2d.detach()[cam, gauss]  # [M, 2]
    r = p.radii[cam, gauss].to(m2d.dtype)  # [M, 2]
    x0 = torch.floor((m2d[:, 0] - r[:, 0]) / tile_size).clamp(0, tiles_x).long()
    x1 = torch.ceil((m2d[:, 0] + r[:, 0]) / tile_size).clamp(0, tiles_x).long()
    y0 = torch.floor((m2d[:, 1] - r[:, 1]) / tile_size).clamp(0, tiles_y).long()
    y1 = torch.ceil((m2d[:, 1] + r[:, 1]) / tile_size).clamp(0, tiles_y).long()
    nx = x1 - x0
    counts = nx * (y1 - y0)  # tiles covered by each visible Gaussian
    rep = torch.repeat_interleave(torch.arange(len(counts)), counts)  # [I]
    local = torch.arange(len(rep)) - (torch.cumsum(counts, 0) - counts)[rep]
    tx = x0[rep] + local % nx[rep]
    ty = y0[rep] + torch.div(local, nx[rep], rounding_mode="floor")
    tile = cam[rep] * (tiles_x * tiles_y) + ty * tiles_x + tx
    depth = p.depths.detach()[cam, gauss][rep]
    # Sort by depth, then stably by tile: depth order inside each tile.
    order = torch.argsort(depth, stable=True)
    order = order[torch.argsort(tile[order], stable=True)]
    return cam[rep][order], gauss[rep][order], tile[order], (tiles_x, tiles_y)


def _tile_alpha(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    tiles: torch.Tensor,
    tiles_x: int,
    tiles_y: int,
    tile_size: int,
    basis: torch.Tensor,
) -> torch.Tensor:
    """alpha [A, K, P] of K Gaussians [A, K, ...] over the P pixels of each of A tiles.

    sigma is a quadratic in the pixel offset (u, v) from the tile centre, so all pixels come
    from one matmul with the basis [1, u, v, u^2, v^2, uv] instead of a dozen elementwise ops.
    Cut-offs as gsplat: alpha = min(0.999, o exp(-sigma)); 0 where sigma < 0 or alpha < 1/255.
    """
    dtype = means2d.dtype
    in_image = tiles % (tiles_x * tiles_y)  # tile index inside its camera's image
    centre_x = (in_image % tiles_x).to(dtype) * tile_size + tile_size / 2
    centre_y = torch.div(in_image, tiles_x, rounding_mode="floor").to(dtype) * tile_size + tile_size / 2
    dx = means2d[..., 0] - centre_x[:, None]  # [A, K]
    dy = means2d[..., 1] - centre_y[:, None]
    a, b, c = conics.unbind(-1)
    coeffs = torch.stack(
        [
            0.5 * a * dx * dx + 0.5 * c * dy * dy + b * dx * dy,
            -a * dx - b * dy,
            -c * dy - b * dx,
            0.5 * a,
            0.5 * c,
            b,
        ],
        dim=-1,
    )  # [A, K, 6]
    sigma = coeffs @ basis  # [A, K, P]
    alpha = torch.exp(torch.log(opacities.clamp(min=1e-30))[..., None] - sigma).clamp(max=MAX_ALPHA)
    keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
    return torch.where(keep, alpha, torch.zeros_like(alpha))


def rasterize_tiled(
    p: Projected, backgrounds: torch.Tensor, width: int, height: int, tile_size: int = 8, chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Composite projected Gaussians of C cameras.

    backgrounds [C, D] -> colors [C, H, W, D], alphas [C, H, W], expected depth [C, H, W]
    """
    C, _, D = p.colors.shape
    dtype = p.means2d.dtype
    cam, gauss, tile, (tiles_x, tiles_y) = intersect_tiles(p, width, height, tile_size)
    num_tiles = C * tiles_x * tiles_y
    P = tile_size * tile_size

    # Front-to-back rank of each intersection in its tile, and rounds of `chunk` ranks.
    per_tile = torch.bincount(tile, minlength=num_tiles)
    rank = torch.arange(len(tile)) - (torch.cumsum(per_tile, 0) - per_tile)[tile]
    round_of = torch.div(rank, chunk, rounding_mode="floor")
    by_round = torch.argsort(round_of, stable=True)  # keeps (tile, depth) order inside a round
    round_ends = torch.cumsum(torch.bincount(round_of), 0).tolist() if len(tile) else []

    # Pixel centres relative to the tile centre, row-major, as the basis of sigma's quadratic.
    offs = torch.arange(tile_size, dtype=dtype) + 0.5 - tile_size / 2
    u, v = offs.repeat(tile_size), offs.repeat_interleave(tile_size)  # [P]
    basis = torch.stack([torch.ones_like(u), u, v, u * u, v * v, u * v])  # [6, P]

    # Per-intersection attributes, gathered once in round order and split into one block per
    # round: a single gather and a single split keep autograd from materialising a gradient of
    # the whole table in every round. Columns: means2d (2), conics (3), opacity (1), colour (D),
    # depth (1).
    table = torch.cat([p.means2d, p.conics, p.opacities[..., None], p.colors, p.depths[..., None]], dim=-1)
    round_sizes = torch.diff(torch.tensor([0] + round_ends)).tolist()
    round_rows = table[cam[by_round], gauss[by_round]].split(round_sizes) if round_sizes else []
    round_ids = by_round.split(round_sizes) if round_sizes else []

    log_t = torch.zeros(num_tiles, P, dtype=dtype)  # log transmittance so far
    done = torch.zeros(num_tiles, P, dtype=torch.bool)  # pixel hit the 1e-4 stop
    acc = torch.zeros(num_tiles, P, D + 1, dtype=dtype)  # weighted colour and depth
    for idx, rows in zip(round_ids, round_rows):
        keep = ~done.all(-1)[tile[idx]]  # tiles whose pixels are all done leave
        if not keep.any():
            continue
        idx, rows = idx[keep], rows[keep]
        t = tile[idx]
        # This round as a padded [A, K] block: A active tiles, K = chunk slots in depth order.
        active, slot = torch.unique_consecutive(t, return_inverse=True)
        A = len(active)
        rows = torch.zeros(A, chunk, rows.shape[-1], dtype=dtype).index_put((slot, rank[idx] % chunk), rows)
        alpha = _tile_alpha(
            rows[..., 0:2], rows[..., 2:5], rows[..., 5], active, tiles_x, tiles_y, tile_size, basis
        )  # [A, K, P]; empty slots have opacity 0 -> alpha 0
        lt = torch.log1p(-alpha)
        excl = torch.cumsum(lt, dim=1) - lt + log_t[active][:, None]  # log T before each Gaussian
        with torch.no_grad():
            include = ~done[active][:, None] & (excl + lt > _LOG_EPS)  # gsplat: stop when next_T <= 1e-4
            done = done.index_put((active,), done[active] | ~include.all(1))
        weight = torch.where(include, alpha * excl.exp(), torch.zeros_like(alpha))  # [A, K, P]
        acc = acc.index_add(0, active, weight.transpose(1, 2) @ rows[..., 6:])  # [A, P, D + 1]
        log_t = log_t.index_add(0, active, (lt * include).sum(1))

    final_t = log_t.exp()  # [num_tiles, P]

    def untile(x: torch.Tensor) -> torch.Tensor:
        # [C * tiles, P, ...] -> [C, H, W, ...]
        rest = x.shape[2:]
        x = x.reshape(C, tiles_y, tiles_x, tile_size, tile_size, *rest)
        x = x.transpose(2, 3).reshape(C, tiles_y * tile_size, tiles_x * tile_size, *rest)
        return x[:, :height, :width]

    acc = untile(acc)
    colors = acc[..., :D] + untile(final_t)[..., None] * backgrounds[:, None, None, :]
    alphas = 1.0 - untile(final_t)
    depths = acc[..., D] / alphas.clamp(min=1e-10)
    return colors, alphas, depths
