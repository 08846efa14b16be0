"""Bad inputs that `invoke bench` meets after it started: each reaches the user as one `error: ...` line and exit
code 2, as early as it can be known, and the rows already written (another family's, the same family's earlier
ones) stay byte-identical.

- checks that need the built extractor and reference (bench.preflight) fail before any training;
- a UserError inside a family (a disk that fills up) stops the run at once, lock released, and the same command
  resumes after space is freed;
- NaN/Inf samples cost only that family its FID: the other families still run, then exit 2 naming it.

Two tiny families (tarflow, repa) at a few images each: seconds per run."""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from invoke import Context, Exit

from bench import suites
from bench.store import LOCK_NAME, read_metrics
from bench.train import BackboneRun

sys.path.insert(0, str(Path(__file__).parent))
from imagenet_tree import make_imagenet_tree  # noqa: E402

_O = suites.SMOKE.overrides
TWO = dataclasses.replace(
    suites.SMOKE, name="two", backbones=("tarflow", "repa"), n_train_per_class=4, n_ref_per_class=8,
    eval_epochs=(1,), n_eval_samples=16, sample_batch_size=16, throughput_batch_sizes=(), linear_probe=False,
    overrides={"tarflow": {**_O["tarflow"], "epochs": 1, "batch_size": 16},
               "repa": {**_O["repa"], "stage1_epochs": 1, "epochs": 1, "batch_size": 16, "stage1_batch_size": 16,
                        "sampler": dict(mode="sde", steps=2, guidance=1.8, guidance_interval=(0.0, 0.7))}},
)  # fmt: skip


def _bench(out: Path, **kw) -> str | None:
    """`invoke bench` in-process (the tasks.py task): None when it succeeds, else its one-line exit-2 message."""
    import tasks

    try:
        tasks.bench(Context(), out=str(out), **kw)
    except Exit as e:
        assert e.code == 2, e
        assert e.message.startswith("error: ") and len(e.message.splitlines()) == 1, e.message
        return e.message
    return None


def _files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


@pytest.fixture
def two(monkeypatch):
    monkeypatch.setitem(suites.SUITES, "two", TWO)
    seen = {}  # family -> the run directory's files when that family started
    real_run = BackboneRun.run

    def run(self):
        seen[self.name] = _files(self.store.dir)
        return real_run(self)

    monkeypatch.setattr(BackboneRun, "run", run)
    return seen


def _kept(run_dir: Path, before: dict[Path, bytes]) -> None:
    """Every file as it was (the append-only metrics.jsonl and log.txt: as a prefix of what is there now)."""
    for p, data in before.items():
        now = p.read_bytes()
        assert (now[: len(data)] if p.name in ("metrics.jsonl", "log.txt") else now) == data, p


def test_disk_full_inside_a_family_stops_at_once_and_resumes(tmp_path, two, monkeypatch):
    real_fsync, armed = os.fsync, []
    real_run = BackboneRun.run

    def run(self):  # the disk fills up once repa (the 2nd family) has started
        armed.append(self.name == "repa")
        return real_run(self)

    def fsync(fd):
        if armed and armed[-1] and not os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(BackboneRun, "run", run)
    monkeypatch.setattr(os, "fsync", fsync)
    msg = _bench(tmp_path, suite="two", run_id="r")
    monkeypatch.setattr(os, "fsync", real_fsync)
    run_dir = tmp_path / "two" / "r"
    assert msg and msg.startswith(f"error: disk full while writing {run_dir}"), msg
    assert "files written before are intact: free some space and run the same command again to resume" in msg
    _kept(run_dir, two["repa"])  # tarflow's rows and files, byte for byte
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert {r["backbone"] for r in rows if r["phase"] == "run"} == {"tarflow"}
    assert "[repa] stopped: disk full while writing" in (run_dir / "log.txt").read_text()
    assert not (run_dir / LOCK_NAME).exists()  # released at once, not at process exit
    before = _files(run_dir)
    armed.clear()
    assert _bench(tmp_path, suite="two", run_id="r") is None  # space freed: the same command finishes the run
    _kept(run_dir, before)
    assert "[tarflow] already complete" in (run_dir / "log.txt").read_text()
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert {r["backbone"] for r in rows if r["phase"] == "run"} == {"tarflow", "repa"}


