"""Damaged files are refused where they are consumed: model.pt against its sha256, empty and
truncated checkpoints with one message naming the file and the fix."""
import re

import pytest
import torch

from psta.errors import IntegrityError, MissingFileError, UserError
from psta.integrity import check_digest, digest_path, write_digest
from psta.model import build_model, load_checkpoint
from psta.model.checkpoints import save_checkpoint


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.manual_seed(0)
    save_checkpoint(path, build_model("tap", num_classes=4, seq_len=2, height=64, width=32, backbone="resnet18"))
    write_digest(path)
    return path


def _copy(saved, tmp_path, data: bytes | None = None, digest: bool = True):
    path = tmp_path / "model.pt"
    path.write_bytes(saved.read_bytes() if data is None else data)
    if digest:
        digest_path(path).write_text(digest_path(saved).read_text())
    return path


def test_digest_is_sha256sum_format_and_a_good_file_loads(saved, tmp_path):
    import hashlib

    line = digest_path(saved).read_text()
    assert line == f"{hashlib.sha256(saved.read_bytes()).hexdigest()}  model.pt\n"
    assert check_digest(saved, required=True)
    model, ckpt = load_checkpoint(saved)
    assert ckpt["format"] == "psta-reid/model-v1"


def test_flipped_tensor_bytes_are_refused_on_load(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data: torch alone would load it silently
    path = _copy(saved, tmp_path, bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.pt is damaged: its sha256 differs from model\.pt\.sha256; "
                                             r"re-create it with the train stage"):
        load_checkpoint(path)
    digest_path(path).unlink()  # without the digest, the damage goes unnoticed: that is what it is for
    load_checkpoint(path)
    with pytest.raises(IntegrityError, match="no checksum file model.pt.sha256 beside it"):
        check_digest(path, required=True)


@pytest.mark.parametrize("cut, digest, error, message", [
    (None, False, MissingFileError, "checkpoint file {path} is missing"),
    (0, False, IntegrityError, "{path} is empty \\(0 bytes\\): not a checkpoint"),
    (0, True, IntegrityError, "{path} is empty \\(0 bytes\\): not a checkpoint"),
    (0.5, False, IntegrityError, "{path} is truncated or not a torch checkpoint \\(PytorchStreamReader"),
    (0.5, True, IntegrityError, "{path} is damaged: its sha256 differs from model.pt.sha256"),
])
def test_missing_empty_or_truncated_model_is_one_user_error_naming_file_and_fix(saved, tmp_path, cut, digest,
                                                                               error, message):
    data = saved.read_bytes()
    path = _copy(saved, tmp_path, b"" if cut is None else data[: int(len(data) * cut)], digest=digest)
    if cut is None:
        path.unlink()
    with pytest.raises(error) as err:
        load_checkpoint(path)
    assert isinstance(err.value, UserError)  # the CLI prints it as one `error:` line, exit code 2
    text = str(err.value)
    assert re.match(message.format(path=re.escape(str(path))), text), text
    assert text.endswith("re-create it with the train stage (`dvc repro train` or `python -m pipeline train`), "
                         "or restore the tracked copy with `dvc checkout data/models` / `dvc pull`")
    assert "\n" not in text


def test_a_required_checksum_refuses_a_model_without_one(saved, tmp_path):
    path = _copy(saved, tmp_path, digest=False)
    load_checkpoint(path)
    with pytest.raises(IntegrityError, match="model.pt has no checksum file model.pt.sha256 beside it, so it cannot "
                                             "be trusted; re-create it"):
        load_checkpoint(path, require_digest=True)
