"""Posters: one PNG per guide x hook variant, with a QR code of the guide's scan link.

The layout is fixed in its order and sized to fit: a top label, the title, the live time (or the
subtitle), the variant's hook on an accent band, the lever's incentives, then a white card with
the QR code, a caption and the guide's name. Text is set in the shipped Noto Sans CJK SC subset
(orchestrator/fonts, SIL OFL 1.1) or in ORCH_POSTER_FONT; sizes shrink together until everything
fits the height the layout gives. Rendering is pure: the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import segno
from PIL import Image, ImageDraw, ImageFont, ImageOps

from orchestrator.copytext import date_text
from orchestrator.errors import PosterError
from orchestrator.load import LoadedPlaybook
from orchestrator.playbook import Guide, PosterLayout

FONT = Path(__file__).parent / "fonts" / "NotoSansSC-Bold-GB2312.otf"
NO_BREAK_BEFORE = set("，。、；：！？）」』】》〉”’…—～·,.;:!?)]}%")
NO_BREAK_AFTER = set("（「『【《〈“‘([{￥$")
QR_CAPTION = "长按识别二维码 进群看直播"
LABEL = "直播预告"


@dataclass(frozen=True, slots=True)
class PosterSpec:
    """Everything one poster shows."""

    layout: PosterLayout
    title: str
    subtitle: str
    hook: str
    incentives: tuple[str, ...]
    guide_name: str
    link: str
    background: bytes | None = None  # an image, when the layout's background is a file


@dataclass(frozen=True, slots=True)
class Made:
    guide: Guide
    variant: str
    link: str
    png: bytes

    @property
    def filename(self) -> str:
        return f"{self.guide.id}-{self.variant}.png"


# --- fonts and glyphs ------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, size)
    except OSError as e:
        raise PosterError(f"cannot read the poster font {path}: {e}") from e


@lru_cache(maxsize=4096)
def _shape(path: str, ch: str) -> bytes:
    mask = _font(path, 32).getmask(ch)
    return bytes(mask.size) + bytes(mask)


def missing_glyphs(text: str, font: Path = FONT) -> list[str]:
    """Characters of `text` the font has no glyph for (they would print as a box, 豆腐)."""
    box = _shape(str(font), "\U000F0000")  # a private-use code point no font maps: the missing-glyph box
    seen: list[str] = []
    for ch in dict.fromkeys(text):
        if not ch.isspace() and ch not in seen and _shape(str(font), ch) == box:
            seen.append(ch)
    return seen


# --- text layout ---------------------------------------------------------------------------


def _tokens(text: str) -> Iterator[str]:
    """Latin words and numbers stay whole; every CJK character is a token of its own."""
    word = ""
    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch in "-_./:@%+#&"):
            word += ch
            continue
        if word:
            yield word
            word = ""
        yield ch
    if word:
        yield word


def wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Lines of `text` no wider than `width`, never starting with closing punctuation (禁则)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for token in _tokens(paragraph):
            if line and font.getlength(line + token) > width and token.strip():
                k = len(line)  # carry characters down until neither line breaks a 禁则 rule
                while k > 1 and (((line[k:] + token)[0] in NO_BREAK_BEFORE) or line[k - 1] in NO_BREAK_AFTER):
                    k -= 1
                if (line[k:] + token)[0] in NO_BREAK_BEFORE:  # nothing left to carry: the mark hangs in the margin (悬挂)
                    line += token
                    continue
                lines.append(line[:k].rstrip())
                line = line[k:]
                token = token.lstrip() if not line else token
            line += token
        lines.append(line.rstrip())
    return lines


def _colour(value: str) -> tuple[int, int, int]:
    return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)


def _ink_on(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Dark text on light colours, white on dark ones."""
    r, g, b = rgb
    return (34, 34, 34) if (r * 299 + g * 587 + b * 114) / 1000 > 150 else (255, 255, 255)


