"""Detail carry: a rollout's fine detail moves with the view instead of being re-predicted.

Every model trained here predicts the next latent's conditional mean; where the future is
uncertain that mean is smooth, and fed back as history, a smooth frame makes the next one
smoother: the room is a flat field within a second (docs/training.md). The low frequencies
(where walls, floor and light are; the colours) the model predicts well; the high frequencies
(texture, edges) it cannot, and every correction it makes fades them.

So the carry splits each generated latent with a 3x3 binomial blur b: the low-pass part is the
model's, the high-pass part is the previous frame's, panned by the action as the copy prior pans
it (``model.copy_shift``: whole cells, a permutation, so carried detail never blurs; the view
wraps around, so no detail is lost off the edge), blended by ``strength`` (0..1):

    x_t = x_t - strength * (hp(x_t) - hp(pan(x_{t-1}, a_t))),   hp = 1 - b

Per spatial frequency f that is a convex blend, x_t(f) = (1 - s hp(f)) model(f) + s hp(f)
pan(x_{t-1})(f), because the binomial's response b(f) = cos^2(fx/2) cos^2(fy/2) lies in [0, 1]:
the finest detail is carried whole at s = 1, the mean and the light are the model's, and no
frequency can grow from frame to frame. (A box blur's response goes negative, to -1/3: its
high-pass gains 4/3 on stripes a column wide, and a carried rollout blows up.) Content that is new to the view is the
model's guess at low frequency plus texture carried from elsewhere in the frame. A pure
function of the frame, the previous clean frame and the action: no state, no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.model.copy_prior import pan


def high_pass(x: torch.Tensor) -> torch.Tensor:
    """The frame minus its 3x3 binomial blur ([1, 2, 1] / 4 on each axis, edges replicated),
    per channel: (B, C, h, w) -> same; its gain is in [0, 1] at every frequency."""
    c = x.shape[1]
    k = torch.full((c, 1, 3, 3), 1 / 16, device=x.device, dtype=x.dtype)  # made on the device: no host copy
    k[..., 1, :] *= 2
    k[..., :, 1] *= 2
    return x - F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)


def carry(x: torch.Tensor, prev: torch.Tensor, action: torch.Tensor, shift: torch.Tensor | None,
          rows: int, strength: float) -> torch.Tensor:
    """``x`` (B, C, h, w) with ``strength`` of its high-pass part replaced by that of ``prev``
    (B, C, h, w, the previous clean frame) panned by ``action`` (B, A) . ``shift`` (A,) cells in
    its top ``rows`` rows (0: all; ``shift`` None: no pan), wrapping around."""
    if strength <= 0:
        return x
    moved = pan(prev[:, None], action[:, None], shift, rows, wrap=True)[:, 0].to(x.dtype)
    return x - strength * (high_pass(x) - high_pass(moved))
