"""inception-v3-compat with a random-weight InceptionV3 file in torch-fidelity's format (made by the test):
FID equals torchmetrics (antialias=False, float64) and torch-fidelity on the same uint8 images; ADM's file
layouts go through the `invoke fid` entry point."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import embedded_images
from bench.metrics import (
    Reference,
    evaluate,
    find_inception_weights,
    get_extractor,
    statistics,
    write_samples_npz,
    write_stats_npz,
)
from bench.metrics.cli import main as fid_main
from bench.metrics.extractors import INCEPTION_WEIGHTS_FILE, make_random_inception_weights

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_random_inception_weights(
        tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_FILE, seed=0
    )


@pytest.fixture(scope="module")
def extractor(weights):
    return get_extractor("inception-v3-compat", weights=weights)


@pytest.fixture(scope="module")
def images():
    real, _ = embedded_images(32, 1, split="ref")  # one crop of each of the 8 photos
    fake, labels = embedded_images(32, 1, split="test")
    return real[:4], fake[2:6], labels[2:6]  # few images: each costs a full InceptionV3 pass on CPU


@pytest.fixture(scope="module")
def real_features(extractor, images):
    return extractor.features(images[0], batch_size=3)  # two batches


def test_features_shapes(real_features):
    f = real_features
    assert {k: v.shape for k, v in f.items()} == {
        "pool": (4, 2048),
        "logits": (4, 1008),
        "spatial": (4, 17 * 17 * 7),
    }
    assert all(np.isfinite(v).all() and v.std() > 1e-3 for v in f.values())


def test_fid_equals_torchmetrics_and_torch_fidelity(extractor, weights, images, real_features):
    import torch_fidelity
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake, _ = images
    ref = Reference("inception-v3-compat", features=real_features, stats={})
    ref.stats["mu"], ref.stats["sigma"] = statistics(real_features["pool"])
    ours = evaluate(fake, ref, extractor=extractor, metrics="fid,prec,rec", pr_distances="float32")

    tm = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights), antialias=False)
    tm.set_dtype(torch.float64)
    tm.update(torch.from_numpy(real).permute(0, 3, 1, 2), real=True)
    tm.update(torch.from_numpy(fake).permute(0, 3, 1, 2), real=False)
    assert ours["fid"] == pytest.approx(float(tm.compute()), rel=1e-4)

    class Images(torch.utils.data.Dataset):
        def __init__(self, a):
            self.a = torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()

        def __len__(self):
            return len(self.a)

        def __getitem__(self, i):
            return self.a[i]

    tf = torch_fidelity.calculate_metrics(
        input1=Images(fake),
        input2=Images(real),
        fid=True,
        prc=True,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights),
        cuda=False,
        cache=False,
        verbose=False,
        save_cpu_ram=True,  # no DataLoader worker processes
    )
    assert ours["fid"] == pytest.approx(tf["frechet_inception_distance"], rel=1e-4)
    assert (ours["precision"], ours["recall"]) == (tf["precision"], tf["recall"])


def test_adm_layouts_through_invoke_fid(tmp_path, weights, images, real_features, capsys):
    real, fake, labels = images
    samples = write_samples_npz(tmp_path / "samples.npz", fake, labels)
    ref_images = write_samples_npz(tmp_path / "ref_images.npz", real)
    stats = dict(zip(("mu", "sigma"), statistics(real_features["pool"])))
    stats.update(zip(("mu_s", "sigma_s"), statistics(real_features["spatial"])))
    ref_stats = write_stats_npz(tmp_path / "ref_stats.npz", stats)  # no extractor tag: ADM's layout

    def run(*argv):
        rc = fid_main([str(a) for a in argv] + ["--weights", str(weights)])
        out, err = capsys.readouterr()
        return rc, out, err

    rc, out, _ = run(samples, ref_images, "--metrics", "fid,sfid,is,prec,rec")
    assert rc == 0 and out.count("\n") == 1
    full = json.loads(out)
    assert set(full) >= {"fid", "sfid", "is", "precision", "recall", "n_samples", "extractor"}
    assert full["n_samples"] == 4 and full["extractor"] == "inception-v3-compat"

    rc, out, _ = run(samples, ref_stats)  # default: ADM's metrics that a stats-only reference allows
    stats_only = json.loads(out)
    assert rc == 0 and stats_only["skipped"] == ["precision", "recall"]
    for k in ("fid", "sfid", "is"):
        assert stats_only[k] == pytest.approx(full[k], rel=1e-9)

    rc, _, err = run(samples, ref_stats, "--metrics", "prec")
    assert rc == 2 and "statistics only" in err


def test_missing_weights_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBENCH_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_FILE):
        find_inception_weights()
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        get_extractor("inception-v3-compat", weights=tmp_path / "missing.pth")


def test_weights_found_through_genbench_weights(tmp_path, monkeypatch, weights):
    (tmp_path / INCEPTION_WEIGHTS_FILE).symlink_to(weights)
    monkeypatch.setenv("GENBENCH_WEIGHTS", str(tmp_path))
    assert find_inception_weights() == tmp_path / INCEPTION_WEIGHTS_FILE


def test_invoke_fid_subprocess(tmp_path, weights, images):
    tasks = REPO / "tasks.py"
    if not tasks.is_file() or "fid" not in tasks.read_text():
        pytest.skip("tasks.py has no `fid` task yet")
    real, fake, _ = images
    s = write_samples_npz(tmp_path / "s.npz", fake[:2])
    r = write_samples_npz(tmp_path / "r.npz", real[:2])
    cmd = [
        sys.executable,
        "-m",
        "invoke",
        "fid",
        str(s),
        str(r),
        "--weights",
        str(weights),
        "--metrics",
        "fid",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    assert json.loads(line)["fid"] >= 0
