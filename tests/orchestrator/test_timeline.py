"""The plan's picture: pure geometry, a self-contained page, and that page as chromium renders it."""

from __future__ import annotations

import html
import re
import shutil
import sys
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.i18n import set_language
from orchestrator.load import LoadedPlaybook, check_playbook
from orchestrator.plan import Plan, Stage, plan
from orchestrator.timeline import (
    LANE_OF,
    LEFT,
    RIGHT,
    WIDTH,
    ZOOM_LANE_OF,
    ZOOM_MARGIN,
    Panel,
    live_zoom,
    overview,
    render_timeline,
    text_width,
    write_timeline,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/browser.py
from browser import dump_dom, png_facts, screenshot  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]
MINIMAL = TESTS / "fixtures" / "minimal" / "playbook.yaml"
SPRING = TESTS.parent / "playbooks" / "spring-reactivation.yaml"
SHANGHAI = ZoneInfo("Asia/Shanghai")
DRAWS = (Stage.DRAW_SCREENSHOT, Stage.DRAW_DEPOSIT)


def load(path: Path) -> LoadedPlaybook:
    loaded, diags = check_playbook(str(path))
    assert loaded is not None and not any(d.is_error for d in diags), [str(d) for d in diags]
    return loaded


def variant(tmp_path: Path, change: dict[str, Any] | None = None, **policy: Any) -> Path:
    """The minimal fixture grown into a multi-day event: preview, three reminders, a four-hour live,
    a deposit draw, host cues and staff scripts; `change` edits the YAML further."""
    folder = tmp_path / "event"
    shutil.copytree(MINIMAL.parent, folder)
    doc = yaml.safe_load(MINIMAL.read_text(encoding="utf-8"))
    path = doc["path"]
    path["poster"]["at"] = "T-6d 10:00"
    path["preview"] = {"id": "preview", "at": "T-3d 12:00", "channels": ["console"], "copy": "{{ event.title }}预告"}
    path["reminders"] = [
        {"id": "eve", "at": "T-1d 20:00", "channels": ["console"], "copy": "明晚见"},
        {"id": "morning", "at": "T 10:00", "channels": ["console"], "copy": "今晚见"},
        {"id": "hour", "at": "T-1h", "channels": ["console"], "copy": "一小时后开始"},
    ]
    path["live"].update(start="2026-12-05 19:00", end="2026-12-05 23:00")
    doc["mechanism"]["deposit_draw"] = {
        "products": [{"id": "p1", "name": "面霜", "deposit_cny": 50}, {"id": "p2", "name": "精华", "deposit_cny": 30}],
        "prize": "cup", "cutoff": "T+3h", "draw_at": "T+3h30m",
    }
    cues = [(0, "开场欢迎"), (5, "公布抽奖规则"), (15, "第一款产品讲解：面霜"), (55, "整点抽奖预热"), (60, "第一次抽奖"),
            (120, "第二次抽奖"), (180, "第三次抽奖"), (210, "定金抽奖"), (235, "感谢收尾")]
    doc["support"] = {
        "sop": [{"minute": m, "cue": c} for m, c in cues],
        "staff_scripts": [{"id": "warmup", "minute": 2, "lines": ["主播好！终于等到了", "老客福利还有吗？"]},
                          {"id": "deposit", "minute": 42, "lines": ["已付定金，冲！"]}],
    }
    if policy:
        doc["policy"] = policy
    for key, value in (change or {}).items():
        target = doc
        *parents, last = key.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    out = folder / "playbook.yaml"
    out.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return out


@pytest.fixture(params=["minimal", "multi-day", "spring"])
def planned(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Plan, LoadedPlaybook]:
    if request.param == "spring" and not SPRING.exists():
        pytest.skip("playbooks/spring-reactivation.yaml is not written yet")
    path = {"minimal": MINIMAL, "multi-day": variant(tmp_path), "spring": SPRING}[request.param]
    loaded = load(path)
    return plan(loaded), loaded


def lane_of(panel: Panel, y: float) -> str:
    return next(lane.key for lane in panel.lanes if lane.y <= y <= lane.y + lane.height)


# --- geometry --------------------------------------------------------------------------------


def test_every_step_is_one_mark_in_time_order(planned: tuple[Plan, LoadedPlaybook]) -> None:
    p, _ = planned
    panel = overview(p)
    assert [m.step for m in panel.marks] == list(p.steps)
    xs = [m.x for m in panel.marks]
    assert xs == sorted(xs)
    assert all(LEFT <= x <= WIDTH - RIGHT for x in xs)
    assert all(lane_of(panel, m.y) == LANE_OF[m.step.stage] for m in panel.marks)


