"""The `smoke` feature extractor: a small CNN trained deterministically on the embedded photo classes.

It stands in for InceptionV3 in the embedded CPU suites, where a 2048-d Inception space would be both slow and
meaningless for 32 px photo crops. Training: `bench.data.embedded_images(train split)`, label = source photo,
AdamW, fixed seed, one thread (so the weights do not depend on the machine's thread count), a few seconds on
CPU. The weights are cached under $GENBENCH_CACHE (default ~/.cache/genbench)/smoke-extractor/<hash>.safetensors,
keyed by a hash of the training config, and written atomically.

Preprocessing: uint8 NHWC -> float, resized to `image_size` (bilinear, antialiased, only if the size differs),
scaled to [-1, 1]. Features: 'pool' = global average of the last conv block (128-d), 'logits' (8 classes, for
IS), 'spatial' = first 4 channels of the 8x8 middle block, flattened HWC (256-d, for sFID).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_TRAIN_LOCK = threading.Lock()


@dataclass(frozen=True)
class SmokeConfig:
    image_size: int = 32
    n_per_class: int = 128
    num_classes: int = 8
    widths: tuple[int, int, int] = (32, 64, 128)
    spatial_channels: int = 4
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    version: int = 1  # bump when the architecture or training loop changes

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class SmokeNet(nn.Module):
    def __init__(self, cfg: SmokeConfig):
        super().__init__()
        w1, w2, w3 = cfg.widths
        self.cfg = cfg
        self.stem = nn.Conv2d(3, w1, 4, stride=2, padding=1)  # 32 -> 16
        self.conv1 = nn.Conv2d(w1, w1, 3, padding=1)
        self.conv2 = nn.Conv2d(w1, w2, 3, padding=1)  # after pool: 8x8
        self.conv3 = nn.Conv2d(w2, w3, 3, stride=2, padding=1)  # 8 -> 4
        self.fc = nn.Linear(w3, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = F.relu(self.stem(x))  # [B, w1, 16, 16]
        h = F.max_pool2d(F.relu(self.conv1(h)), 2)  # [B, w1, 8, 8]
        mid = F.relu(self.conv2(h))  # [B, w2, 8, 8]
        pool = F.relu(self.conv3(mid)).mean(dim=(2, 3))  # [B, w3]
        spatial = (
            mid[:, : self.cfg.spatial_channels].permute(0, 2, 3, 1).flatten(1)
        )  # [B, 8*8*c], HWC like ADM
        return {"pool": pool, "logits": self.fc(pool), "spatial": spatial}


def preprocess(images_uint8_nchw: torch.Tensor, size: int) -> torch.Tensor:
    x = images_uint8_nchw.float()
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x / 127.5 - 1.0


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    if override is not None:
        return Path(override)
    env = os.environ.get("GENBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "genbench"


def train(cfg: SmokeConfig) -> tuple[SmokeNet, float]:
    """Train deterministically on one thread; returns (model, accuracy on the embedded test split)."""
    from bench.embedded import embedded_images

    images, labels = embedded_images(
        cfg.image_size, cfg.n_per_class, split="train", num_classes=cfg.num_classes
    )
    test_images, test_labels = embedded_images(cfg.image_size, 16, split="test", num_classes=cfg.num_classes)
    x = preprocess(torch.from_numpy(images).permute(0, 3, 1, 2), cfg.image_size)
    y = torch.from_numpy(labels)
    with _TRAIN_LOCK:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # conv reductions then run in one fixed order: same weights on every machine
        try:
            g = torch.Generator().manual_seed(cfg.seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model = SmokeNet(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            steps = cfg.epochs * ((len(x) + cfg.batch_size - 1) // cfg.batch_size)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.2)
            model.train()
            for _ in range(cfg.epochs):
                perm = torch.randperm(len(x), generator=g)
                for i in range(0, len(x), cfg.batch_size):
                    idx = perm[i : i + cfg.batch_size]
                    loss = F.cross_entropy(model(x[idx])["logits"], y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
            model.eval()
            with torch.no_grad():
                xt = preprocess(torch.from_numpy(test_images).permute(0, 3, 1, 2), cfg.image_size)
                acc = (model(xt)["logits"].argmax(1).numpy() == test_labels).mean()
        finally:
            torch.set_num_threads(threads)
    return model, float(acc)


def load_or_train(
    cfg: SmokeConfig = SmokeConfig(), cache: str | os.PathLike | None = None
) -> tuple[SmokeNet, Path, bool]:
    """(model, weights path, trained_now). Trains and caches (atomic write) on a cache miss."""
    from safetensors.torch import load_file, save_file

    path = cache_dir(cache) / "smoke-extractor" / f"{cfg.key()}.safetensors"
    model = SmokeNet(cfg)
    if path.is_file():
        model.load_state_dict(load_file(str(path)), strict=True)
        trained = False
    else:
        model, acc = train(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        meta = {"config": json.dumps(asdict(cfg), sort_keys=True), "test_accuracy": f"{acc:.4f}"}
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
        os.replace(
            tmp, path
        )  # atomic: concurrent trainers write identical bytes, readers never see half a file
        trained = True
    model.requires_grad_(False)
    model.eval()
    return model, path, trained
