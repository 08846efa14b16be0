"""Latent cache: build -> index / checksums / statistics, resume after a deleted or corrupted shard, a corrupt
image stops the run keeping finished shards, 2-process extraction equals 1-process, and the dataset's draws
depend only on (seed, epoch, index): not on the world size or the number of workers."""

import json
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from imagenet_tree import make_imagenet_tree
from safetensors.torch import load_file

from baselines.autoencoder import AETokenizer, AutoencoderKL, _dd
from bench.data import ImageFolder, to_model_range
from bench.errors import CorruptInputError, OptionError
from bench.latent_cache import LatentCache, build_latent_cache, tokenizer_fingerprint
from bench.latent_dataset import LatentDataset, latent_loader

SIZE = 32


class TinyAE(AETokenizer):
    """An LDM AutoencoderKL small enough for CPU tests (32 px -> 4 x 16 x 16)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.ae = AutoencoderKL(_dd(4, (1, 2), (), res_blocks=1, ch=32, resolution=SIZE), 4)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_imagenet_tree(tmp_path_factory.mktemp("imagenet") / "train")


@pytest.fixture(scope="module")
def built(tree, tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cache")
    cache = build_latent_cache(
        ImageFolder(tree, SIZE), TinyAE(), root, shard_size=3, batch_size=2, with_images=True
    )
    return tree, root, cache


def test_build_writes_index_checksums_and_exact_statistics(built):
    tree, root, cache = built
    src, tok = ImageFolder(tree, SIZE), TinyAE()
    assert cache.n == len(src) == 8 and len(cache.index["shards"]) == 3 and cache.latent_shape == (4, 16, 16)
    assert cache.verify() == [] and cache.has_images
    assert json.loads((cache.dir / "key.json").read_text())["files"] == src.fingerprint()
    images, labels = src.arrays()
    with torch.no_grad():
        post = tok.ae.encode(to_model_range(images))
        post_f = tok.ae.encode(to_model_range(images).flip(-1))
    parts = [load_file(str(cache.shard_path(k))) for k in range(3)]
    got = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    torch.testing.assert_close(got["mean"], post.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["std"], post.std, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["mean_flip"], post_f.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["std_flip"], post_f.std, rtol=1e-5, atol=1e-5)
    assert np.array_equal(got["images"].numpy(), images) and np.array_equal(got["labels"].numpy(), labels)
    mean, std = cache.stats("mean")
    torch.testing.assert_close(mean, post.mean.double().mean((0, 2, 3)).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(std, post.mean.double().std((0, 2, 3)).float(), rtol=1e-5, atol=1e-6)
    _, std_s = cache.stats("sample")
    var_s = post.mean.double().var((0, 2, 3)) + post.std.double().pow(2).mean((0, 2, 3))
    torch.testing.assert_close(std_s, var_s.sqrt().float(), rtol=1e-4, atol=1e-6)
    # a second build with the same tokenizer, crops and files reuses the cache
    again = build_latent_cache(src, tok, root, shard_size=3, batch_size=2)
    assert again.dir == cache.dir and again.index == cache.index


def test_resume_recomputes_only_deleted_or_corrupt_shards(built, tmp_path):
    tree, _, _ = built
    src, tok = ImageFolder(tree, SIZE), TinyAE()
    cache = build_latent_cache(src, tok, tmp_path, shard_size=3, batch_size=2)
    shas = [s["sha256"] for s in cache.index["shards"]]
    (cache.dir / "shard_00001.safetensors").unlink()
    data = bytearray((cache.dir / "shard_00002.safetensors").read_bytes())
    data[-5] ^= 0xFF  # flip bits inside a tensor
    (cache.dir / "shard_00002.safetensors").write_bytes(bytes(data))
    (cache.dir / "index.json").unlink()  # as if killed before the end
    kept = os.stat(cache.dir / "shard_00000.safetensors").st_mtime_ns
    again = build_latent_cache(src, tok, tmp_path, shard_size=3, batch_size=2)
    assert os.stat(cache.dir / "shard_00000.safetensors").st_mtime_ns == kept  # not recomputed
    assert [s["sha256"] for s in again.index["shards"]] == shas and again.verify() == []


def test_corrupt_image_stops_with_its_name_and_keeps_finished_shards(tmp_path):
    tree = make_imagenet_tree(tmp_path / "train")
    bad = tree / "n03000134" / "n03000134_2.JPEG"  # the last file: shard 2
    good = bad.read_bytes()
    bad.write_bytes(good[:300])
    src, tok = ImageFolder(tree, SIZE), TinyAE()
    with pytest.raises(CorruptInputError, match=r"n03000134_2\.JPEG: cannot decode image"):
        build_latent_cache(src, tok, tmp_path / "c", shard_size=3, batch_size=2)
    (d,) = (tmp_path / "c").iterdir()
    assert sorted(p.name for p in d.glob("shard_*.safetensors")) == [
        "shard_00000.safetensors",
        "shard_00001.safetensors",
    ]
    kept = os.stat(d / "shard_00000.safetensors").st_mtime_ns
    bad.write_bytes(good)  # the user replaces the file; same name and size, so the same cache key
    cache = build_latent_cache(ImageFolder(tree, SIZE), tok, tmp_path / "c", shard_size=3, batch_size=2)
    assert (
        cache.dir == d and os.stat(d / "shard_00000.safetensors").st_mtime_ns == kept and cache.verify() == []
    )


def _extract_worker(rank, world, init_file, tree, root):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        build_latent_cache(
            ImageFolder(tree, SIZE), TinyAE(), root, shard_size=3, batch_size=2, with_images=True
        )
    finally:
        dist.destroy_process_group()


def test_two_process_extraction_equals_one_process(built, tmp_path):
    tree, _, one = built
    mp.spawn(_extract_worker, args=(2, str(tmp_path / "init"), tree, tmp_path / "c2"), nprocs=2, join=True)
    two = LatentCache.open(next((tmp_path / "c2").iterdir()))
    assert two.dir.name == one.dir.name and two.verify() == []
    for k in range(3):
        a, b = load_file(str(one.shard_path(k))), load_file(str(two.shard_path(k)))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6)
    assert two.index["stats"]["mean"] == pytest.approx(one.index["stats"]["mean"], rel=1e-6, abs=1e-7)


def _epoch_batches(ds, world, per_rank, epoch, workers=0):
    """Global batch b of `epoch` as {index: (latent, image)} gathered over `world` simulated ranks."""
    out = {}
    for r in range(world):
        loader, sampler = latent_loader(ds, per_rank, rank=r, world=world, seed=5, num_workers=workers)
        sampler.set_epoch(epoch)
        for b, (z, y, img) in enumerate(loader):
            idx = list(sampler)[b * per_rank : (b + 1) * per_rank]
            for (_, i), zi, yi, im in zip(idx, z, y, img):
                out.setdefault(b, {})[i] = (zi, int(yi), im)
    return out


def test_dataset_draws_do_not_depend_on_world_size_or_workers(built):
    _, _, cache = built
    ds = LatentDataset(cache, posterior="sample", hflip=0.5, seed=3, with_images=True)
    one = _epoch_batches(ds, 1, 4, epoch=2)
    two = _epoch_batches(ds, 2, 2, epoch=2, workers=2)
    assert one.keys() == two.keys() and len(one) == 2
    for b in one:
        assert one[b].keys() == two[b].keys()  # the same images in global batch b
        for i in one[b]:
            za, ya, ia = one[b][i]
            zb, yb, ib = two[b][i]
            assert torch.equal(za, zb) and ya == yb and torch.equal(ia, ib)
    # the draws: a flip changes latent and image together; "sample" is fresh per epoch, "sample_once" is not
    flips = [ds.draws(2, i)[0] for i in range(cache.n)]
    assert any(flips) and not all(flips)
    i = flips.index(True)
    z, _, img = ds[(2, i)]
    mean = LatentDataset(cache, seed=3, hflip=0.5, with_images=True)
    zf, _, imf = mean[(2, i)]
    plain = LatentDataset(cache, with_images=True)[(2, i)]
    assert torch.equal(imf, plain[2].flip(-1)) and torch.equal(img, imf)
    assert not torch.equal(z, zf) and not torch.equal(ds[(3, i)][0], ds[(4, i)][0])
    once = LatentDataset(cache, posterior="sample_once", seed=3)
    assert torch.equal(once[(3, 0)][0], once[(4, 0)][0])
    assert not torch.equal(once[(3, 0)][0], LatentDataset(cache)[0][0])  # a posterior sample, not the mean
    with pytest.raises(OptionError, match="unknown posterior mode"):
        LatentDataset(cache, posterior="median")


def test_cache_without_images_refuses_image_items(built, tmp_path):
    tree, _, _ = built
    src = ImageFolder(tree, SIZE)
    with tempfile.TemporaryDirectory() as d:
        cache = build_latent_cache(src, TinyAE(), d, shard_size=8, batch_size=8)
        assert not cache.has_images and "images" not in load_file(str(cache.shard_path(0)))
        with pytest.raises(OptionError, match="holds no images"):
            LatentDataset(cache, with_images=True)


def test_key_depends_on_the_encoding_weights_only():
    a, b = TinyAE(), TinyAE()
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    with torch.no_grad():
        b.ae.decoder.conv_out.weight.add_(1.0)  # decoder: latents unchanged, same cache
        b.latent_mean = torch.ones(4)  # statistics are computed from the cache itself
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    with torch.no_grad():
        b.ae.encoder.conv_in.weight.add_(1e-3)
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)


def test_feature_tokenizer_cache_keys_on_the_frozen_encoder_too(tmp_path):
    from baselines.api import build_backbone
    from bench.data import EmbeddedImages

    torch.manual_seed(0)
    bb = build_backbone("fae", "tiny", num_classes=8, image_size=32)
    src = EmbeddedImages("train", 32, 1, 8)
    with pytest.raises(OptionError, match="pass features="):
        build_latent_cache(src, bb.tokenizer, tmp_path)
    cache = build_latent_cache(src, bb.tokenizer, tmp_path, features=bb.features, shard_size=8)
    x = to_model_range(src.arrays()[0])
    with torch.no_grad():
        mean, logvar = bb.tokenizer.posterior(bb.features(x))
        z = bb.tokenizer.encode(x, bb.features(x))
    got = load_file(str(cache.shard_path(0)))
    torch.testing.assert_close(got["mean"], z, rtol=1e-5, atol=1e-5)
    g = bb.tokenizer.config.grid
    std = torch.exp(0.5 * logvar).transpose(1, 2).reshape(len(x), -1, g, g)
    torch.testing.assert_close(got["std"], std, rtol=1e-5, atol=1e-5)
    key = tokenizer_fingerprint(bb.tokenizer, bb.features)
    with torch.no_grad():
        next(bb.encoder.parameters()).add_(1.0)
    assert tokenizer_fingerprint(bb.tokenizer, bb.features) != key  # other features, other latents


def test_extraction_stage_under_torchrun_then_reused(tmp_path, capsys):
    import subprocess
    import sys
    from pathlib import Path

    diffusers = pytest.importorskip("diffusers")
    from bench.extract_latents import main

    torch.manual_seed(0)
    diffusers.AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32,
                            layers_per_block=1, sample_size=32).save_pretrained(tmp_path / "w" / "sd-vae-ft-ema")  # fmt: skip
    tree = make_imagenet_tree(tmp_path / "train")
    args = ["--data", str(tree), "--tokenizer", "sd-vae-ft-ema", "--weights", str(tmp_path / "w"), "--cache",
            str(tmp_path / "c"), "--image-size", "32", "--batch-size", "4", "--workers", "0", "--shard-size", "3",
            "--device", "cpu"]  # fmt: skip
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "bench.extract_latents", *args], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    cache = LatentCache.open(p.stdout.strip().splitlines()[-1])
    assert cache.n == 8 and len(cache.index["shards"]) == 3 and cache.verify() == []
    assert "rank 1/2" in p.stderr  # both ranks extracted
    assert main(args) == 0 and capsys.readouterr().out.strip() == str(cache.dir)  # one process: reused
    assert main([*args[:4], "--weights", str(tmp_path / "nowhere"), *args[6:]]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: released tokenizer sd-vae-ft-ema missing")
        and "huggingface.co/stabilityai" in err
    )
