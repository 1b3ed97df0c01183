"""Runner: the model's weights on a device, its KV cache, and the forward that uses both.

One runner can serve several rollouts (cache slots). ``forward`` is the hot step: it builds the
cache context on the device (no host sync) and runs the model, compiled if asked (before the
first frame, or in the background while the eager step serves: ``compile_in_background``). The
runner never commits: the engine decides what becomes context. ``int8`` replaces the model's
block linears, in place, by their int8 form (kernels/int8_linear.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from engine.cache import CacheShape, FullContext, KVCache
from engine.config import EngineConfig
from engine.model.dit import DiT
from engine.model.layers import Linear
from engine.precision import separate_compile_cache
from kernels.attention import get_backend
from kernels.int8_linear import int8_available, int8_supported, quantize_linears

# The block linears that run in int8 with ``int8=True``: ~25% of a frame's step, ~2x faster.
# The embedders, the adaLN modulation (2 rows a frame) and the output layer stay float.
INT8_LAYERS = frozenset({"qkv", "proj", "mlp.0", "mlp.2"})
log = logging.getLogger("worldstream.runner")


class Runner:
    def __init__(self, config: EngineConfig, model: DiT, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, slots: int = 1, spare_frames: int = 2,
                 attention: str = "auto", compile: bool = False, batch_invariant: bool | None = None,
                 int8: bool = False) -> None:
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
        self.int8 = int8
        if int8:  # after rowwise: the int8 layers keep it
            if not int8_supported(self.device, dtype):
                raise ValueError("int8 linear layers need a CPU, float32 and fbgemm (this PyTorch build: "
                                 f"{'available' if int8_available() else 'not available'})")
            quantize_linears(self.model.blocks, INT8_LAYERS)
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
        self._swap: torch.nn.Module | None = None  # compiled in the background, used once set
        self._swap_slots: frozenset[tuple[int, ...]] = frozenset()  # the slot sets it was traced for
        self._active: torch.nn.Module | None = None  # what this step's forwards run (``begin``)
        self.prefer_compiled = True  # False: stay eager after the swap (a replay of eager frames)
        self.compile_state = "compiled" if compile else "eager"  # | "compiling" | "failed: ..."
        self.compile_seconds: float | None = None
        self.source: str | None = None  # the checkpoint folder the weights came from (a compile child reloads it)
        self.compile_child: str | None = None  # "ok" or "failed: ..." once a compile child ran

    def compile_in_background(self, slots: Sequence[Sequence[int]] = ((0,),), frames: Sequence[int] = (2, 1),
                              backend: str | Callable[..., Any] = "inductor") -> threading.Thread:
        """Compile the step in a thread while the eager model serves, then swap. The compiled step
        is traced on a scratch cache of the same shape for each (slots, frames) forward listed
        (the steady state of one rollout on slot 0: the 2-frame step, and the 1-frame one of
        further denoising steps); steps of those slots use it from the first ``begin`` after it
        is ready. Other slot sets run eager (and any shape it was not traced for: stance
        eager_on_recompile): nothing compiles in the serving thread. A failure (no C++ toolchain,
        ...) leaves the runner eager, with the reason in ``compile_state``. The thread runs at a
        lower CPU priority where the OS allows."""
        if self.compile_state != "eager":
            raise RuntimeError(f"the step is already {self.compile_state}")
        self.compile_state = "compiling"
        thread = threading.Thread(target=self._compile_background,
                                  args=([list(s) for s in slots], list(frames), backend), name="compile", daemon=True)
        thread.start()
        return thread

    def _compile_background(self, slots: list[list[int]], frames: list[int],
                            backend: str | Callable[..., Any]) -> None:
        t0 = time.perf_counter()
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # Linux: this thread only
        except (AttributeError, OSError):
            pass
        separate_compile_cache()
        if self.source is not None and isinstance(backend, str):
            self._warm_cache_in_subprocess(slots, frames, backend)
        try:
            compiled = self.compile_now(slots, frames, backend)
        except Exception as e:  # torch.compile needs a C++ toolchain; serving goes on eager
            self.compile_state = f"failed: {type(e).__name__}: {e}"[:300]
            log.warning("background compile failed (%s); serving eager", self.compile_state)
            return
        self.compile_seconds = time.perf_counter() - t0
        self._swap_slots = frozenset(tuple(rows) for rows in slots)
        self._swap = compiled
        self.compile_state = "compiled"
        log.info("step compiled in the background in %.1f s; swapped in", self.compile_seconds)

    def _warm_cache_in_subprocess(self, slots: list[list[int]], frames: list[int], backend: str) -> None:
        """Compile the same step in a child process first, filling inductor's on-disk cache; the
        compile here then mostly reads it. Lowering a graph is Python holding the GIL for tens of
        seconds, and the serving thread gives the GIL back at every op: in one process a cold
        compile stalled frames for seconds at a time (measured: 3 frames in 15 s), in a child it
        cannot. A child that fails costs nothing but time: the compile here is then cold."""
        c = self.cache.shape
        cmd = [sys.executable, "-m", "engine.warm_compile", str(self.source),
               "--dtype", str(self.dtype).removeprefix("torch."), "--slots", str(c.slots),
               "--spare-frames", str(c.spare_frames), "--threads", str(torch.get_num_threads()),
               "--rows", ";".join(",".join(map(str, r)) for r in slots), "--frames", ",".join(map(str, frames)),
               "--backend", backend]
        cmd += ["--int8"] if self.int8 else []
        cmd += ["--batch-invariant"] if self.batch_invariant else []
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            self.compile_child = "ok" if done.returncode == 0 else f"failed: {last}"[:300]
        except (OSError, subprocess.TimeoutExpired) as e:
            self.compile_child = f"failed: {e}"[:300]
        if self.compile_child != "ok":
            log.warning("compile cache warm-up in a child %s; compiling here cold", self.compile_child)

    def compile_now(self, slots: Sequence[Sequence[int]], frames: Sequence[int],
                    backend: str | Callable[..., Any] = "inductor") -> torch.nn.Module:
        """The step compiled and traced for each (slots, frames) forward, on a scratch cache of
        this runner's shape (its own cache is left alone). Blocks; raises what compile raises."""
        import torch._inductor.config as inductor_config

        # One compile worker: on a 2-core machine the other core keeps serving frames.
        inductor_config.compile_threads = 1
        compiled = torch.compile(self.model, dynamic=False, backend=backend)
        scratch = KVCache(self.cache.shape, device=self.device, dtype=self.dtype)
        m = self.config.model
        with torch.inference_mode():
            for rows in slots:
                for f in frames:
                    if f > self.cache.shape.spare_frames:
                        continue
                    b = len(rows)
                    x = torch.zeros(b, f, m.latent_channels, m.latent_height, m.latent_width, device=self.device)
                    sigma = torch.ones(b, f, device=self.device)
                    action = torch.zeros(b, f, m.num_actions, device=self.device)
                    for _ in range(2):  # the second call runs the compiled code
                        compiled(x, sigma, action, scratch.context(list(rows), f), torch.zeros_like(x), sigma)
        return compiled

    def begin(self, slots: Sequence[int]) -> bool:
        """Latch, for one step of these slots (all its forwards), the compiled step or the eager
        one: the swap happens between frames, never inside one, and the caller learns which ran
        (a recording notes it, so a replay runs the same code). Returns True for compiled."""
        swap = self._swap
        use = swap is not None and self.prefer_compiled and tuple(slots) in self._swap_slots
        self._active = swap if use else None
        return use

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
        compiled = self._active
        if compiled is not None:  # swapped in by ``begin``; a shape it was not traced for runs eager
            with torch.compiler.set_stance("eager_on_recompile"):
                return compiled(x, sigma, action, ctx, prev, prev_sigma)
        return self._model(x, sigma, action, ctx, prev, prev_sigma)

    def forward_full(self, x: torch.Tensor, sigma: torch.Tensor, action: torch.Tensor,
                     frame_index: torch.Tensor, prev: torch.Tensor | None = None,
                     prev_sigma: torch.Tensor | None = None) -> torch.Tensor:
        """No cache: every frame of x (1, F, ...) is recomputed; frame_index (1, F) numbers them."""
        m = self.config.model
        ctx = FullContext(frame_index, m.tokens_per_frame, m.sink_frames, m.window_frames)
        return self._model_full(x, sigma, action, ctx, prev, prev_sigma)
