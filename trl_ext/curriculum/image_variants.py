"""The image transforms of DIVA-GRPO's built-in variant generator.

Gaussian pixel noise (:func:`add_gaussian_noise`), rotation on an expanded canvas (:func:`rotate_image`) and the
question rendered into the image (:func:`render_question_in_image`). Each keeps the image's mode; the generator in
:mod:`trl_ext.curriculum.variants` picks which one a variant gets. Pillow and numpy are imported only inside the
functions, so importing this module is cheap.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = ["add_gaussian_noise", "render_question_in_image", "rotate_image"]

# Modes processed as they are (8-bit channels); every other mode is converted to RGB(A) and back.
_NATIVE_MODES = {"L": 1, "LA": 1, "RGB": 3, "RGBA": 3}  # value: number of colour channels (alpha excluded)


def _to_pil(image: Any) -> Image.Image:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    try:
        import numpy as np

        if isinstance(image, np.ndarray):
            return Image.fromarray(image)
    except ImportError:  # pragma: no cover - numpy ships with the install
        pass
    raise ValueError(f"image must be a PIL.Image.Image or a numpy array, got {type(image).__name__}")


def _working_copy(image: Image.Image) -> tuple[Image.Image, str]:
    """(an image in a mode with 8-bit channels, the original mode to convert back to)."""
    if image.mode in _NATIVE_MODES:
        return image, image.mode
    has_alpha = image.mode in ("PA", "La") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB"), image.mode


def _restore_mode(image: Image.Image, mode: str) -> Image.Image:
    return image if image.mode == mode else image.convert(mode)


def add_gaussian_noise(image: Any, sigma: float, np_rng: np.random.Generator) -> Image.Image:
    """Gaussian pixel noise: pixels scaled to [0, 1], plus N(0, sigma^2), clipped, and scaled back.

    The alpha channel, if any, is kept; the size and mode are kept (a mode without 8-bit channels goes through
    RGB(A)).

    Args:
        image: a PIL image (a numpy array is converted with ``Image.fromarray``).
        sigma: the noise std in units of the full pixel range, >= 0 (the table uses 0.30..0.50).
        np_rng: the numpy Generator the noise is drawn from.
    """
    import numpy as np
    from PIL import Image

    if not (isinstance(sigma, numbers.Real) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"`sigma` must be a finite number >= 0, got {sigma!r}")
    work, mode = _working_copy(_to_pil(image))
    pixels = np.asarray(work, dtype=np.float64) / 255.0
    colour = _NATIVE_MODES[work.mode]
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    noisy = pixels.copy()
    noisy[:, :, :colour] += np_rng.normal(0.0, float(sigma), size=noisy[:, :, :colour].shape)
    out = np.rint(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)
    if out.shape[2] == 1:
        out = out[:, :, 0]
    return _restore_mode(Image.fromarray(out, mode=work.mode), mode)


def _mean_edge_colour(image: Image.Image) -> int | tuple[int, ...]:
    """The per-channel mean of the image's border pixels, rounded (a scalar for single-band images)."""
    import numpy as np

    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]], axis=0)
    mean = [int(round(v)) for v in edges.mean(axis=0)]
    return mean[0] if len(mean) == 1 else tuple(mean)


def rotate_image(image: Any, angle_degrees: float) -> Image.Image:
    """Rotate counter-clockwise by ``angle_degrees`` on an expanded canvas filled with the mean edge colour.

    The whole rotated image stays visible; the fill blends with the border so that the corners add little signal.
    The mode is kept (a mode without 8-bit channels goes through RGB(A)).
    """
    from PIL import Image

    if not (isinstance(angle_degrees, numbers.Real) and math.isfinite(angle_degrees)):
        raise ValueError(f"`angle_degrees` must be a finite number, got {angle_degrees!r}")
    work, mode = _working_copy(_to_pil(image))
    rotated = work.rotate(
        float(angle_degrees), resample=Image.Resampling.BICUBIC, expand=True, fillcolor=_mean_edge_colour(work)
    )
    return _restore_mode(rotated, mode)


def _load_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap_text(text: str, font: Any, max_width: float) -> list[str]:
    """Greedy word wrap to ``max_width`` pixels; a word wider than a line is split between characters."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:
                if line and font.getlength(line + char) > max_width:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    return lines


def render_question_in_image(
    image: Any,
    text: str,
    *,
    min_width: int = 256,
    background: tuple[int, int, int] = (255, 255, 255),
    text_colour: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """The image with ``text`` rendered in a band above it, in PIL's default font (the question-in-image transform).

    The canvas is ``max(width, min_width)`` pixels wide (the image is centred) so that a small image still gets
    legible lines; the band is as tall as the wrapped text needs, so the output is always taller than the input.
    The mode is kept (a mode without 8-bit channels goes through RGB(A)).

    Args:
        image: a PIL image (a numpy array is converted with ``Image.fromarray``).
        text: the question; newlines start new lines and long lines are word-wrapped.
        min_width: the narrowest canvas, in pixels (default 256).
        background, text_colour: RGB colours of the band and the text (default black on white).
    """
    from PIL import Image, ImageDraw

    source, mode = _working_copy(_to_pil(image))
    width = max(source.width, int(min_width))
    font_size = max(12, width // 32)
    margin = max(4, font_size // 2)
    font = _load_font(font_size)
    lines = _wrap_text(text, font, width - 2 * margin) or [""]
    top, bottom = font.getbbox("Ag|")[1], font.getbbox("Ag|")[3]
    line_height = (bottom - top) + max(2, font_size // 4)
    band_height = 2 * margin + line_height * len(lines)

    canvas_mode = "RGBA" if source.mode in ("RGBA", "LA") else "RGB"
    fill = (*background, 255) if canvas_mode == "RGBA" else background
    canvas = Image.new(canvas_mode, (width, band_height + source.height), fill)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * line_height - top), line, font=font, fill=text_colour)
    canvas.paste(source.convert(canvas_mode), ((width - source.width) // 2, band_height))
    return _restore_mode(canvas, mode)
