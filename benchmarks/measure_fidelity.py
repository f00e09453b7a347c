"""The measured effect of each recipe change listed in docs/FIDELITY.md (CPU, synthetic inputs).

Each measurement sets the previous behaviour beside the reference's, on the same inputs:

* loss: the sum of the level losses against their mean, on one batch of a freshly built PSTA
  (3 levels); and one Adam step of (sum, wd) against (mean, wd / 3) and (mean, wd): with Adam's
  coupled L2 the sum is the mean with a third of the weight decay.
* init: the standard deviation of the channel-reduction weights, Kaiming normal against
  PyTorch's default.
* erasing: 20,000 rectangles drawn with torchvision's law (log-uniform ratio, 10 attempts)
  against the reference's (uniform ratio, 100 attempts); the fill in pixel units.
* short tracklets: cosine similarity between the embeddings of the same short tracklet
  sampled as ``0 0 0 1 1 1 2 2`` (before) and ``0 1 2 0 1 2 0 1`` (the reference).
* resize: bicubic against bilinear on the synthetic 128 x 64 frames resized to 64 x 32.
* BatchNorm groups: the loss of one 32-clip batch with BatchNorm over 32 against 2 x 16 clips.

Writes benchmarks/results/fidelity.json.
Run: .venv/bin/python -m benchmarks.measure_fidelity [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from psta.atomic import write_text_atomic
from psta.data.sampling import begin_interval_indices
from psta.data.synthetic import SyntheticConfig, generate_mars
from psta.data.transforms import ERASE_FILL, IMAGENET_MEAN, IMAGENET_STD, ClipTransform
from psta.engine import forward_in_groups
from psta.losses import PSTALoss
from psta.model import build_model
from psta.solver import build_optimizer

RESULTS = Path(__file__).resolve().parent / "results" / "fidelity.json"


def _model(seed: int = 0, seq_len: int = 8, size=(128, 64), num_classes: int = 16):
    torch.manual_seed(seed)
    return build_model("psta", num_classes=num_classes, seq_len=seq_len, height=size[0], width=size[1],
                       backbone="resnet18")


def _batch(n_ids: int = 8, per_id: int = 4, seq_len: int = 8, size=(128, 64), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n_ids, 1, 3, *size, generator=g)
    clips = base.repeat_interleave(per_id, 0).expand(-1, seq_len, -1, -1, -1)
    clips = clips + 0.5 * torch.randn(clips.shape, generator=g)
    return clips.contiguous(), torch.arange(n_ids).repeat_interleave(per_id)


def measure_loss() -> dict:
    model = _model().train()
    x, y = _batch(n_ids=4, per_id=4)
    logits, feats = model(x)
    mean, _ = PSTALoss()(logits, feats, y)
    summed, _ = PSTALoss(level_weights=[1, 1, 1])(logits, feats, y)

    def one_step(level_weights, wd):
        m = copy.deepcopy(model)
        opt = build_optimizer(m, lr=3.5e-4, weight_decay=wd)
        lg, ft = m(x)
        loss, _ = PSTALoss(level_weights=level_weights)(lg, ft, y)
        loss.backward()
        opt.step()
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    sum_wd = one_step([1, 1, 1], 5e-4)
    mean_wd3 = one_step(None, 5e-4 / 3)
    mean_wd = one_step(None, 5e-4)
    update = (sum_wd - start).norm()

    def rel(other):  # |difference of the two Adam updates| / |update|, over all parameters
        return float(((sum_wd - start) - (other - start)).norm() / update)

    return {
        "levels": 3, "loss_mean": round(mean.item(), 5), "loss_sum": round(summed.item(), 5),
        "ratio": round(summed.item() / mean.item(), 6),
        "adam_update_rel_diff_sum_vs_mean_with_wd_over_3": rel(mean_wd3),
        "adam_update_rel_diff_sum_vs_mean_with_same_wd": rel(mean_wd),
        "effective_weight_decay_before": 5e-4 / 3, "effective_weight_decay_after": 5e-4,
    }


def measure_init() -> dict:
    torch.manual_seed(0)
    model = build_model("psta", num_classes=625, seq_len=8, backbone="resnet50")  # 2048 -> 1024
    w = model.down_channel[0].weight
    kaiming = torch.empty_like(w)
    torch.nn.init.kaiming_normal_(kaiming, mode="fan_in")
    return {"reduction_std_reference_default": round(w.std().item(), 5),
            "reduction_std_kaiming_before": round(kaiming.std().item(), 5),
            "expected_default": round(1 / math.sqrt(3 * 2048), 5), "expected_kaiming": round(math.sqrt(2 / 2048), 5)}


def _old_erase_params(g: torch.Generator, H: int, W: int) -> tuple[int, int] | None:
    """torchvision's v2.RandomErasing law: log-uniform aspect ratio in [0.3, 3.3], 10 attempts."""
    lo, hi = math.log(0.3), math.log(3.3)
    for _ in range(10):
        area = H * W * torch.empty(1).uniform_(0.02, 0.4, generator=g).item()
        ratio = math.exp(torch.empty(1).uniform_(lo, hi, generator=g).item())
        h, w = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if h < H and w < W:
            return h, w
    return None


