"""The frozen screen of a screenshot draw as a picture: the comments that were on screen at the
freeze moment, winners marked, every name masked (张*明), with the draw's proof underneath."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from PIL import Image, ImageDraw

from orchestrator.copytext import mask
from orchestrator.load import LoadedPlaybook
from orchestrator.poster import _font, wrap

WIDTH = 900
ACCENT = (200, 16, 46)


def render_screen(made: Any, title: str, tz: ZoneInfo, font: Path) -> bytes:
    f = str(font)
    head, body, small = _font(f, 34), _font(f, 28), _font(f, 22)
    winners = set(made.winners)
    rows = []
    for c in made.screen:
        lines = wrap(f"{mask(c['name'] or c['user_id'])}：{c['text']}", body, WIDTH - 150)
        rows.append((c["user_id"] in winners, lines))
    height = 170 + sum(24 + 40 * len(lines) for _w, lines in rows) + 110
    img = Image.new("RGB", (WIDTH, height), (246, 246, 244))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, WIDTH, 120), fill=(34, 34, 34))
    draw.text((40, 38), f"{title} · 截屏抽奖", font=head, fill=(255, 255, 255))
    when = made.freeze_at.astimezone(tz).strftime("%m月%d日 %H:%M:%S.%f")[:-3] if made.freeze_at else ""
    draw.text((40, 84), f"{made.draw_id} · 截屏时刻 {when} · {made.entrants} 人参与", font=small, fill=(200, 200, 200))
    y = 150
    for is_winner, lines in rows:
        h = 40 * len(lines) + 16
        draw.rounded_rectangle((30, y, WIDTH - 30, y + h), radius=14, fill=(255, 236, 240) if is_winner else (255, 255, 255),
                               outline=ACCENT if is_winner else (225, 225, 225), width=3 if is_winner else 1)
        for i, line in enumerate(lines):
            draw.text((50, y + 8 + 40 * i), line, font=body, fill=(34, 34, 34))
        if is_winner:
            draw.rounded_rectangle((WIDTH - 130, y + 8, WIDTH - 44, y + 44), radius=10, fill=ACCENT)
            draw.text((WIDTH - 87, y + 26), "中奖", font=small, fill=(255, 255, 255), anchor="mm")
        y += h + 8
    draw.text((40, height - 80), "中奖者由公示的种子承诺与参与名单哈希确定，任何人可用 orchestrator verify 复核", font=small, fill=(90, 90, 90))
    draw.text((40, height - 48), f"参与名单哈希 {made.entrant_hash[:32]}…", font=small, fill=(120, 120, 120))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def write_screen(made: Any, loaded: LoadedPlaybook, folder: Path, event_id: str, font: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{event_id}-{made.draw_id.replace(':', '-')}.png"
    path.write_bytes(render_screen(made, loaded.playbook.title, loaded.playbook.tz, font))
    return path
