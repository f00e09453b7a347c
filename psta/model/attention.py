"""STAM, the pyramid level of PSTA, with its TRA (temporal) and SRA (spatial) reference attentions.

Every frame pair (0, 1), (2, 3), ... of a level is processed at once: the tensors are reshaped to
B x P x 2 x ... (P = T'/2 pairs, the last axis of size 2 being the frame inside the pair), and
the "other frame" of each pair is obtained with ``flip`` on that axis. The two directions of TRA
(alpha for frame i, beta' for frame j) are stacked the same way, so every submodule runs once per
level instead of once per pair and direction.

The reference implementation calls ``gg_temporal``, ``tte_para`` and ``te_para`` separately for
every (pair, direction): in training mode their BatchNorms therefore normalise with the batch
statistics of that call only, and update their running statistics once per call. To keep exactly
that mathematics, those BatchNorms are applied per group (:func:`grouped_batch_norm`): the
statistics are computed per (pair, direction) group and the running statistics receive the same
sequence of momentum updates, in the reference's order, in closed form. In eval mode a BatchNorm
is a fixed affine map and runs unchanged on the whole batch.

Module and parameter names follow the authors' released checkpoints (``Embeding``, ``TRAG``,
``SRAG``, ``gamma_temporal``, ``alphi_appearance`` ...), so their state dicts load as they are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .weight_init import weights_init_kaiming


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=1, stride=1, padding=0, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@torch.no_grad()
def _update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var_unbiased: torch.Tensor) -> None:
    """Apply G successive BatchNorm running-stat updates (rows of ``mean`` / ``var``, in order)."""
    groups = mean.shape[0]
    if bn.momentum is None:  # cumulative moving average: sequential by definition
        for g in range(groups):
            bn.num_batches_tracked.add_(1)
            f = 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - f).add_(mean[g].to(bn.running_mean.dtype), alpha=f)
            bn.running_var.mul_(1 - f).add_(var_unbiased[g].to(bn.running_var.dtype), alpha=f)
        return
    m = float(bn.momentum)
    decay = 1.0 - m
    # x_G = decay^G x_0 + sum_g m decay^(G-1-g) s_g
    acc = torch.promote_types(bn.running_mean.dtype, torch.float32)
    powers = torch.arange(groups - 1, -1, -1, dtype=torch.float64, device=mean.device)
    coef = (m * decay ** powers).to(acc).unsqueeze(1)
    keep = decay ** groups
    bn.running_mean.mul_(keep).add_((coef * mean.to(acc)).sum(0).to(bn.running_mean.dtype))
    bn.running_var.mul_(keep).add_((coef * var_unbiased.to(acc)).sum(0).to(bn.running_var.dtype))
    bn.num_batches_tracked.add_(groups)


def grouped_batch_norm(x: torch.Tensor, bn: nn.BatchNorm2d, groups: int) -> torch.Tensor:
    """``bn`` applied as if called separately on each group of the batch.

    ``x`` is N x C x H x W with N = B * groups and the group index varying fastest
    (row n belongs to group n % groups). In training mode each group is normalised with its own
    batch statistics and the running statistics are updated once per group, in group order,
    exactly as ``groups`` successive calls of ``bn`` would. Otherwise ``bn(x)``.
    """
    uses_batch_stats = bn.training or bn.running_mean is None
    if groups == 1 or not uses_batch_stats:
        return bn(x)
    n, c = x.shape[:2]
    if n % groups:
        raise ValueError(f"batch of {n} is not divisible into {groups} groups")
    b = n // groups
    acc = torch.promote_types(x.dtype, torch.float32)  # bf16 / fp16 -> fp32 statistics
    xg = x.reshape(b, groups, c, *x.shape[2:]).to(acc)
    dims = (0,) + tuple(range(3, xg.ndim))
    var, mean = torch.var_mean(xg, dim=dims, unbiased=False, keepdim=True)
    y = (xg - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        shape = (1, 1, c) + (1,) * (xg.ndim - 3)
        y = y * bn.weight.to(acc).view(shape) + bn.bias.to(acc).view(shape)
    if bn.training and bn.running_mean is not None:
        count = xg.numel() // (groups * c)
        mean_g = mean.reshape(groups, c).detach()
        var_g = var.reshape(groups, c).detach() * (count / max(count - 1, 1))
        _update_running_stats(bn, mean_g, var_g)
    return y.to(x.dtype).reshape(x.shape)


def _run_grouped(seq: nn.Sequential, x: torch.Tensor, groups: int) -> torch.Tensor:
    """Run a conv / BN / activation ``Sequential`` with its BatchNorms applied per group."""
    for m in seq:
        x = grouped_batch_norm(x, m, groups) if isinstance(m, nn.BatchNorm2d) else m(x)
    return x


class TRA(nn.Module):
    """Temporal reference attention: fuses frames (i, i+1) -> one map, B x T'/2 x C x h x w.

    ``spatial_size`` is h * w of the feature maps (16 * 8 = 128 for 256 x 128 input).
    """

    def __init__(self, inplanes: int = 1024, spatial_size: int = 128):
        super().__init__()
        c8 = inplanes // 8
        self.inplanes = inplanes
        self.spatial_size = spatial_size
        self.gamma_temporal = _conv_bn_relu(inplanes, c8)
        self.beta_temporal = _conv_bn_relu(inplanes, c8)
        self.gg_temporal = _conv_bn_relu(2 * spatial_size, 128)
        self.tte_para = _conv_bn_relu(2 * 128, 128)
        self.te_para = nn.Sequential(
            nn.Conv2d(2 * 128, 1, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(1),
            nn.Sigmoid(),
        )
        self.theta_channel = nn.Sequential(
            nn.Conv1d(inplanes, c8, kernel_size=1, stride=1, padding=0, bias=False),
            nn.ReLU(inplace=True),
        )
        self.channel_para = nn.Sequential(
            nn.Linear(inplanes // 4, c8),
            nn.ReLU(inplace=True),
            nn.Linear(c8, inplanes),
            nn.Sigmoid(),
        )
        self.apply(weights_init_kaiming)

    def forward(self, feat: torch.Tensor, feat_flat: torch.Tensor, vect: torch.Tensor,
                embed: torch.Tensor) -> torch.Tensor:
        """feat B x T' x C x h x w, feat_flat its (B*T') x C x h x w view, vect B x T' x C
        (spatially pooled frames), embed (B*T') x 128 x h x w. Returns B x T'/2 x C x h x w."""
        b, t, c, h, w = feat.shape
        p, hw = t // 2, h * w
        groups = 2 * p  # (pair, direction), direction fastest: the reference's call order

        # Channel weights a_i = channel([theta_i, theta_j]), a_j = channel([theta_j, theta_i]).
        theta = self.theta_channel(vect.transpose(1, 2)).transpose(1, 2).reshape(b, p, 2, -1)
        chan = self.channel_para(torch.cat((theta, theta.flip(2)), dim=-1))  # B x P x 2 x C

        # Relations: rel[:, :, 0] = gamma_i^T beta_j = R_ij, rel[:, :, 1] = gamma_j^T beta_i = R_ji.
        gamma = self.gamma_temporal(feat_flat).reshape(b, p, 2, -1, hw)
        beta = self.beta_temporal(feat_flat).reshape(b, p, 2, -1, hw)
        rel = torch.matmul(gamma.transpose(-1, -2), beta.flip(2))  # B x P x 2 x hw x hw
        # alpha reads [R_ij in, R_ji out], beta' reads [R_ji in, R_ij out] ("in" = transpose).
        joint = torch.cat((rel.transpose(-1, -2), rel.flip(2)), dim=3).reshape(b * groups, 2 * hw, h, w)
        rel_feat = _run_grouped(self.gg_temporal, joint, groups)

        emb = embed.reshape(b, p, 2, -1, h, w)
        emb_pair = torch.cat((emb, emb.flip(2)), dim=3).reshape(b * groups, -1, h, w)
        emb_feat = _run_grouped(self.tte_para, emb_pair, groups)
        att = _run_grouped(self.te_para, torch.cat((emb_feat, rel_feat), dim=1), groups)
        att = att.reshape(b, p, 2, 1, h, w)  # [alpha, beta'] per pair

        weight = chan[..., None, None] * att  # B x P x 2 x C x h x w
        fused = (weight * feat.reshape(b, p, 2, c, h, w)).sum(dim=2)
        return torch.relu(fused).square()


class SRA(nn.Module):
    """Spatial reference attention: adds ReLU(c_i s_i F_i + c_j s_j F_j) to the TRA output."""

    def __init__(self, inplanes: int = 1024, spatial_size: int = 128):
        super().__init__()
        c8 = inplanes // 8
        self.inplanes = inplanes
        self.spatial_size = spatial_size
        self.alphi_appearance = _conv_bn_relu(inplanes, c8)
        self.delta_appearance = _conv_bn_relu(inplanes, c8)
        self.gg_spatial = _conv_bn_relu(2 * spatial_size, 128)
        self.spa_para = nn.Sequential(
            nn.Conv2d(2 * 128, 128, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 1, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(1),
            nn.Sigmoid(),
        )
        self.app_channel = nn.Sequential(
            nn.Linear(inplanes, c8),
            nn.ReLU(inplace=True),
            nn.Linear(c8, inplanes),
            nn.Sigmoid(),
        )
        self.apply(weights_init_kaiming)

    def forward(self, feat: torch.Tensor, feat_flat: torch.Tensor, vect: torch.Tensor,
                embed: torch.Tensor, aggregated: torch.Tensor) -> torch.Tensor:
        """``aggregated`` is the TRA output B x T'/2 x C x h x w; returns the same shape."""
        b, t, c, h, w = feat.shape
        p, hw = t // 2, h * w
        phi = self.alphi_appearance(feat_flat).reshape(b * t, -1, hw)
        delta = self.delta_appearance(feat_flat).reshape(b * t, -1, hw)
        rel = torch.matmul(phi.transpose(1, 2), delta)  # R_i = phi_i^T delta_i, (B*T') x hw x hw
        joint = torch.cat((rel.transpose(1, 2), rel), dim=1).reshape(b * t, 2 * hw, h, w)
        spatial = self.spa_para(torch.cat((embed, self.gg_spatial(joint)), dim=1))
        spatial = spatial.reshape(b, p, 2, 1, h, w)
        chan = self.app_channel(vect).reshape(b, p, 2, c)
        weight = chan[..., None, None] * spatial
        fused = (weight * feat.reshape(b, p, 2, c, h, w)).sum(dim=2)
        return aggregated + torch.relu(fused)


class STAM(nn.Module):
    """One pyramid level: B x T' x C x h x w -> B x T'/2 x C x h x w (T' even)."""

    def __init__(self, inplanes: int = 1024, mid_planes: int = 256, spatial_size: int = 128):
        super().__init__()
        self.inplanes = inplanes
        self.spatial_size = spatial_size
        self.Embeding = nn.Sequential(
            nn.Conv2d(inplanes, mid_planes, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(mid_planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_planes, 128, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
        )
        self.TRAG = TRA(inplanes, spatial_size)
        self.SRAG = SRA(inplanes, spatial_size)
        self.conv_block = nn.Sequential(
            nn.Conv2d(inplanes, mid_planes, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid_planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_planes, mid_planes, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_planes, inplanes, kernel_size=1, bias=False),
            nn.BatchNorm2d(inplanes),
            nn.ReLU(inplace=True),
        )
        self.Embeding.apply(weights_init_kaiming)
        self.conv_block.apply(weights_init_kaiming)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        if feat.ndim != 5:
            raise ValueError(f"STAM expects B x T x C x h x w, got shape {tuple(feat.shape)}")
        b, t, c, h, w = feat.shape
        if t < 2 or t % 2:
            raise ValueError(f"STAM fuses frame pairs and needs an even number of frames >= 2, got {t}")
        if h * w != self.spatial_size or c != self.inplanes:
            raise ValueError(
                f"STAM was built for {self.inplanes} channels and h*w = {self.spatial_size} "
                f"feature maps, got {c} x {h} x {w}")
        flat = feat.reshape(b * t, c, h, w)
        vect = F.adaptive_avg_pool2d(flat, 1).reshape(b, t, c)
        embed = self.Embeding(flat)
        aggregated = self.TRAG(feat, flat, vect, embed)
        fused = self.SRAG(feat, flat, vect, embed, aggregated)
        out = self.conv_block(fused.reshape(b * (t // 2), c, h, w))
        return out.reshape(b, t // 2, c, h, w)
