"""The data stage: ImageNet-layout folders (class order, RGB conversion, ADM's center crop exactly, bad inputs)
and the per-suite sources."""

import dataclasses

import numpy as np
import pytest
import torch
from imagenet_tree import SYNSETS, TREE, make_imagenet_tree
from PIL import Image

from bench import suites
from bench.data import (
    EmbeddedImages,
    ImageFolder,
    center_crop_arr,
    data_input_problems,
    data_sources,
    embedded_images,
    image_loader,
    load_image,
)
from bench.errors import CorruptInputError, MissingInputError
from bench.metrics import write_stats_npz


def _adm_crop_written_out(im: Image.Image, size: int) -> np.ndarray:
    """ADM's crop re-derived with PIL calls spelled out (guided-diffusion image_datasets.py:126-143)."""
    w, h = im.size
    while min(w, h) >= 2 * size:
        w, h = w // 2, h // 2
        im = im.resize((w, h), resample=Image.BOX)
    nw, nh = round(w * size / min(w, h)), round(h * size / min(w, h))
    im = im.resize((nw, nh), resample=Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_imagenet_tree(tmp_path_factory.mktemp("imagenet") / "train")


def test_class_index_is_sorted_synset_order_and_files_are_sorted(tree):
    ds = ImageFolder(tree, 256)
    assert ds.classes == SYNSETS and list(TREE) != SYNSETS  # written unsorted
    assert len(ds) == sum(len(v) for v in TREE.values())
    for f, y in zip(ds.relpaths, ds.labels):
        assert f.split("/")[0] == SYNSETS[y]
    per_class = [[f for f, y in zip(ds.relpaths, ds.labels) if y == c] for c in range(3)]
    assert ds.files == list(zip(ds.relpaths, ds.labels.tolist()))  # torchvision's (path, class) samples
    assert all(p == sorted(p) for p in per_class)
    assert per_class[0][:2] == [
        "n01440764/n01440764_10.JPEG",
        "n01440764/n01440764_2.JPEG",
    ]  # by name, as torchvision


def test_every_file_becomes_rgb_and_cmyk_gray_png_decode(tree):
    with Image.open(tree / "n01440764" / "n01440764_3.JPEG") as im:
        assert im.mode == "CMYK"
    with Image.open(tree / "n02102040" / "n02102040_1.JPEG") as im:
        assert im.mode == "L"
    with Image.open(tree / "n03000134" / "n03000134_1.JPEG") as im:
        assert im.format == "PNG"
    ds = ImageFolder(tree, 64)
    for i in range(len(ds)):
        img, y = ds[i]
        assert img.dtype.is_floating_point is False and tuple(img.shape) == (64, 64, 3) and y == ds.labels[i]
    gray = ds[ds.relpaths.index("n02102040/n02102040_1.JPEG")][0].numpy()
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    cmyk_path = tree / "n01440764" / "n01440764_3.JPEG"
    with Image.open(cmyk_path) as im:
        expected = np.asarray(im.convert("RGB"))
    assert np.array_equal(np.asarray(load_image(cmyk_path)), expected)


@pytest.mark.parametrize("size", [256, 64])
def test_center_crop_equals_adm_written_out(tree, size):
    ds = ImageFolder(tree, size)
    for i, f in enumerate(ds.relpaths):
        with Image.open(tree / f) as im:
            expected = _adm_crop_written_out(im.convert("RGB"), size)
        got = ds[i][0].numpy()
        assert got.shape == (size, size, 3)
        assert np.array_equal(got, expected), f
        with Image.open(tree / f) as im:
            assert np.array_equal(center_crop_arr(im.convert("RGB"), size), expected)


def test_written_out_crop_takes_the_documented_steps():
    """The reference itself, on shapes worked by hand: 1100x560 at 256 is BOX-halved once to 550x280, then
    BICUBIC to (round(502.857) = 503, 256); 200x150 (smaller than 256) is only upscaled to (341, 256)."""
    for (w, h), steps in {(1100, 560): [(550, 280), (503, 256)], (200, 150): [(341, 256)]}.items():
        calls = []
        real = Image.Image.resize

        def spy(self, size, resample=None, *a, _calls=calls, _real=real, **k):
            _calls.append(tuple(size))
            return _real(self, size, resample, *a, **k)

        Image.Image.resize = spy
        try:
            out = _adm_crop_written_out(Image.new("RGB", (w, h)), 256)
            out2 = center_crop_arr(Image.new("RGB", (w, h)), 256)
        finally:
            Image.Image.resize = real
        assert calls == steps + steps and out.shape == out2.shape == (256, 256, 3)


def test_corrupt_empty_and_non_image_files_are_clear_errors(tmp_path):
    root = make_imagenet_tree(tmp_path / "t")
    bad = root / "n02102040" / "n02102040_7.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    ds = ImageFolder(root, 64)
    with pytest.raises(CorruptInputError, match=r"n02102040_7\.JPEG: cannot decode image"):
        ds[ds.relpaths.index("n02102040/n02102040_7.JPEG")]
    (root / "n02102040" / "README.txt").write_text("not an image")
    with pytest.raises(CorruptInputError, match=r"without an image extension .*n02102040/README\.txt"):
        ImageFolder(root, 64)
    (root / "n02102040" / "README.txt").unlink()
    (root / "n09999999").mkdir()
    with pytest.raises(CorruptInputError, match=r"1 class folder\(s\) hold no images: n09999999"):
        ImageFolder(root, 64)
    with pytest.raises(MissingInputError, match="ImageNet train folder not found"):
        ImageFolder(tmp_path / "nope", 64)


def test_sources_per_suite(tree, tmp_path, monkeypatch):
    s = data_sources(suites.SMOKE)
    assert (
        s.kind == "embedded"
        and isinstance(s.train, EmbeddedImages)
        and isinstance(s.reference, EmbeddedImages)
    )
    imgs, labels = s.train.arrays()
    ref_imgs, ref_labels = embedded_images(32, 64, "train", num_classes=8)
    assert np.array_equal(imgs, ref_imgs) and np.array_equal(
        labels, ref_labels
    )  # what the trainer used before
    assert len(s.test) == len(s.reference) == 8 * suites.SMOKE.n_ref_per_class
    assert s.train.fingerprint() == EmbeddedImages("train", 32, 64, 8).fingerprint() != s.test.fingerprint()

    monkeypatch.delenv("GENBENCH_IMAGENET", raising=False)
    monkeypatch.delenv("GENBENCH_ADM_REF", raising=False)
    assert len(data_input_problems(suites.IMAGENET256)) == 2 and data_input_problems(suites.SMOKE) == []
    with pytest.raises(MissingInputError) as e:
        data_sources(suites.IMAGENET256)
    assert "GENBENCH_IMAGENET" in str(e.value) and "VIRTUAL_imagenet256_labeled.npz" in str(e.value)
    ref = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    ref.write_bytes(b"not a zip")
    with pytest.raises(CorruptInputError, match="VIRTUAL_imagenet256_labeled.npz: not a readable npz"):
        data_sources(suites.IMAGENET256, imagenet=tree, reference=ref)
    write_stats_npz(ref, {"mu": np.zeros(4), "sigma": np.eye(4)})
    s = data_sources(suites.IMAGENET256, imagenet=tree, reference=ref, image_size=64)
    assert s.kind == "imagenet" and s.test is None and s.reference == ref
    assert isinstance(s.train, ImageFolder) and s.train.image_size == 64 and s.num_classes == 3
    fp = s.train.fingerprint()
    (tree / "n01440764" / "n01440764_2.JPEG").rename(tree / "n01440764" / "n01440764_9.JPEG")
    assert ImageFolder(tree, 64).fingerprint() != fp  # a changed file list changes the latent cache key
    (tree / "n01440764" / "n01440764_9.JPEG").rename(tree / "n01440764" / "n01440764_2.JPEG")
    small = dataclasses.replace(suites.IMAGENET256, num_classes=3)
    assert data_sources(small, imagenet=tree, reference=ref).train.image_size == 256


def test_image_loader_batches_match_across_world_sizes_and_name_a_bad_file(tmp_path):
    root = make_imagenet_tree(tmp_path / "t")
    src = ImageFolder(root, 32)

    def global_batches(world, per_rank, workers=0):
        out = {}
        for r in range(world):
            loader, sampler = image_loader(src, per_rank, rank=r, world=world, seed=1, num_workers=workers)
            sampler.set_epoch(3)
            for b, (imgs, ys) in enumerate(loader):
                assert imgs.dtype == torch.uint8 and tuple(imgs.shape[1:]) == (32, 32, 3)
                out.setdefault(b, []).extend(zip(ys.tolist(), imgs.flatten(1).sum(1).tolist()))
        return {b: sorted(v) for b, v in out.items()}

    assert global_batches(1, 4) == global_batches(2, 2, workers=2)
    bad = root / "n01440764" / "n01440764_10.JPEG"
    bad.write_bytes(bad.read_bytes()[:100])
    loader, _ = image_loader(src, 4, num_workers=2)
    with pytest.raises(CorruptInputError) as e:
        list(loader)
    assert str(e.value).startswith(str(bad)) and "\n" not in str(e.value)
