"""TARFlow: Transformer AutoRegressive Flow (Zhai et al., "Normalizing Flows are Capable Generative Models",
arXiv 2412.06329; official code apple/ml-tarflow, `transformer_flow.py`, whose state_dict key names we keep).

A stack of affine autoregressive flow blocks over patch tokens. Block k reads the tokens in identity (k even) or
reversed (k odd) order, runs a causal pre-LayerNorm transformer and shifts its output right by one token, so the
parameters (a_t, b_t) of token t depend on tokens < t only: z_t = (x_t - b_t) * exp(-a_t) (paper Eq. 5). The
log-determinant is -sum(a); the official code averages it over tokens and features (a per-dimension NLL).
Sampling inverts the blocks last-to-first, token by token, with a key/value cache (or block-wise Jacobi).

The key/value cache, the causal layer and the sequential / Jacobi decoder are shared with STARFlow
(`baselines/flows.py`); the backbone (pixel tokenizer, generator, recipes) is in `baselines/backbones/tarflow.py`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines import ops
from baselines.flows import (
    AttentionBlock,
    DecodeStats,
    KVCache,
    autoregressive_decode,
    check_decode_options,
    score_step,
)


class MetaBlock(nn.Module):
    """One flow block: permutation, proj_in + positional table + class embedding, causal layers, proj_out, shift."""

    attn_mask: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_patches: int,
        flip: bool,
        num_layers: int = 1,
        head_dim: int = 64,
        expansion: int = 4,
        nvp: bool = True,
        num_classes: int = 0,
    ):
        super().__init__()
        self.proj_in = nn.Linear(in_channels, channels)
        self.pos_embed = nn.Parameter(torch.randn(num_patches, channels) * 1e-2)
        self.class_embed = nn.Parameter(torch.randn(num_classes, 1, channels) * 1e-2) if num_classes else None
        self.attn_blocks = nn.ModuleList(
            [AttentionBlock(channels, head_dim, expansion, norm_fp32=True) for _ in range(num_layers)]
        )
        self.nvp = nvp
        self.proj_out = nn.Linear(channels, in_channels * 2 if nvp else in_channels)
        nn.init.zeros_(self.proj_out.weight)  # every block starts as the identity map
        self.flip = flip
        # unused at run time (causality comes from the attention call), kept for official state_dict compatibility
        self.register_buffer("attn_mask", torch.tril(torch.ones(num_patches, num_patches)))

    def permute(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return x.flip(dims=[dim]) if self.flip else x  # a flip is its own inverse

    def cond(self, y: torch.Tensor | None, B: int) -> torch.Tensor | None:
        """Class embedding [B,1,C]; y None -> mean embedding for all; y < 0 (dropped label) -> mean embedding."""
        if self.class_embed is None:
            return None
        mean = self.class_embed.mean(dim=0)  # [1,C]
        if y is None:
            return mean.expand(B, 1, -1)
        e = self.class_embed[y.clamp_min(0)]  # [B,1,C]
        return torch.where((y < 0).view(-1, 1, 1), mean.expand_as(e), e)

    def _ab(self, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.nvp:
            a, b = o.chunk(2, dim=-1)
            return a, b
        return torch.zeros_like(o), o

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,T,D] -> (z [B,T,D], logdet [B] = -mean of a over T*D)."""
        x = self.permute(x)
        h = self.proj_in(x) + self.permute(self.pos_embed, dim=0)  # the positional row follows its patch
        c = self.cond(y, x.shape[0])
        if c is not None:
            h = h + c
        for block in self.attn_blocks:
            h = block(h)
        o = self.proj_out(h)
        o = torch.cat([torch.zeros_like(o[:, :1]), o[:, :-1]], dim=1)  # token t is predicted from tokens < t
        a, b = self._ab(o)
        # z = (x - b) exp(-a), logdet = -mean(a) over T*D (one fused kernel with its backward on GPU)
        z, logdet = ops.affine_forward(x, a, b)
        return self.permute(z), logdet

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: float = 0.0,
        guide_what: str = "ab",
        attn_temp: float = 1.0,
        annealed_guidance: bool = False,
        *,
        mode: str = "sequential",
        jacobi_block: int = 16,
        jacobi_tol: float = 1e-3,
        jacobi_max_iters: int = 32,
        stats: DecodeStats | None = None,
    ) -> torch.Tensor:
        """Inverse of `forward`: z [B,T,D] -> x [B,T,D]. Guidance (official MetaBlock.reverse): an unconditional
        pass (mean class embedding, its own KV cache, attention temperature attn_temp) on the same guided
        prefix; a <- a + w (a - a_u), b <- b + w (b - b_u), with w annealed as w (i+1)/(T-1) if asked."""
        z = self.permute(z)
        pos = self.permute(self.pos_embed, dim=0)
        B, T, _ = z.shape
        guided = guidance > 0 and bool(guide_what)
        cond = self.cond(y, B)
        q_scale = None
        if guided:
            cond = torch.cat([cond, self.cond(None, B)]) if cond is not None else None
            if attn_temp != 1.0:
                q_scale = torch.cat([z.new_ones(B), z.new_full((B,), 1.0 / attn_temp)]).view(-1, 1, 1, 1)
        caches = [KVCache(T) for _ in self.attn_blocks]
        if stats is not None:
            stats.rows = 2 if guided else 1

        def step(inp, start, zc, keep):
            c = inp.shape[1]
            if guided:
                inp = torch.cat([inp, inp])
                keep = torch.cat([keep, keep]) if keep is not None else None
            h = self.proj_in(inp) + pos[start : start + c]
            if cond is not None:
                h = h + cond
            for block, cache in zip(self.attn_blocks, caches):
                h = block(h, cache=cache, keep=keep, q_scale=q_scale)
            a, b = self._ab(self.proj_out(h))
            if guided:
                (a, a_u), (b, b_u) = a.chunk(2), b.chunk(2)
                g = guidance
                if annealed_guidance:
                    i = torch.arange(start, start + c, device=a.device, dtype=a.dtype).view(1, -1, 1)
                    g = (i + 1) / (T - 1) * guidance
                if "a" in guide_what:
                    a = a + g * (a - a_u)
                if "b" in guide_what:
                    b = b + g * (b - b_u)
            return ops.affine_inverse(zc, a, b)

        def rollback(n):
            for cache in caches:
                cache.rollback(n)

        x = autoregressive_decode(
            step,
            z.clone(),
            z[:, 1:],
            mode=mode,
            block_size=jacobi_block,
            tol=jacobi_tol,
            max_iters=jacobi_max_iters,
            rollback=rollback,
            stats=stats,
        )
        return self.permute(x)


