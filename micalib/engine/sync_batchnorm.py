"""BatchNorm synchronised over processes, on CPU/gloo too (``torch.nn.SyncBatchNorm`` is GPU-only).

Without it, N DDP processes with batch b normalise over b samples each and do not train like one
process with batch N*b.
"""
from __future__ import annotations

import torch
from torch import nn

from utils import dist as comm


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are summed over all processes (differentiable all-reduce).

    Same parameters, buffers and state-dict names as ``BatchNorm1d/2d``. In eval mode or with one
    process it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and comm.get_world_size() > 1):
            return super().forward(x)
        import warnings

        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        count = torch.full((1,), x.numel() / c, dtype=torch.float64, device=x.device)
        xd = x.double()
        stats = torch.cat([xd.sum(dims), (xd * xd).sum(dims), count])
        with warnings.catch_warnings():  # deprecated in favour of an API without autograd on gloo
            warnings.simplefilter("ignore", FutureWarning)
            stats = all_reduce(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                unbiased = var * n / (n - 1).clamp_min(1.0)
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xd - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm with trainable parameters by a process-synchronised one (in place).

    BatchNorm layers without trainable parameters (ArcFace's frozen stem..layer3) are left alone:
    they keep per-process statistics, as in the original. CUDA models get
    ``torch.nn.SyncBatchNorm``, others :class:`AllReduceBatchNorm`. Returns ``module``.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, (nn.SyncBatchNorm, AllReduceBatchNorm)):
            if not any(p.requires_grad for p in child.parameters()):
                continue
            on_cuda = child.weight is not None and child.weight.is_cuda
            cls = nn.SyncBatchNorm if on_cuda else AllReduceBatchNorm
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new = new.to(device=child.running_mean.device if child.running_mean is not None else None)
            for p_new, p_old in zip(new.parameters(), child.parameters(), strict=True):
                p_new.requires_grad_(p_old.requires_grad)
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child)
    return module
