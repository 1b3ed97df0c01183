"""Runner: the model's weights on a device, its KV cache, and the forward that uses both.

One runner can serve several rollouts (cache slots). ``forward`` is the hot step: it builds the
cache context on the device (no host sync) and runs the model, compiled if asked. The runner
never commits: the engine decides what becomes context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.cache import CacheShape, FullContext, KVCache
from engine.config import EngineConfig
from engine.model.dit import DiT
from engine.model.layers import Linear
from engine.precision import separate_compile_cache
from kernels.attention import get_backend


class Runner:
    def __init__(self, config: EngineConfig, model: DiT, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, slots: int = 1, spare_frames: int = 2,
                 attention: str = "auto", compile: bool = False, batch_invariant: bool | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        m = config.model
        self.model = model.to(self.device, dtype).eval().requires_grad_(False)
        self.model.backend = get_backend(attention, self.device)
        # Batch-invariant (default on CPU): a rollout's frames are bit for bit the same alone or
        # batched with others (linear layers and decode run per rollout; attention and the
        # elementwise ops are per row anyway), so any live recording replays exactly.
        self.batch_invariant = self.device.type == "cpu" if batch_invariant is None else batch_invariant
        for module in self.model.modules():
            if isinstance(module, Linear):
                module.rowwise = self.batch_invariant
        self.cache = KVCache(
            CacheShape(layers=m.depth, slots=slots, heads=m.heads, head_dim=m.head_dim,
                       tokens_per_frame=m.tokens_per_frame, sink_frames=m.sink_frames,
                       window_frames=m.window_frames, spare_frames=spare_frames),
            device=self.device, dtype=dtype)
        # Compile only the step; its shapes are static (1 and 2 frames in steady state). The
        # no-cache baseline sees every clip length up to sink + window + 1: one dynamic graph.
        if compile:
            separate_compile_cache()
        self._model = torch.compile(self.model, dynamic=False) if compile else self.model
        self._model_full = torch.compile(self.model, dynamic=True) if compile else self.model

    @property
    def attention(self) -> str:
        return self.model.backend.name

    def forward(self, slot: int | Sequence[int], x: torch.Tensor, sigma: torch.Tensor, action: torch.Tensor,
                prev: torch.Tensor | None = None, prev_sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Run F new frames of one slot (or of each listed slot: batch row b = slot[b]) against
        its cache; their K/V are appended, uncommitted.

        x: (B, F, C, h, w), sigma: (B, F), action: (B, F, A) -> velocity (B, F, C, h, w).
        prev (1, F, C, h, w) / prev_sigma (1, F): each frame's predecessor, for copy-prior models.
        """
        ctx = self.cache.context(slot, x.shape[1], batch=x.shape[0] if isinstance(slot, int) else 1)
        return self._model(x, sigma, action, ctx, prev, prev_sigma)

    def forward_full(self, x: torch.Tensor, sigma: torch.Tensor, action: torch.Tensor,
                     frame_index: torch.Tensor, prev: torch.Tensor | None = None,
                     prev_sigma: torch.Tensor | None = None) -> torch.Tensor:
        """No cache: every frame of x (1, F, ...) is recomputed; frame_index (1, F) numbers them."""
        m = self.config.model
        ctx = FullContext(frame_index, m.tokens_per_frame, m.sink_frames, m.window_frames)
        return self._model_full(x, sigma, action, ctx, prev, prev_sigma)
