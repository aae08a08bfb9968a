"""Write small MP4 clips with PyAV for the video tests (the 'video' extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_clip(path: Path, *, fps: int, seconds: int, size: tuple[int, int], step: int,
               tone: np.ndarray, rate: int) -> Path:
    """An mpeg4 clip of flat grey frames (brightness rising by `step` per frame), `size` = (width,
    height), with `tone` (mono float32 at `rate`) as its AAC sound track."""
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = out.add_stream("aac", rate=rate)
        for i in range(fps * seconds):
            img = np.full((h, w, 3), (i * step) % 256, np.uint8)
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        samples = np.asarray(tone, np.float32)[None]
        for k in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, k:k + 1024]), format="fltp",
                                               layout="mono")
            frame.sample_rate = rate
            for pkt in aus.encode(frame):
                out.mux(pkt)
        for st in (vs, aus):
            for pkt in st.encode(None):
                out.mux(pkt)
    return path