def qr_image(link: str, size: int) -> Image.Image:
    """The link's QR code, `size` pixels square or a little less (whole pixels per module)."""
    qr = segno.make_qr(link, error="m")
    rows = [bytes(0 if dark else 255 for dark in row) for row in qr.matrix_iter(scale=1, border=4)]
    modules = len(rows)
    img = Image.frombytes("L", (modules, modules), b"".join(rows))
    scale = max(1, size // modules)
    return img.resize((modules * scale, modules * scale), Image.Resampling.NEAREST)


# --- the poster ----------------------------------------------------------------------------


class _Canvas:
    def __init__(self, spec: PosterSpec, font: Path) -> None:
        lay = spec.layout
        self.spec, self.font = spec, str(font)
        self.w, self.h = lay.width, lay.height
        self.margin = round(self.w * 0.075)
        self.text = _colour(lay.text_colour)
        self.accent = _colour(lay.accent_colour)

    def face(self, size: float) -> ImageFont.FreeTypeFont:
        return _font(self.font, max(10, round(size)))

    def blocks(self, scale: float) -> list[tuple[str, ImageFont.FreeTypeFont, list[str], float]]:
        """(kind, font, lines, line height) of each block above the QR card, at `scale`."""
        inner = self.w - 2 * self.margin
        unit = self.w / 1080 * scale
        title = self.face(104 * unit)
        sub = self.face(46 * unit)
        hook = self.face(56 * unit)
        item = self.face(36 * unit)
        out = [
            ("label", self.face(34 * unit), [LABEL], 34 * unit * 1.9),
            ("title", title, wrap(self.spec.title, title, inner), 104 * unit * 1.22),
            ("subtitle", sub, wrap(self.spec.subtitle, sub, inner), 46 * unit * 1.5),
            ("hook", hook, wrap(self.spec.hook, hook, inner - round(80 * unit)), 56 * unit * 1.4),
        ]
        for line in self.spec.incentives:
            out.append(("item", item, wrap(line, item, inner - round(44 * unit)), 36 * unit * 1.55))
        return out

    def height_of(self, blocks: list[tuple[str, ImageFont.FreeTypeFont, list[str], float]], unit: float) -> float:
        gaps = {"label": 40, "title": 36, "subtitle": 56, "hook": 56, "item": 14}
        return sum(len(lines) * lh + gaps[kind] * unit + (48 * unit if kind == "hook" else 0) for kind, _, lines, lh in blocks)

    def render(self) -> bytes:
        card_h = round(self.w * 0.40)
        room = self.h - card_h - 2 * self.margin - self.margin * 0.6
        scale = 1.0
        blocks = self.blocks(scale)
        while self.height_of(blocks, self.w / 1080 * scale) > room and scale > 0.45:
            scale *= 0.93
            blocks = self.blocks(scale)
        unit = self.w / 1080 * scale
        img = self.background()
        draw = ImageDraw.Draw(img)
        y = float(self.margin)
        for kind, face, lines, lh in blocks:
            y = self.block(draw, kind, face, lines, lh, y, unit)
        self.card(img, draw, card_h)
        out = io.BytesIO()
        img.save(out, "PNG", optimize=False, compress_level=6)
        return out.getvalue()

    def background(self) -> Image.Image:
        lay = self.spec.layout
        if self.spec.background is None:
            return Image.new("RGB", (self.w, self.h), _colour(lay.background))
        try:
            opened = Image.open(io.BytesIO(self.spec.background))
            opened.load()
        except (OSError, Image.DecompressionBombError) as e:
            raise PosterError(f"the background {lay.background} is not a readable image: {e}") from e
        pic = ImageOps.fit(opened.convert("RGB"), (self.w, self.h), Image.Resampling.LANCZOS)
        shade = Image.new("RGB", (self.w, self.h), (0, 0, 0))
        return Image.blend(pic, shade, 0.35)  # keeps white text readable on any photo

    def block(self, draw: ImageDraw.ImageDraw, kind: str, face: ImageFont.FreeTypeFont, lines: list[str], lh: float,
              y: float, unit: float) -> float:
        x = self.margin
        if kind == "label":
            width = face.getlength(lines[0])
            pad = 22 * unit
            draw.rounded_rectangle((x, y, x + width + 2 * pad, y + lh), radius=lh / 2, fill=self.accent)
            draw.text((x + pad, y + lh / 2), lines[0], font=face, fill=_ink_on(self.accent), anchor="lm")
            return y + lh + 40 * unit
        if kind == "hook":
            top = y
            height = len(lines) * lh + 48 * unit
            draw.rounded_rectangle((x, top, self.w - self.margin, top + height), radius=24 * unit, fill=self.accent)
            y = top + 24 * unit
            for line in lines:
                draw.text((x + 40 * unit, y + lh / 2), line, font=face, fill=_ink_on(self.accent), anchor="lm")
                y += lh
            return top + height + 56 * unit
        if kind == "item":
            r = 7 * unit
            draw.ellipse((x + 4 * unit, y + lh / 2 - r, x + 4 * unit + 2 * r, y + lh / 2 + r), fill=self.accent)
            for line in lines:
                draw.text((x + 44 * unit, y + lh / 2), line, font=face, fill=self.text, anchor="lm")
                y += lh
            return y + 14 * unit
        for line in lines:
            draw.text((x, y + lh / 2), line, font=face, fill=self.text, anchor="lm")
            y += lh
        return y + {"title": 36, "subtitle": 56}[kind] * unit

    def name_ink(self) -> tuple[int, int, int]:
        """The guide's name in the poster's own colour when it reads well on white."""
        bg = self.spec.layout.background
        if bg.startswith("#") and _ink_on(_colour(bg)) == (255, 255, 255):
            return _colour(bg)
        return (34, 34, 34)

    def card(self, img: Image.Image, draw: ImageDraw.ImageDraw, card_h: int) -> None:
        m = self.margin
        top = self.h - m - card_h
        draw.rounded_rectangle((m, top, self.w - m, self.h - m), radius=round(card_h * 0.08), fill=(255, 255, 255))
        pad = round(card_h * 0.09)
        qr = qr_image(self.spec.link, card_h - 2 * pad)
        img.paste(qr, (m + pad, top + (card_h - qr.height) // 2))
        left = m + pad + qr.height + pad
        inner = self.w - m - pad - left
        dark = (34, 34, 34)
        caption = self.face(card_h * 0.085)
        lines = wrap(QR_CAPTION, caption, inner)
        name = self.face(card_h * 0.075)
        who = wrap(f"导购 {self.spec.guide_name} 邀请你", name, inner)
        total = len(lines) * caption.size * 1.45 + card_h * 0.08 + len(who) * name.size * 1.45
        y = top + (card_h - total) / 2
        for line in lines:
            draw.text((left, y + caption.size * 0.725), line, font=caption, fill=dark, anchor="lm")
            y += caption.size * 1.45
        draw.line((left, y + card_h * 0.04, left + inner, y + card_h * 0.04), fill=(220, 220, 220), width=max(1, card_h // 200))
        y += card_h * 0.08
        for line in who:
            draw.text((left, y + name.size * 0.725), line, font=name, fill=self.name_ink(), anchor="lm")
            y += name.size * 1.45


RENDERER = "1"  # raise when a change to the drawing changes the pixels: stored posters are drawn again


def fingerprint(spec: PosterSpec, font: Path = FONT) -> str:
    """A hash of everything the poster's pixels depend on: a stored poster with the same
    fingerprint is the one `render` would draw now, so it need not be drawn again."""
    h = hashlib.sha256()
    for part in (RENDERER, str(font), spec.layout.model_dump_json(), spec.title, spec.subtitle, spec.hook, *spec.incentives,
                 spec.guide_name, spec.link):
        h.update(part.encode())
        h.update(b"\x1f")
    h.update(hashlib.sha256(spec.background or b"").digest())
    return h.hexdigest()


def render(spec: PosterSpec, font: Path = FONT) -> bytes:
    """The poster as PNG bytes."""
    return _Canvas(spec, font).render()


# --- posters of a playbook -------------------------------------------------------------------


def scan_link(public_url: str, code: str) -> str:
    return f"{public_url.rstrip('/')}/s/{code}"


def draft_code(guide: Guide, variant: str) -> str:
    """The code review posters carry before scheduling: readable, and never a real event's code."""
    return f"draft-{guide.channel_code}-{variant}"


def specs(loaded: LoadedPlaybook, start: datetime | None, links: dict[tuple[str, str], str]) -> Iterator[tuple[Guide, str, PosterSpec]]:
    """A spec per guide x variant; `links` maps (guide id, variant id) to the scan link."""
    pb = loaded.playbook
    lay = pb.path.poster.layout
    live = pb.path.live.start if start is None else start
    live = live.astimezone(pb.tz) if live.tzinfo else live.replace(tzinfo=pb.tz)
    subtitle = lay.subtitle or f"{date_text(live)}{live:%H:%M} 开播"
    chosen = lay.incentives if lay.incentives is not None else [i.id for i in pb.lever.incentives]
    by_id = {i.id: i for i in pb.lever.incentives}
    incentives = tuple(f"{by_id[i].name}：{by_id[i].copy_text}" for i in chosen if i in by_id)
    background = None
    if not lay.background.startswith("#"):
        path = loaded.base / lay.background
        try:
            background = path.read_bytes()
        except OSError as e:
            raise PosterError(f"cannot read the poster background {path}: {e.strerror}") from e
    for guide in loaded.guides:
        for v in pb.path.poster.variants:
            yield guide, v.id, PosterSpec(layout=lay, title=lay.title or pb.title, subtitle=subtitle, hook=v.hook,
                                          incentives=incentives, guide_name=guide.name, link=links[(guide.id, v.id)],
                                          background=background)


def coverage(loaded: LoadedPlaybook, font: Path = FONT) -> dict[str, list[str]]:
    """Texts a poster would print with characters the font lacks: {what: characters}."""
    pb = loaded.playbook
    lay = pb.path.poster.layout
    texts = {"title": lay.title or pb.title, "subtitle": lay.subtitle or ""}
    texts.update({f"variant {v.id}": v.hook for v in pb.path.poster.variants})
    texts.update({f"incentive {i.id}": i.name + i.copy_text for i in pb.lever.incentives})
    texts.update({f"guide {g.id}": g.name for g in loaded.guides})
    out = {what: missing_glyphs(text, font) for what, text in texts.items()}
    return {what: chars for what, chars in out.items() if chars}


def index_html(title: str, items: list[dict[str, str]]) -> str:
    """A page showing posters side by side, grouped by guide; each item has guide, variant,
    filename, src (where the browser finds the PNG) and link (what its QR carries)."""
    from jinja2 import Environment, PackageLoader

    env = Environment(loader=PackageLoader("orchestrator", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("posters.html.j2").render(title=title, items=items)


def write_index(path: Path, title: str, made: list[Made]) -> None:
    items = [{"guide": f"{m.guide.name}（{m.guide.id}）", "variant": m.variant, "filename": m.filename, "src": m.filename, "link": m.link}
             for m in made]
    path.write_text(index_html(title, items), encoding="utf-8")
