"""``track.py --photometric``: after the landmark fit of a frame, a few Adam steps of
``PhotometricRefiner`` on expression, jaw/eyes and the camera's R, t, with the landmark term kept
as an anchor (as the original's photometric levels keep their landmark losses).

The FLAME posing here is the differentiable torch path of the project's FLAME layer (``models/flame.py``
forward, then the eyelid offsets); the landmark points are the same vertex combinations as
``TrackingFLAME.points``.
"""
from __future__ import annotations

import numpy as np
import torch

from micalib.tracking.fitting import FrameState, Intrinsics
from micalib.tracking.model import TrackingFLAME
from micalib.tracking.photometric import PhotometricRefiner
from models.lbs import batch_rodrigues


class PhotometricStage:
    """Per-frame photometric refinement on ``device`` (the albedo and lighting carry over frames).

    Args:
        model: the tracking FLAME; image_size: crop size; iters: Adam steps per frame;
        lr: learning rate of the geometry; landmark_weight: weight of the mean squared landmark
        residual (pixels) against the photometric error (mean L1 over covered pixels, [0, 1] colours).
    """

    def __init__(self, model: TrackingFLAME, image_size: int, device: str = "cpu", iters: int = 20,
                 lr: float = 2e-3, landmark_weight: float = 1e-3) -> None:
        self.model, self.iters, self.lr, self.lw = model, int(iters), float(lr), float(landmark_weight)
        self.device = torch.device(device)
        self.flame = model.flame.to(self.device)
        self.shape = model._shape.to(self.device)
        self.lids = torch.as_tensor(model.eyelids, dtype=torch.float32, device=self.device)
        self.refiner = PhotometricRefiner(model.faces, model.flame.n_vertices, image_size, image_size, device=self.device)
        self.history: list = []

    def appearance(self) -> np.ndarray | None:
        """The albedo (V, 3) and SH lighting (9, 3) carried to the next frame, stacked ((V + 9, 3)
        float32), or None before the first frame."""
        r = self.refiner
        if not r.albedo_initialised:
            return None
        return torch.cat([r.albedo.detach(), r.sh.detach().reshape(-1, 3)]).cpu().numpy().astype(np.float32)

    def set_appearance(self, appearance: np.ndarray) -> None:
        """Continue from an ``appearance()`` (a resumed run)."""
        r = self.refiner
        a = torch.as_tensor(np.asarray(appearance, np.float32), device=self.device)
        r.albedo, r.sh = a[: r.n_vertices].clone(), a[r.n_vertices:].reshape(r.sh.shape).clone()
        r.albedo_initialised = True

    def refine(self, crop_rgb: np.ndarray, st: FrameState, intr: Intrinsics, obs: np.ndarray,
               valid: np.ndarray, contour_bin: int) -> FrameState:
        dev, f32 = self.device, torch.float32
        k = torch.as_tensor(intr.k, dtype=f32, device=dev)
        r0 = torch.as_tensor(st.r, dtype=f32, device=dev)
        vid = self.model.subset[np.concatenate([self.model._fixed_vid, self.model._dyn_vid[contour_bin]])]
        _, w = self.model._point_weights(contour_bin)
        vid_t = torch.as_tensor(vid, device=dev)
        w_t = torch.as_tensor(w, dtype=f32, device=dev)
        obs_t = torch.as_tensor(np.nan_to_num(obs), dtype=f32, device=dev)
        val_t = torch.as_tensor(valid, dtype=f32, device=dev)
        zeros6 = torch.zeros(1, 6, dtype=f32, device=dev)
        lids = torch.as_tensor(st.eyelids, dtype=f32, device=dev)

        def posed(p):
            full = torch.cat([zeros6, p["pose"].view(1, 9)], 1)
            v = self.flame(self.shape, p["exp"].view(1, -1), full_pose=full).vertices[0]
            v = v + torch.einsum("e,evc->vc", lids, self.lids)
            r = batch_rodrigues(p["w"].view(1, 3))[0] @ r0
            cam = v @ r.T + p["t"]
            return v, cam

        def to_screen(cam):
            uvw = cam @ k.T
            return torch.cat([uvw[:, :2] / uvw[:, 2:3], cam[:, 2:3]], 1)

        def project(p):
            _, cam = posed(p)
            return to_screen(cam), cam

        def landmark_loss(p):
            _, cam = posed(p)
            pts = (cam[vid_t] * w_t[..., None]).sum(1)
            uv = to_screen(pts)[:, :2]
            err = ((uv - obs_t) ** 2).sum(1) * val_t
            return self.lw * err.sum() / val_t.sum().clamp_min(1.0)

        params = {"exp": torch.as_tensor(st.exp, dtype=f32, device=dev),
                  "pose": torch.as_tensor(st.pose, dtype=f32, device=dev),
                  "w": torch.zeros(3, dtype=f32, device=dev),
                  "t": torch.as_tensor(st.t, dtype=f32, device=dev)}
        image = torch.from_numpy(np.array(crop_rgb, np.float32)).to(dev) / 255.0
        lrs = {"exp": self.lr * 10, "pose": self.lr, "w": self.lr * 0.5, "t": self.lr * 0.05}
        out, hist = self.refiner.refine(image, project, params, iters=self.iters, lr=lrs, extra_loss=landmark_loss)
        self.history.append(hist)
        r = (batch_rodrigues(out["w"].view(1, 3).double())[0].cpu().numpy()) @ st.r
        return FrameState(out["exp"].double().cpu().numpy(), out["pose"].double().cpu().numpy(), st.eyelids.copy(),
                          r, out["t"].double().cpu().numpy())
