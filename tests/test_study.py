"""Issue 14's study pieces: tokenizer floors (bench.floors), sample grids and npz (bench.grids)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from baselines.api import build_backbone
from bench.data import embedded_images
from bench.floors import PSNR_CAP, reconstruct, tokenizer_floor
from bench.grids import PAD, grid_path, record_evaluation, sample_grid, samples_path
from bench.metrics import compute_reference, get_extractor, read_npz
from bench.sample import generate
from bench.store import RunStore
from bench.suites import SMOKE

SUITE = dataclasses.replace(SMOKE, n_ref_per_class=8)  # 64 reference crops: seconds


@pytest.fixture(scope="module")
def ref():
    ext = get_extractor(SUITE.extractor)
    images, _ = embedded_images(SUITE.image_size, SUITE.n_ref_per_class, "ref", num_classes=SUITE.num_classes)
    return ext, compute_reference(images, ext)


def _run(tmp_path, name, bb, ref):
    store = RunStore(tmp_path, SUITE.name, "r", seed=0, config={"t": 1}, device="cpu")
    ext, reference = ref
    return SimpleNamespace(name=name, bb=bb, store=store, suite=SUITE, device="cpu", seed=0,
                           reference=reference, extractor=ext)  # fmt: skip


def _tiny(name):
    torch.manual_seed(0)
    return build_backbone(name, "tiny", num_classes=SUITE.num_classes, image_size=SUITE.image_size)


def test_identity_tokenizer_floor_is_zero(tmp_path, ref):
    run = _run(tmp_path, "tarflow", _tiny("tarflow"), ref)  # pixel space: decode(encode(x)) == x
    values = tokenizer_floor(run)
    # ~0: the residual is ADM's uint8 truncation (x / 127.5 - 1 maps back to k - 1e-6 for some levels k), the
    # conversion every generated sample goes through too; generator FIDs in smoke are in the hundreds
    assert values["rfid"] < 0.5
    assert values["psnr"] == pytest.approx(PSNR_CAP)
    rows = [r for r in run.store.metrics() if r["phase"] == "tokenizer"]
    by = {r["metric"]: r for r in rows}
    assert set(by) >= {"rfid", "psnr"} and all(r["backbone"] == "tarflow" for r in rows)
    assert by["rfid"]["extractor"] == ref[0].name and by["rfid"]["n_samples"] == 64
    assert tokenizer_floor(run) is None  # logged once per backbone (resume)
    assert len([r for r in run.store.metrics() if r["phase"] == "tokenizer"]) == len(rows)


def test_shared_tokenizer_measured_once_logged_per_backbone(tmp_path, ref):
    repa, starflow = _tiny("repa"), _tiny("starflow")
    key = repa.tokenizer.shared_key
    assert key and key == starflow.tokenizer.shared_key
    a = tokenizer_floor(_run(tmp_path, "repa", repa, ref))
    assert a["rfid"] > 1 and 0 < a["psnr"] < 40  # an untrained autoencoder is far from its input
    cache = tmp_path / SUITE.name / "r" / "_shared" / f"{key}.floor.json"
    assert json.loads(cache.read_text())["measured_by"] == "repa"
    b = tokenizer_floor(_run(tmp_path, "starflow", starflow, ref))
    assert b == a
    rows = RunStore(tmp_path, SUITE.name, "r", seed=0, config={"t": 1}, device="cpu").metrics()
    rfid = {r["backbone"]: r["value"] for r in rows if r["metric"] == "rfid"}
    assert rfid == {"repa": a["rfid"], "starflow": a["rfid"]}


def test_reconstruct_psnr_matches_definition():
    bb = _tiny("tarflow")
    images, _ = embedded_images(SUITE.image_size, 1, "ref", num_classes=2)
    rec, psnr, _ = reconstruct(bb, images)
    assert rec.shape == images.shape and rec.dtype == np.uint8
    assert np.abs(rec.astype(int) - images.astype(int)).max() <= 1  # uint8 round trip (truncation)
    assert np.all(psnr == PSNR_CAP)


def test_grid_layout():
    images = np.zeros((64, 4, 4, 3), np.uint8)
    labels = np.arange(64) % 8
    images[:, :, :, 0] = np.arange(64)[:, None, None]  # cell value = sample index
    g = sample_grid(images, labels)
    assert g.shape == (8 * (4 + PAD) + PAD, 8 * (4 + PAD) + PAD, 3)
    cell = lambda r, c: g[PAD + r * (4 + PAD), PAD + c * (4 + PAD), 0]  # noqa: E731
    assert cell(0, 0) == 0 and cell(0, 1) == 8 and cell(3, 2) == 3 + 16  # row = class, column = k-th of it


def test_grids_and_npz_of_an_evaluation_are_reproducible(tmp_path):
    bb = _tiny("vavae_lightningdit")
    bb.recipe = bb.recipe.replace(sampler={"steps": 2})
    suite = dataclasses.replace(SUITE, num_classes=4)
    pngs = []
    for k in range(2):
        store = RunStore(tmp_path / str(k), suite.name, "r", seed=3, config={"t": 1}, device="cpu")
        run = SimpleNamespace(name="vavae_lightningdit", store=store, suite=suite, seed=3)
        # run 0 samples in memory; run 1 through sharded npz files (paper scale), another batch size
        shards = tmp_path / "shards" if k else None
        out = generate(
            bb, 12, suite.num_classes, 3, suite.image_size, batch_size=5 + k, out_dir=shards, shard_size=7
        )
        record_evaluation(run, 4, out, "paper")
        bdir = store.backbone_dir(run.name)
        png, npz = grid_path(bdir, 4), samples_path(bdir, 4, "paper")
        assert png.name == "epoch_0004.png" and png.parent.name == "grids"
        pngs.append(png.read_bytes())
        if k == 0:
            batch = read_npz(npz)
            assert np.array_equal(batch.images(), out["images"]) and np.array_equal(
                batch.labels, out["labels"]
            )
        else:
            assert not npz.exists()  # generate already wrote <out_dir>/samples.npz
        from PIL import Image

        w, h = Image.open(png).size
        assert (w, h) == (8 * (32 + PAD) + PAD, 4 * (32 + PAD) + PAD)  # 4 classes x 3 samples, 8 columns
    assert pngs[0] == pngs[1]


def test_sit_is_repa_without_the_alignment_loss():
    sit, repa = _tiny("sit"), _tiny("repa")
    assert sit.encoder is None and not sit.generator.needs_features and repa.generator.needs_features
    assert len(sit.generator.net.projectors) == 0
    assert sit.tokenizer.shared_key == repa.tokenizer.shared_key  # one stage-1 tokenizer for both
    assert sit.recipe.replace(source="") == repa.recipe.replace(source="")
    missing = repa.generator.net.load_state_dict(sit.generator.net.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("projectors.") for k in missing)  # the same SiT otherwise
    c, h, w = sit.tokenizer.latent_shape(SUITE.image_size)
    z, y = torch.randn(6, c, h, w), torch.arange(6) % SUITE.num_classes
    feats = repa.features(torch.zeros(6, 3, SUITE.image_size, SUITE.image_size))
    draws = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = sit.generator.train().loss(z, y, None, generator=draws())
    b = repa.generator.train().loss(z, y, feats, generator=draws())
    assert set(a) == {"denoise", "loss"} and "proj" in b
    torch.testing.assert_close(a["loss"], b["denoise"], rtol=0, atol=0)
    assert float(b["loss"].detach()) != float(a["loss"].detach())