def test_nonfinite_samples_of_one_family_exit_2_after_the_others(tmp_path, two, monkeypatch):
    from baselines.api import Backbone

    real = Backbone.sample_images

    def sample_images(self, labels, *a, **k):  # tarflow diverged: its 6th sample is NaN
        x = real(self, labels, *a, **k)
        if self.name == "tarflow" and len(labels) > 5:
            x = x.clone()
            x[5] = float("nan")
        return x

    monkeypatch.setattr(Backbone, "sample_images", sample_images)
    msg = _bench(tmp_path, suite="two", run_id="r")
    assert msg == "error: tarflow: no FID for epoch 1 paper (1 of 16 samples NaN/Inf)", msg
    run_dir = tmp_path / "two" / "r"
    _kept(run_dir, two["repa"])  # tarflow's rows, written before repa ran, are untouched
    rows = read_metrics(run_dir / "metrics.jsonl")
    tar = {r["metric"]: r["value"] for r in rows if r["backbone"] == "tarflow" and r["phase"] == "eval"}
    assert tar["n_nonfinite"] == 1 and "fid" not in tar  # recorded, never scored
    assert {r["backbone"] for r in rows if r["phase"] == "run"} == {"repa"}  # repa still ran to its end
    assert any(r["backbone"] == "repa" and r["metric"] == "fid" for r in rows)
    assert not (run_dir / LOCK_NAME).exists()


def test_corrupt_generator_checkpoint_is_never_used(tmp_path, monkeypatch):
    from bench.runner import run_bench

    one = dataclasses.replace(TWO, name="one", backbones=("tarflow",), eval_epochs=(1, 2),
                              overrides={"tarflow": {**TWO.overrides["tarflow"], "epochs": 2}})  # fmt: skip
    monkeypatch.setitem(suites.SUITES, "one", one)
    assert run_bench("one", out=str(tmp_path / "a"), run_id="r") == 0
    real = BackboneRun.evaluate

    def dying(self, epoch, *a):  # killed during epoch 2's evaluation, after its checkpoint
        if epoch == 2:
            raise KeyboardInterrupt
        return real(self, epoch, *a)

    monkeypatch.setattr(BackboneRun, "evaluate", dying)
    with pytest.raises(KeyboardInterrupt):
        run_bench("one", out=str(tmp_path / "b"), run_id="r")
    monkeypatch.setattr(BackboneRun, "evaluate", real)
    run_dir = tmp_path / "b" / "one" / "r"
    ckpt = run_dir / "tarflow" / "stage2.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte on disk
    ckpt.write_bytes(bytes(data))
    before = _files(run_dir)
    assert run_bench("one", out=str(tmp_path / "b"), run_id="r") == 0
    assert (
        f"[tarflow] {ckpt} fails its checksum; training from the start" in (run_dir / "log.txt").read_text()
    )
    _kept(run_dir, {p: b for p, b in before.items() if p != ckpt and not p.name.endswith(".sha256")})

    def values(out):  # a repeated row (epoch 1's training, logged again) keeps the last
        rows = read_metrics(out / "one" / "r" / "metrics.jsonl")
        return {
            (r["phase"], r["metric"], r["epoch"]): r["value"] for r in rows if r["phase"] in ("train", "eval")
        }

    assert values(tmp_path / "b") == values(tmp_path / "a")


# ------------------------------------------------------------------------ checks before any training


@pytest.mark.parametrize("changes, match", [
    (dict(metrics=("fid", "kid")), "suite two: KID needs >= 1000 samples (its subset size), got 16"),
    (dict(metrics=("fid", "precision"), n_eval_samples=3), "suite two: precision/recall need more than k=3 samples for the k-NN radii, got 3"),
    (dict(metrics=("fid", "fid_inf")), "FID-infinity: 16 samples are too few for D = 128 features"),
])  # fmt: skip
def test_metric_settings_that_cannot_be_scored_fail_before_training(tmp_path, monkeypatch, changes, match):
    monkeypatch.setitem(suites.SUITES, "two", dataclasses.replace(TWO, **changes))
    msg = _bench(tmp_path, suite="two", run_id="r")
    assert msg and match in msg, msg
    assert not (tmp_path / "two" / "r" / "metrics.jsonl").exists()  # not one row: nothing was trained


@pytest.fixture
def imagenet(tmp_path, monkeypatch):
    """The imagenet256 dry run's inputs (tests/test_dryrun.py): ImageNet-layout tree, random Inception weights."""
    from bench.metrics.extractors import INCEPTION_WEIGHTS_FILE, make_random_inception_weights

    monkeypatch.setenv("GENBENCH_IMAGENET", str(make_imagenet_tree(tmp_path / "train")))
    monkeypatch.setenv("GENBENCH_INCEPTION", str(make_random_inception_weights(tmp_path / INCEPTION_WEIGHTS_FILE)))  # fmt: skip
    results = tmp_path / "results"
    (results / "imagenet256" / "old").mkdir(
        parents=True
    )  # an earlier run's results: must stay byte-identical
    (results / "imagenet256" / "old" / "metrics.jsonl").write_text('{"metric": "fid", "value": 3.0}\n')
    return results


