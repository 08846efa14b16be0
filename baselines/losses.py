"""Stage-1 autoencoder losses shared by the LDM KL-VAE and VA-VAE: perceptual, PatchGAN, adaptive weights.

Semantics of LDM's `LPIPSWithDiscriminator` (CompVis/latent-diffusion, and the VA-VAE copy in
hustvl/LightningDiT vavae/ldm/modules/losses/contperceptual.py):
  nll  = sum(|x - x_rec| + w_p * LPIPS(x, x_rec)) / exp(logvar) + logvar, summed per image, mean over batch;
  kl   = sum of the posterior KL per image, mean over batch;
  loss = nll + kl_weight * kl + d_weight * disc_factor * g_loss [+ w_vf * vf_loss]
with d_weight = disc_weight * clamp(|grad nll| / (|grad g_loss| + 1e-4), 0, 1e4) on the decoder's last layer and
the discriminator trained with the hinge loss from `disc_start` on.

One difference in form, not in result: the official code runs the generator and discriminator steps with two
optimisers. Here `VAELoss` returns ONE scalar whose gradient is the generator loss for the autoencoder's
parameters and the discriminator loss for the discriminator's (the generator term sees the discriminator with
detached parameters, the discriminator term sees detached images), so one optimiser step over all parameters
equals the two official steps when both optimisers share lr and betas (they do: LDM uses Adam (0.5, 0.9)).

Perceptual loss: "lpips-vgg" is the maintained `lpips` package (its linear-layer weights ship in the wheel)
on torchvision VGG16 weights read from a LOCAL file (nothing is downloaded). Without that file the embedded
suites use "random-features": an LPIPS-style distance (unit-normalised channels, squared difference, spatial
mean, summed over layers) on a small conv net with fixed seeded random weights. It is a stand-in, not LPIPS;
`PerceptualLoss.kind` says which one runs so reports can state it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16 weights (the file LPIPS uses)

# --- perceptual ---------------------------------------------------------------------------------------------


def _default_vgg_path() -> Path | None:
    """$GENBENCH_VGG16, else torch hub's cache ($TORCH_HOME/hub/checkpoints), if the file exists there."""
    env = os.environ.get("GENBENCH_VGG16")
    if env:
        return Path(env)
    p = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
    return p if p.is_file() else None


class RandomFeatureNet(nn.Module):
    """Fixed random conv features (seeded; never trained). Weights are buffers that are not saved."""

    def __init__(self, channels=(32, 64, 128), seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        c_in, self.n = 3, len(channels)
        for i, c in enumerate(channels):
            w = torch.randn(c, c_in, 3, 3, generator=g) * (2.0 / (9 * c_in)) ** 0.5  # He init keeps scale
            self.register_buffer(f"w{i}", w, persistent=False)
            c_in = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, h = [], x
        for i in range(self.n):
            h = F.relu(F.conv2d(h, getattr(self, f"w{i}"), stride=1 if i == 0 else 2, padding=1))
            feats.append(h)
        return feats


def _lpips_vgg(vgg_path: Path) -> nn.Module:
    import lpips  # maintained implementation; its linear weights (v0.1 vgg.pth) ship inside the wheel

    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)  # pnet_rand: no download
    from bench.checkpoints import load_weights  # weights_only: never runs pickled code

    sd = load_weights(vgg_path, "LPIPS VGG16 weights")
    for slice_ in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
        for name, module in slice_.named_children():
            if isinstance(module, nn.Conv2d):
                module.weight.data.copy_(sd[f"features.{name}.weight"])
                module.bias.data.copy_(sd[f"features.{name}.bias"])
    return model


class PerceptualLoss(nn.Module):
    """Per-image perceptual distance [B,1,1,1] between images in [-1,1].

    kind: "lpips-vgg" (needs `vgg_path` or $GENBENCH_VGG16 or the torch hub cache file), "random-features"
    (the documented stand-in), or "auto" (LPIPS when the VGG file is found, the stand-in otherwise)."""

    def __init__(self, kind: str = "auto", vgg_path: str | Path | None = None):
        super().__init__()
        if kind not in ("auto", "lpips-vgg", "random-features"):
            raise ValueError(f"unknown perceptual loss {kind!r}; expected auto, lpips-vgg or random-features")
        path = Path(vgg_path) if vgg_path is not None else _default_vgg_path()
        if kind == "lpips-vgg" and (path is None or not path.is_file()):
            raise FileNotFoundError(
                f"LPIPS needs torchvision's VGG16 weights ({VGG16_FILE}) at a local path; not found "
                f"({path or 'no path given'}). Get it from https://download.pytorch.org/models/{VGG16_FILE} "
                "and pass vgg_path or set GENBENCH_VGG16."
            )
        if kind == "auto":
            kind = "lpips-vgg" if path is not None and path.is_file() else "random-features"
        self.kind = kind
        self.net = _lpips_vgg(path) if kind == "lpips-vgg" else RandomFeatureNet()
        self.net.requires_grad_(False).eval()

    def train(self, mode: bool = True):  # frozen: always eval (LPIPS has dropout layers)
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "lpips-vgg":
            return self.net(x, y)  # lpips takes [-1,1] inputs
        d = 0.0
        for fx, fy in zip(self.net(x), self.net(y)):
            fx, fy = F.normalize(fx, dim=1, eps=1e-10), F.normalize(fy, dim=1, eps=1e-10)
            d = d + (fx - fy).pow(2).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        return d


