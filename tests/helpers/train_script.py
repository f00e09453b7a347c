"""Helpers of tests/test_engine.py: a tiny re-id model, an in-memory clip dataset, and a training
entry point run as a subprocess (plain ``python`` or ``torchrun``) by the DDP and kill/resume tests.

    python tests/helpers/train_script.py --out DIR [--model tiny|psta|tap] [--epochs 2] [--steps 4] ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset


class TinyReID(nn.Module):
    """The model interface of psta.model at toy size: ``levels`` heads, each a BNNeck (bias frozen)
    + classifier; train() -> (logits list, post-BN features list), eval() -> B x D (last level)."""

    def __init__(self, num_classes: int, levels: int = 2, dim: int = 16):
        super().__init__()
        self.feature_dim = dim
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU())
        self.mix = nn.ModuleList([nn.Linear(dim, dim) for _ in range(levels)])
        self.bottleneck = nn.ModuleList([nn.BatchNorm1d(dim) for _ in range(levels)])
        for bn in self.bottleneck:
            bn.bias.requires_grad_(False)
        self.classifier = nn.ModuleList([nn.Linear(dim, num_classes) for _ in range(levels)])

    def forward(self, x):
        b, t = x.shape[:2]
        f = self.stem(x.flatten(0, 1)).mean(dim=(2, 3)).reshape(b, t, -1).mean(dim=1)
        feats = []
        for mix, bn in zip(self.mix, self.bottleneck):
            f = f + torch.relu(mix(f))
            feats.append(bn(f))
        if not self.training:
            return feats[-1]
        return [cls(v) for cls, v in zip(self.classifier, feats)], feats


class SyntheticClips(Dataset):
    """``num_ids`` identities x ``per_id`` tracklets of T x 3 x H x W clips in memory.

    Each identity has its own colour pattern; every item adds fresh noise and a random flip drawn
    from torch's *global* RNG (so exact resume depends on the engine restoring RNG states).
    Keys: a plain index or IdentitySampler's ``(index, epoch, draw)``. Items: ``(clip, label, camid)``.
    ``block_after`` (> 0): the ``block_after``-th access writes ``<block_file>`` and sleeps forever.
    """

    def __init__(self, num_ids: int = 8, per_id: int = 3, seq_len: int = 4, height: int = 32,
                 width: int = 16, seed: int = 0, block_after: int = 0, block_file: str | None = None,
                 noise: float = 0.5):
        g = torch.Generator().manual_seed(seed)
        self.seq_len, self.noise = seq_len, noise
        self.patterns = torch.randn(num_ids, 3, height, width, generator=g)
        self.labels = torch.arange(num_ids).repeat_interleave(per_id).tolist()
        self.camids = [i % 3 for i in range(len(self.labels))]
        self.offsets = 0.3 * torch.randn(len(self.labels), 3, 1, 1, generator=g)
        self.block_after, self.block_file = block_after, block_file
        self.accesses = 0
        self.keys: list = []

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, key):
        self.accesses += 1
        if self.block_after and self.accesses >= self.block_after:
            Path(self.block_file).write_text(str(self.accesses))
            while True:
                time.sleep(60)
        self.keys.append(key)
        i = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
        base = self.patterns[self.labels[i]] + self.offsets[i]
        clip = base.unsqueeze(0).repeat(self.seq_len, 1, 1, 1)
        clip = clip + self.noise * torch.randn(clip.shape)
        if torch.rand(()) < 0.5:
            clip = clip.flip(-1)
        return clip, self.labels[i], self.camids[i]


def build(model_name: str, num_classes: int, seq_len: int, height: int, width: int) -> nn.Module:
    if model_name == "tiny":
        return TinyReID(num_classes)
    from psta.model import build_model

    return build_model(model_name, num_classes=num_classes, seq_len=seq_len, height=height,
                       width=width, backbone="resnet18")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="tiny")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=0, help="max steps per epoch (0: all)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-ids", type=int, default=8)
    p.add_argument("--per-id", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=4)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--resume", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="cpu", help="cpu (gloo under torchrun) | cuda (nccl)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block-after", type=int, default=0)
    p.add_argument("--save-weights", action="store_true", help="each rank writes weights_rank<r>.pt")
    p.add_argument("--bn-groups", type=int, default=1)
    p.add_argument("--progress", action="store_true", help="tqdm bars (shown only on a terminal)")
    p.add_argument("--log", action="store_true", help="psta.engine's INFO lines to stderr")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    if args.log:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    from psta.engine import TrainConfig, train
    from psta.model.state_dict import model_state_dict

    out = Path(args.out)
    torch.manual_seed(args.seed)
    model = build(args.model, args.num_ids, args.seq_len, args.height, args.width)
    data = SyntheticClips(args.num_ids, args.per_id, args.seq_len, args.height, args.width, seed=args.seed,
                          block_after=args.block_after, block_file=str(out / "blocked"))
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, num_instances=2, num_workers=0,
                      max_steps_per_epoch=args.steps, warmup_epochs=1, milestones=(1,), seed=args.seed,
                      precision=args.precision, device=args.device, deterministic=args.device == "cpu",
                      progress=args.progress, bn_groups=args.bn_groups,
                      checkpoint_every_steps=args.ckpt_every, resume=args.resume, lr=1e-3)
    metrics = []
    result = train(cfg, model, data, out, on_epoch_end=lambda e, m: metrics.append(m),
                   model_meta={"arch": args.model})
    rank = int(os.environ.get("RANK", "0"))
    if args.save_weights:
        torch.save(model_state_dict(model), out / f"weights_rank{rank}.pt")
        (out / f"keys_rank{rank}.json").write_text(json.dumps([list(k) for k in data.keys]))
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps(metrics))
    print(f"rank {rank}: done, {result.epochs_completed} epochs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
