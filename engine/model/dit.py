"""Block-causal DiT: one frame = one block of latent tokens.

Each frame's tokens are modulated (adaLN) by that frame's noise level and action. Attention is
bidirectional inside a frame and causal across frames; which frames a token sees, and where the
keys live, is the attention context's business (``engine.cache``): the same weights run a whole
clip at once (training, reference) or a few new frames against the KV cache (inference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from engine.config import ModelConfig
from engine.model.conv_head import ConvHead
from engine.model.copy_prior import copy_x0, pan, velocity
from engine.model.layers import Linear, RMSNorm, Rope3D, SigmaEmbedder, modulate, patchify, unpatchify
from engine.preempt import preempt_point
from kernels.attention import AttentionBackend, SDPAAttention


class AttentionContext(Protocol):
    """What a forward needs to know about its frames (see ``KVCache.context``, ``FullContext``)."""

    frame_index: torch.Tensor  # (B, F) absolute frame numbers of the frames in this forward
    mask: torch.Tensor  # (B, 1, F*N, K) bool, K = keys returned by append

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ...


@dataclass
class AttentionInputs:
    """Everything the attention layers share within one forward."""

    ctx: AttentionContext
    cos_q: torch.Tensor  # (B, 1, F*N, pairs) RoPE tables of this forward's frames
    sin_q: torch.Tensor
    cos_k: torch.Tensor  # the same, with sink frames' temporal pairs zeroed (no time position)
    sin_k: torch.Tensor
    backend: AttentionBackend
    mask: object  # ctx.mask in the backend's own form


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.qkv = Linear(cfg.dim, 3 * cfg.dim)
        self.q_norm = RMSNorm(cfg.head_dim)
        self.k_norm = RMSNorm(cfg.head_dim)
        self.proj = Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor, layer: int, inp: AttentionInputs) -> torch.Tensor:
        b, length, _ = x.shape  # (B, L=F*N, D)
        qkv = self.qkv(x).reshape(b, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = self.q_norm(qkv[0]), self.k_norm(qkv[1]), qkv[2]  # (B, H, L, Dh)
        q = Rope3D.apply(q, inp.cos_q, inp.sin_q)
        k = Rope3D.apply(k, inp.cos_k, inp.sin_k)
        keys, values = inp.ctx.append(layer, k, v)  # (B, H, K, Dh)
        out = inp.backend(q, keys.to(q.dtype), values.to(q.dtype), inp.mask)  # (B, H, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, length, -1))


class DiTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(Linear(cfg.dim, hidden), nn.GELU(approximate="tanh"),
                                 Linear(hidden, cfg.dim))
        self.ada = nn.Sequential(nn.SiLU(), Linear(cfg.dim, 6 * cfg.dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, layer: int, inp: AttentionInputs) -> torch.Tensor:
        b, f, n, d = x.shape  # (B, F, N, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).chunk(6, dim=-1)  # (B, F, D)
        h = modulate(self.norm1(x), shift1, scale1).reshape(b, f * n, d)
        h = self.attn(h, layer, inp).reshape(b, f, n, d)
        x = x + gate1[:, :, None] * h
        h = self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x + gate2[:, :, None] * h


class DiT(nn.Module):
    """forward(x, sigma, action, ctx[, prev, prev_sigma]) -> velocity, for the F frames in ``ctx``.

    With ``cfg.copy_prior`` each frame also reads its predecessor's latent ``prev`` (as written
    to context, at noise level ``prev_sigma``): it is added to the frame's tokens through its
    own patch embedding, its level to the frame's conditioning, and the output is
    preconditioned around it (engine/model/copy_prior.py). A frame with no predecessor (a
    rollout's first) gets ``prev`` = 0 at level 1. With ``cfg.copy_shift`` the predecessor is
    first panned by the frame's action (``copy_prior.pan``).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_in = Linear(cfg.patch_dim, cfg.dim)
        self.sigma_embed = SigmaEmbedder(cfg.dim)
        self.action_embed = Linear(cfg.num_actions, cfg.dim)
        if cfg.copy_prior:
            self.prev_in = Linear(cfg.patch_dim, cfg.dim)
            self.prev_sigma_embed = SigmaEmbedder(cfg.dim)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), Linear(cfg.dim, 2 * cfg.dim))
        self.patch_out = Linear(cfg.dim, cfg.patch_dim)
        self.head = ConvHead(cfg) if cfg.conv_head else None
        self.rope = Rope3D(cfg.head_dim, cfg.grid, cfg.rope_theta, cfg.sink_frames)
        self.backend: AttentionBackend = SDPAAttention()
        # copy_prior.pan's per-action shift: a buffer, so it moves with the model (None: no pan)
        self.register_buffer("shift", torch.tensor(cfg.copy_shift, dtype=torch.float32) if cfg.copy_shift else None,
                             persistent=False)

    def init_weights(self, generator: torch.Generator | None = None, std: float = 0.02,
                     adaln_zero: bool = False) -> None:
        """Normal(0, std) weights, zero biases. ``adaln_zero`` zeroes the modulation and output
        layers (DiT's training init: every block starts as the identity). Tests use a large
        ``std`` so that every frame in the window visibly changes the output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std, generator=generator)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):  # the conv head: unit gain, whatever ``std``
                fan_in = module.weight[0].numel()
                nn.init.normal_(module.weight, std=fan_in**-0.5, generator=generator)
                nn.init.zeros_(module.bias)
        if self.head is not None:  # its correction starts small (tests), or at zero (training)
            self.head.out.weight.data.mul_(0.0 if adaln_zero else 0.1)
        if adaln_zero:
            for block in self.blocks:
                nn.init.zeros_(block.ada[1].weight)
            for layer in (self.ada_out[1], self.patch_out):
                nn.init.zeros_(layer.weight)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, action: torch.Tensor,
                ctx: AttentionContext, prev: torch.Tensor | None = None,
                prev_sigma: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        dtype = self.patch_in.weight.dtype
        tokens = self.patch_in(patchify(x.to(dtype), cfg.patch_size))  # (B, F, N, D)
        cond = self.sigma_embed(sigma) + self.action_embed(action.to(dtype))  # (B, F, D)
        if cfg.copy_prior:
            if prev is None:  # no predecessor: nothing to copy
                prev, prev_sigma = torch.zeros_like(x), torch.ones_like(sigma)
            if prev_sigma is None:
                raise ValueError("prev needs prev_sigma (its noise level, (B, F))")
            prev = pan(prev, action, self.shift, cfg.copy_shift_rows)  # turning moves the view
            tokens = tokens + self.prev_in(patchify(prev.to(dtype), cfg.patch_size))
            cond = cond + self.prev_sigma_embed(prev_sigma)
        cos_q, sin_q, cos_k, sin_k = self.rope.tables(ctx.frame_index)
        mask = self.backend.prepare(ctx.mask, dtype)  # once per forward, shared by all layers
        inp = AttentionInputs(ctx, cos_q, sin_q, cos_k, sin_k, self.backend, mask)
        for layer, block in enumerate(self.blocks):
            preempt_point(tokens)  # a live step may be abandoned here (engine/preempt.py)
            tokens = block(tokens, cond, layer, inp)
        shift, scale = self.ada_out(cond).chunk(2, dim=-1)
        final = modulate(self.norm_out(tokens), shift, scale)
        out = self.patch_out(final)  # (B, F, N, C*p*p)
        out = unpatchify(out, cfg.patch_size, cfg.latent_channels, cfg.latent_height, cfg.latent_width).float()
        if self.head is not None:  # a convolution moves texture by a cell (engine/model/conv_head.py)
            out = out + self.head(final, cond, out, x, prev if cfg.copy_prior else None)
        if not cfg.copy_prior:
            return out
        assert prev is not None
        if cfg.copy_residual != 1:
            out = out * cfg.copy_residual
        x0 = copy_x0(x.float(), prev.float(), sigma, out, cfg.copy_tau, prev_sigma if cfg.copy_denoised else None)
        return velocity(x.float(), x0, sigma)

    def num_params(self) -> int:
        """Parameters, counting those an int8 layer holds packed outside ``parameters()``."""
        packed = sum(getattr(m, "packed_params", 0) for m in self.modules())
        return sum(p.numel() for p in self.parameters()) + packed
