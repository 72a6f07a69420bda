"""Contact sheets: many rendered images in one labelled picture (for the CLI, docs and downloads)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def contact_sheet(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[str] | None = None,
    cols: int | None = None,
    tile: int | None = None,
    gap: int = 4,
) -> Image.Image:
    """A grid of (H,W,3) uint8 images, `cols` per row (≈ square by default), each with an optional caption."""
    items = list(images)
    if not items:
        return Image.new("RGB", (1, 1), BACKGROUND)
    tile = tile or max(im.shape[0] for im in items)
    cols = cols or int(np.ceil(np.sqrt(len(items))))
    rows = int(np.ceil(len(items) / cols))
    font_size = max(9, tile // 11)
    caption = font_size + 4 if labels else 0
    sheet = Image.new("RGB", (cols * (tile + gap) + gap, rows * (tile + gap + caption) + gap), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(font_size)
    for i, im in enumerate(items):
        r, c = divmod(i, cols)
        x, y = gap + c * (tile + gap), gap + r * (tile + gap + caption)
        pic = Image.fromarray(np.asarray(im, dtype=np.uint8)).resize((tile, tile), Image.Resampling.LANCZOS)
        sheet.paste(pic, (x, y))
        if labels:
            draw.text((x + 2, y + tile + 1), str(labels[i]), fill=INK, font=font)
    return sheet


def labelled_rows(
    rows: Sequence[tuple[str, Sequence[np.ndarray]]], tile: int = 128, gap: int = 4, label_width: int | None = None
) -> Image.Image:
    """One row per (label, images): the label on the left, the images in a strip (the Progression picture)."""
    font_size = max(11, tile // 9)
    font = _font(font_size)
    label_width = label_width or max(60, int(font_size * 0.62 * max(len(label) for label, _ in rows)) + 12)
    cols = max(len(images) for _, images in rows)
    width = label_width + cols * (tile + gap) + gap
    height = len(rows) * (tile + gap) + gap
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        y = gap + r * (tile + gap)
        for line_no, line in enumerate(label.split("\n")):
            draw.text((6, y + tile // 2 - font_size + line_no * (font_size + 3)), line, fill=INK, font=font)
        for c, im in enumerate(images):
            pic = Image.fromarray(np.asarray(im, dtype=np.uint8)).resize((tile, tile), Image.Resampling.LANCZOS)
            sheet.paste(pic, (label_width + c * (tile + gap), y))
    return sheet