def test_reference_statistics_of_another_feature_dimension_fail_before_training(
    tmp_path, imagenet, monkeypatch
):
    from bench.data import embedded_images
    from bench.metrics.adm_npz import _write

    images, _ = embedded_images(32, 2, "ref", num_classes=4)  # images and ADM-style (untagged) statistics
    ref = _write(tmp_path / "ref10.npz", {"arr_0": images, "mu": np.zeros(10), "sigma": np.eye(10)})
    monkeypatch.setenv("GENBENCH_ADM_REF", str(ref))
    before = _files(tmp_path)
    msg = _bench(imagenet, suite="imagenet256", preset="tiny", epochs=1, num_samples=8, image_size=32,
                 backbones="repa", run_id="r")  # fmt: skip
    assert msg == (
        f"error: reference ({ref}) pool statistics have dimension 10, extractor inception-v3-compat gives 2048: "
        "statistics of another feature space"
    ), msg
    assert not (imagenet / "imagenet256" / "r" / "metrics.jsonl").exists()
    assert {p: b for p, b in _files(tmp_path).items() if p in before} == before


def _ref_without_stats_or_images(tmp_path, monkeypatch):
    ref = tmp_path / "labels_only.npz"
    np.savez(ref, labels=np.arange(3))
    monkeypatch.setenv("GENBENCH_ADM_REF", str(ref))
    return f"error: {ref}: holds neither images (arr_0) nor statistics (mu, sigma); found ['labels']"


def _empty_class(tmp_path, monkeypatch):
    (tmp_path / "train" / "n09999999").mkdir()
    return f"error: {tmp_path / 'train'}: 1 class folder(s) hold no images: n09999999"


def _non_image_file(tmp_path, monkeypatch):
    (tmp_path / "train" / "n01440764" / "notes.txt").write_text("not an image")
    return f"error: {tmp_path / 'train'}: 1 file(s) without an image extension"


def _inception_of_another_architecture(tmp_path, monkeypatch):
    wrong = tmp_path / "wrong_inception.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    monkeypatch.setenv("GENBENCH_INCEPTION", str(wrong))
    return f"error: {wrong}: not torch-fidelity's InceptionV3 state_dict"


@pytest.mark.parametrize("plant", [_ref_without_stats_or_images, _empty_class, _non_image_file, _inception_of_another_architecture])  # fmt: skip
def test_bad_imagenet_inputs_through_invoke_bench(tmp_path, imagenet, monkeypatch, plant):
    from bench.data import embedded_images
    from bench.metrics import write_samples_npz

    images, _ = embedded_images(32, 2, "ref", num_classes=4)
    monkeypatch.setenv("GENBENCH_ADM_REF", str(write_samples_npz(tmp_path / "ref.npz", images)))
    match = plant(tmp_path, monkeypatch)
    before = _files(tmp_path)
    msg = _bench(imagenet, suite="imagenet256", preset="tiny", epochs=1, num_samples=8, image_size=32,
                 backbones="repa", run_id="r")  # fmt: skip
    assert msg and msg.startswith(match), msg
    assert not (imagenet / "imagenet256" / "r" / "metrics.jsonl").exists()  # nothing trained
    assert {p: b for p, b in _files(tmp_path).items() if p in before} == before


def test_reference_of_another_resolution_is_refused_outside_the_dry_run(tmp_path):
    from bench.errors import CorruptInputError
    from bench.metrics import compute_reference, get_extractor, write_samples_npz
    from bench.preflight import check_scoring

    ex = get_extractor("smoke")
    ref64 = write_samples_npz(tmp_path / "ref64.npz", np.zeros((4, 64, 64, 3), np.uint8))
    reference = compute_reference(ref64, ex)
    with pytest.raises(CorruptInputError) as e:
        check_scoring(TWO, ex, reference)  # TWO samples 32 px
    assert str(e.value) == f"{ref64}: reference images are 64x64, the run samples 32x32; use the reference batch of the samples' resolution"  # fmt: skip
    check_scoring(TWO, ex, reference, strict_resolution=False)  # the dry run crops any folder to any size
    check_scoring(dataclasses.replace(TWO, image_size=64), ex, reference)


# ------------------------------------------------------------------ SIGKILL during latent extraction

