"""Per-frame losses of the world model's prediction x0_hat against the true latent x0.

All take (B, F, C, h, w) tensors, already in the units the loss is measured in, and return (B, F).

- squared / absolute error: the posterior mean / median. Both blur wherever the future is
  uncertain, and a blurred frame fed back as history is blurrier still (docs/training.md).
- gradient difference (Mathieu et al. 2016): blur costs, but the optimum is still one frame.
- statistics difference: each channel's mean, spread and neighbour-difference size over the whole
  frame, against the truth's. It does not care *where* a value is, so motion uncertainty does not
  make the blur its optimum: a faded frame (small spread and differences) pays wherever its
  content is, and a frame that keeps the truth's texture anywhere does not.
- energy score (Gneiting & Raftery 2007; "engression", Shen & Meinshausen 2023): a strictly proper
  scoring rule of the whole *distribution*. Two predictions made from independent noise for the
  same history are scored together, E||X - x|| - 1/2 E||X - X'||: the first term pulls samples to
  the truth, the second pushes them apart, and the expected score is lowest only when the samples
  are drawn from the true conditional distribution. A deterministic mean is not optimal, so a
  1-step generator trained with it samples a sharp future instead of averaging futures.
"""

from __future__ import annotations

import torch


def squared_error(diff: torch.Tensor) -> torch.Tensor:
    return diff.pow(2).mean(dim=(2, 3, 4))


def absolute_error(diff: torch.Tensor) -> torch.Tensor:
    return diff.abs().mean(dim=(2, 3, 4))


def _neighbour_differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|horizontal| and |vertical| differences of neighbouring values of (..., h, w)."""
    return x.diff(dim=-1).abs(), x.diff(dim=-2).abs()


def gradient_difference(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean | |d pred| - |d true| | over horizontal and vertical neighbour differences. A blurred
    prediction has smaller differences than the truth and pays for it."""
    (hp, vp), (ht, vt) = _neighbour_differences(pred), _neighbour_differences(true)
    return absolute_error(hp - ht) + absolute_error(vp - vt)


def frame_statistics(x: torch.Tensor) -> torch.Tensor:
    """(B, F, C, h, w) -> (B, F, C, 4): each channel's spatial mean, standard deviation and mean
    |horizontal| and |vertical| neighbour difference."""
    horizontal, vertical = _neighbour_differences(x)
    return torch.stack([x.mean(dim=(3, 4)), (x.var(dim=(3, 4), unbiased=False) + 1e-8).sqrt(),
                        horizontal.mean(dim=(3, 4)), vertical.mean(dim=(3, 4))], dim=-1)


def statistics_difference(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean |frame_statistics(pred) - frame_statistics(true)| over channels and statistics, (B, F)."""
    return (frame_statistics(pred) - frame_statistics(true)).abs().mean(dim=(2, 3))


def _rms(x: torch.Tensor) -> torch.Tensor:
    # the frame's Euclidean norm over sqrt(size): same optimum, a loss on the scale of the others;
    # the epsilon keeps the gradient finite when two samples coincide (an untrained generator)
    return (x.pow(2).mean(dim=(2, 3, 4)) + 1e-8).sqrt()


def energy_score(pred_a: torch.Tensor, pred_b: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """The 2-sample estimate of the energy score of one frame, 1/2(||a - x|| + ||b - x||) - 1/2 ||a - b||,
    with a and b made from independent noise and the same history. Lower is better; it can be
    negative only through estimator noise (its expectation is >= 0 when a, b are i.i.d.)."""
    return 0.5 * (_rms(pred_a - true) + _rms(pred_b - true)) - 0.5 * _rms(pred_a - pred_b)


def marginal_crps(pred_a: torch.Tensor, pred_b: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """The same score per latent value, averaged over the frame (the continuous ranked probability
    score of each marginal; FGN, Alet et al. 2025, trains a weather ensemble this way). Each value's
    spread is scored where it is: a static wall pays for any spread, a moving edge only for spread
    beyond its uncertainty; the frame-level score in 2,400 dimensions sees mostly the total spread."""
    return 0.5 * (absolute_error(pred_a - true) + absolute_error(pred_b - true)) - 0.5 * absolute_error(pred_a - pred_b)


def sharpness(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean neighbour-difference magnitude of ``pred`` over ``true``'s (a scalar; 1 = as sharp as the
    truth, a blur is < 1). The latent analogue of eval's sharpness ratio, for the training log."""
    def grad(x: torch.Tensor) -> torch.Tensor:
        horizontal, vertical = _neighbour_differences(x)
        return horizontal.mean() + vertical.mean()

    return grad(pred) / grad(true).clamp(min=1e-8)