def measure_erasing(n: int = 20000) -> dict:
    H, W = 256, 128
    new = ClipTransform(H, W, erase_p=1.0)
    g_old, g_new = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    old = [_old_erase_params(g_old, H, W) for _ in range(n)]
    new_draws = [new.make_params(g_new)["erase"] for _ in range(n)]
    new_hw = [(e[2], e[3]) if e else None for e in new_draws]

    def stats(draws):
        got = [d for d in draws if d]
        ratios = np.array([h / w for h, w in got])
        areas = np.array([h * w / (H * W) for h, w in got])
        return {"erased_share": round(len(got) / len(draws), 4), "mean_h_over_w": round(float(ratios.mean()), 3),
                "share_taller_than_wide": round(float((ratios > 1).mean()), 3),
                "mean_area_share": round(float(areas.mean()), 4)}

    fill_pixels = [round((f * s + m) * 255, 1) for f, m, s in zip(ERASE_FILL, IMAGENET_MEAN, IMAGENET_STD)]
    return {"before_torchvision_law": stats(old), "after_reference_law": stats(new_hw),
            "fill_before_pixels": [round(m * 255, 1) for m in IMAGENET_MEAN], "fill_after_pixels": fill_pixels}


def measure_short_tracklets(model) -> dict:
    """Embeddings of short tracklets (n = 2..7 of T = 8) in the two frame orders."""
    model = model.eval()
    g = torch.Generator().manual_seed(1)
    sims = {}
    with torch.no_grad():
        for n in range(2, 8):
            frames = torch.randn(16, n, 3, 128, 64, generator=g)  # 16 tracklets of n distinct frames
            even = torch.arange(8) * n // 8
            cyclic = torch.as_tensor(begin_interval_indices(n, 8))
            a = F.normalize(model(frames[:, even]), dim=1)
            b = F.normalize(model(frames[:, cyclic]), dim=1)
            sims[n] = round(float((a * b).sum(1).mean()), 4)
    return {"mean_cosine_even_vs_cyclic_by_n": sims}


def measure_resize(tmp: Path) -> dict:
    generate_mars(tmp / "MARS", SyntheticConfig(num_train_ids=2, num_test_ids=2, num_distractor_tracklets=0,
                                                num_junk_tracklets=0, min_len=8, max_len=8))
    diffs, psnrs = [], []
    from torchvision.io import decode_image

    for path in sorted((tmp / "MARS").rglob("*.jpg"))[:64]:
        img = decode_image(str(path))
        a = TF.resize(img, [64, 32], interpolation=InterpolationMode.BICUBIC, antialias=True).double()
        b = TF.resize(img, [64, 32], interpolation=InterpolationMode.BILINEAR, antialias=True).double()
        mse = ((a - b) ** 2).mean().item()
        diffs.append((a - b).abs().mean().item())
        psnrs.append(10 * math.log10(255 ** 2 / max(mse, 1e-12)))
    return {"frames": len(diffs), "mean_abs_diff_levels": round(float(np.mean(diffs)), 3),
            "psnr_db": round(float(np.mean(psnrs)), 2)}


def measure_bn_groups() -> dict:
    model = _model().train()
    x, y = _batch()
    whole = PSTALoss()(*copy.deepcopy(model)(x), y)[0].item()
    grouped = PSTALoss()(*forward_in_groups(copy.deepcopy(model), x, 2), y)[0].item()
    return {"batch": 32, "loss_bn_over_32": round(whole, 5), "loss_bn_over_2x16": round(grouped, 5)}


def main(argv=None) -> int:
    import tempfile

    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    out["loss"] = measure_loss()
    out["init"] = measure_init()
    out["erasing"] = measure_erasing()
    out["short_tracklets_untrained"] = measure_short_tracklets(_model())
    with tempfile.TemporaryDirectory() as tmp:
        out["resize"] = measure_resize(Path(tmp))
    out["bn_groups"] = measure_bn_groups()
    text = json.dumps(out, indent=1)
    print(text)
    write_text_atomic(RESULTS, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
