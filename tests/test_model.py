"""Tests of psta.model: shapes, the batched pair processing against a per-pair loop oracle,
the released checkpoint layout, gradients, parameter count, pretrained weights, precision."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from psta.model import (
    PSTA,
    CheckpointMismatchError,
    PretrainedWeightsError,
    autocast_context,
    build_model,
    cpu_supports_bf16,
    fold_batchnorm,
    load_checkpoint,
    load_released_psta,
    prepare_for_inference,
    resolve_precision,
    save_checkpoint,
    to_channels_last,
)
from tests.helpers.psta_oracle import OraclePSTA

# the state-dict keys and shapes of the authors' released MARS checkpoint (a list of facts)
TSV = Path(__file__).resolve().parent / "data" / "psta_reference_keys.tsv"


# --------------------------------------------------------------------------------------------
def _randomise_(model: nn.Module, seed: int = 0) -> None:
    """Random BN affine parameters and running statistics, so BN is no identity in the checks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _assert_close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _tsv_layout():
    rows = []
    for line in TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


def _random_released_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in _tsv_layout():
        if key.endswith("num_batches_tracked"):
            v = torch.tensor(1234)
        elif key.endswith("running_var"):
            v = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean") or key.endswith("bias"):
            v = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # BN weight
            v = torch.rand(shape, generator=g) + 0.5
        else:  # conv / linear weight, Kaiming-scaled so that activations stay finite
            v = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
        sd["module." + key] = v
    return sd


@pytest.fixture(scope="module")
def psta50():
    torch.manual_seed(0)
    return build_model("psta", 625)


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(256, 128), (128, 64)])
@pytest.mark.parametrize("seq_len", [2, 4, 8, 16])
def test_shapes(seq_len, size):
    torch.manual_seed(0)
    levels = int(math.log2(seq_len))
    model = build_model("psta", 7, seq_len=seq_len, height=size[0], width=size[1], backbone="resnet18")
    assert model.feature_dim == 1024 and model.num_levels == levels
    x = torch.randn(2, seq_len, 3, *size)
    with torch.no_grad():
        logits, feats = model.train()(x)
        assert len(logits) == len(feats) == levels
        assert all(lg.shape == (2, 7) for lg in logits) and all(f.shape == (2, 1024) for f in feats)
        emb = model.eval()(x[:1])
    assert emb.shape == (1, 1024) and torch.isfinite(emb).all()


@pytest.mark.parametrize("bad", [0, 1, 3, 6, 12])
def test_bad_seq_len_rejected(bad):
    with pytest.raises(ValueError, match=r"power of two >= 2 .*got T=" + str(bad)):
        build_model("psta", 5, seq_len=bad, backbone="resnet18")


def test_wrong_input_rejected():
    model = build_model("psta", 5, seq_len=4, height=128, width=64, backbone="resnet18").eval()
    with pytest.raises(ValueError, match="seq_len=4"):
        model(torch.randn(1, 8, 3, 128, 64))
    with pytest.raises(ValueError, match="128 x 64"):
        model(torch.randn(1, 4, 3, 256, 128))
    with pytest.raises(ValueError, match="even number of frames"):
        model.layer1(torch.randn(1, 3, 1024, 8, 4))


def test_tap_shapes():
    model = build_model("tap", 9, seq_len=4, height=128, width=64, backbone="resnet18")
    assert model.feature_dim == 512
    x = torch.randn(2, 4, 3, 128, 64)
    logits, feats = model.train()(x)
    assert len(logits) == len(feats) == 1 and logits[0].shape == (2, 9) and feats[0].shape == (2, 512)
    assert model.eval()(x).shape == (2, 512)
    assert not model.bottleneck.bias.requires_grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_pairs_equal_per_pair_loop(dtype):
    # float64 shows the mathematics is identical (1e-5 is loose there: diffs are ~1e-13), on a
    # narrower model (C = 256; float64 convolutions are slow on the CPU); float32 shows it for the
    # real model in the working precision, where the BNNeck over a 3-clip batch amplifies the
    # rounding differences of the (differently ordered) reductions to ~3e-5 on the features.
    tol = 1e-5 if dtype == torch.float64 else 1e-4
    planes, size = (256, (64, 32)) if dtype == torch.float64 else (1024, (128, 64))
    torch.manual_seed(1)
    kw = dict(seq_len=8, height=size[0], width=size[1], backbone="resnet18")
    model = PSTA(11, planes=planes, **kw)
    _randomise_(model)
    oracle = OraclePSTA(11, planes=planes, **kw)
    oracle.load_state_dict(model.state_dict(), strict=True)
    model.to(dtype)
    oracle.to(dtype)
    if dtype == torch.float64:  # float64 convolution backward is very slow on the CPU: skip the
        model.base.requires_grad_(False)  # backbone's (the float32 run checks its gradients)
        oracle.base.requires_grad_(False)
    x = torch.randn(3, 8, 3, *size, dtype=dtype)
    labels = torch.tensor([0, 5, 10])

    # train mode: per-(pair, direction) BN batch statistics, running-stat updates, gradients
    outs = []
    for net in (model.train(), oracle.train()):
        net.zero_grad()
        logits, feats = net(x)
        loss = sum(F.cross_entropy(lg, labels) for lg in logits) + sum(f.square().mean() for f in feats)
        loss.backward()
        outs.append((logits, feats))
    for a, b in zip(outs[0][0] + outs[0][1], outs[1][0] + outs[1][1]):
        _assert_close(a, b, tol)
    ref_state = oracle.state_dict()
    for k, v in model.state_dict().items():  # running statistics and num_batches_tracked
        if v.is_floating_point():
            _assert_close(v, ref_state[k], tol)
        else:
            assert torch.equal(v, ref_state[k]), k
    ref_params = dict(oracle.named_parameters())
    for name, p in model.named_parameters():
        if p.requires_grad:
            _assert_close(p.grad, ref_params[name].grad, tol)

    # eval mode
    with torch.no_grad():
        _assert_close(model.eval()(x), oracle.eval()(x), tol)


