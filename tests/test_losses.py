"""Tests of psta.losses and psta.solver against straightforward reference computations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from psta.losses import PSTALoss, cross_entropy_label_smooth, pairwise_distance, triplet_batch_hard
from psta.solver import WarmupMultiStepLR, build_optimizer, lr_factor


# ----------------------------------------------------------------------------- references
def triplet_loop(x: torch.Tensor, y: torch.Tensor, margin: float, distance: str) -> torch.Tensor:
    """Batch-hard triplet, one anchor at a time, with plain Python loops."""
    n = x.shape[0]
    losses = []
    for a in range(n):
        hardest_pos, hardest_neg = None, None
        for j in range(n):
            if distance == "cosine":
                d = 1.0 - torch.dot(x[a], x[j]) / (x[a].norm() * x[j].norm())
            else:
                d = torch.sqrt(((x[a] - x[j]) ** 2).sum().clamp_min(1e-12))
            if y[j] == y[a]:
                hardest_pos = d if hardest_pos is None else torch.maximum(hardest_pos, d)
            else:
                hardest_neg = d if hardest_neg is None else torch.minimum(hardest_neg, d)
        if hardest_neg is None:
            continue
        losses.append(torch.clamp(hardest_pos - hardest_neg + margin, min=0.0))
    return torch.stack(losses).mean()


def ce_smooth_reference(logits: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    k = logits.shape[1]
    q = torch.full_like(logits, eps / k)
    q[torch.arange(len(y)), y] += 1.0 - eps
    return (-q * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_batch_hard_matches_loop(distance, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])[torch.randperm(16, generator=g)]
    x.requires_grad_(True)
    got = triplet_batch_hard(x, y, margin=0.3, distance=distance)
    want = triplet_loop(x.detach().double(), y, 0.3, distance)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    got.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_triplet_single_instance_identities_and_no_negatives():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 1, 2, 2])  # identity 0 has only itself as positive
    torch.testing.assert_close(triplet_batch_hard(x, y), triplet_loop(x, y, 0.3, "cosine"))
    same = torch.zeros(4, dtype=torch.long)
    xs = torch.randn(4, 4, requires_grad=True)
    out = triplet_batch_hard(xs, same)
    assert out.item() == 0.0
    out.backward()  # still differentiable


def test_triplet_is_zero_when_identities_are_well_separated():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert triplet_batch_hard(x, y, margin=0.3).item() == 0.0


def test_cosine_distance_matrix():
    x = torch.randn(6, 5)
    d = pairwise_distance(x, "cosine")
    want = 1 - F.cosine_similarity(x[:, None], x[None], dim=2)
    torch.testing.assert_close(d, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown distance"):
        pairwise_distance(x, "manhattan")


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_ce_matches_torch(eps):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 7, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (12,), generator=g)
    got = cross_entropy_label_smooth(logits, y, eps)
    torch.testing.assert_close(got.double(), F.cross_entropy(logits, y, label_smoothing=eps), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.double(), ce_smooth_reference(logits, y, eps), rtol=1e-6, atol=1e-6)


def test_ce_accepts_bf16_logits_and_computes_in_fp32():
    logits = torch.randn(4, 5).to(torch.bfloat16)
    y = torch.tensor([0, 1, 2, 3])
    out = cross_entropy_label_smooth(logits, y, 0.1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.cross_entropy(logits.float(), y, label_smoothing=0.1))


def test_psta_loss_averages_levels_as_the_reference():
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    logits = [torch.randn(8, 4, generator=g) for _ in range(3)]
    feats = [torch.randn(8, 6, generator=g) for _ in range(3)]
    total, parts = PSTALoss()(logits, feats, y)
    # by hand: the mean over the 3 levels of the label-smoothed CE, plus the mean of the triplets
    ce_levels = [F.cross_entropy(lg, y, label_smoothing=0.1) for lg in logits]
    tri_levels = [triplet_loop(f, y, 0.3, "cosine") for f in feats]
    ce = (ce_levels[0] + ce_levels[1] + ce_levels[2]) / 3
    tri = (tri_levels[0] + tri_levels[1] + tri_levels[2]) / 3
    torch.testing.assert_close(parts["ce"], ce)
    torch.testing.assert_close(parts["triplet"], tri)
    torch.testing.assert_close(total, ce + tri)
    torch.testing.assert_close(parts["total"], total)
    # level_weights (ablations): [1, 1, 1] is the sum, three times the reference's value
    summed, _ = PSTALoss(level_weights=[1, 1, 1])(logits, feats, y)
    torch.testing.assert_close(summed, 3 * total)
    w = PSTALoss(level_weights=[0.5, 0.0, 2.0], ce_weight=1.0, triplet_weight=0.5)
    total_w, _ = w(logits, feats, y)
    want = sum(lw * (F.cross_entropy(lg, y, label_smoothing=0.1) + 0.5 * triplet_loop(f, y, 0.3, "cosine"))
               for lw, lg, f in zip([0.5, 0.0, 2.0], logits, feats))
    torch.testing.assert_close(total_w, want)
    # a bare tensor is one level (the TAP baseline): the mean of one level is that level
    t1, _ = PSTALoss()(logits[0], feats[0], y)
    one_level = F.cross_entropy(logits[0], y, label_smoothing=0.1) + triplet_loop(feats[0], y, 0.3, "cosine")
    torch.testing.assert_close(t1, one_level)
    with pytest.raises(ValueError, match="levels"):
        PSTALoss()(logits, feats[:2], y)


def test_psta_loss_fixed_values():
    """Fixed logits / features, the total worked out by hand (not with the functions under test)."""
    y = torch.tensor([0, 0, 1, 1])
    # every level: logits favour the right class by 2 nats; 2 classes, eps = 0.1
    logits = [torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]]) * s for s in (1.0, 0.5, 0.0)]
    e = math.exp
    def ce_by_hand(a):  # -((1 - eps) + eps / 2) log p_true - (eps / 2) log p_other
        lp_true, lp_other = -math.log(1 + e(-a)), -math.log(1 + e(a))
        return -(0.95 * lp_true + 0.05 * lp_other)
    ce = (ce_by_hand(2.0) + ce_by_hand(1.0) + ce_by_hand(0.0)) / 3
    # features: unit vectors; identity 0 at angle 0 and 60 deg, identity 1 at 90 and 180 deg
    def unit(deg):
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]
    f = torch.tensor([unit(0), unit(60), unit(90), unit(180)])
    # cosine distances: d(0,60)=0.5, d(0,90)=1, d(0,180)=2, d(60,90)=1-cos30, d(60,180)=1.5, d(90,180)=1
    c30 = 1 - math.cos(math.radians(30))
    hinge = [max(0.0, 0.5 - 1.0 + 0.3),   # anchor 0: d_ap 0.5, d_an 1
             max(0.0, 0.5 - c30 + 0.3),   # anchor 60: d_ap 0.5, d_an 1 - cos 30
             max(0.0, 1.0 - c30 + 0.3),   # anchor 90: d_ap 1, d_an 1 - cos 30
             max(0.0, 1.0 - 1.5 + 0.3)]   # anchor 180: d_ap 1, d_an 1.5
    tri = sum(hinge) / 4  # the same features at all three levels: the mean is that value
    total, parts = PSTALoss()(logits, [f, f, f], y)
    assert abs(parts["ce"].item() - ce) < 1e-6
    assert abs(parts["triplet"].item() - tri) < 1e-6
    assert abs(total.item() - (ce + tri)) < 1e-6


# ----------------------------------------------------------------------------- solver
def spec_lr(epoch: int, base=3.5e-4) -> float:
    """docs/SPEC.md: linear warm-up over 10 epochs from 0.01 x lr, x0.3 at 70, 140, 210, 310, 410."""
    warm = 0.01 + (1 - 0.01) * epoch / 10 if epoch < 10 else 1.0
    drops = sum(epoch >= m for m in (70, 140, 210, 310, 410))
    return base * warm * 0.3 ** drops


def test_schedule_values_match_spec():
    model = nn.Linear(3, 2)
    opt = build_optimizer(model)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["weight_decay"] == 5e-4
    sched = WarmupMultiStepLR(opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(3.5e-4 * 0.01)  # set for epoch 0 already
    seen = {}
    for epoch in range(500):
        seen[epoch] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    expected = {0: 3.5e-6, 5: 3.5e-4 * 0.505, 10: 3.5e-4, 69: 3.5e-4, 70: 1.05e-4, 140: 3.15e-5,
                499: 3.5e-4 * 0.3 ** 5}
    for epoch, value in expected.items():
        assert seen[epoch] == pytest.approx(value, rel=1e-12), epoch
        assert seen[epoch] == pytest.approx(spec_lr(epoch), rel=1e-12), epoch
        assert 3.5e-4 * lr_factor(epoch) == pytest.approx(value, rel=1e-12)
    assert all(seen[e] == pytest.approx(spec_lr(e), rel=1e-12) for e in range(500))


def test_schedule_state_round_trip_is_exact():
    opt = build_optimizer(nn.Linear(3, 2))
    sched = WarmupMultiStepLR(opt)
    for _ in range(73):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(nn.Linear(3, 2))
    sched2 = WarmupMultiStepLR(opt2)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]  # restored with the optimizer state
    opt.step()
    opt2.step()
    sched.step()
    sched2.step()
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"] == pytest.approx(spec_lr(74))


def test_optimizer_skips_frozen_parameters():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model[1].bias.requires_grad_(False)  # the BNNeck bias
    opt = build_optimizer(model, lr=1e-3, weight_decay=5e-4)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model[1].bias) not in ids and id(model[1].weight) in ids
    before = model[1].bias.clone()
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    assert torch.equal(model[1].bias, before)
    split = build_optimizer(model, weight_decay=5e-4, bias_weight_decay=0.0)
    assert [g["weight_decay"] for g in split.param_groups] == [5e-4, 0.0]


def test_schedule_rejects_bad_settings():
    opt = build_optimizer(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(opt, milestones=(20, 10))
    with pytest.raises(ValueError, match="warmup_factor"):
        WarmupMultiStepLR(opt, warmup_factor=0.0)
    assert math.isclose(lr_factor(3, warmup_epochs=0), 1.0)
