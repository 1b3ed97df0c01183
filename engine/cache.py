"""KV cache: preallocated per-layer buffers, attention-sink frames + a ring window, per slot.

Buffer layout, per layer, for K and for V::

    (slots, heads, (S + R) * N, head_dim)      N = tokens per frame
    frames: | sink 0 .. S-1 | ring 0 .. R-1 (circular) |      R = W + P

S sink frames are the first S frames of a rollout and stay forever. The ring holds the most
recent R committed frames, of which a query attends the newest W (the trained window). The P
spare frames are what makes uncommitted appends and rollbacks exact: frames being generated are
written straight into the ring slots they will own, overwriting frames that are already out of
every query's window, so ``commit`` only advances a length and ``rollback`` only lowers it.

Frame f lives in buffer frame ``f`` if f < S, else ``S + (f - S) % R``.

State: ``lengths`` (committed frames per slot) lives on the device and is what the step reads,
so the step has no host sync. The host keeps plain ints that it knows without reading the
device (``_lengths``; ``_appended``, frames written but not committed; ``_floor``, the oldest
ring frame not yet overwritten), only to validate ``commit``/``rollback`` with clear errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheShape:
    """Static sizes of a cache."""

    layers: int
    slots: int  # concurrent rollouts (sessions)
    heads: int
    head_dim: int
    tokens_per_frame: int  # N
    sink_frames: int  # S
    window_frames: int  # W: frames attended besides sinks
    spare_frames: int  # P: max frames appended at once = max rollback depth

    @property
    def ring_frames(self) -> int:
        return self.window_frames + self.spare_frames

    @property
    def buffer_frames(self) -> int:
        return self.sink_frames + self.ring_frames


def frame_attend(q_frame: torch.Tensor, k_frame: torch.Tensor, k_valid: torch.Tensor,
                 sink_frames: int, window_frames: int) -> torch.Tensor:
    """Which key frames each query frame attends: the one rule shared by cache and full passes.

    A query of frame q sees sink frames f < S, the W frames before it, and its own frame
    (bidirectionally); never a later frame. q_frame: (B, Fq); k_frame, k_valid: (B, Fk).
    Returns (B, Fq, Fk) bool.
    """
    q = q_frame[:, :, None]  # (B, Fq, 1)
    k = k_frame[:, None, :]  # (B, 1, Fk)
    in_window = (k < sink_frames) | (k >= q - window_frames)
    return k_valid[:, None, :] & (k <= q) & in_window


def expand_to_tokens(frame_mask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """(B, Fq, Fk) frame mask -> (B, 1, Fq*N, Fk*N) token mask."""
    n = tokens_per_frame
    b, fq, fk = frame_mask.shape
    m = frame_mask[:, :, None, :, None].expand(b, fq, n, fk, n)
    return m.reshape(b, 1, fq * n, fk * n)


class CacheContext:
    """Where one forward's new frames go in the cache, and what each of them attends.

    Built by ``KVCache.context``; used by the model's layers through ``append``. Nothing here is
    committed: that is the engine's call (``KVCache.commit``). The forward's batch rows are the
    cache slots ``slots`` (any set of slots: the batch of every rollout in a scheduler tick).
    """

    def __init__(self, cache: KVCache, slots: list[int], rows: slice | torch.Tensor, frame_index: torch.Tensor,
                 write_index: torch.Tensor, mask: torch.Tensor) -> None:
        self.cache = cache
        self.slots = slots
        self.rows = rows  # the slots as buffer rows: a slice (consecutive: a view) or an index (gathered)
        self.frame_index = frame_index  # (B, F) absolute frame number of each new frame
        self.write_index = write_index  # (B, F*N) buffer row of each new token
        self.mask = mask  # (B, 1, F*N, (S+R)*N) bool

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this forward's K/V (B, H, F*N, Dh) for ``layer``; return the slots' full K/V."""
        k_all, v_all = self.cache.k[layer], self.cache.v[layer]
        for b, slot in enumerate(self.slots):  # index_copy_ is several times faster than a batched scatter_
            k_all[slot].index_copy_(1, self.write_index[b], k[b].to(k_all.dtype))
            v_all[slot].index_copy_(1, self.write_index[b], v[b].to(v_all.dtype))
        if isinstance(self.rows, slice):
            return k_all[self.rows], v_all[self.rows]
        return k_all.index_select(0, self.rows), v_all.index_select(0, self.rows)


