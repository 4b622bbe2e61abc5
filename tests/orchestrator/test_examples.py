"""The example playbooks in playbooks/ validate cleanly, plan, and are the events they claim to be."""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from pathlib import Path

import pytest

from orchestrator import LoadedPlaybook, Plan, Stage, check_playbook, plan, validate
from orchestrator.playbook import Channel
from orchestrator.reach import EMAIL, SMS, WECOM, reach_bits
from orchestrator.render import render_step

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "playbooks"
EXAMPLES = sorted(PLAYBOOKS.glob("*.yaml"))
SPRING = PLAYBOOKS / "spring-reactivation.yaml"
FLASH = PLAYBOOKS / "flash-group-sale.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@cache
def _load(path: Path) -> tuple[LoadedPlaybook, Plan]:
    loaded, diags = check_playbook(path)
    assert loaded is not None, "\n".join(map(str, diags))
    errors = [d for d in diags + validate(loaded) if d.is_error]
    assert not errors, "\n".join(map(str, errors))
    return loaded, plan(loaded)


def test_both_examples_are_there() -> None:
    assert SPRING in EXAMPLES and FLASH in EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_with_no_errors_and_plans(path: Path) -> None:
    loaded, p = _load(path)
    assert [s.at for s in p.steps] == sorted(s.at for s in p.steps)
    stages = {s.stage for s in p.steps}
    assert {Stage.POSTER, Stage.JOIN_OPEN, Stage.LIVE_START, Stage.LIVE_END, Stage.CLOSE, Stage.REMINDER} <= stages
    assert p.audience_total > 0
    for step in p.steps:
        if step.stage in (Stage.PREVIEW, Stage.REMINDER):
            assert step.at < p.live_start and not step.in_quiet_hours, step.id
    assert p.load.per_day <= p.load.cap_day and p.load.per_month <= p.load.cap_month


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_csvs_carry_excels_bom(path: Path) -> None:
    folder = path.with_suffix("")
    files = sorted(folder.rglob("*.csv"))
    assert files, f"{folder} has no CSV files"
    for file in files:
        assert file.read_bytes().startswith(b"\xef\xbb\xbf"), f"{file} lacks the UTF-8 BOM Excel writes"


def test_example_copy_lives_beside_the_playbook() -> None:
    loaded, _p = _load(SPRING)
    pb = loaded.playbook
    assert pb.path.preview is not None and pb.path.preview.copy_file is not None
    html_files = [r.email.html_file for r in pb.path.reminders if r.email is not None and r.email.html_file]
    assert html_files
    for rel in [pb.path.preview.copy_file, *html_files]:
        assert (SPRING.parent / rel).is_file()
        assert "{{" in (SPRING.parent / rel).read_text(encoding="utf-8")  # Jinja2 copy, not plain text


# --- the seed's spring reactivation live ------------------------------------------------------


def test_spring_audience_is_5000_people_in_two_segments() -> None:
    loaded, p = _load(SPRING)
    pb = loaded.playbook
    assert len(loaded.members) == 5000
    sizes = {seg.id: sum(1 for m in loaded.members.values() if m.segment == seg.id) for seg in pb.audience.segments}
    assert len(sizes) == 2 and all(n >= 1000 for n in sizes.values()), sizes
    assert all(seg.file is not None for seg in pb.audience.segments)
    assert 6 <= len(loaded.guides) <= 10
    assert len({g.channel_code for g in loaded.guides}) == len(loaded.guides)
    assert all(g.contact_code for g in loaded.guides)
    guide_ids = {g.id for g in loaded.guides}
    assert all(m.guide in guide_ids for m in loaded.members.values() if m.guide)
    assert any(m.guide is None for m in loaded.members.values())  # copy must cope with guide = None
    roles = {e.role for e in loaded.excluded}
    assert roles == {"staff", "shill"}
    assert any(e.live_ids for e in loaded.excluded if e.role == "shill")
    assert p.audience_total + p.excluded == 5000 and p.excluded > 0


def test_spring_members_have_real_looking_contact_data() -> None:
    loaded, _p = _load(SPRING)
    members = list(loaded.members.values())
    assert all(m.phone is None or (len(m.phone) == 11 and m.phone.startswith("1")) for m in members)
    assert sum(1 for m in members if m.email) > 100
    assert sum(1 for m in members if m.wecom_external_userid and m.wecom_external_userid.startswith("wm")) > 1000
    for flag in ("consent_sms", "consent_email", "consent_wecom"):
        values = {getattr(m, flag) for m in members}
        assert values == {True, False}, flag
    assert all(m.consent_source and m.consent_at for m in members)
    assert all(reach_bits(m) for m in members)  # everyone can be reminded through some channel


def test_spring_path_has_two_hooks_a_preview_and_three_reminders() -> None:
    loaded, p = _load(SPRING)
    pb = loaded.playbook
    assert [v.id for v in pb.path.poster.variants] == ["A", "B"]
    assert pb.path.preview is not None and p.step("preview") is not None
    assert [r.id for r in pb.path.reminders] == ["eve", "hour", "soon"]
    reminders = [s for s in p.steps if s.stage is Stage.REMINDER]
    assert [s.at for s in reminders] == [
        (p.live_start - timedelta(days=1)).replace(hour=20, minute=0),
        p.live_start - timedelta(hours=1),
        p.live_start - timedelta(minutes=5),
    ]
    used = {c for r in pb.path.reminders for c in r.channels}
    assert {Channel.SMS, Channel.EMAIL, Channel.WECOM_CUSTOMER, Channel.WECOM_GROUP} <= used
    for r in pb.path.reminders:
        if Channel.SMS in r.channels:
            assert r.sms is not None and "回复TD退订" in r.sms.text
        if Channel.EMAIL in r.channels:
            assert r.email is not None and r.email.subject


