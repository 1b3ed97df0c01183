"""An adversarial critic for the world model's 1-step frames (``train world --adv W``).

Every loss on the frame alone (L2, L1 + gradient difference, energy score, CRPS) left the 1-step
prediction a low-pass of the last frame, and a blurred frame fed back as history fades a rollout
to a flat field within a second (docs/training.md). A critic does not ask the prediction to be
close to one future but to look like *a* frame: it learns what real latent frames look like
against the model's 1-step frames (the frames a rollout shows), and the model is trained to make
it call them real. The classic fix for blurred predictions at small compute (pix2pix: L1 + a
patch critic; Mathieu et al. 2016; SAVP), and the "adversarial term" the anchors allow
(fidelity.md). With the copy prior the model *starts* at copy-last, which is already a real
frame: the critic's job is to keep the squared error from pulling it into the mean.

- PatchGAN (Isola et al. 2017) over the latent grid: four 3x3 convolutions, one stride 2, so each
  logit judges a ~9x9-cell patch of the 20x15 grid; it sees one frame, no history (a faded or
  blotched frame is unreal whatever preceded it; whether it follows from its history is the
  reconstruction loss's job).
- Hinge loss (Lim & Ye 2017), spectral normalisation of every convolution (Miyato et al. 2018),
  Adam with beta1 0.5: the usual stable setting.
- Its weights and optimizer moments go into the training checkpoint (``state``/``load_state``), so
  a resumed run continues the same game.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class _PatchCritic(nn.Module):
    """A fully convolutional ``net`` with one output channel: frames -> one logit per patch."""

    net: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())[:, 0]


class LatentCritic(_PatchCritic):
    """(N, C, h, w) latent frames -> (N, h', w') realness logits, one per patch."""

    def __init__(self, channels: int, width: int = 64) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.2)
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(channels, width, 3, padding=1)), act,
            spectral_norm(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)), act,
            spectral_norm(nn.Conv2d(2 * width, 2 * width, 3, padding=1)), act,
            spectral_norm(nn.Conv2d(2 * width, 1, 3, padding=1)))


class PixelCritic(_PatchCritic):
    """(N, C, H, W) decoded frames -> (N, H/16, W/16) realness logits: four stride-2 convolutions, so
    each logit judges a ~60-pixel patch (pix2pix's 70x70 PatchGAN at this frame size)."""

    def __init__(self, channels: int, width: int = 32) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.2)
        widths = [channels, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [spectral_norm(nn.Conv2d(a, b, 4, stride=2, padding=1)), act]
        self.net = nn.Sequential(*layers, spectral_norm(nn.Conv2d(widths[-1], 1, 3, padding=1)))


class Critic:
    """The critic and its optimizer: ``generator_loss`` for the model's step, ``update`` for its own."""

    def __init__(self, channels: int, lr: float, device: torch.device, seed: int = 0, pixels: bool = False) -> None:
        with torch.random.fork_rng(devices=[]):  # same seed, same critic; the global generator untouched
            torch.manual_seed(seed)
            self.net = (PixelCritic(channels) if pixels else LatentCritic(channels)).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.5, 0.9))

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """-mean D(fake): lower when the critic calls the model's frames real. Gradients reach
        ``fake`` only; the critic's weights are left alone (they learn in ``update``)."""
        self.net.requires_grad_(False)
        try:
            return -self.net(fake).mean()
        finally:
            self.net.requires_grad_(True)

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """One hinge-loss step on real and (detached) model frames; returns the numbers to log."""
        d_real, d_fake = self.net(real.detach()), self.net(fake.detach())
        loss = torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)  # nothing left behind for the model's backward to add to
        return {"critic": float(loss.detach()), "critic_gap": float((d_real.mean() - d_fake.mean()).detach())}

    # ------------------------------------------------------------------ checkpoint
    def state(self) -> dict[str, torch.Tensor]:
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        for idx, st in self.opt.state_dict()["state"].items():
            for k, v in st.items():
                tensors[f"opt.{idx}.{k}"] = torch.as_tensor(v).reshape(1) if not torch.is_tensor(v) or v.ndim == 0 \
                    else v
        return tensors

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        net = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        if not net:
            return  # a checkpoint from before the critic: it starts fresh
        self.net.load_state_dict(net)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v.reshape(()) if name == "step" else v
        groups = self.opt.state_dict()["param_groups"]
        self.opt.load_state_dict({"state": state, "param_groups": groups})


class CriticTask:
    """The StatefulTask half of a training task with a critic (``train world --adv``, ``train
    tokenizer --adv``): the frames a step judged wait in ``_judged`` for the critic's own step,
    taken after the model's (``after_step``); the critic's weights and moments go into the
    checkpoint under "critic." and come back on resume. Call ``init_critic`` in ``__init__``."""

    critic: Critic | None

    def init_critic(self, critic: Critic | None, steps: int = 1) -> None:
        """``critic``: None for a task without one; ``steps``: critic updates per model step."""
        self.critic, self._critic_steps = critic, steps
        self._judged: tuple[torch.Tensor, torch.Tensor] | None = None  # (real, fake) for the critic's step
        self._critic_log = {"critic": 0.0, "critic_gap": 0.0}  # the last critic step's numbers, logged

    def after_step(self, model: nn.Module) -> None:
        """The critic's own step, on the real and model frames of the step just taken."""
        if self.critic is not None and self._judged is not None:
            for _ in range(self._critic_steps):
                self._critic_log = self.critic.update(*self._judged)
            self._judged = None

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.critic is None else {f"critic.{k}": v for k, v in self.critic.state().items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.critic is not None:
            self.critic.load_state({k[7:]: v for k, v in tensors.items() if k.startswith("critic.")})


def adaptive_weight(rec: torch.Tensor, adv: torch.Tensor, model: nn.Module,
                    last: torch.Tensor | None = None) -> torch.Tensor:
    """VQGAN's balance (Esser et al. 2021): |grad rec| / |grad adv| at the model's output layer, so
    that ``--adv`` is the adversarial term's pull *relative* to the reconstruction's, whatever the
    critic's current scale. Detached; 0 when the critic gives no gradient (yet). ``last``: that
    layer's weight (default: the world model's conv head or patch projection)."""
    if last is None:
        head = getattr(model, "head", None)  # a conv head (engine/model/conv_head.py) is the output layer
        last = head.out.weight if head is not None else model.patch_out.weight
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(max=1e4).detach()