class KVCache:
    """Static, preallocated KV cache with sink frames, a ring window, rollback and fork."""

    def __init__(self, shape: CacheShape, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if shape.spare_frames < 1:
            raise ValueError("spare_frames must be >= 1 (a frame is appended before it is committed)")
        self.shape = shape
        self.device = torch.device(device)
        self.dtype = dtype
        rows = shape.buffer_frames * shape.tokens_per_frame
        dims = (shape.slots, shape.heads, rows, shape.head_dim)
        # Zeros, not empty: masked keys still flow through p @ v, and 0 * NaN would be NaN.
        self.k = [torch.zeros(dims, device=self.device, dtype=dtype) for _ in range(shape.layers)]
        self.v = [torch.zeros(dims, device=self.device, dtype=dtype) for _ in range(shape.layers)]
        self.lengths = torch.zeros(shape.slots, dtype=torch.long, device=self.device)
        self._lengths = [0] * shape.slots
        self._appended = [0] * shape.slots
        self._floor = [0] * shape.slots
        s, r, n = shape.sink_frames, shape.ring_frames, shape.tokens_per_frame
        self._token_offsets = torch.arange(n, device=self.device)
        self._sink_ids = torch.arange(s, device=self.device)
        self._ring_ids = torch.arange(r, device=self.device)
        self._s, self._r, self._w, self._n = s, r, shape.window_frames, n

    # ----------------------------------------------------------------- host-side bookkeeping
    def length(self, slot: int) -> int:
        """Committed frames in ``slot`` (host mirror; no device read)."""
        return self._lengths[slot]

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.shape.slots:
            raise IndexError(f"slot {slot} out of range [0, {self.shape.slots})")

    def reset(self, slot: int) -> None:
        """Forget everything in ``slot``. Buffers are not cleared: lengths make them invisible."""
        self._check_slot(slot)
        self.lengths[slot] = 0
        self._lengths[slot] = 0
        self._appended[slot] = 0
        self._floor[slot] = 0

    def commit(self, slot: int, n: int) -> None:
        """Make the first ``n`` frames appended by the last forward part of the context."""
        self._check_slot(slot)
        if not 0 <= n <= self._appended[slot]:
            raise ValueError(f"commit: n={n}, but only {self._appended[slot]} appended frame(s) "
                             f"in slot {slot} are not yet committed")
        self.lengths[slot] += n
        self._lengths[slot] += n
        self._appended[slot] -= n

    def restorable(self, slot: int) -> int:
        """How many committed frames ``rollback`` can remove from ``slot`` exactly."""
        # After removing n, the window needs ring frames [max(S, L - n - W), L - n): all of them
        # must be at or above the floor (not yet overwritten). Sinks are never overwritten.
        length, floor = self._lengths[slot], self._floor[slot]
        if floor <= self._s:
            return length
        return length - self._w - floor  # >= 0: context() never lets floor pass L - W

    def rollback(self, slot: int, n: int) -> None:
        """Remove the last ``n`` committed frames; the state is then bit-identical to what it was
        before they were committed (for everything any later query can attend)."""
        self._check_slot(slot)
        limit = self.restorable(slot)
        if not 0 <= n <= limit:
            raise ValueError(f"rollback: cannot remove {n} frames from slot {slot}; "
                             f"{limit} are restorable (spare_frames={self.shape.spare_frames})")
        self.lengths[slot] -= n
        self._lengths[slot] -= n
        self._appended[slot] = 0

    def fork(self, src: int, dst: int) -> None:
        """Copy rollout ``src`` into slot ``dst``; afterwards the two evolve independently."""
        self._check_slot(src)
        self._check_slot(dst)
        if src == dst:
            return
        for buf in (*self.k, *self.v):
            buf[dst].copy_(buf[src])
        self.lengths[dst] = self.lengths[src]
        self._lengths[dst] = self._lengths[src]
        self._appended[dst] = self._appended[src]
        self._floor[dst] = self._floor[src]

    def memory_bytes(self) -> int:
        per = sum(t.numel() * t.element_size() for t in (*self.k, *self.v))
        return per + self.lengths.numel() * self.lengths.element_size()

    # ----------------------------------------------------------------- the step's view
    def context(self, slot: int | Sequence[int], frames: int, batch: int = 1) -> CacheContext:
        """Prepare a forward of ``frames`` new frames for slots [slot, slot + batch), or for the
        slots listed in ``slot`` (batch row b = the b-th listed slot; each attends only its own
        sinks + window, whatever the others' lengths).

        Device-side only: positions come from ``self.lengths``; no host sync. Updates the host
        floor (the new frames overwrite the ring's oldest ``frames`` entries).
        """
        if not 1 <= frames <= self.shape.spare_frames:
            raise ValueError(f"context: frames={frames} outside [1, {self.shape.spare_frames}]")
        slots = list(range(slot, slot + batch)) if isinstance(slot, int) else [int(x) for x in slot]
        if not slots or len(set(slots)) != len(slots):
            raise ValueError(f"context: slots must be distinct and at least one, got {slots}")
        for x in slots:
            if not 0 <= x < self.shape.slots:
                raise IndexError(f"slot {x} out of range [0, {self.shape.slots})")
        for x in slots:
            self._appended[x] = frames
            self._floor[x] = max(self._floor[x], self._lengths[x] + frames - self._r)
        batch = len(slots)
        s, r, w, n = self._s, self._r, self._w, self._n
        # Consecutive slots are a view of the buffers; others are gathered (a copy per layer).
        consecutive = slots == list(range(slots[0], slots[0] + batch))
        slot_rows = slice(slots[0], slots[0] + batch) if consecutive else torch.tensor(slots, device=self.device)
        lengths = self.lengths[slot_rows]  # (B,)
        new = lengths[:, None] + torch.arange(frames, device=self.device)  # (B, F)
        end = lengths[:, None] + frames  # (B, 1) frames present after the write

        # Absolute frame held by every buffer frame once the new frames are written.
        sink_frame = self._sink_ids.expand(batch, s)  # (B, S)
        last = end - 1 - s  # newest ring frame, counted from the first ring frame
        ring_age = torch.remainder(last - self._ring_ids, r)  # (B, R) frames behind the newest
        ring_frame = s + last - ring_age
        k_frame = torch.cat([sink_frame, ring_frame], dim=1)  # (B, S+R)
        k_valid = torch.cat([sink_frame < end, ring_frame >= s], dim=1)
        mask = expand_to_tokens(frame_attend(new, k_frame, k_valid, s, w), n)

        buffer_frame = torch.where(new < s, new, s + torch.remainder(new - s, r))  # (B, F)
        rows = buffer_frame[:, :, None] * n + self._token_offsets  # (B, F, N)
        write_index = rows.reshape(batch, frames * n)
        return CacheContext(self, slots, slot_rows, new, write_index, mask)


class FullContext:
    """No cache: all frames of a clip in one forward with the same attention rule.

    Used by training (teacher forcing over a clip), the recompute baseline and the tests'
    reference. ``frame_index`` (B, F) gives each frame's absolute number (sink rule, RoPE).
    """

    def __init__(self, frame_index: torch.Tensor, tokens_per_frame: int, sink_frames: int,
                 window_frames: int) -> None:
        self.frame_index = frame_index
        valid = torch.ones_like(frame_index, dtype=torch.bool)
        frame_mask = frame_attend(frame_index, frame_index, valid, sink_frames, window_frames)
        self.mask = expand_to_tokens(frame_mask, tokens_per_frame)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v
