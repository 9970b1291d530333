"""The contact sheet of a comparison: for the inputs where the baseline and the model differ most in expansion,
the object (the framed photo with the background dimmed), the baseline's image and the model's image side by side,
each with its scores. Written as an HTML page (images linked by relative paths, so the page, the run folders and
the table move together) and as one PNG made with PIL."""
from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ...runs.atomic import write_atomically

THUMB = 192
TEXT_LINES = 4
LINE_PX = 12


@dataclass
class SheetRow:
    input_id: str
    category: Optional[str]
    photo: str  # the framed photo
    mask: str  # its object mask (white = object)
    baseline: str  # one baseline image of this input (its lowest seed)
    model: str  # the model's image of the same seed
    baseline_scores: dict = field(default_factory=dict)
    model_scores: dict = field(default_factory=dict)

    @property
    def expansion_drop(self) -> float:
        a, b = self.baseline_scores.get("expansion_relative"), self.model_scores.get("expansion_relative")
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            return -math.inf
        return a - b


def pick_rows(rows: Sequence[SheetRow], count: int) -> list[SheetRow]:
    """The ``count`` inputs with the largest expansion difference (baseline − model), largest first; ties by id."""
    return sorted(rows, key=lambda r: (-r.expansion_drop, r.input_id))[:count]


def _score_lines(scores: dict) -> list[str]:
    lines = []
    for name, value in sorted(scores.items(), key=lambda kv: (kv[0] != "expansion_relative", kv[0])):
        if value is None or not math.isfinite(value):
            continue
        lines.append(f"expansion {100 * value:.1f} %" if name == "expansion_relative" else f"{name} {value:.3g}")
    return lines


def write_html(path: str, title: str, rows: Sequence[SheetRow], baseline: str, model: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    rel = lambda p: html.escape(os.path.relpath(p, folder).replace(os.sep, "/"))  # noqa: E731
    cells = []
    for r in rows:
        def cell(img, caption_lines):
            caption = "<br>".join(html.escape(x) for x in caption_lines)
            return f'<td><a href="{rel(img)}"><img src="{rel(img)}" width="{THUMB}"></a><br><small>{caption}</small></td>'

        head = [r.input_id] + ([f"category: {r.category}"] if r.category else [])
        cells.append("<tr>" + cell(r.photo, head) + cell(r.baseline, [baseline] + _score_lines(r.baseline_scores))
                     + cell(r.model, [model] + _score_lines(r.model_scores)) + "</tr>")
    page = (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p>Inputs with the largest expansion difference ({html.escape(baseline)} − "
            f"{html.escape(model)}), largest first. Columns: input photo, {html.escape(baseline)}, "
            f"{html.escape(model)}.</p>\n<table>\n" + "\n".join(cells) + "\n</table></body></html>\n")

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(page)

    write_atomically(path, write)


def _thumb(path: str, mask: Optional[str] = None):
    from PIL import Image

    with Image.open(path) as im:
        image = im.convert("RGB")
    if mask:
        with Image.open(mask) as m:
            keep = m.convert("L").resize(image.size)
        image = Image.composite(image, Image.blend(image, Image.new("RGB", image.size, (255, 255, 255)), 0.7), keep)
    scale = THUMB / max(image.size)  # small generations are enlarged too, so every cell has one size
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)


def write_png(path: str, rows: Sequence[SheetRow], baseline: str, model: str) -> None:
    from PIL import Image, ImageDraw

    cell_h = THUMB + TEXT_LINES * LINE_PX + 6
    sheet = Image.new("RGB", (3 * THUMB + 8, max(1, len(rows)) * cell_h + LINE_PX + 4), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((2, 1), f"input | {baseline} | {model}", fill="black")
    for k, r in enumerate(rows):
        y = LINE_PX + 4 + k * cell_h
        columns = [(r.photo, r.mask, [r.input_id] + ([r.category] if r.category else [])),
                   (r.baseline, None, _score_lines(r.baseline_scores)),
                   (r.model, None, _score_lines(r.model_scores))]
        for c, (img, mask, lines) in enumerate(columns):
            x = c * (THUMB + 4)
            sheet.paste(_thumb(img, mask), (x, y))
            for j, line in enumerate(lines[:TEXT_LINES]):
                draw.text((x + 2, y + THUMB + 2 + j * LINE_PX), line[:32], fill="black")

    def write(tmp):
        sheet.save(tmp, format="PNG")

    write_atomically(path, write)
