"""Photometric refinement: render the mesh with per-vertex albedo and spherical-harmonics lighting
and fit parameters to an image by gradient descent on the masked photometric error.

Unlike the original tracker there is no pytorch3d: ``raster.rasterize`` finds the visible triangle
and barycentrics of each pixel without gradient, and ``raster.interpolate_covered`` recomputes the
barycentrics from the projected vertices (analytic backward), so the error is differentiable w.r.t.
the vertex positions (hence the pose, camera and expression behind ``project_fn``) and the
appearance. As with any hard rasteriser, the silhouette itself gives no gradient. Unlike the
original, the appearance is a per-vertex albedo (not the FLAME/BFM texture space) and the lighting
is applied per vertex (Gouraud; FLAME's triangles span a few pixels of a 512 crop). The error is
summed over the covered pixels only. Works on CPU and CUDA: everything runs on ``device``.

``project_fn(params)`` should return ``(screen, camera_vertices)``: the (V, 3) screen vertices
(x px, y px, depth) and the (V, 3) vertices in the camera frame (OpenCV: x right, y down, z forward),
whose normals light the surface. Returning only the screen vertices works too, with normals
estimated from them (depth rescaled to the x/y extent; approximate).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from micalib.render.raster import interpolate_covered, rasterize, vertex_normals
from micalib.render.shading import directional_sh, sh_shading

__all__ = ["PhotometricRefiner", "ProjectOutput"]


# project_fn returns screen vertices (V, 3) = (x px, y px, depth), or (screen, camera-frame vertices).
ProjectOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class _Adam:
    """Adam (Kingma & Ba, the defaults of ``torch.optim.Adam``) on a few tensors. Unlike using
    ``torch.optim.Adam``, whose first step imports ``torch._dynamo`` (seconds, once per process),
    this costs nothing to start."""

    def __init__(self, groups: list[tuple[torch.Tensor, float]], betas=(0.9, 0.999), eps: float = 1e-8):
        self.groups = groups
        self.b1, self.b2, self.eps = betas[0], betas[1], eps
        self.m = [torch.zeros_like(p) for p, _ in groups]
        self.v = [torch.zeros_like(p) for p, _ in groups]
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1, c2 = 1.0 - self.b1 ** self.t, 1.0 - self.b2 ** self.t
        for (p, lr), m, v in zip(self.groups, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            m.mul_(self.b1).add_(g, alpha=1.0 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-lr / c1)

    def zero_grad(self) -> None:
        for p, _ in self.groups:
            p.grad = None


class PhotometricRefiner:
    """Renderer + optimiser of the photometric error for one image size.

    Attributes:
        albedo: (V, 3) per-vertex albedo in [0, 1] (initialised from the first image, see ``refine``).
        sh: (9, 3) lighting coefficients (``micalib.render.shading``; initially an ambient light plus a
            light from the camera).
        vertex_weights: (V,) weight of each vertex's surface in the error (e.g. 1 on the face region,
            0 on the neck and hair), interpolated over the pixels; None = all ones.
        cull_backfaces: draw only camera-facing triangles (see ``raster.rasterize``; right for FLAME
            under an OpenCV camera): faster, and the mouth gap shows no inside of the head.
    """

    def __init__(self, faces, n_vertices: int, height: int, width: int, device: str | torch.device = "cpu",
                 vertex_weights: torch.Tensor | None = None, loss: str = "l1", cull_backfaces: bool = True):
        if loss not in ("l1", "l2"):
            raise ValueError(f"PhotometricRefiner: loss must be 'l1' or 'l2', got {loss!r}")
        self.device = torch.device(device)
        self.faces = torch.as_tensor(faces, device=self.device).long()
        self.n_vertices, self.height, self.width, self.loss = int(n_vertices), int(height), int(width), loss
        self.albedo = torch.full((self.n_vertices, 3), 0.5, device=self.device)
        self.sh = directional_sh((0.0, 0.0, -1.0), intensity=1.0, ambient=0.5).to(self.device)
        self.vertex_weights = None
        if vertex_weights is not None:
            self.vertex_weights = torch.as_tensor(vertex_weights, dtype=torch.float32, device=self.device).reshape(-1, 1)
        self.albedo_initialised = False
        self.cull_backfaces = bool(cull_backfaces)

    # ------------------------------------------------------------------ rendering
    def _split(self, out: ProjectOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Screen vertices and the vertices whose normals light the surface."""
        if isinstance(out, (tuple, list)):
            return out[0], out[1]
        # only screen vertices: normals from them with the depth rescaled to the x/y extent (approximate)
        ext = (out.detach().amax(0) - out.detach().amin(0)).clamp_min(1e-12)
        scale = 0.5 * (ext[0] + ext[1]) / ext[2]
        return out, out * torch.stack([torch.ones_like(scale), torch.ones_like(scale), scale])

    def _render_covered(self, projected: ProjectOutput, albedo: torch.Tensor | None = None,
                        sh: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat indices of the covered pixels (P,), their colours (3, P) (channels first: faster on
        CPU) and error weights (P,)."""
        screen, cam = self._split(projected)
        albedo = self.albedo if albedo is None else albedo
        sh = self.sh if sh is None else sh
        frags = rasterize(screen.detach(), self.faces, self.height, self.width, cull_backfaces=self.cull_backfaces)
        colour = albedo * sh_shading(vertex_normals(cam, self.faces), sh)
        if self.vertex_weights is not None:
            colour = torch.cat([colour, self.vertex_weights], dim=1)
        vals = interpolate_covered(colour, self.faces, frags, screen).t()  # (C, P), contiguous
        pix = frags.covered_index()
        if self.vertex_weights is not None:
            return pix, vals[:3], vals[3].detach()
        return pix, vals, torch.ones_like(vals[0]).detach()

    def render(self, projected: ProjectOutput, albedo: torch.Tensor | None = None,
               sh: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Differentiable render.

        Args:
            projected: screen vertices (V, 3), or (screen vertices, camera-frame vertices) so that the
                normals are exact (the lighting frame: x right, y down, z forward).
            albedo, sh: default the refiner's own.

        Returns:
            image (H, W, 3), mask (H, W) bool of covered pixels, weight (H, W) of each pixel in the error.
        """
        pix, vals, weight = self._render_covered(projected, albedo, sh)
        n = self.height * self.width
        img = vals.new_zeros(n, 3).index_copy(0, pix, vals.t()).view(self.height, self.width, 3)
        mask = torch.zeros(n, dtype=torch.bool, device=vals.device).index_fill_(0, pix, True)
        w = weight.new_zeros(n).index_copy_(0, pix, weight)
        return img, mask.view(self.height, self.width), w.view(self.height, self.width)

    def photometric_loss(self, rendered: torch.Tensor, weight: torch.Tensor, image: torch.Tensor,
                         channel_dim: int = -1) -> torch.Tensor:
        """Weighted mean of the per-pixel L1 (sum over channels) or squared error: ``rendered`` and
        ``image`` (..., 3) (or channels first with ``channel_dim=0``), ``weight`` the pixel shape
        (0 on pixels that do not count, e.g. the background)."""
        diff = rendered - image
        per_pixel = diff.abs().sum(channel_dim) if self.loss == "l1" else (diff * diff).sum(channel_dim)
        return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)

    # ------------------------------------------------------------------ appearance initialisation
    @torch.no_grad()
    def init_albedo(self, image: torch.Tensor, projected: ProjectOutput) -> None:
        """Albedo of each visible vertex = the image colour at its pixel divided by the current
        shading; hidden vertices get the mean of the visible ones."""
        screen, cam = self._split(projected)
        frags = rasterize(screen, self.faces, self.height, self.width, cull_backfaces=self.cull_backfaces)
        col = screen[:, 0].round().long()
        row = screen[:, 1].round().long()
        inside = (col >= 0) & (col < self.width) & (row >= 0) & (row < self.height)
        col, row = col.clamp(0, self.width - 1), row.clamp(0, self.height - 1)
        surface = frags.depth[row, col]
        tol = 1e-2 * (screen[:, 2].amax() - screen[:, 2].amin()).clamp_min(1e-12)
        visible = inside & (frags.tri_id[row, col] >= 0) & (screen[:, 2] <= surface + tol)
        shading = sh_shading(vertex_normals(cam, self.faces), self.sh).clamp_min(0.05)
        albedo = (image[row, col] / shading).clamp(0.0, 1.0)
        if bool(visible.any()):
            fill = albedo[visible].mean(0)
            self.albedo = torch.where(visible[:, None], albedo, fill)
        self.albedo_initialised = True

    # ------------------------------------------------------------------ fitting
    def refine(self, image: torch.Tensor, project_fn: Callable[[dict[str, torch.Tensor]], ProjectOutput],
               params: Mapping[str, torch.Tensor], iters: int = 30, lr: float | Mapping[str, float] = 1e-3,
               fit_appearance: bool = True, lr_albedo: float = 0.02, lr_sh: float = 0.01,
               image_mask: torch.Tensor | None = None,
               extra_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
               photometric_weight: float = 1.0) -> tuple[dict[str, torch.Tensor], list[float]]:
        """Minimise the photometric error with Adam.

        Args:
            image: (H, W, 3) in [0, 1] on the refiner's device.
            project_fn: params -> screen vertices (V, 3), or (screen, camera-frame vertices).
            params: the tensors to optimise (copied; the originals are left alone).
            iters: optimiser steps.
            lr: learning rate of every param, or per param name (missing names: not optimised).
            fit_appearance: also optimise albedo and SH (with ``lr_albedo``, ``lr_sh``); on the first
                call the albedo is initialised from the image at the starting parameters.
            image_mask: (H, W) weights of the input pixels (e.g. a face segmentation); default all 1.
            extra_loss: params -> scalar added to the error (landmark terms, regularisers).
            photometric_weight: factor of the photometric error.

        Returns:
            the optimised params (detached) and the photometric error before each step.
        """
        image = image.to(self.device, torch.float32)
        if image.shape != (self.height, self.width, 3):
            raise ValueError(f"PhotometricRefiner: expected a ({self.height}, {self.width}, 3) image, "
                             f"got {tuple(image.shape)}")
        lrs = {k: float(lr) for k in params} if not isinstance(lr, Mapping) else dict(lr)
        p = {k: v.detach().clone().requires_grad_(k in lrs) for k, v in params.items()}
        groups = [(p[k], lrs[k]) for k in p if k in lrs]
        if fit_appearance:
            if not self.albedo_initialised:
                with torch.no_grad():
                    self.init_albedo(image, project_fn(p))
            self.albedo = self.albedo.detach().requires_grad_(True)
            self.sh = self.sh.detach().requires_grad_(True)
            groups += [(self.albedo, float(lr_albedo)), (self.sh, float(lr_sh))]
        history: list[float] = []
        if not groups or iters <= 0:
            return {k: v.detach() for k, v in p.items()}, history
        opt = _Adam(groups)
        planar_image = image.reshape(-1, 3).t().contiguous()  # (3, H*W)
        flat_mask = None if image_mask is None else image_mask.to(self.device, torch.float32).reshape(-1)
        for _ in range(int(iters)):
            opt.zero_grad()
            pix, rendered, weight = self._render_covered(project_fn(p))
            if flat_mask is not None:
                weight = weight * flat_mask.index_select(0, pix)
            photo = self.photometric_loss(rendered, weight, planar_image.index_select(1, pix), channel_dim=0)
            loss = photometric_weight * photo
            if extra_loss is not None:
                loss = loss + extra_loss(p)
            loss.backward()
            opt.step()
            history.append(float(photo.detach()))
            if fit_appearance:
                with torch.no_grad():
                    self.albedo.clamp_(0.0, 1.0)
        self.albedo = self.albedo.detach()
        self.sh = self.sh.detach()
        return {k: v.detach() for k, v in p.items()}, history
