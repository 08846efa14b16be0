"""ImageNet-layout folders laid out unlike tests/imagenet_tree.py (what a new user's download may look like): class
folders with sub-folders (Tiny-ImageNet's <wnid>/images/), mixed extension case, RGBA / palette PNGs; and the
dry-run assets command (bench.dry_run_assets) that README tells users without the real reference / Inception."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bench.data import ImageFolder


def _write(path, size, mode, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path)


def _tree(root):
    _write(root / "n02" / "images" / "n02_3.jpeg", (300, 200), "RGB", 0)
    _write(root / "n02" / "images" / "n02_1.JPEG", (64, 80), "L", 1)
    _write(root / "n02" / "n02_top.png", (90, 90), "P", 2)  # beside the sub-folder
    _write(root / "n01" / "a.PNG", (50, 70), "RGBA", 3)
    _write(root / "n01" / ".hidden" / "x.jpg", (50, 50), "RGB", 4)  # hidden folder: skipped
    (root / "n01" / ".DS_Store").write_bytes(b"\0")
    return root


def test_sub_folders_are_walked_in_torchvisions_order(tmp_path):
    src = ImageFolder(_tree(tmp_path / "train"), 32)
    assert src.classes == ["n01", "n02"]
    assert src.relpaths == ["n01/a.PNG", "n02/n02_top.png", "n02/images/n02_1.JPEG", "n02/images/n02_3.jpeg"]
    assert src.labels.tolist() == [0, 1, 1, 1]
    for i in range(len(src)):
        img, _ = src[i]
        assert img.shape == (32, 32, 3) and img.dtype.is_floating_point is False
    try:  # torchvision's ImageFolder, when installed, lists the same files in the same order
        from torchvision.datasets import ImageFolder as TV
    except ImportError:
        return
    tv = TV(str(tmp_path / "train"))  # (which keeps hidden folders; we skip them, as hidden files)
    assert [(p.split("train/")[1], y) for p, y in tv.samples if "/." not in p] == src.files


def test_dry_run_assets_writes_a_reference_batch_and_inception_file(tmp_path, capsys):
    from bench.dry_run_assets import main
    from bench.metrics import get_extractor, read_npz

    assert main(["--imagenet", str(_tree(tmp_path / "train")), "--out", str(tmp_path / "a"), "--n", "3", "--size", "16"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    env = dict(x.removeprefix("export ").split("=", 1) for x in lines if x.startswith("export "))
    ref = read_npz(env["GENBENCH_ADM_REF"])
    assert ref.n_images == 3 and ref.images().shape == (3, 16, 16, 3) and ref.labels.tolist() == [0, 1, 1]
    ext = get_extractor("inception-v3-compat", weights=env["GENBENCH_INCEPTION"])
    assert ext.name == "inception-v3-compat"
    assert main(["--imagenet", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    assert "not found" in capsys.readouterr().err
