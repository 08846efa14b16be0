"""The smoke extractor (deterministic, cached), DINOv2 loading, extractor names, and `evaluate` end to end on
the embedded data: FID ordering, KID, bootstrap interval, FID-infinity, non-finite refusal."""

import numpy as np
import pytest
import torch

from bench.data import embedded_images
from bench.errors import OptionError
from bench.metrics import (
    NonFiniteSamplesError,
    NpzShardWriter,
    compute_reference,
    evaluate,
    get_extractor,
    write_samples_npz,
)
from bench.metrics.cli import main as fid_main
from bench.metrics.smoke_extractor import SmokeConfig


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("genbench-cache")


@pytest.fixture(scope="module")
def smoke(cache):
    return get_extractor("smoke", cache_dir=cache)


def test_smoke_extractor_trains_deterministically_and_caches(smoke, cache, tmp_path):
    from safetensors.torch import load_file

    assert smoke.trained_now and smoke.weights_path.parent.parent == cache
    assert smoke.weights_path.name == f"{SmokeConfig().key()}.safetensors"
    again = get_extractor("smoke", cache_dir=cache)
    assert not again.trained_now  # loaded from the cache
    fresh = get_extractor("smoke", cache_dir=tmp_path)  # trained again from scratch
    a, b = load_file(str(smoke.weights_path)), load_file(str(fresh.weights_path))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(smoke.weights_path.parent.glob(".*tmp"))


def test_smoke_features_any_resolution(smoke):
    imgs16, _ = embedded_images(16, 2, split="test")
    imgs64, labels = embedded_images(64, 4, split="test")
    f16 = smoke.features(imgs16)
    f64 = smoke.features(imgs64, batch_size=7)
    assert f16["pool"].shape == (16, 128) and f64["pool"].shape == (32, 128)
    assert f64["logits"].shape == (32, 8) and f64["spatial"].shape == (32, 256)
    assert (f64["logits"].argmax(1) == labels).mean() > 0.6  # it learned the photo classes


def test_unknown_extractor_lists_known_names():
    with pytest.raises(ValueError, match="inception-v3-compat.*smoke.*dinov2-vit-l14"):
        get_extractor("inception-v4")


def test_evaluate_smoke_end_to_end(smoke, cache):
    ref, _ = embedded_images(32, 32, split="ref")
    same, _ = embedded_images(32, 32, split="test")  # same distribution
    rng = np.random.default_rng(0)
    blurred = (
        ((same.astype(np.float32) * 0.5 + 64) + rng.normal(0, 20, same.shape)).clip(0, 255).astype(np.uint8)
    )
    metrics = "fid,sfid,is,prec,rec,kid,fid_ci"
    good = evaluate(same, ref, extractor=smoke, metrics=metrics, n_boot=30, kid_subset_size=200)
    bad = evaluate(blurred, ref, extractor=smoke, metrics="fid,sfid,prec,kid", kid_subset_size=200)
    assert good["extractor"] == "smoke" and good["n_samples"] == good["n_ref"] == 256
    assert bad["fid"] > 3 * good["fid"] and bad["sfid"] > good["sfid"] and bad["kid"] > good["kid"]
    assert bad["precision"] < good["precision"]
    assert good["fid_ci_low"] < good["fid"] < good["fid_ci_high"]
    assert 1.0 < good["is"] <= 8.0 and good["kid_subset_size"] == 200
    # 256 samples of 128-d features are too few for FID-infinity (subsets >= 2 x D spanning a factor 5) and
    # for torch-fidelity's KID subsets of 1000: refused before the samples' features are computed
    with pytest.raises(OptionError, match="FID-infinity: 256 samples are too few for D = 128"):
        evaluate(same, ref, extractor=smoke, metrics="fid_inf")
    with pytest.raises(OptionError, match="KID: subset size 1000 is larger than the 256 samples"):
        evaluate(same, ref, extractor=smoke, metrics="kid")


def test_nonfinite_samples_are_refused(smoke, cache, tmp_path, monkeypatch, capsys):
    ref, _ = embedded_images(32, 4, split="ref")
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    x[3] = float("nan")
    with pytest.raises(NonFiniteSamplesError, match="1 of 8 samples are NaN/Inf") as e:
        evaluate(x, ref, extractor=smoke, metrics="fid")
    assert e.value.n_nonfinite == 1
    report = evaluate(x, ref, extractor=smoke, metrics="fid,is", on_nonfinite="report")
    assert report["fid"] is None and report["is"] is None and report["n_nonfinite"] == 1
    with NpzShardWriter(tmp_path / "shards", shard_size=4) as w:
        w.add(x)
    monkeypatch.setenv("GENBENCH_CACHE", str(cache))
    rc = fid_main(
        [str(tmp_path / "shards"), str(write_samples_npz(tmp_path / "r.npz", ref)), "--extractor", "smoke"]
    )
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == "" and "1 of 4 samples were NaN/Inf" in cap.err


def test_evaluate_input_errors(smoke, tmp_path):
    ref, _ = embedded_images(32, 4, split="ref")
    with pytest.raises(ValueError, match="unknown metric 'fidd'"):
        evaluate(ref, ref, extractor=smoke, metrics="fidd")
    adm_stats = tmp_path / "adm.npz"
    np.savez(adm_stats, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="ADM's TF Inception but no images; cannot evaluate with 'smoke'"):
        evaluate(ref, adm_stats, extractor=smoke, metrics="fid")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        evaluate(tmp_path / "missing.npz", ref, extractor=smoke, metrics="fid")


def test_saved_reference_statistics_reproduce_fid(smoke, tmp_path):
    ref_images, _ = embedded_images(32, 16, split="ref")
    samples, _ = embedded_images(32, 16, split="test")
    direct = evaluate(samples, ref_images, extractor=smoke, metrics="fid,sfid")
    saved = compute_reference(ref_images, smoke).save(tmp_path / "smoke_ref.npz")  # tagged with "smoke"
    from_file = evaluate(samples, saved, extractor=smoke, metrics="fid,sfid")
    assert from_file["fid"] == pytest.approx(direct["fid"], rel=1e-9)
    assert from_file["sfid"] == pytest.approx(direct["sfid"], rel=1e-9)
    assert from_file["n_ref"] is None  # statistics only
