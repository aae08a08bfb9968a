"""The app's live camera: what feeds the voice session's camera (pocketomni.voice.camera) and the small
preview of the latest frame. On a device: Kivy's Camera widget, whose texture is read on the UI thread
(GL) and pushed to a PushCamera every 0.25 s. With a video file (`--camera-file`, the tests under
Xvfb): the file played in real time as the camera. Everything here runs on the UI thread.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kivy.graphics.texture import Texture

from pocketomni.voice.camera import PushCamera, VideoFileCamera

GRAB_SECONDS = 0.25  # preview refresh (and device-camera grabs): twice the session's 2 fps


class FileCamera:
    """A video file played in real time as the camera (loops at its end)."""

    def __init__(self, path: str) -> None:
        self.source = VideoFileCamera(path)
        self.name = path

    def frame(self) -> np.ndarray | None:
        """The latest frame (H, W, 3) uint8, for the preview."""
        try:
            return self.source.read()
        except Exception:  # noqa: BLE001 -- the session reports the source's failure itself
            return None

    def close(self) -> None:
        self.source.close()


class DeviceCamera:
    """Kivy's Camera widget (front/back camera of a phone, a webcam): its texture pixels are pushed
    to the session's source; the preview shows the texture itself."""

    def __init__(self, index: int = 0, resolution: tuple[int, int] = (640, 480)) -> None:
        from kivy.core.camera import Camera as CoreCamera

        if CoreCamera is None:
            raise RuntimeError("no camera provider in this Kivy build (Android's, OpenCV or GStreamer); "
                               "on Linux pass --camera-file VIDEO to use a video file as the camera")
        from kivy.uix.camera import Camera

        self.widget = Camera(index=index, resolution=resolution, play=True)
        self.source = PushCamera()
        self.name = f"camera {index}"

    def frame(self) -> np.ndarray | None:
        tex = self.widget.texture
        if tex is None:
            return None
        w, h = tex.size
        rgba = np.frombuffer(tex.pixels, np.uint8).reshape(h, w, 4)[::-1]  # GL rows run bottom-up
        self.source.push(rgba)
        return rgba

    def close(self) -> None:
        self.widget.play = False


def open_camera(camera_file: str | None) -> Any:
    """The camera this app uses: the file when one was given, else the device's."""
    return FileCamera(camera_file) if camera_file else DeviceCamera()


class Preview:
    """Blits a small copy of the latest frame into a texture for an Image widget."""

    def __init__(self) -> None:
        self.texture: Texture | None = None

    def update(self, frame: np.ndarray) -> Texture:
        step = max(1, frame.shape[1] // 160)  # a thumbnail: about 160 pixels wide
        small = np.ascontiguousarray(frame[::-step, ::step, :3])  # flipped: textures start at the bottom
        h, w = small.shape[:2]
        if self.texture is None or self.texture.size != (w, h):
            self.texture = Texture.create(size=(w, h), colorfmt="rgb")
        self.texture.blit_buffer(small.tobytes(), colorfmt="rgb", bufferfmt="ubyte")
        return self.texture
