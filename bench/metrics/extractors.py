"""Feature extractors by name. Each takes uint8 NHWC images of any size and returns float32 feature arrays.

- `inception-v3-compat`: torch-fidelity's InceptionV3 (a port of the TF 2015-12-05 graph that the ADM evaluator
  runs) and its weights file `weights-inception-2015-12-05-6726825d.pth`. Preprocessing as that graph: resize to
  299 with TF1's bilinear (align_corners=False, no antialias; torch-fidelity's `interpolate_bilinear_2d_like_
  tensorflow1x`), then (x - 128) / 128. Features: 'pool' = pool_3 (2048, FID / precision / recall / KID),
  'logits' = pool_3 @ W without the bias (1008; what ADM's IS uses), 'spatial' = mixed_6/conv (torch-fidelity's
  Mixed_6d.branch1x1 after its ReLU), first 7 channels, flattened HWC (17*17*7 = 2023; sFID, as ADM).
- `dinov2-vit-l14` (also -s14/-b14/-g14): DINOv2 through timm from a local weights file (timm's or the official
  checkpoint), computing what dgm-eval (layer6ai-labs/dgm-eval at 74c79f7; FD-DINOv2, Stein et al. 2023)
  computes. Its DINOv2Encoder (dgm_eval/models/dinov2.py:43-59) loads torch.hub's DINOv2 and preprocesses PIL
  images with torchvision Resize((224, 224), BICUBIC) (PIL's antialiased bicubic, uint8 result), ToTensor
  (/255) and ImageNet mean/std; the features are the model's output, the CLS token after the final norm
  (dgm_eval/representations.py:49; hub DinoVisionTransformer.forward -> head(x_norm_clstoken), Identity head).
  Hub DINOv2 (facebookresearch/dinov2 at b8931f7, hub/backbones.py:21-28: img_size 518, interpolate_offset
  0.1, interpolate_antialias False) resamples its 37 x 37 position table for every 224 px input
  (models/vision_transformer.py:180-212): bicubic, antialias=False, scale_factor=(16 + 0.1) / 37. timm's
  dynamic_img_size resamples with antialias=True at size=16, which moves CLS features by ~1.6% on the same
  weights; so we resample the table once at load, exactly as the hub does, into a model built for 224 px.
- `smoke`: see `smoke_extractor.py`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.checkpoints import load_state_dict_strict, load_weights
from bench.errors import CorruptInputError, MissingInputError, OptionError

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
)
DINOV2_ARCHS = {
    "dinov2-vit-s14": "vit_small_patch14_dinov2",
    "dinov2-vit-b14": "vit_base_patch14_dinov2",
    "dinov2-vit-l14": "vit_large_patch14_dinov2",
    "dinov2-vit-g14": "vit_giant_patch14_dinov2",
}


class FeatureExtractor:
    """Base: subclasses set `name`, `keys` and implement `_forward(uint8 NCHW tensor) -> dict of tensors`."""

    name: str
    keys: tuple[str, ...]
    device: torch.device

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def features_iter(self, batches: Iterable[np.ndarray], total: int | None = None) -> dict[str, np.ndarray]:
        """Features of a stream of uint8 [b, H, W, 3] batches, concatenated: {key: float32 [N, D]}.
        With `total` (number of images) long extractions report rate and ETA."""
        from bench.progress import Progress

        out: dict[str, list[np.ndarray]] = {k: [] for k in self.keys}
        prog = Progress(f"features {self.name}", total=total or 0, unit="img", every=10.0, min_time=10.0)
        for batch in batches:
            x = torch.as_tensor(np.asarray(batch))
            if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(
                    f"{self.name}: expected uint8 images [N, H, W, 3], got {x.dtype} {tuple(x.shape)}"
                )
            feats = self._forward(x.permute(0, 3, 1, 2).to(self.device))
            for k in self.keys:
                out[k].append(feats[k].float().cpu().numpy())
            if total:
                prog.update(len(x))
        if not out[self.keys[0]]:
            raise ValueError(f"{self.name}: no images given")
        return {k: np.concatenate(v) for k, v in out.items()}

    def features(self, images_uint8_nhwc: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
        """uint8 [N, H, W, 3] -> {key: float32 [N, D]} for every key in `self.keys`."""
        images = np.asarray(images_uint8_nhwc)
        return self.features_iter(
            (images[i : i + batch_size] for i in range(0, len(images), batch_size)), total=len(images)
        )


# ------------------------------------------------------------------------------------------ InceptionV3


def find_inception_weights(weights: str | os.PathLike | None = None) -> Path:
    """--weights, else $GENBENCH_WEIGHTS (the file, or a folder holding it), else torch hub's checkpoint cache
    (where torch-fidelity downloads it). Missing -> FileNotFoundError naming the file to obtain."""
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise MissingInputError(f"inception-v3-compat: weights file {p} does not exist")
        return p
    candidates = []
    env = os.environ.get("GENBENCH_WEIGHTS")
    if env:
        e = Path(env)
        candidates += [e] if e.is_file() else [e / INCEPTION_WEIGHTS_FILE]
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE)
    candidates.append(Path.home() / ".cache" / "torch" / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE)
    for c in candidates:
        if c.is_file():
            return c
    raise MissingInputError(
        f"inception-v3-compat needs torch-fidelity's InceptionV3 weights file {INCEPTION_WEIGHTS_FILE} "
        f"({INCEPTION_WEIGHTS_URL}). Download it on a machine with internet and pass --weights PATH, set "
        f"GENBENCH_WEIGHTS to it (or to its folder), or put it in torch hub's cache. Looked in: "
        + ", ".join(str(c) for c in candidates)
    )


def _inception_class():
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3


def make_random_inception_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """A random-weight InceptionV3 state_dict in torch-fidelity's format (same keys and shapes as the real
    file). Conv weights are He-normal and batch-norm statistics near identity, so activations neither vanish
    nor explode through the 94 layers. For tests and throughput measurements only."""
    cls = _inception_class()

    class _Skeleton(cls):  # torch-fidelity's constructor insists on loading a file; build the modules only
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    empty = Path(path).with_suffix(".empty.pt")
    torch.save({}, empty)
    try:
        skeleton = _Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    finally:
        empty.unlink()
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in skeleton.state_dict().items():
        if k.endswith("num_batches_tracked"):
            state[k] = v.clone()
        elif k.endswith("conv.weight"):
            fan_in = v[0].numel()
            state[k] = torch.randn(v.shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif k.endswith("bn.weight"):
            state[k] = 1.0 + 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith(("bn.bias", "bn.running_mean")):
            state[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("bn.running_var"):
            state[k] = 1.0 + 0.1 * torch.rand(v.shape, generator=g)
        elif k == "fc.weight":
            state[k] = torch.randn(v.shape, generator=g) / v.shape[1] ** 0.5
        elif k == "fc.bias":
            state[k] = 0.1 * torch.randn(v.shape, generator=g)
        else:
            raise AssertionError(f"unexpected InceptionV3 key {k}")
    torch.save(state, path)
    return Path(path)


class InceptionV3Compat(FeatureExtractor):
    name = "inception-v3-compat"
    keys = ("pool", "logits", "spatial")
    spatial_channels = 7  # ADM evaluator: mixed_6/conv[..., :7]

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
    ):
        path = find_inception_weights(weights)
        # weights_only: a plain state_dict; torch-fidelity then loads the same (now vetted) file strictly
        state = load_weights(path, "InceptionV3 weights")
        if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
            raise CorruptInputError(
                f"{path}: not torch-fidelity's InceptionV3 state_dict (keys {list(state)[:4]}...)"
            )
        del state
        self.weights_path = path
        self.device = torch.device(device)
        self.model = _inception_class()(
            self.name,
            ["2048", "logits_unbiased"],
            feature_extractor_weights_path=str(path),
            feature_extractor_internal_dtype=dtype,
        ).to(self.device)
        self._spatial: list[torch.Tensor] = []
        self.model.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: self._spatial.append(o))

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._spatial.clear()
        pool, logits = self.model(x)  # [B, 2048], [B, 1008]
        (sp,) = self._spatial  # [B, 192, 17, 17]
        spatial = sp[:, : self.spatial_channels].permute(0, 2, 3, 1).flatten(1)  # [B, 17*17*7] HWC as TF
        return {"pool": pool, "logits": logits, "spatial": spatial}


# ---------------------------------------------------------------------------------------------- DINOv2


def hub_pos_embed_224(pos_embed: torch.Tensor, patch_size: int = 14, image_size: int = 224) -> torch.Tensor:
    """A DINOv2 position table [1, 1 + M*M, D] resampled for `image_size` input exactly as hub DINOv2's
    interpolate_pos_encoding (vision_transformer.py:180-212): float32, bicubic, antialias=False,
    scale_factor=(image_size // patch_size + 0.1) / M; the class token's entry unchanged."""
    n = pos_embed.shape[1] - 1
    m, g = int(math.sqrt(n)), image_size // patch_size
    if m * m != n:
        raise ValueError(f"DINOv2 position table has {n} patch entries, not a square grid")
    if m == g:
        return pos_embed
    dim, scale = pos_embed.shape[-1], float(g + 0.1) / m
    grid = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    if grid.shape[-2:] != (g, g):
        raise AssertionError(f"resampled DINOv2 position grid is {tuple(grid.shape[-2:])}, expected {(g, g)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, g * g, dim)
    return torch.cat([pos_embed[:, :1].float(), grid], dim=1).to(pos_embed.dtype)


class DINOv2(FeatureExtractor):
    keys = ("pool",)
    image_size = 224
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(
        self,
        name: str = "dinov2-vit-l14",
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        *,
        random_weights: bool = False,
        model_kwargs: dict | None = None,
    ):
        """`random_weights=True` skips the weights file (an untrained network): for throughput measurements only.
        `model_kwargs` override timm's architecture arguments (e.g. depth): for tests with small random models."""
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn

        if name not in DINOV2_ARCHS:
            raise OptionError(f"unknown DINOv2 extractor {name!r}; known: {', '.join(DINOV2_ARCHS)}")
        if weights is None and os.environ.get("GENBENCH_WEIGHTS"):
            weights = Path(os.environ["GENBENCH_WEIGHTS"]) / f"{name}.safetensors"
        arch = DINOV2_ARCHS[name]
        if not random_weights and (weights is None or not Path(weights).is_file()):
            raise MissingInputError(
                f"{name}: weights file not found ({weights}). Download timm's '{arch}.lvd142m' model.safetensors "
                f"(or the official DINOv2 checkpoint) and pass --weights PATH or put it at $GENBENCH_WEIGHTS/{name}.safetensors"
            )
        self.name, self.device = name, torch.device(device)
        self.weights_path = None if random_weights else Path(weights)
        # a fixed 224 px model: its 16 x 16 table is the checkpoint's, resampled once as hub DINOv2 does per call
        self.model = timm.create_model(
            arch, pretrained=False, num_classes=0, img_size=self.image_size, **(model_kwargs or {})
        )
        if self.weights_path is not None:
            state = dict(load_weights(self.weights_path, f"{name} weights"))  # safetensors / weights_only
            if "pos_embed" not in state:
                raise CorruptInputError(f"{self.weights_path}: no pos_embed; not a DINOv2 checkpoint")
            state["pos_embed"] = hub_pos_embed_224(state["pos_embed"], 14, self.image_size)
            load_state_dict_strict(self.model, checkpoint_filter_fn(state, self.model), self.weights_path)
            if not torch.equal(
                self.model.pos_embed.detach(), state["pos_embed"]
            ):  # timm must not resample again
                raise AssertionError("timm changed the resampled DINOv2 position table")
        self.model.requires_grad_(False).eval().to(self.device)

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from PIL import Image

        # dgm-eval: torchvision Resize((224, 224), BICUBIC) on PIL images = PIL's antialiased bicubic resize
        arr = x.permute(0, 2, 3, 1).cpu().numpy()
        size = (self.image_size, self.image_size)
        resized = np.stack([np.asarray(Image.fromarray(a).resize(size, Image.BICUBIC)) for a in arr])
        t = torch.from_numpy(resized).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return {"pool": self.model((t - mean) / std)}  # [B, D] CLS token after the final norm


# ----------------------------------------------------------------------------------------------- smoke


class Smoke(FeatureExtractor):
    name = "smoke"
    keys = ("pool", "logits", "spatial")

    def __init__(self, device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None):
        from bench.metrics.smoke_extractor import SmokeConfig, load_or_train

        self.config = SmokeConfig()
        model, self.weights_path, self.trained_now = load_or_train(self.config, cache_dir)
        self.device = torch.device(device)
        self.model = model.to(self.device)

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from bench.metrics.smoke_extractor import preprocess

        return self.model(preprocess(x, self.config.image_size))


EXTRACTORS = ("inception-v3-compat", "smoke", *DINOV2_ARCHS)


def get_extractor(
    name: str,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> FeatureExtractor:
    """A feature extractor by name: 'inception-v3-compat', 'dinov2-vit-l14' (and -s14/-b14/-g14), 'smoke'."""
    if name == "inception-v3-compat":
        return InceptionV3Compat(weights, device)
    if name in DINOV2_ARCHS:
        return DINOv2(name, weights, device)
    if name == "smoke":
        if weights is not None:
            raise OptionError("the smoke extractor trains its own weights; do not pass weights")
        return Smoke(device, cache_dir)
    raise OptionError(f"unknown feature extractor {name!r}; known: {', '.join(EXTRACTORS)}")