# `python -m bench.runner ARGS` (what `invoke bench` runs) with the latent cache in shards of 4 images, 2 a batch,
# so that a kill can fall between shards. With KILL=n it stops in the extraction's progress update once more than
# n images are done: prints a marker and sleeps until killed.
LATENT_DRIVER = """
import functools, os, sys, time
import torch
torch.set_num_threads(1)  # bit for bit across processes
import bench.latent_cache as lc
from bench.progress import Progress
lc.build_latent_cache = functools.partial(lc.build_latent_cache, shard_size=4, batch_size=2)
if os.environ.get("KILL"):
    real = Progress.update

    def update(self, n=1, **info):
        real(self, n, **info)
        if self.desc.startswith("latent cache") and self.done > int(os.environ["KILL"]):
            print("KILL-POINT", flush=True)
            time.sleep(600)

    Progress.update = update
from bench.runner import main
sys.exit(main(sys.argv[1:]))
"""
LATENT_RUN = ["--suite", "imagenet256", "--preset", "tiny", "--epochs", "1", "--num-samples", "8", "--image-size", "32",
              "--backbones", "repa", "--sample-steps", "2", "--run-id", "r"]  # fmt: skip


def test_sigkill_during_latent_extraction_then_resume_gives_the_same_metrics(tmp_path):
    import signal
    import subprocess

    from bench.data import embedded_images
    from bench.metrics import write_samples_npz
    from bench.metrics.extractors import INCEPTION_WEIGHTS_FILE, make_random_inception_weights

    images, labels = embedded_images(32, 2, "ref", num_classes=3)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1",
           "GENBENCH_IMAGENET": str(make_imagenet_tree(tmp_path / "train", copies=2)),  # 16 images: 4 shards
           "GENBENCH_INCEPTION": str(make_random_inception_weights(tmp_path / INCEPTION_WEIGHTS_FILE)),
           "GENBENCH_ADM_REF": str(write_samples_npz(tmp_path / "ref.npz", images, labels))}  # fmt: skip

    def start(out, *args, kill=""):
        return subprocess.Popen([sys.executable, "-c", LATENT_DRIVER, *args, "--out", str(out)], env={**env, "KILL": kill},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    ref = start(tmp_path / "uninterrupted", *LATENT_RUN)  # alongside the killed run
    killed = start(tmp_path / "killed", *LATENT_RUN, kill="9")  # inside shard 2: shards 0 and 1 finished
    try:
        assert killed.stdout.readline().strip() == "KILL-POINT", killed.stderr.read()[-3000:]
    finally:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
    (cache,) = (tmp_path / "killed" / "_cache" / "latents").iterdir()
    shards = {p.name: p.read_bytes() for p in cache.glob("shard_*.safetensors")}
    assert sorted(shards) == ["shard_00000.safetensors", "shard_00001.safetensors"]  # nothing torn
    assert not (cache / "index.json").exists()
    run_dir = tmp_path / "killed" / "imagenet256" / "r"
    again = start(tmp_path / "unused", "--resume", str(run_dir))  # `invoke bench --resume RUN_DIR`
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "2 to extract, 2 already done" in err and "taking over stale lock" in err
    assert all((cache / name).read_bytes() == data for name, data in shards.items())  # kept, not redone
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-3000:]

    def values(out):
        rows = read_metrics(out / "imagenet256" / "r" / "metrics.jsonl")
        assert any(r["phase"] == "run" for r in rows)
        return {(r["phase"], r["metric"], r["epoch"], r["protocol"]): r["value"] for r in rows
                if r["phase"] in ("stage1", "train", "eval")}  # fmt: skip

    got, want = values(tmp_path / "killed"), values(tmp_path / "uninterrupted")
    assert ("eval", "fid", 1, "paper") in want and got == want


def test_bad_input_found_under_torchrun_is_one_line_and_exit_2(tmp_path):
    """`invoke bench --nproc 2`: the run directory of another configuration is found by rank 0 after the launch
    (bench.torchrun): rank 0's line alone, exit 2, no launcher traceback and no echo from rank 1."""
    import subprocess

    run_dir = tmp_path / "smoke" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text('{"another": "configuration"}\n')
    before = _files(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "invoke", "bench", "--nproc", "2", "--backbones", "tarflow", "--run-id", "r",
                        "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 2, p.stderr[-3000:]
    msg = f"error: {run_dir} holds a run with a different configuration; choose another --run-id or --out"
    assert p.stderr.strip().splitlines()[-1] == msg and p.stderr.count("error: ") == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and "ChildFailedError" not in p.stderr, p.stderr[-3000:]
    assert _files(tmp_path) == before