# --- PatchGAN discriminator ---------------------------------------------------------------------------------


class NLayerDiscriminator(nn.Module):
    """PatchGAN of pix2pix/taming (keys `main.<i>` as in LDM's `loss.discriminator`), BatchNorm, LeakyReLU 0.2."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 1 if n == n_layers else 2
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)  # [B,1,h',w'] patch logits


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adopt_weight(weight: float, step: int, threshold: int) -> float:
    """0 before `threshold` steps, `weight` after (LDM's disc_start)."""
    return 0.0 if step < threshold else weight


def adaptive_weight(
    main: torch.Tensor, other: torch.Tensor, layer: torch.Tensor, max_value: float
) -> torch.Tensor:
    """clamp(||d main / d layer|| / (||d other / d layer|| + 1e-4), 0, max_value), detached (VQGAN eq. 7).
    0 when the graph has no gradient (evaluation without autograd), as the official fallback."""
    if not (torch.is_grad_enabled() and main.requires_grad and other.requires_grad):
        return torch.zeros((), device=main.device)
    g_main = torch.autograd.grad(main, layer, retain_graph=True)[0]
    g_other = torch.autograd.grad(other, layer, retain_graph=True)[0]
    return (g_main.norm() / (g_other.norm() + 1e-4)).clamp(0.0, max_value).detach()


# --- the combined autoencoder loss --------------------------------------------------------------------------


class VAELoss(nn.Module):
    """LDM LPIPSWithDiscriminator in single-scalar form (see the module docstring). Keys: `logvar`,
    `perceptual_loss.*` (frozen), `discriminator.main.*`."""

    def __init__(self, kl_weight: float = 1e-6, perceptual_weight: float = 1.0, disc_weight: float = 0.5,
                 disc_start: int = 5001, disc_factor: float = 1.0, logvar_init: float = 0.0,
                 perceptual: str = "auto", vgg_path: str | Path | None = None, disc_ndf: int = 64,
                 disc_layers: int = 3):  # fmt: skip
        super().__init__()
        self.kl_weight, self.perceptual_weight = kl_weight, perceptual_weight
        self.disc_weight, self.disc_start, self.disc_factor = disc_weight, disc_start, disc_factor
        # LDM/VA-VAE keep `loss.logvar` out of every optimiser, so it stays at logvar_init: frozen here
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)), requires_grad=False)
        self.perceptual_loss = PerceptualLoss(perceptual, vgg_path) if perceptual_weight > 0 else None
        self.discriminator = NLayerDiscriminator(3, disc_ndf, disc_layers) if disc_weight > 0 else None

    @property
    def perceptual_kind(self) -> str:
        return "none" if self.perceptual_loss is None else self.perceptual_loss.kind

    def forward(self, images, reconstructions, posterior, step: int, last_layer: torch.Tensor,
                vf_loss: torch.Tensor | None = None, vf_weight: float = 0.0, enc_last_layer=None,
                adaptive_vf: bool = True) -> dict[str, torch.Tensor]:  # fmt: skip
        """images, reconstructions [B,3,H,W]; posterior: DiagonalGaussian; last_layer: decoder.conv_out.weight.
        vf_loss (VA-VAE): added with weight vf_weight * adaptive ratio on enc_last_layer (encoder.conv_out.weight)."""
        b = images.shape[0]
        rec = (images - reconstructions).abs()  # [B,3,H,W]
        p_loss = None
        if self.perceptual_loss is not None:
            p_loss = self.perceptual_loss(images, reconstructions)  # [B,1,1,1]
            rec = rec + self.perceptual_weight * p_loss
        nll = (rec / torch.exp(self.logvar) + self.logvar).sum() / b
        kl = posterior.kl().sum() / b
        loss = nll + self.kl_weight * kl
        out = {
            "rec_l1": (images - reconstructions).abs().mean().detach(),
            "nll": nll.detach(),
            "kl": kl.detach(),
        }
        if p_loss is not None:
            out["perceptual"] = p_loss.mean().detach()

        disc_factor = adopt_weight(self.disc_factor, step, self.disc_start)
        if self.discriminator is not None and disc_factor > 0:
            # generator term: the discriminator's parameters are detached so this term only trains the AE
            params = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            params.update(dict(self.discriminator.named_buffers()))
            g_loss = -functional_call(self.discriminator, params, (reconstructions,)).mean()
            d_weight = self.disc_weight * adaptive_weight(nll, g_loss, last_layer, 1e4)
            # discriminator term: detached images so it only trains the discriminator
            logits_real = self.discriminator(images.detach())
            logits_fake = self.discriminator(reconstructions.detach())
            d_loss = disc_factor * hinge_d_loss(logits_real, logits_fake)
            loss = loss + d_weight * disc_factor * g_loss + d_loss
            out.update(g_loss=g_loss.detach(), d_weight=d_weight, d_loss=d_loss.detach())
            out.update(logits_real=logits_real.mean().detach(), logits_fake=logits_fake.mean().detach())
        if vf_loss is not None:
            w = vf_weight
            if adaptive_vf:
                w = vf_weight * adaptive_weight(nll, vf_loss, enc_last_layer, 1e8)
            loss = loss + w * vf_loss
            out.update(vf_loss=vf_loss.detach(), vf_weight=torch.as_tensor(w).detach())
        out["loss"] = loss
        return out