def test_released_layout_loads_and_matches_oracle(tmp_path, psta50):
    keys = [k for k, _ in _tsv_layout()]
    sd = psta50.state_dict()
    assert list(sd.keys()) == keys
    assert all(tuple(sd[k].shape) == shape for k, shape in _tsv_layout())

    state = _random_released_state()
    wrapped, bare = tmp_path / "released_wrapped.pth", tmp_path / "released_bare.pth"
    torch.save({"state_dict": state, "epoch": 500}, wrapped)
    torch.save(state, bare)
    model = load_released_psta(wrapped)
    assert model.num_classes == 625 and model.seq_len == 8 and not model.training
    for k, v in load_released_psta(bare).state_dict().items():
        torch.testing.assert_close(v, state["module." + k], rtol=0, atol=0)

    oracle = OraclePSTA(625).eval()
    oracle.load_state_dict({k[len("module."):]: v for k, v in state.items()}, strict=True)
    x = torch.randn(1, 8, 3, 256, 128)
    with torch.no_grad():
        ours, ref = model(x), oracle(x)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())

    truncated = {k: v for k, v in state.items()
                 if k not in ("module.layer2.TRAG.te_para.1.weight", "module.classifier.2.bias")}
    truncated["module.extra.weight"] = torch.zeros(3)
    truncated["module.layer1.SRAG.gg_spatial.0.weight"] = torch.zeros(128, 64, 1, 1)
    bad = tmp_path / "truncated.pth"
    torch.save(truncated, bad)
    with pytest.raises(CheckpointMismatchError) as err:
        load_released_psta(bad)
    msg = str(err.value)
    for needle in ("missing keys (2)", "layer2.TRAG.te_para.1.weight", "classifier.2.bias",
                   "unexpected keys (1)", "extra.weight", "shape mismatches (1)",
                   "layer1.SRAG.gg_spatial.0.weight: checkpoint (128, 64, 1, 1) vs model (128, 256, 1, 1)"):
        assert needle in msg, msg


def test_parameter_count(psta50):
    assert sum(p.numel() for p in psta50.parameters()) == 35_425_311


def test_every_trainable_parameter_gets_a_gradient():
    torch.manual_seed(2)
    model = build_model("psta", 6, seq_len=8, height=128, width=64, backbone="resnet18").train()
    x = torch.randn(4, 8, 3, 128, 64)
    labels = torch.tensor([0, 0, 3, 3])
    logits, feats = model(x)
    loss = sum(F.cross_entropy(lg, labels, label_smoothing=0.1) for lg in logits)
    for f in feats:  # a simple metric term: pull same-identity features together
        d = torch.cdist(f, f)
        loss = loss + d[0, 1] + d[2, 3] - 0.1 * d[0, 2]
    loss.backward()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"bottleneck.{i}.bias" for i in range(3)}
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)]
    assert no_grad == []


def _expected_init_std(name: str, module: nn.Module) -> float:
    """The reference's init of a non-backbone layer, as the std its weight should have."""
    fan_in = module.weight[0].numel()
    if name == "down_channel.0":  # PyTorch's default: kaiming_uniform(a=sqrt(5)), std 1/sqrt(3 fan_in)
        return 1 / math.sqrt(3 * fan_in)
    if name.startswith("classifier."):
        return 0.001
    if isinstance(module, nn.Linear):  # Kaiming normal, fan_out
        return math.sqrt(2 / module.weight.shape[0])
    return math.sqrt(2 / fan_in)  # conv: Kaiming normal, fan_in


def test_initialisation(psta50):
    m = psta50
    checked = 0
    for name, module in m.named_modules():
        if name.startswith("base.") or name == "base":
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            want = _expected_init_std(name, module)
            got = module.weight.std().item()
            # within 10% (a few-element weight, e.g. a 256 -> 1 conv, is a small sample: 25%)
            tol = 0.1 if module.weight.numel() >= 1000 else 0.25
            assert abs(got - want) < tol * want, f"{name}: std {got:.4g}, the reference's {want:.4g}"
            if module.bias is not None:
                assert torch.all(module.bias == 0), name
            checked += 1
    assert checked > 40  # every conv / linear outside the backbone, all levels
    reduction = m.down_channel[0].weight.std().item()  # ~0.0128, not Kaiming's sqrt(2/2048) = 0.0313
    assert abs(reduction - 0.01276) < 0.1 * 0.01276
    for bn in m.bottleneck:
        assert not bn.bias.requires_grad
    conv = m.base.layer1[0].conv1  # backbone, 'none': the Kaiming scheme (fan_in = 64)
    assert abs(conv.weight.std().item() - math.sqrt(2 / 64)) < 0.01