def test_spring_draws_every_whole_hour_of_a_four_hour_live() -> None:
    loaded, p = _load(SPRING)
    assert p.live_end - p.live_start == timedelta(hours=4)
    draws = [s.at for s in p.steps if s.stage is Stage.DRAW_SCREENSHOT]
    assert draws == [p.live_start + timedelta(hours=h) for h in (1, 2, 3, 4)]
    assert all(d.minute == 0 for d in draws)
    # quiet hours hold back messages, not draws: the 21:00, 22:00 and 23:00 draws still run
    assert p.quiet_hours is not None and sum(p.quiet_hours.contains(d.time()) for d in draws) == 3
    deposit = p.step("draw:deposit")
    assert deposit is not None and p.live_start <= deposit.at <= p.live_end
    assert len(deposit.detail["products"]) == 3
    draw = loaded.playbook.mechanism.deposit_draw
    assert draw is not None and len(draw.products) == 3
    prizes = loaded.playbook.mechanism.prizes
    assert prizes and all(0 < prize.value_cny <= 50_000 for prize in prizes)
    notice = loaded.playbook.mechanism.notice
    assert notice.eligibility and notice.method and notice.redemption and notice.organiser


def test_spring_support_has_host_cues_staff_scripts_and_alerts() -> None:
    loaded, p = _load(SPRING)
    support = loaded.playbook.support
    cues = [s for s in p.steps if s.stage is Stage.SOP_CUE]
    assert len(cues) >= 10 and cues[0].at == p.live_start and cues[-1].at <= p.live_end
    assert len(support.staff_scripts) >= 3
    assert support.alerts.draw_soon and support.alerts.pool_low and support.alerts.tasks_unconfirmed


def _member(loaded: LoadedPlaybook, want: int, avoid: int = 0, *, guide: bool | None = None) -> str:
    for m in loaded.members.values():
        bits = reach_bits(m)
        if bits & want and not bits & avoid and (guide is None or (m.guide is not None) == guide):
            return m.id
    raise AssertionError("no such member in the example")


def test_spring_reminders_render_chinese_copy_per_channel() -> None:
    loaded, _p = _load(SPRING)
    start = loaded.playbook.path.live.start

    sms = render_step(loaded, "reminder:eve", _member(loaded, SMS, WECOM))
    assert sms.channel == "sms" and sms.sms_template is not None
    assert sms.text.startswith("【栖木家居】") and sms.text.endswith("回复TD退订")
    assert sms.sms_params is not None and sms.sms_params["time"] == f"{start:%H:%M}"

    wecom_id = _member(loaded, WECOM, guide=True)
    wecom = render_step(loaded, "reminder:eve", wecom_id)
    guide = next(g for g in loaded.guides if g.id == loaded.members[wecom_id].guide)
    assert wecom.channel == "wecom_customer"
    assert wecom.text.startswith("老朋友您好，") and guide.name in wecom.text
    assert loaded.members[wecom_id].name not in wecom.text, "one WeCom text goes to all of a guide's customers: no names"

    email_id = _member(loaded, EMAIL, SMS | WECOM, guide=False)
    email = render_step(loaded, "reminder:eve", email_id)
    assert email.channel == "email" and email.html is not None and email.subject is not None
    assert loaded.members[email_id].name in email.subject
    assert "<html" in email.html and "专属导购" not in email.html  # the guide paragraph needs a guide

    group = render_step(loaded, "reminder:soon", email_id)
    assert group.channel == "wecom_group" and "5分钟后开播" in group.text


# --- the flash-group sale ---------------------------------------------------------------------


def test_flash_uses_uploaded_wechat_group_codes() -> None:
    loaded, p = _load(FLASH)
    join = loaded.playbook.path.join
    assert join.kind == "wechat_group_codes" and len(join.codes) >= 2
    assert join.capacity <= 200 and join.margin < join.capacity
    for code in join.codes:
        data = (FLASH.parent / code.image).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) < 2048
        assert code.expires.replace(tzinfo=p.live_end.tzinfo) >= p.live_end  # valid through the whole evening


def test_flash_is_one_short_evening_for_a_few_hundred_people() -> None:
    loaded, p = _load(FLASH)
    assert 100 <= p.audience_total <= 1000
    assert p.live_end - p.live_start <= timedelta(hours=2)
    join_open = p.step("join:open")
    assert join_open is not None and join_open.at.date() == p.live_start.date()
    draws = [s for s in p.steps if s.stage in (Stage.DRAW_SCREENSHOT, Stage.DRAW_DEPOSIT)]
    assert draws and all(p.live_start <= d.at <= p.live_end for d in draws)
    welcome = render_step(loaded, "welcome", next(iter(loaded.members)))
    assert welcome.channel == "wecom_group" and "只开今晚" in welcome.text
