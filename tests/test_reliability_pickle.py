"""Safe loading: a pickle whose unpickling would run code (create a file) is refused with CorruptInputError
through every public loading path, and its payload never executes."""

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.checkpoints import load_checkpoint, load_weights, save_checkpoint
from bench.errors import CorruptInputError


class _OpenFile:  # unpickling calls open(path, "w"): the file appears iff the payload ran
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _System:  # unpickling calls os.system("touch path")
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _planter(tmp_path, kind: str):
    """(write(path) planting a torch file whose load would create `marker`, marker)."""
    marker = tmp_path / f"PWNED-{kind.replace('.', '_')}"
    payload = (_OpenFile if kind == "open" else _System)(marker)

    def write(path: Path, wrap=lambda p: {"state_dict": {"w": torch.zeros(2)}, "x": p}) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(wrap(payload), path)
        assert not marker.exists()
        return path

    return write, marker


@pytest.fixture(params=["open", "os.system"])
def evil(request, tmp_path):
    return _planter(tmp_path, request.param)


def test_checkpoint_with_code_is_refused_even_with_a_valid_checksum(tmp_path, evil):
    write, marker = evil
    path = write(tmp_path / "stage2.pt")
    side = path.with_name(path.name + ".sha256")
    side.write_text(
        hashlib.sha256(path.read_bytes()).hexdigest() + "\n"
    )  # checksum passes: only weights_only stands
    with pytest.raises(CorruptInputError, match=f"checkpoint {path} cannot be loaded safely"):
        load_checkpoint(path)
    assert not marker.exists()
    save_checkpoint(path, {"w": torch.ones(2)})  # the ordinary round trip still works
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))


def test_weights_with_code_are_refused(tmp_path, evil):
    write, marker = evil
    path = write(tmp_path / "weights.pth")
    with pytest.raises(CorruptInputError, match=f"weights file {path} cannot be loaded safely"):
        load_weights(path)
    assert not marker.exists()


def test_npz_with_pickled_objects_is_refused(tmp_path, evil, capsys):
    from bench.metrics import read_npz
    from bench.metrics.cli import main as fid_main

    _, marker = evil
    payload = _OpenFile(marker) if "open" in marker.name else _System(marker)
    objs = np.empty(2, dtype=object)
    objs[:] = [payload, payload]
    labels_npz = tmp_path / "labels.npz"  # pickled arr_1 beside valid images
    np.savez(labels_npz, arr_0=np.zeros((2, 8, 8, 3), np.uint8), arr_1=objs)
    images_npz = tmp_path / "images.npz"  # pickled arr_0
    images = np.empty((2, 1, 1, 3), dtype=object)
    images[...] = payload
    np.savez(images_npz, arr_0=images)
    stats_npz = tmp_path / "ref.npz"  # pickled statistics
    np.savez(stats_npz, mu=objs, sigma=np.eye(2))
    for path in (labels_npz, images_npz, stats_npz):
        with zipfile.ZipFile(path) as zf:
            assert any(b"PWNED" in zf.read(n) for n in zf.namelist())  # the payload is really in the file
        with pytest.raises(CorruptInputError, match=str(path)):
            read_npz(path)
        assert not marker.exists()
    for argv in ([labels_npz, stats_npz], [labels_npz, labels_npz], [images_npz, labels_npz]):
        assert fid_main([*map(str, argv), "--extractor", "smoke", "--metrics", "fid"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fid: error: ") and "Object arrays cannot be loaded" in err
    assert not marker.exists()


def test_vavae_checkpoint_and_latent_stats_loaders_refuse_code(tmp_path, evil):
    from baselines.api import build_backbone
    from baselines.vavae import load_vavae_state_dict

    write, marker = evil
    tok = build_backbone("vavae_lightningdit", "tiny", num_classes=8, image_size=32).tokenizer
    with pytest.raises(CorruptInputError, match="cannot be loaded safely"):
        load_vavae_state_dict(write(tmp_path / "vavae.pt"), tok.ae)
    assert not marker.exists()
    ckpt = tmp_path / "ok.pt"
    torch.save({"state_dict": tok.ae.state_dict()}, ckpt)
    stats = write(tmp_path / "latents_stats.pt", wrap=lambda p: {"mean": torch.zeros(1), "std": p})
    with pytest.raises(CorruptInputError, match=f"{stats} cannot be loaded safely"):
        tok.load_official(ckpt, stats)
    assert not marker.exists()


def test_encoder_and_extractor_weight_loaders_refuse_code(tmp_path):
    from baselines.autoencoder import load_diffusers_vae
    from baselines.encoders import DINOv2Encoder
    from bench.metrics.extractors import DINOv2, InceptionV3Compat

    write, marker = _planter(tmp_path, "open")  # all go through load_weights, tested with both payloads above
    bad = write(tmp_path / "w.pth", wrap=lambda p: {"pos_embed": torch.zeros(1), "x": p})
    with pytest.raises(CorruptInputError, match=f"InceptionV3 weights {bad} cannot be loaded safely"):
        InceptionV3Compat(weights=bad)
    with pytest.raises(CorruptInputError, match=f"dinov2-vit-s14 weights {bad} cannot be loaded safely"):
        DINOv2("dinov2-vit-s14", weights=bad)
    with pytest.raises(CorruptInputError, match=f"dinov2-vit-s14 weights {bad} cannot be loaded safely"):
        DINOv2Encoder("dinov2-vit-s14", weights=bad)
    from bench.release import load_checkpoint_file

    with pytest.raises(CorruptInputError, match=f"{bad}: not a loadable weights-only checkpoint"):
        load_checkpoint_file(bad)  # released REPA / LightningDiT / TARFlow checkpoints
    vae = tmp_path / "sd-vae"
    vae.mkdir()
    (vae / "config.json").write_text("{}")
    write(vae / "diffusion_pytorch_model.bin")
    with pytest.raises(CorruptInputError, match="diffusers VAE weights .* cannot be loaded safely"):
        load_diffusers_vae(vae)
    assert not marker.exists()