# --- pretrained backbones ---------------------------------------------------------------------
def test_imagenet_missing_file_fails_early_with_exact_location(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    for backbone, filename in (("resnet50", "resnet50-0676ba61.pth"), ("resnet18", "resnet18-f37072fd.pth")):
        with pytest.raises(PretrainedWeightsError) as err:
            build_model("psta", 10, backbone=backbone, pretrained="imagenet")
        assert f"'{filename}'" in str(err.value) and f"'{folder}'" in str(err.value)
    assert not folder.exists()  # nothing was downloaded or created


def test_imagenet_cache_and_path_are_loaded(tmp_path, monkeypatch):
    torch.manual_seed(3)
    ref = torchvision.models.resnet18(weights=None).state_dict()  # includes fc.*, ignored
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(ref, cache / "resnet18-f37072fd.pth")
    model = build_model("tap", 4, backbone="resnet18", pretrained="imagenet")
    for k, v in model.base.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0)

    path = tmp_path / "my_backbone.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in ref.items()}}, path)
    model = build_model("psta", 4, seq_len=2, height=128, width=64, backbone="resnet18", pretrained=path)
    for k, v in model.base.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0)

    with pytest.raises(PretrainedWeightsError, match="not found: '.*nope.pth'"):
        build_model("psta", 4, backbone="resnet18", pretrained=tmp_path / "nope.pth")
    with pytest.raises(CheckpointMismatchError, match="missing keys"):  # resnet18 file for resnet34
        build_model("tap", 4, backbone="resnet34", pretrained=path)


# --- our checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["psta", "tap"])
def test_checkpoint_roundtrip_weights_only(tmp_path, arch):
    model = build_model(arch, 3, seq_len=2, height=64, width=32, backbone="resnet18")
    _randomise_(model)
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, model, epoch=7, metrics={"rank1": 0.5})
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 7 and raw["config"]["arch"] == arch
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["metrics"] == {"rank1": 0.5} and not loaded.training
    x = torch.randn(2, 2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


# --- precision / memory format -----------------------------------------------------------------
def test_resolve_precision():
    assert resolve_precision("fp32", "cpu") is None
    assert resolve_precision("bf16", "cpu") is torch.bfloat16
    assert resolve_precision("auto", "cpu") is (torch.bfloat16 if cpu_supports_bf16() else None)
    with pytest.raises(ValueError, match="only supported on CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int8", "cpu")
    if not torch.cuda.is_available():
        return
    assert resolve_precision("fp16", "cuda") is torch.float16
    assert resolve_precision("auto", "cuda") is (torch.bfloat16 if torch.cuda.is_bf16_supported() else None)


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(4)
    model = build_model("psta", 5, seq_len=4, height=128, width=64, backbone="resnet18")
    x = torch.randn(2, 4, 3, 128, 64)
    with torch.no_grad():
        for _ in range(3):  # give the BN running statistics data-like values
            model.train()(x)
        ref = model.eval()(x)
        to_channels_last(model)
        assert model.base.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        scale = ref.abs().max().item()  # untrained: large activations, compare relative to them
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5 * scale)
        frames_cl = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(x.shape)
        torch.testing.assert_close(model(frames_cl), ref, rtol=1e-4, atol=1e-5 * scale)
        with autocast_context("cpu", torch.bfloat16):
            low = model(x)
    assert low.dtype in (torch.bfloat16, torch.float32)
    assert F.cosine_similarity(low.float(), ref).min() > 0.99
    with autocast_context("cpu", None):  # fp32: a no-op context
        logits, _ = model.train()(x)
    assert logits[0].dtype == torch.float32


def test_fold_batchnorm_for_inference():
    torch.manual_seed(5)
    model = build_model("psta", 5, seq_len=4, height=128, width=64, backbone="resnet18")
    _randomise_(model)
    x = torch.randn(2, 4, 3, 128, 64)
    with torch.no_grad():
        ref = model.eval()(x)
        folded = fold_batchnorm(model)
        n_bn2d = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert folded.folded_batchnorms == n_bn2d  # every BatchNorm2d follows a conv
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        scale = ref.abs().max().item()
        torch.testing.assert_close(folded(x), ref, rtol=1e-4, atol=1e-5 * scale)
        fast = prepare_for_inference(model, dtype=torch.bfloat16)
        assert fast.base.conv1.weight.dtype == torch.bfloat16
        with autocast_context("cpu", torch.bfloat16):
            low = fast(x)
    assert F.cosine_similarity(low.double(), ref.double()).min() > 0.99
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
