"""The plain per-pair loop PSTA, written straight from docs/SPEC.md and the reference code's loops.

It is the oracle of tests/test_model.py (batched pair processing must equal it) and the baseline
of benchmarks/bench_model.py. Its submodules carry the released checkpoints' names, so state
dicts move between it and :class:`psta.model.PSTA` unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from psta.model import feature_map_size


def _cbr(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class OracleTRA(nn.Module):
    def __init__(self, c, hw):
        super().__init__()
        self.gamma_temporal = _cbr(c, c // 8)
        self.beta_temporal = _cbr(c, c // 8)
        self.gg_temporal = _cbr(2 * hw, 128)
        self.tte_para = _cbr(256, 128)
        self.te_para = nn.Sequential(nn.Conv2d(256, 1, 1, bias=False), nn.BatchNorm2d(1), nn.Sigmoid())
        self.theta_channel = nn.Sequential(nn.Conv1d(c, c // 8, 1, bias=False), nn.ReLU())
        self.channel_para = nn.Sequential(nn.Linear(c // 4, c // 8), nn.ReLU(), nn.Linear(c // 8, c), nn.Sigmoid())

    def forward(self, fmap, flat, vect, embed):
        b, t, c, h, w = fmap.shape
        gamma = self.gamma_temporal(flat).view(b, t, -1, h * w)
        beta = self.beta_temporal(flat).view(b, t, -1, h * w)
        theta = self.theta_channel(vect.permute(0, 2, 1))  # b x C/8 x t
        out = []
        for i in range(0, t, 2):
            j = i + 1
            a_i = self.channel_para(torch.cat((theta[:, :, i], theta[:, :, j]), 1)).view(b, -1, 1, 1)
            a_j = self.channel_para(torch.cat((theta[:, :, j], theta[:, :, i]), 1)).view(b, -1, 1, 1)
            r_ij = torch.matmul(gamma[:, i].permute(0, 2, 1), beta[:, j])
            r_ji = torch.matmul(gamma[:, j].permute(0, 2, 1), beta[:, i])
            in_ij = r_ij.permute(0, 2, 1).reshape(b, h * w, h, w)
            out_ij = r_ij.reshape(b, h * w, h, w)
            in_ji = r_ji.permute(0, 2, 1).reshape(b, h * w, h, w)
            out_ji = r_ji.reshape(b, h * w, h, w)
            g0 = self.gg_temporal(torch.cat((in_ij, out_ji), 1))
            alpha = self.te_para(torch.cat((self.tte_para(torch.cat((embed[:, i], embed[:, j]), 1)), g0), 1))
            g1 = self.gg_temporal(torch.cat((in_ji, out_ij), 1))
            beta_ = self.te_para(torch.cat((self.tte_para(torch.cat((embed[:, j], embed[:, i]), 1)), g1), 1))
            pair = (a_i * alpha) * fmap[:, i] + (a_j * beta_) * fmap[:, j]
            out.append(torch.relu(pair) ** 2)
        return torch.stack(out, 1)


class OracleSRA(nn.Module):
    def __init__(self, c, hw):
        super().__init__()
        self.alphi_appearance = _cbr(c, c // 8)
        self.delta_appearance = _cbr(c, c // 8)
        self.gg_spatial = _cbr(2 * hw, 128)
        self.spa_para = nn.Sequential(nn.Conv2d(256, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
                                      nn.Conv2d(128, 1, 1, bias=False), nn.BatchNorm2d(1), nn.Sigmoid())
        self.app_channel = nn.Sequential(nn.Linear(c, c // 8), nn.ReLU(), nn.Linear(c // 8, c), nn.Sigmoid())

    def forward(self, fmap, flat, vect, embed, aggregated):
        b, t, c, h, w = fmap.shape
        phi = self.alphi_appearance(flat).view(b * t, -1, h * w)
        delta = self.delta_appearance(flat).view(b * t, -1, h * w)
        r = torch.matmul(phi.permute(0, 2, 1), delta)
        joint = torch.cat((r.permute(0, 2, 1).reshape(b * t, h * w, h, w), r.reshape(b * t, h * w, h, w)), 1)
        s = self.spa_para(torch.cat((embed.reshape(b * t, -1, h, w), self.gg_spatial(joint)), 1)).view(b, t, 1, h, w)
        out = []
        for i in range(0, t, 2):
            c_i = self.app_channel(vect[:, i]).view(b, -1, 1, 1)
            c_j = self.app_channel(vect[:, i + 1]).view(b, -1, 1, 1)
            pair = (c_i * s[:, i]) * fmap[:, i] + (c_j * s[:, i + 1]) * fmap[:, i + 1]
            out.append(aggregated[:, i // 2] + torch.relu(pair))
        return torch.stack(out, 1)


class OracleSTAM(nn.Module):
    def __init__(self, c, hw):
        super().__init__()
        self.Embeding = nn.Sequential(nn.Conv2d(c, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
                                      nn.Conv2d(256, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU())
        self.TRAG = OracleTRA(c, hw)
        self.SRAG = OracleSRA(c, hw)
        self.conv_block = nn.Sequential(
            nn.Conv2d(c, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
            nn.Conv2d(256, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())

    def forward(self, fmap):
        b, t, c, h, w = fmap.shape
        flat = fmap.reshape(b * t, c, h, w)
        vect = F.adaptive_avg_pool2d(flat, 1).view(b, t, c)
        embed = self.Embeding(flat).view(b, t, -1, h, w)
        agg = self.TRAG(fmap, flat, vect, embed)
        agg = self.SRAG(fmap, flat, vect, embed, agg)
        return self.conv_block(agg.reshape(b * (t // 2), c, h, w)).view(b, t // 2, c, h, w)


class OracleBase(nn.Module):
    def __init__(self, name):
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        for k in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, k, getattr(net, k))
        for m in self.layer4[0].modules():
            if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                m.stride = (1, 1)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class OraclePSTA(nn.Module):
    def __init__(self, num_classes, seq_len=8, height=256, width=128, backbone="resnet50", planes=1024):
        super().__init__()
        self.base = OracleBase(backbone)
        h, w = feature_map_size(height, width)
        cin = 2048 if backbone == "resnet50" else 512
        self.down_channel = _cbr(cin, planes)
        self.n = int(math.log2(seq_len))
        for k in range(self.n):
            setattr(self, f"layer{k + 1}", OracleSTAM(planes, h * w))
        self.bottleneck = nn.ModuleList([nn.BatchNorm1d(planes) for _ in range(self.n)])
        self.classifier = nn.ModuleList([nn.Linear(planes, num_classes) for _ in range(self.n)])

    def forward(self, x):
        b, t = x.shape[:2]
        fmap = self.down_channel(self.base(x.reshape(b * t, *x.shape[2:])))
        fmap = fmap.view(b, t, *fmap.shape[1:])
        gs, feats = [], []
        for k in range(self.n):
            fmap = getattr(self, f"layer{k + 1}")(fmap)
            gs.append(F.adaptive_avg_pool2d(fmap.mean(1), 1).view(b, -1))
            feats.append(torch.stack(gs, 1).mean(1))
        bn = [self.bottleneck[k](f) for k, f in enumerate(feats)]
        if not self.training:
            return bn[-1]
        return [self.classifier[k](f) for k, f in enumerate(bn)], bn
