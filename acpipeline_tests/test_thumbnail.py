"""Painting thumbnails: 512x512 contain on the platform's backdrop, nearest up, Lanczos down."""

import io

import pytest
from PIL import Image

from acpipeline.core.thumbnail import ImageProblem, painting_thumbnail


def png(width, height, colour=(255, 0, 77, 255), mode="RGBA"):
    out = io.BytesIO()
    img = Image.new(mode, (width, height), colour)
    img.putpixel((0, 0), (0, 228, 54, 255) if mode == "RGBA" else 1)
    img.save(out, format="PNG")
    return out.getvalue()


def test_small_painting_is_enlarged_with_hard_pixel_edges():
    decoded = Image.open(io.BytesIO(painting_thumbnail(png(32, 16))))
    assert decoded.size == (512, 512) and decoded.format == "PNG"
    thumb = decoded.convert("RGBA")
    # 32x16 -> 512x256, centred vertically: transparent bands above and below
    assert thumb.getpixel((0, 0))[3] == 0 and thumb.getpixel((0, 511))[3] == 0
    assert thumb.getpixel((0, 128)) == (0, 228, 54, 255)  # the first source pixel, a 16x16 block
    assert thumb.getpixel((15, 143)) == (0, 228, 54, 255)
    assert thumb.getpixel((16, 128)) == (255, 0, 77, 255)  # no blended edge: nearest neighbour


def test_transparency_lands_on_the_backdrop():
    thumb = Image.open(io.BytesIO(painting_thumbnail(png(64, 64, colour=(0, 0, 0, 0))))).convert("RGBA")
    assert thumb.getpixel((300, 300)) == (32, 32, 32, 255)


def test_large_painting_is_shrunk_under_one_megabyte():
    import random

    rng = random.Random(1)
    img = Image.frombytes("RGB", (2048, 1536), bytes(rng.getrandbits(8) for _ in range(2048 * 1536 * 3)))
    out = io.BytesIO()
    img.save(out, format="PNG")
    assert len(out.getvalue()) > 1_048_576
    data = painting_thumbnail(out.getvalue())
    assert len(data) <= 1_048_576
    assert Image.open(io.BytesIO(data)).size == (512, 512)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GIF89a....", "not a PNG"),
        (png(40, 40)[:60], "cannot be decoded"),
    ],
)
def test_bad_images_are_refused_with_a_reason(data, reason):
    with pytest.raises(ImageProblem, match=reason):
        painting_thumbnail(data)


def test_decompression_bomb_is_refused_before_decoding():
    out = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(out, format="PNG")  # tiny file, 144 megapixels
    assert len(out.getvalue()) < 100_000
    with pytest.raises(ImageProblem, match="too large"):
        painting_thumbnail(out.getvalue())


def reference_thumbnail(source: Image.Image) -> bytes:
    """The rule written out plainly in RGBA (backdrop, contain, nearest up / Lanczos down): the pixels every
    encoding of the thumbnail must decode to."""
    flat = Image.new("RGBA", source.size, (32, 32, 32, 255))
    flat.alpha_composite(source.convert("RGBA"))
    scale = min(512 / source.width, 512 / source.height)
    size = (max(1, round(source.width * scale)), max(1, round(source.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    canvas = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    canvas.paste(flat.resize(size, resample), ((512 - size[0]) // 2, (512 - size[1]) // 2))
    return canvas.tobytes()


def random_art(size, colours, seed):
    import random

    rng = random.Random(seed)
    img = Image.new("RGBA", size)
    img.putdata([rng.choice(colours) for _ in range(size[0] * size[1])])
    return img


@pytest.mark.parametrize(
    ("source", "mode"),
    [
        # few colours, black among them, some see-through: the palette encoding
        (random_art((40, 30), [(0, 0, 0, 255), (255, 255, 255, 255), (9, 9, 9, 128), (0, 0, 0, 0)], 1), "P"),
        # colours one step apart, which Pillow's palette mapping can merge: must not change a pixel
        (random_art((33, 21), [(100, 100, 100, 255), (101, 100, 100, 255), (100, 101, 101, 255)], 2), None),
        # more than 255 colours: RGBA
        (
            random_art((64, 64), [(r, g, 7, 255) for r in range(0, 256, 15) for g in range(0, 256, 15)], 3),
            "RGBA",
        ),
        # shrunk: Lanczos makes new colours, RGBA
        (random_art((700, 600), [(0, 0, 0, 255), (255, 0, 0, 255)], 4), "RGBA"),
    ],
)
def test_every_encoding_decodes_to_the_rule_s_pixels(source, mode):
    raw = io.BytesIO()
    source.save(raw, format="PNG")
    thumb = Image.open(io.BytesIO(painting_thumbnail(raw.getvalue())))
    if mode:
        assert thumb.mode == mode
    assert thumb.convert("RGBA").tobytes() == reference_thumbnail(source)
