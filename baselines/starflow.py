"""STARFlow (Gu et al., "STARFlow: Scaling Latent Normalizing Flows for High-resolution Image Synthesis",
arXiv 2506.06276; official code apple/ml-starflow, `transformer_flow.py`, whose state_dict key names we keep).

A TARFlow (`baselines/tarflow.py`) in the latent space of a pretrained autoencoder, with a deep-shallow stack:
several shallow blocks of two layers, then one deep block next to the Gaussian prior. Per block: a learned start
token (SOS) instead of the zero shift, so every token is transformed; soft clip 4 tanh(o/4) of the output;
scale sigma = softplus(a + 0.5413) (sigma = 1 at a = 0); a final RMSNorm; 3D RoPE indexed by sequence slot;
the condition (text, or a class as a one-hot "caption") enters only the deep block, as a causal prefix.
Guidance (paper Sec. 3.3) replaces each conditional Gaussian step by the Gaussian proportional to
p_c^(1+w) / p_u^w, in the deep block only. Training adds Gaussian noise (sigma 0.3) to the latents and a
1e-4 penalty on the mean square of every intermediate latent; one Tweedie step denoises the samples.

The causal layer, the KV cache and the decoder are shared with TARFlow (`baselines/flows.py`); the class-conditional
backbone (generator, presets, recipes) is in `baselines/backbones/starflow.py`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from baselines import ops
from baselines.flows import (
    AttentionBlock,
    DecodeStats,
    KVCache,
    autoregressive_decode,
    check_decode_options,
    score_step,
)
from baselines.layers import UnitOffsetRMSNorm, starflow_rope_angles

INV_SOFTPLUS_1 = 0.541324854612918  # softplus(0 + INV_SOFTPLUS_1) = 1
LATENT_NORM_REG = 1e-4  # configs/starflow_3B_t2i_256x256.yaml: latent_norm_regularization


# ----------------------------------------------------------------------------------------------------------------
# Primitives
# ----------------------------------------------------------------------------------------------------------------


class VisionRotaryEmbedding(nn.Module):
    """Holds only the official module's deprecated zero buffers (`feat_rope.freqs_cos/sin`, unused), so that
    checkpoints load strictly; the angles come from `layers.starflow_rope_angles`."""

    def __init__(self, head_dim: int, pt_seq_len: int, latent_len: int):
        super().__init__()
        buf = torch.zeros(latent_len + pt_seq_len**2, 2 * (head_dim // 2))
        self.register_buffer("freqs_cos", buf)
        self.register_buffer("freqs_sin", buf.clone())


# ----------------------------------------------------------------------------------------------------------------
# Flow blocks and model
# ----------------------------------------------------------------------------------------------------------------


class MetaBlock(nn.Module):
    """One autoregressive affine flow block on a patch grid [B,h,w,D]."""

    attn_mask: torch.Tensor

    def __init__(self, in_channels: int, channels: int, img_size: int, flip: bool, pt_seq_len: int,
                 num_layers: int = 1, head_dim: int = 64, num_heads=None, num_kv_heads=None, txt_size: int = 0,
                 txt_dim: int = 0, expansion: float = 4, use_rope: bool = False, use_sos: bool = False,
                 use_softplus: bool = False, use_swiglu: bool = False, use_qk_norm: bool = False,
                 use_post_norm: bool = False, use_final_norm: bool = False, use_bias: bool = True,
                 hf_style_rope: bool = False, norm_type: str = "layer_norm", use_checkpoint: int = 0,
                 soft_clip: float = 0.0):  # fmt: skip
        super().__init__()
        self.proj_in = nn.Linear(in_channels, channels)
        self.proj_out = nn.Linear(channels, 2 * in_channels)
        nn.init.zeros_(self.proj_out.weight)  # starts as the identity map
        if use_sos:
            self.sos_embed = nn.Parameter(torch.randn(1, 1, in_channels))
        self.pos_embed = None if use_rope else nn.Parameter(torch.randn(img_size**2, channels) * 1e-2)
        self.txt_dim = txt_dim
        if txt_dim > 0:
            self.proj_txt = nn.Linear(txt_dim, channels)
        self.attn_blocks = nn.ModuleList(
            [
                AttentionBlock(
                    channels,
                    head_dim,
                    expansion,
                    use_swiglu,
                    norm_type,
                    num_heads,
                    num_kv_heads,
                    use_qk_norm,
                    use_post_norm,
                    use_bias,
                    hf_style_rope,
                )  # fmt: skip
                for _ in range(num_layers)
            ]
        )
        self.final_norm = UnitOffsetRMSNorm(channels) if use_final_norm else None
        self.flip, self.use_sos, self.use_softplus = flip, use_sos, use_softplus
        self.soft_clip, self.use_checkpoint = soft_clip, use_checkpoint
        # deprecated in the official code (SDPA's is_causal is used instead); kept for strict checkpoint loading
        self.register_buffer(
            "attn_mask", torch.tril(torch.ones(pt_seq_len**2 + txt_size, pt_seq_len**2 + txt_size))
        )

    def permute(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return x.flip(dims=[dim]) if self.flip else x

    def _rope(
        self, rope: dict | None, h: int, w: int, txt: int, device
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if rope is None:
            return None
        ang = starflow_rope_angles(
            h,
            w,
            txt if self.txt_dim > 0 else 0,
            rope["pt_seq_len"],
            rope["head_dim"],
            rope["latent_len"],
            rope["three_d"],
        ).to(device)
        return ang.cos(), ang.sin()

    def _proj_out(self, h: torch.Tensor) -> torch.Tensor:
        o = self.proj_out(h)
        return self.soft_clip * torch.tanh(o / self.soft_clip) if self.soft_clip > 0 else o

    def _scale(self, a: torch.Tensor) -> torch.Tensor:
        return F.softplus(a + INV_SOFTPLUS_1) if self.use_softplus else a.exp()

    def _layers(self, h, rope, caches=None, keep=None, temp=1.0):
        for i, block in enumerate(self.attn_blocks):
            cache = caches[i] if caches is not None else None
            if (
                self.training
                and self.use_checkpoint > 0
                and (i + 1) % self.use_checkpoint == 0
                and cache is None
            ):
                h = checkpoint(block, h, rope, use_reentrant=False)
            else:
                h = block(h, rope, cache, keep, temp)
        return h

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, rope: dict | None = None):
        """x [B,h,w,D] -> (z [B,h,w,D], y_out [B,P,C] or None, logdet [B,T,D] elementwise, permuted order)."""
        B, hh, ww, D = x.shape
        x = self.permute(x.reshape(B, hh * ww, D))
        x_in = x
        if self.use_sos:  # [sos, x_0 .. x_{T-2}]: output t predicts x_t from x_{<t}
            x = torch.cat([self.sos_embed.expand(B, -1, -1), x[:, :-1]], dim=1)
        h = self.proj_in(x)
        if self.pos_embed is not None:
            h = h + self.permute(self.pos_embed, dim=0)
        P = 0
        if self.txt_dim > 0:
            if y is None:
                raise ValueError("this flow block is conditional: y (the condition sequence) is required")
            P = y.shape[1]
            h = torch.cat([self.proj_txt(y), h], dim=1)  # the condition is a causal prefix
        h = self._layers(h, self._rope(rope, hh, ww, P, x.device))
        if self.final_norm is not None:
            h = self.final_norm(h)
        y_out = h[:, :P] if P else None
        o = self._proj_out(h[:, P:])
        if not self.use_sos:
            o = torch.cat([torch.zeros_like(o[:, :1]), o[:, :-1]], dim=1)
        a, b = o.chunk(2, dim=-1)
        s = self._scale(a.float())
        z = (x_in.float() - b.float()) / s  # paper Eq. 5 with sigma = softplus(a + 0.5413)
        z = self.permute(z).reshape(B, hh, ww, D).to(x_in.dtype)
        return z, y_out, -torch.log(s)

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: float = 0.0,
        attn_temp: float = 1.0,
        rope: dict | None = None,
        *,
        mode: str = "sequential",
        jacobi_block: int = 16,
        jacobi_tol: float = 1e-3,
        jacobi_max_iters: int = 32,
        stats: DecodeStats | None = None,
    ) -> torch.Tensor:
        """Inverse of `forward` on a grid z [B,h,w,D]. With guidance > 0 (conditional blocks), y holds 2B rows:
        conditional rows then null rows (official convention); each step replaces the conditional Gaussian
        N(mu_c, sigma_c) by N(mu, sigma) proportional to N_c^(1+w) / N_u^w (official MetaBlock.guidance):
        s = min(sigma_c/sigma_u, 1)^2, sigma = sigma_c / sqrt(1 + w - w s), mu = ((1+w) mu_c - w s mu_u)/(1 + w - w s).
        Both rows then continue from the same guided token."""
        B, hh, ww, D = z.shape
        T = hh * ww
        z = self.permute(z.reshape(B, T, D)).float()
        guided = guidance > 0 and self.txt_dim > 0  # an unconditional block's two branches coincide: no-op
        P = 0
        if self.txt_dim > 0:
            if y is None:
                raise ValueError("this flow block is conditional: y (the condition sequence) is required")
            if y.shape[0] != (2 * B if guided else B):
                raise ValueError(
                    f"y has {y.shape[0]} rows; expected {2 * B if guided else B} (guided: cond rows then null rows)"
                )
            P = y.shape[1]
        rope_cs = self._rope(rope, hh, ww, P, z.device)
        caches = [KVCache(P + T) for _ in self.attn_blocks]
        if P:  # run the condition prefix once to fill the caches
            self._layers(
                self.proj_txt(y.to(self.proj_txt.weight.dtype)),
                _slice(rope_cs, 0, P),
                caches,
                None,
                attn_temp,
            )
        pos = self.permute(self.pos_embed, dim=0) if self.pos_embed is not None else None
        if stats is not None:
            stats.rows, stats.prefix_tokens = (2 if guided else 1), P

        def step(inp, start, zc, keep):
            c = inp.shape[1]
            if guided:
                inp = torch.cat([inp, inp])
                keep = torch.cat([keep, keep]) if keep is not None else None
            h = self.proj_in(inp.to(self.proj_in.weight.dtype))
            if pos is not None:
                h = h + pos[start : start + c]
            h = self._layers(h, _slice(rope_cs, P + start, P + start + c), caches, keep, attn_temp)
            if self.final_norm is not None:
                h = self.final_norm(h)
            a, b = self._proj_out(h).float().chunk(2, dim=-1)
            if not guided:
                return ops.affine_inverse(zc, a, b, softplus=self.use_softplus)
            (s_c, s_u), (mu_c, mu_u) = self._scale(a).chunk(2), b.chunk(2)
            w = guidance
            r = (s_c / s_u).clip(max=1.0).square()
            sigma = s_c / (1 + w - w * r).sqrt()
            mu = ((1 + w) * mu_c - (w * r) * mu_u) / (1 + w - w * r)
            return zc * sigma + mu

        def rollback(n):
            for cache in caches:
                cache.rollback(n)

        if self.use_sos:
            u = torch.cat([self.sos_embed.float().expand(B, -1, -1), z.clone()], dim=1)  # [B,T+1,D]
            targets = z
        else:
            u, targets = z.clone(), z[:, 1:]  # token 0 passes unchanged
        u = autoregressive_decode(
            step,
            u,
            targets,
            mode=mode,
            block_size=jacobi_block,
            tol=jacobi_tol,
            max_iters=jacobi_max_iters,
            rollback=rollback,
            stats=stats,
        )
        x = u[:, 1:] if self.use_sos else u
        return self.permute(x).reshape(B, hh, ww, D)


def _slice(rope_cs, a: int, b: int):
    return None if rope_cs is None else (rope_cs[0][a:b], rope_cs[1][a:b])


class IdentityBlock(nn.Module):
    """A shallow block with 0 layers (official IdentityBlock): no parameters, identity map."""

    txt_dim = 0

    def forward(self, x, y=None, rope=None):
        return x, None, x.new_zeros(x.shape[0])

    def reverse(self, z, y=None, guidance=0.0, attn_temp=1.0, rope=None, *, stats=None, **unused):
        return z


_UNSUPPORTED = {  # official options that select other model families (video, pretrained LM, learnable denoiser)
    "use_pretrained_lm": None, "use_mm_attn": False, "learnable_self_denoiser": False, "conditional_denoiser": False,
    "noise_embed_denoiser": False, "temporal_causal": 0, "shallow_block_local": False, "denoiser_window": None,
    "local_attn_window": None,
}  # fmt: skip


class StarFlow(nn.Module):
    """The official `transformer_flow.Model` (image path; constructor names and state_dict keys as released)."""

    def __init__(self, in_channels: int, img_size: int, patch_size: int, channels: int, num_blocks: int,
                 layers_per_block: list[int] | int, head_dim: int = 64, num_heads: int | None = None,
                 num_kv_heads: int | None = None, rope: bool = False, pt_seq_len: int | None = None,
                 sos: bool = False, txt_size: int = 0, txt_dim: int = 0, cond_top_only: bool = False,
                 use_softplus: bool = False, use_swiglu: bool = False, use_bias: bool = True,
                 use_qk_norm: bool = False, use_post_norm: bool = False, use_final_norm: bool = False,
                 hf_style_rope: bool = False, norm_type: str = "layer_norm", use_checkpoint: int = 0,
                 use_checkpoint_mlp: int | None = None, soft_clip: float = 0.0, seq_order: str = "R2L",
                 top_block_channels: int | None = None, **unsupported: Any):  # fmt: skip
        super().__init__()
        bad = sorted(k for k in unsupported if k not in _UNSUPPORTED)
        if bad:
            raise ValueError(f"unknown STARFlow constructor argument(s) {bad}")
        on = sorted(k for k, v in unsupported.items() if v != _UNSUPPORTED[k] and v)
        if on:
            raise ValueError(
                f"STARFlow option(s) {on} (video / pretrained-LM / learnable denoiser) are not implemented"
            )
        if seq_order not in ("R2L", "L2R"):
            raise ValueError(f"seq_order must be 'R2L' or 'L2R', got {seq_order!r}")
        if cond_top_only and txt_size <= 0:
            raise ValueError("cond_top_only requires txt_size > 0")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        lpb = [layers_per_block] if isinstance(layers_per_block, int) else list(layers_per_block)
        if len(lpb) == 1:
            lpb = lpb * num_blocks
        if len(lpb) != num_blocks:
            raise ValueError(f"layers_per_block has {len(lpb)} entries for num_blocks={num_blocks}")
        self.in_channels, self.img_size, self.patch_size = in_channels, img_size, patch_size
        self.pt_seq_len = pt_seq_len or img_size // patch_size
        self.num_patches = self.pt_seq_len**2
        self.use_rope, self.use_sos, self.cond_top_only = bool(rope), bool(sos), bool(cond_top_only)
        self.txt_size, self.txt_dim, self.head_dim = txt_size, txt_dim, head_dim
        self.channels, self.top_block_channels = channels, top_block_channels or channels
        self.layers_per_block = lpb
        base = dict(in_channels=in_channels * patch_size**2, img_size=img_size // patch_size,
                    pt_seq_len=self.pt_seq_len, txt_size=txt_size, use_rope=self.use_rope,
                    hf_style_rope=hf_style_rope, use_sos=self.use_sos, use_softplus=bool(use_softplus),
                    use_swiglu=bool(use_swiglu), use_qk_norm=bool(use_qk_norm), use_post_norm=bool(use_post_norm),
                    use_final_norm=bool(use_final_norm), use_bias=bool(use_bias), norm_type=norm_type,
                    num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                    use_checkpoint=int(use_checkpoint or 0), soft_clip=float(soft_clip))  # fmt: skip

        def flip(i: int) -> bool:  # permutations = [identity, flip]; L2R shifts the alternation by one
            return (i % 2 if seq_order == "R2L" else (i + 1) % 2) == 1

        blocks: list[nn.Module] = []
        for i in range(num_blocks - 1):  # shallow blocks
            if lpb[i] == 0:
                blocks.append(IdentityBlock())
            else:
                blocks.append(
                    MetaBlock(
                        channels=channels,
                        flip=flip(i),
                        num_layers=lpb[i],
                        txt_dim=0 if cond_top_only else txt_dim,
                        **base,
                    )
                )
        top = dict(base, channels=self.top_block_channels)
        if self.top_block_channels != channels and num_heads is None:
            top["num_heads"] = self.top_block_channels // head_dim
        blocks.append(
            MetaBlock(flip=flip(num_blocks - 1), num_layers=lpb[-1], txt_dim=txt_dim, **top)
        )  # deep block
        self.blocks = nn.ModuleList(blocks)
        if self.use_rope:
            self.feat_rope = VisionRotaryEmbedding(head_dim, self.pt_seq_len, txt_size)
        self.register_buffer(
            "var", torch.ones(self.num_patches, in_channels * patch_size**2)
        )  # deprecated, unused

    def _rope_spec(self) -> dict | None:
        if not self.use_rope:
            return None
        return {
            "pt_seq_len": self.pt_seq_len,
            "head_dim": self.head_dim,
            "latent_len": self.txt_size,
            "three_d": self.txt_size > 0,
        }

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B,C,H,W] -> patch grid [B,H/p,W/p,p*p*C] (einops '(h p1) (w p2) -> h w (p1 p2 c)': channel fastest)."""
        B, C, H, W = x.shape
        p = self.patch_size
        return (
            x.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, H // p, W // p, p * p * C)
        )

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        B, h, w, _ = x.shape
        p = self.patch_size
        return x.view(B, h, w, p, p, -1).permute(0, 5, 1, 3, 2, 4).reshape(B, -1, h * p, w * p)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """x [B,C,H,W] -> (z [B,C,H,W], y_out, outputs [input grid, each block's output grid], logdets list [B,T,D])."""
        rope = self._rope_spec()
        x = self.patchify(x)
        outputs, logdets = [x], []
        y_out = None
        for block in self.blocks:
            x, y_b, logdet = block(x, y if block.txt_dim > 0 else None, rope)
            y_out = y_b if y_b is not None else y_out
            outputs.append(x)
            logdets.append(logdet)
        return self.unpatchify(x), y_out, outputs, logdets

    @staticmethod
    def get_loss(z: torch.Tensor, logdets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-dimension NLL without the 0.5 log(2 pi) constant (official get_loss): mean over the batch of
        0.5 mean(z^2) - sum over blocks of mean(logdet)."""
        loss_z = 0.5 * z.pow(2).mean(dim=tuple(range(1, z.dim())))
        loss_logdet = -sum(l.mean(dim=tuple(range(1, l.dim()))) for l in logdets)
        return {
            "loss": (loss_z + loss_logdet).mean(),
            "loss_z": loss_z.detach().mean(),
            "loss_logdet": loss_logdet.detach().mean(),
        }

    @staticmethod
    def latent_norm(outputs: list[torch.Tensor]) -> torch.Tensor:
        """sum of mean(o^2) over outputs[:-1] (train.py's latent_norm_regularization term: the raw input and
        every intermediate latent, not the final z)."""
        return sum(o.pow(2).mean() for o in outputs[:-1])

    @torch.no_grad()
    def reverse(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: float = 0.0,
        attn_temp: float = 1.0,
        return_sequence: bool = False,
        *,
        mode: str = "sequential",
        jacobi_block: int = 16,
        jacobi_tol: float = 1e-3,
        jacobi_max_iters: int = 32,
        stats: list[DecodeStats] | None = None,
    ):
        """Latent noise [B,C,H,W] -> sample [B,C,H,W]: the deep block first (guided), then the shallow blocks
        (unguided when cond_top_only). return_sequence: [input, after the deep block, ..., after block 0]."""
        check_decode_options(mode, jacobi_block, jacobi_tol, jacobi_max_iters)
        rope = self._rope_spec()
        opts = dict(
            mode=mode, jacobi_block=jacobi_block, jacobi_tol=jacobi_tol, jacobi_max_iters=jacobi_max_iters
        )
        seq = [x]
        x = self.patchify(x)
        for i in reversed(range(len(self.blocks))):
            block = self.blocks[i]
            st = DecodeStats(block=i) if stats is not None else None
            x = block.reverse(
                x, y if block.txt_dim > 0 else None, guidance, attn_temp, rope, stats=st, **opts
            )
            if st is not None:
                stats.append(st)
            seq.append(self.unpatchify(x))
            if i == len(self.blocks) - 1 and self.cond_top_only and guidance > 0:
                guidance, y = 0.0, y.chunk(2, dim=0)[0]  # the shallow blocks are unconditional
        return seq if return_sequence else seq[-1]

    def denoise(
        self, x: torch.Tensor, y: torch.Tensor | None, noise_std: float, lr: float = 1.0
    ) -> torch.Tensor:
        """Official utils.inference.self_denoise: x - lr * noise_std^2 * numel(x) * d loss_flow / dx, i.e. one
        Tweedie step x + noise_std^2 grad log p(x|y) per sample (lr = 1, the optimal step)."""

        def loss(v: torch.Tensor) -> torch.Tensor:
            z, _, _, logdets = self(v, y)
            return self.get_loss(z, logdets)["loss"]

        return score_step(loss, x, lr * noise_std**2 * x.numel())

    # --- cost model ----------------------------------------------------------------------------------------
    def block_flops_per_token(self, i: int) -> float:
        """Matmul FLOPs for one token through block i (multiply-add = 2) plus its causal attention."""
        block = self.blocks[i]
        if isinstance(block, IdentityBlock):
            return 0.0
        lin = sum(
            m.weight.numel()
            for n, m in block.named_modules()
            if isinstance(m, nn.Linear) and not n.startswith("proj_txt")
        )
        ctx = (self.txt_size if block.txt_dim > 0 else 0) + (self.num_patches + 1) / 2
        width = block.attn_blocks[0].attention.q_size if len(block.attn_blocks) else 0
        return 2.0 * lin + len(block.attn_blocks) * 4.0 * width * ctx

    def flops_per_image(self) -> float:
        """Forward FLOPs of the whole flow for one image (every block over all tokens, the prefix included)."""
        total = 0.0
        for i, block in enumerate(self.blocks):
            tokens = self.num_patches + (self.txt_size if block.txt_dim > 0 else 0)
            total += tokens * self.block_flops_per_token(i)
        return total


_PAPER_SWITCHES = dict(
    patch_size=1,
    head_dim=64,
    rope=1,
    sos=1,
    cond_top_only=1,
    use_softplus=1,
    use_final_norm=1,
    soft_clip=4.0,
    seq_order="L2R",
)  # configs/starflow_3B_t2i_256x256.yaml

# Presets: official constructor kwargs. img_size is the latent size (image size / 8 for SD-VAE), as train.py passes it.
StarFlow_configs: dict[str, dict[str, Any]] = {
    # CPU smoke suites: KLTokenizer("tiny-f4") 8x8x4 latents, 8 classes; paper switches, tiny sizes
    "tiny": dict(_PAPER_SWITCHES, in_channels=4, img_size=8, channels=64, head_dim=32, num_blocks=3,
                 layers_per_block=[1, 1, 4], txt_size=1, txt_dim=9),
    # ImageNet 256 class-conditional, about 1.4B (official TarFlow_XLv2_1 "# 1.4B": 6 blocks [2,2,2,2,2,18], width 2048)
    "1.4B": dict(_PAPER_SWITCHES, in_channels=4, img_size=32, channels=2048, num_blocks=6,
                 layers_per_block=[2, 2, 2, 2, 2, 18], txt_size=1, txt_dim=1001),
    # text-to-image 256 (configs/starflow_3B_t2i_256x256.yaml: width 3072, [2,2,2,2,2,24], 128 flan-t5-xl tokens of 2048)
    "3.8B": dict(_PAPER_SWITCHES, in_channels=4, img_size=32, channels=3072, num_blocks=6,
                 layers_per_block=[2, 2, 2, 2, 2, 24], txt_size=128, txt_dim=2048),
}  # fmt: skip
StarFlow_models = {name: functools.partial(StarFlow, **cfg) for name, cfg in StarFlow_configs.items()}