def test_the_zoom_draws_the_steps_within_an_hour_of_the_live(planned: tuple[Plan, LoadedPlaybook]) -> None:
    p, _ = planned
    zoom = live_zoom(p)
    near = [s for s in p.steps if p.live_start - ZOOM_MARGIN <= s.at <= p.live_end + ZOOM_MARGIN]
    assert [m.step for m in zoom.marks] == near
    assert [m.x for m in zoom.marks] == sorted(m.x for m in zoom.marks)
    assert all(LEFT <= m.x <= WIDTH - RIGHT for m in zoom.marks)
    assert all(lane_of(zoom, m.y) == ZOOM_LANE_OF[m.step.stage] for m in zoom.marks)
    for stage in (Stage.SOP_CUE, Stage.STAFF_SCRIPT, Stage.DRAW_SCREENSHOT):
        assert sum(m.step.stage is stage for m in zoom.marks) == sum(s.stage is stage for s in p.steps)


def test_every_draw_mark_lies_inside_the_live_window(planned: tuple[Plan, LoadedPlaybook]) -> None:
    p, _ = planned
    for panel in (overview(p), live_zoom(p)):
        draws = [m for m in panel.marks if m.step.stage in DRAWS]
        assert draws
        assert all(panel.live.x0 - 1e-9 <= m.x <= panel.live.x1 + 1e-9 for m in draws)
        assert panel.live.x0 == pytest.approx(panel.scale.x(p.live_start))
        assert panel.live.x1 == pytest.approx(panel.scale.x(p.live_end))


def test_quiet_hours_are_shaded_from_21_to_08_on_every_day(planned: tuple[Plan, LoadedPlaybook]) -> None:
    p, _ = planned
    panel = overview(p)
    quiet = [s for s in panel.spans if s.kind == "quiet"]
    tz = ZoneInfo(p.timezone)
    day: date = p.steps[0].at.date()
    while day <= p.steps[-1].at.date():
        for minute in range(0, 24 * 60, 30):
            moment = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=tz)
            inside = [s for s in quiet if s.start <= moment < s.end]
            assert len(inside) == (1 if moment.hour >= 21 or moment.hour < 8 else 0), moment
            assert inside == [] or inside[0].x0 <= panel.scale.x(moment) <= inside[0].x1
        day += timedelta(days=1)
    for s in quiet:  # each night starts at 21:00 and ends at 08:00 unless the axis cuts it
        assert s.start.astimezone(tz).time() == time(21) or s.start == panel.scale.start
        assert s.end.astimezone(tz).time() == time(8) or s.end == panel.scale.end


def test_a_daytime_window_or_none_is_drawn_as_written(tmp_path: Path) -> None:
    p = plan(load(variant(tmp_path, quiet_hours="12:30-14:00")))
    quiet = [s for s in overview(p).spans if s.kind == "quiet"]
    days = (p.steps[-1].at.date() - p.steps[0].at.date()).days + 1
    assert len(quiet) == days
    assert {(s.start.time(), s.end.time()) for s in quiet} == {(time(12, 30), time(14))}
    p_off = plan(load(variant(tmp_path / "off", quiet_hours="off")))
    assert [s for s in overview(p_off).spans if s.kind == "quiet"] == []


def test_days_are_labelled_from_the_poster_to_the_close(tmp_path: Path) -> None:
    p = plan(load(variant(tmp_path)))
    days = [s for s in overview(p).spans if s.kind == "day"]
    assert [d.start.date() for d in days] == [date(2026, 11, 29) + timedelta(days=n) for n in range(7)]
    assert [d.sub for d in days] == ["T-6d", "T-5d", "T-4d", "T-3d", "T-2d", "T-1d", "live day"]
    assert days[-1].label == "Sat 05 Dec"
    assert days[0].x0 == LEFT and days[-1].x1 == WIDTH - RIGHT


def test_a_live_across_midnight_spans_two_days_in_the_zoom(tmp_path: Path) -> None:
    loaded = load(variant(tmp_path))
    p = plan(loaded, datetime(2026, 12, 5, 22, 0, tzinfo=SHANGHAI))
    zoom = live_zoom(p)
    assert [d.sub for d in zoom.spans if d.kind == "day"] == ["live day", "T+1d"]
    assert all(m.step.at.tzinfo is not None for m in zoom.marks)
    majors = [t.text for t in zoom.ticks if t.major]
    assert "00:00" in majors and "02:00" in majors
    assert [t.text for t in zoom.foot][:3] == ["0′", "15′", "30′"]


def test_labels_in_a_row_never_overlap(planned: tuple[Plan, LoadedPlaybook]) -> None:
    p, _ = planned
    for panel in (overview(p), live_zoom(p)):
        rows: dict[float, list[tuple[float, float]]] = {}
        for m in panel.marks:
            if m.label:
                rows.setdefault(m.label_y, []).append((m.label_x, m.label_x + text_width(m.label)))
        for extents in rows.values():
            extents.sort()
            assert all(a[1] <= b[0] for a, b in zip(extents, extents[1:])), extents
            assert all(0 <= left and right <= WIDTH for left, right in extents)


