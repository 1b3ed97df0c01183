"""MP4 writing with PyAV (libx264, yuv420p)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18) -> Path:
    """(N, H, W, 3) uint8 -> H.264 MP4 at ``fps`` (H and W must be even for yuv420p)."""
    _, h, w, c = frames.shape
    if c != 3 or h % 2 or w % 2 or frames.dtype != np.uint8:
        raise ValueError(f"need (N, H, W, 3) uint8 frames with even H and W, got {frames.shape} {frames.dtype}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), mode="w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush
    return out