class TarFlow(nn.Module):
    """The official `transformer_flow.Model` (constructor names and state_dict keys as released)."""

    var: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        img_size: int,
        patch_size: int,
        channels: int,
        num_blocks: int,
        layers_per_block: int,
        nvp: bool = True,
        num_classes: int = 0,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if channels % 64:
            raise ValueError(f"channels {channels} must be a multiple of the head width 64")
        self.in_channels, self.img_size, self.patch_size = in_channels, img_size, patch_size
        self.channels, self.num_classes, self.nvp = channels, num_classes, nvp
        self.num_patches = (img_size // patch_size) ** 2
        self.head_dim = 64  # hard-wired in the official Model (MetaBlock default), like the MLP expansion 4
        d = in_channels * patch_size**2
        self.blocks = nn.ModuleList(
            [
                MetaBlock(
                    d,
                    channels,
                    self.num_patches,
                    i % 2 == 1,
                    layers_per_block,
                    self.head_dim,
                    4,
                    nvp,
                    num_classes,
                )
                for i in range(num_blocks)
            ]
        )
        # prior variance: ones in nvp mode; learned by running average in the volume-preserving mode
        self.register_buffer("var", torch.ones(self.num_patches, d))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B,C,H,W] -> [B,T,C*p*p] (unfold order: channel-major inside a token, tokens row-major)."""
        return F.unfold(x, self.patch_size, stride=self.patch_size).transpose(1, 2)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return F.fold(
            x.transpose(1, 2), (self.img_size, self.img_size), self.patch_size, stride=self.patch_size
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """x [B,C,H,W] -> (z [B,T,D], outputs: list of each block's output [B,T,D], logdets [B])."""
        x = self.patchify(x)
        outputs, logdets = [], torch.zeros((), device=x.device)
        for block in self.blocks:
            x, logdet = block(x, y)
            logdets = logdets + logdet
            outputs.append(x)
        return x, outputs, logdets

    @staticmethod
    def get_loss(z: torch.Tensor, logdets: torch.Tensor) -> torch.Tensor:
        """Per-dimension NLL without the 0.5 log(2 pi) constant (the official training objective)."""
        return 0.5 * z.pow(2).mean() - logdets.mean()

    def update_prior(self, z: torch.Tensor, lr: float = 0.1) -> None:
        """Volume-preserving mode (nvp=False) only: running average of E[z^2] as the prior variance."""
        self.var.lerp_((z.detach() ** 2).mean(dim=0), weight=lr)

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: float = 0.0,
        guide_what: str = "ab",
        attn_temp: float = 1.0,
        annealed_guidance: bool = False,
        return_sequence: bool = False,
        *,
        mode: str = "sequential",
        jacobi_block: int = 16,
        jacobi_tol: float = 1e-3,
        jacobi_max_iters: int = 32,
        stats: list[DecodeStats] | None = None,
    ):
        """z [B,T,D] (token layout) -> image [B,C,H,W]; blocks are inverted last to first. With return_sequence,
        the list [z, after the last block, ..., after block 0] in image layout (the official return_sequence)."""
        check_decode_options(mode, jacobi_block, jacobi_tol, jacobi_max_iters)
        seq = [self.unpatchify(z)]
        x = z * self.var.sqrt()
        for i in reversed(range(len(self.blocks))):
            st = DecodeStats(block=i) if stats is not None else None
            x = self.blocks[i].reverse(
                x,
                y,
                guidance,
                guide_what,
                attn_temp,
                annealed_guidance,
                mode=mode,
                jacobi_block=jacobi_block,
                jacobi_tol=jacobi_tol,
                jacobi_max_iters=jacobi_max_iters,
                stats=st,
            )
            if st is not None:
                stats.append(st)
            seq.append(self.unpatchify(x))
        return seq if return_sequence else seq[-1]

    def denoise(
        self, x: torch.Tensor, y: torch.Tensor | None, noise_std: float, lr: float = 1.0
    ) -> torch.Tensor:
        """Score-based self-denoising (official evaluate_fid.py): x - lr * numel(x) * noise_std^2 * d loss / dx.
        The loss averages over all B*T*D entries, so this is one Tweedie step x + noise_std^2 grad log p(x|y) per
        sample (lr = 1 is the theoretically optimal step)."""

        def loss(v: torch.Tensor) -> torch.Tensor:
            z, _, logdets = self(v, y)
            return self.get_loss(z, logdets)

        return score_step(loss, x, lr * x.numel() * noise_std**2)

    # --- cost model ----------------------------------------------------------------------------------------
    def block_flops_per_token(self) -> float:
        """Matmul FLOPs of one token through one block (multiply-add = 2), plus its causal attention (average
        context (T+1)/2)."""
        C, T, d = self.channels, self.num_patches, self.in_channels * self.patch_size**2
        layers = len(self.blocks[0].attn_blocks)
        lin = d * C + layers * 12 * C * C + C * (2 * d if self.nvp else d)
        return 2.0 * lin + layers * 4.0 * C * (T + 1) / 2

    def flops_per_image(self) -> float:
        """Forward FLOPs of the whole flow for one image (all blocks over all T tokens)."""
        return len(self.blocks) * self.num_patches * self.block_flops_per_token()


# Presets: official constructor kwargs (apple/ml-tarflow README commands). `tiny` is ours (CPU smoke suites: 32x32
# pixels, patch 4 -> 64 tokens of 48 features, 8 embedded classes).
TarFlow_configs: dict[str, dict[str, Any]] = {
    "tiny": dict(in_channels=3, img_size=32, patch_size=4, channels=64, num_blocks=4, layers_per_block=2,
                 nvp=True, num_classes=8),
    "imagenet64": dict(in_channels=3, img_size=64, patch_size=2, channels=768, num_blocks=8, layers_per_block=8,
                       nvp=True, num_classes=1000),
    "imagenet128": dict(in_channels=3, img_size=128, patch_size=4, channels=1024, num_blocks=8,
                        layers_per_block=8, nvp=True, num_classes=1000),
    "afhq256": dict(in_channels=3, img_size=256, patch_size=8, channels=768, num_blocks=8, layers_per_block=8,
                    nvp=True, num_classes=3),
}  # fmt: skip
TarFlow_models = {name: functools.partial(TarFlow, **cfg) for name, cfg in TarFlow_configs.items()}