# --- the page --------------------------------------------------------------------------------

REMOTE = re.compile(r"""(?:\bsrc|\bhref|\baction|\bposter|\bdata)\s*=\s*["']?(?!#)[^"'\s>]""", re.I)


def test_the_page_is_self_contained(planned: tuple[Plan, LoadedPlaybook]) -> None:
    p, loaded = planned
    page = render_timeline(p, loaded)
    assert page.startswith("<!DOCTYPE html>")
    assert REMOTE.findall(page) == []  # every link is to a step on the page itself
    assert not re.search(r"<link\b|<script\b[^>]*\bsrc|@import|url\((?!#)", page, re.I)
    room = loaded.playbook.path.live.room_url
    assert set(re.findall(r"https?://[^\s<\"']+", page)) <= {html.escape(room)}  # the room link, as text only
    assert "<svg" in page and 'lang="en"' in page


def test_the_page_lists_every_step(planned: tuple[Plan, LoadedPlaybook]) -> None:
    p, loaded = planned
    page = render_timeline(p, loaded)
    for s in p.steps:
        assert f'<tr id="step-{html.escape(s.id)}"' in page
        assert f'data-step="{html.escape(s.id)}"' in page
        assert html.escape(s.label, quote=False) in page
        assert f"{s.at:%H:%M}" in page
    assert page.count('class="mark s-') == len(p.steps) + len(live_zoom(p).marks)
    limits = p.load
    assert f"/ cap {limits.cap_day}" in page and f"/ cap {limits.cap_month}" in page


def test_the_page_escapes_what_the_playbook_says(tmp_path: Path) -> None:
    path = variant(tmp_path, {"title": "春季<b>&直播", "support.sop": [{"minute": 0, "cue": "<script>alert(1)</script>"}]})
    loaded = load(path)
    page = render_timeline(plan(loaded), loaded)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "春季&lt;b&gt;&amp;直播" in page


def test_the_page_speaks_the_current_language(tmp_path: Path) -> None:
    loaded = load(MINIMAL)
    set_language("zh")
    page = render_timeline(plan(loaded), loaded)
    assert '<html lang="zh-CN">' in page
    assert "12月5日 周六" in page  # day names in the event timezone, in Chinese
    assert 'font: 14px/1.55 "PingFang SC", "Noto Sans CJK SC", "Microsoft YaHei"' in page


def test_times_are_shown_in_the_event_timezone(tmp_path: Path) -> None:
    loaded = load(MINIMAL)
    p = plan(loaded, datetime(2026, 12, 5, 11, 0, tzinfo=ZoneInfo("UTC")))  # 19:00 in Shanghai
    page = render_timeline(p, loaded)
    assert p.live_start.utcoffset() == timedelta(hours=8)
    assert '<tr id="step-live:start" class="">\n      <td class="time">19:00</td>' in page


def test_plan_html_writes_the_page(tmp_path: Path) -> None:
    out = tmp_path / "plan.html"
    result = CliRunner().invoke(cli, ["--lang", "en", "plan", str(MINIMAL), "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stderr
    page = out.read_text(encoding="utf-8")
    assert page == render_timeline(plan(load(MINIMAL)), load(MINIMAL))
    assert "迷你直播" in page


def test_plan_html_of_a_broken_playbook_writes_nothing(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nid: x\n", encoding="utf-8")
    out = tmp_path / "plan.html"
    result = CliRunner().invoke(cli, ["--lang", "en", "plan", str(broken), "--html", str(out)])
    assert result.exit_code == 1
    assert not out.exists()


def test_write_timeline_returns_the_path(tmp_path: Path) -> None:
    loaded = load(MINIMAL)
    out = write_timeline(plan(loaded), loaded, tmp_path / "t.html")
    assert out == tmp_path / "t.html" and out.read_text(encoding="utf-8").endswith("</html>\n")


# --- in a browser ----------------------------------------------------------------------------


@pytest.mark.browser
def test_chromium_renders_the_page(tmp_path: Path) -> None:
    loaded = load(variant(tmp_path))
    p = plan(loaded)
    page = write_timeline(p, loaded, tmp_path / "plan.html")
    dom = dump_dom(page)
    assert dom.count("<svg") >= 3
    assert dom.count('class="mark s-') == len(p.steps) + len(live_zoom(p).marks)
    for s in p.steps:
        assert f'id="step-{s.id}"' in dom
        assert html.escape(s.label, quote=False) in dom
    png = screenshot(page, tmp_path / "plan.png", width=1280, height=1100)
    width, height, values = png_facts(png)
    assert (width, height) == (1280, 1100)
    assert png.stat().st_size > 40_000  # a blank or single-colour page compresses to a few KB
    assert values > 100
