"""Image loading, the reference's resize rule and pixel layout, and error cases."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pocketomni.errors import MediaError, PocketOmniError
from pocketomni.media.image import ImageConfig, image_patches, load_image, prepare_image, smart_resize


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rand(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


# ------------------------------------------------------------------ resize rule vs transformers

def test_smart_resize_matches_transformers_rule_on_many_shapes():
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as ref
    rng = np.random.default_rng(0)
    shapes = [(int(h), int(w)) for h, w in rng.integers(1, 6000, size=(3000, 2))]
    shapes += [(h, w) for h in (1, 13, 14, 27, 28, 29, 42, 55, 56, 70) for w in (28, 30, 41, 42, 1000, 5600)]
    shapes += [(4000, 3000), (3584, 3584), (3585, 3585), (12000, 9000), (16, 3200), (10, 2000), (1, 200)]
    checked = 0
    for h, w in shapes:
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError):
                ref.smart_resize(h, w, 28, 3136, 12845056)
            with pytest.raises(MediaError):
                smart_resize(h, w, 28, 3136, 12845056)
            continue
        assert smart_resize(h, w, 28, 3136, 12845056) == ref.smart_resize(h, w, 28, 3136, 12845056), (h, w)
        checked += 1
    assert checked > 2500


@pytest.fixture(scope="module")
def image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2,
                                    temporal_patch_size=2)


@pytest.mark.parametrize("h, w", [(100, 150), (57, 300), (28, 28), (10, 10), (333, 129), (1000, 42), (900, 1600)])
def test_grid_and_pixels_match_reference_processor(image_processor, h, w):
    arr = _rand(h, w, seed=h * 7 + w)
    ref = image_processor(images=[Image.fromarray(arr)], return_tensors="np")
    ours = prepare_image(arr)
    assert ours.grid_thw == tuple(int(v) for v in ref["image_grid_thw"][0])
    assert ours.n_tokens == int(np.prod(ref["image_grid_thw"][0])) // 4
    patches, grid = image_patches(ours.pixels)
    assert grid == ours.grid_thw
    np.testing.assert_allclose(patches, ref["pixel_values"], rtol=0, atol=2e-6)


def test_large_image_is_downscaled_within_max_pixels():
    cfg = ImageConfig(max_pixels=200_000)
    out = prepare_image(np.zeros((2000, 3000, 3), np.uint8), cfg)
    h, w = out.pixels.shape[:2]
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 200_000
    assert out.original_size == (3000, 2000)
    assert out.n_tokens == (h // 28) * (w // 28)


def test_config_from_preprocessor_json():
    cfg = ImageConfig.from_preprocessor_config({"min_pixels": 100, "max_pixels": 5000, "patch_size": 14})
    assert (cfg.min_pixels, cfg.max_pixels, cfg.factor) == (100, 5000, 28)


# ------------------------------------------------------------------ input types

def test_every_input_type_gives_the_same_pixels(tmp_path):
    arr = _rand(60, 90)
    png = _png_bytes(Image.fromarray(arr))
    path = tmp_path / "x.png"
    path.write_bytes(png)
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    want = prepare_image(arr).pixels
    for src in (str(path), path, png, bytearray(png), url, Image.fromarray(arr)):
        np.testing.assert_array_equal(prepare_image(src).pixels, want)


def test_numpy_variants():
    gray = _rand(40, 50, 1)[..., 0]
    np.testing.assert_array_equal(np.asarray(load_image(gray)), np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(np.asarray(load_image(gray[..., None])), np.repeat(gray[..., None], 3, -1))
    f = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32)
    assert np.asarray(load_image(f)).tolist() == [[[0, 128, 255]]]
    ints = np.array([[[0, 7, 255]]], dtype=np.int64)
    assert np.asarray(load_image(ints)).tolist() == [[[0, 7, 255]]]


def test_transparency_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    for src in (rgba, Image.fromarray(rgba, "RGBA"), _png_bytes(Image.fromarray(rgba, "RGBA"))):
        out = np.asarray(load_image(src))
        assert out[0, 0].tolist() == [200, 0, 0]
        assert out[3, 3].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    img = Image.fromarray(_rand(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _png_bytes(img, "JPEG", exif=exif.tobytes())
    assert load_image(data).size == (20, 40)


def test_modes_convert_to_rgb():
    for mode in ("L", "P", "CMYK", "I;16", "LA"):
        img = Image.new(mode, (30, 20))
        out = load_image(img)
        assert out.mode == "RGB" and out.size == (30, 20)


# ------------------------------------------------------------------ errors

def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_huge_file_is_refused_before_decoding(tmp_path):
    data = _png_header_only(20000, 20000)
    with pytest.raises(MediaError, match="Downscale"):
        load_image(data)
    p = tmp_path / "huge.png"
    p.write_bytes(data)
    with pytest.raises(MediaError, match="megapixels"):
        prepare_image(p)
    with pytest.raises(MediaError, match="12000x10000 pixels"):  # under Pillow's own bomb limit
        load_image(_png_header_only(12000, 10000))


def test_in_memory_large_image_is_accepted_and_downscaled():
    img = Image.new("RGB", (12000, 9000), (10, 20, 30))  # 108 MP, decoded already
    out = prepare_image(img)
    assert out.pixels.shape[0] * out.pixels.shape[1] <= 12845056
    assert out.pixels[5, 5].tolist() == [10, 20, 30]


@pytest.mark.parametrize(
    "src, match",
    [
        ("/no/such/image.png", "not found"),
        (b"", "empty"),
        (b"this is not an image at all", "cannot decode"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((3, 50, 60), np.uint8), "channels-first"),
        (np.zeros((5, 5, 2), np.uint8), "shape"),
        (np.full((5, 5, 3), 1.5, np.float32), "0..1"),
        (np.full((5, 5, 3), 300, np.int32), "0..255"),
        (np.zeros((5, 5, 3), bool), "dtype"),
        ("https://example.com/cat.jpg", "offline"),
        ("data:image/png,abc", "data URL"),
        (12345, "unsupported"),
    ],
)
def test_bad_inputs_raise_media_error(src, match):
    with pytest.raises(MediaError, match=match):
        prepare_image(src)


def test_truncated_and_corrupt_files():
    png = _png_bytes(Image.fromarray(_rand(64, 64)))
    with pytest.raises(MediaError):
        load_image(png[: len(png) // 2])
    jpg = _png_bytes(Image.fromarray(_rand(64, 64)), "JPEG")
    with pytest.raises(MediaError):
        load_image(jpg[:200])


def test_extreme_aspect_ratio_and_directory(tmp_path):
    with pytest.raises(MediaError, match="aspect ratio"):
        prepare_image(np.zeros((10, 2500, 3), np.uint8))
    with pytest.raises(MediaError):
        prepare_image(tmp_path)
    assert issubclass(MediaError, PocketOmniError)
