"""Broken playbooks: each case is one small change to tests/fixtures/minimal, and the finding it must produce.

Every case asserts the diagnostic's code, its exact line and column, the words that make the
message useful, and that `orchestrator validate` prints the same place and exits 1 without a
traceback. Line numbers refer to the changed file; the fixture's own lines are quoted beside them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.diagnostics import Diagnostic

from orchestrator.validate import check

FIXTURE = Path(__file__).parents[1] / "fixtures" / "minimal"
TEXT = (FIXTURE / "playbook.yaml").read_text(encoding="utf-8")
MEMBERS = (FIXTURE / "members.csv").read_text(encoding="utf-8")
GUIDES = (FIXTURE / "guides.csv").read_text(encoding="utf-8")

Edit = tuple[str, str]


@dataclass(frozen=True)
class Broken:
    """Replace `old` by `new` in the fixture (each exactly once), write `files` beside it, expect `code` at `at`."""

    edits: tuple[Edit, ...]
    code: str
    at: tuple[int, int]
    words: tuple[str, ...]
    files: dict[str, str | bytes] = field(default_factory=dict)
    file: str = "playbook.yaml"  # the file the diagnostic names


def change(old: str, new: str, code: str, at: tuple[int, int], *words: str) -> Broken:
    """The fixture with one replacement."""
    return Broken(((old, new),), code, at, words)


def sheet(name: str, content: str | bytes, code: str, at: tuple[int, int], *words: str) -> Broken:
    """The fixture with CSV file `name` replaced by `content`; the finding is in that file."""
    return Broken((), code, at, words, {name: content}, name)


def write_playbook(directory: Path, edits: tuple[Edit, ...], files: dict[str, str | bytes] | None = None) -> Path:
    """The fixture with `edits` applied, its CSVs and `files`, written into `directory`."""
    text = TEXT
    for old, new in edits:
        assert text.count(old) == 1, f"the fixture must contain {old!r} exactly once"
        text = text.replace(old, new)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURE / "members.csv", directory / "members.csv")
    shutil.copy(FIXTURE / "guides.csv", directory / "guides.csv")
    for name, content in (files or {}).items():
        target = directory / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    path = directory / "playbook.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def findings(path: Path) -> list[Diagnostic]:
    """What `orchestrator validate` finds: loading, then the cross-field rules."""
    return check(path)[1]


# A deposit draw inside the two-hour live (19:00-21:00), inserted before `notice:` (fixture line 35).
DEPOSIT = """  deposit_draw:
    products:
      - {id: p1, name: 羊绒衫, deposit_cny: 50}
    prize: cup
    cutoff: T+1h
    draw_at: T+90m
  notice:"""
# A reminder to add after the fixture's one (before `live:`, fixture line 62).
REMINDER = """    - id: {id}
      at: {at}
      channels: [{channels}]
      copy: 直播马上开始
  live:
"""
SMS_COPY = '      copy: "{{ member.name }}，{{ event.title }}一小时后开始：{{ event.room_url }}"'


def reminder(id: str, at: str, channels: str = "console") -> Edit:
    return ("  live:\n", REMINDER.format(id=id, at=at, channels=channels))


def policy(text: str) -> Edit:
    return ("support:", f"policy:\n{text}\n\nsupport:")


CASES: dict[str, Broken] = {
    # --- YAML itself ---
    "yaml-unclosed-bracket": change(
        "title: 迷你直播", "title: [迷你直播", "yaml-syntax", (4, 9), "did not find expected", "'[' at line 3, column 8 is not closed"),
    "yaml-unclosed-quote": change(
        SMS_COPY, SMS_COPY[:-1], "yaml-syntax", (56, 13), "quote opened here is not closed", "line 60"),
    "yaml-colon-in-value": change(
        "  statement: 测试用的最小直播", "  statement: 目标: 测试", "yaml-syntax", (7, 16), "must be quoted"),
    "yaml-tab-indent": change(
        "  statement: 测试用的最小直播", "\tstatement: 测试用的最小直播", "yaml-syntax", (7, 1), "spaces, not tabs"),
    "yaml-second-document": change(
        "version: 1\n", "version: 1\n---\n", "yaml-syntax", (2, 1), "single YAML document", "'---'"),
    "yaml-control-character": change(
        "  statement: 测试用的最小直播", "  statement: 测试\x07用的最小直播", "yaml-syntax", (7, 16), "control characters"),
    "duplicate-key": change(
        "timezone: Asia/Shanghai", "timezone: Asia/Shanghai\ntitle: 又一个标题", "duplicate-key", (5, 1), "duplicate key 'title'", "line 3"),
    "empty-file": change(TEXT, "# todo\n", "empty", (1, 1), "empty", "version: 1"),
    "top-level-list": change(TEXT, "- version: 1\n", "not-a-mapping", (1, 1), "mapping of keys", "not a list"),
    "nesting-too-deep": change(
        "version: 1\n", "version: 1\nx: " + "[" * 100 + "]" * 100 + "\n", "too-deep", (2, 67), "deeper than 64"),
    "alias-bomb": change(
        "version: 1\n",
        "version: 1\n" + "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9)),
        "too-many-values", (6, 10), "alias (*name) expands"),
    # --- structure and types ---
    "unknown-key": change(
        "  expected_reach: 100", "  expected_rech: 100", "unknown-key", (13, 3), "unknown key 'expected_rech'", "did you mean 'expected_reach'?"),
    "unknown-section": change("support:", "suport:", "unknown-key", (68, 1), "did you mean 'support'?"),
    "missing-field": change("  statement: 测试用的最小直播\n", "", "missing", (6, 1), "missing 'statement'"),
    "text-for-number": change(
        "  expected_reach: 100", "  expected_reach: lots", "type", (13, 19), "expected a whole number", "'lots'"),
    "number-for-text": change("title: 迷你直播", "title: 2026", "type", (3, 8), "expected text", "put it in quotes"),
    "number-out-of-range": change(
        "{minute: 60, cue: 第一次抽奖}", "{minute: 99999999999, cue: 第一次抽奖}", "range", (71, 16), "at most 10080", "99999999999"),
    "bad-choice": change(
        "platform: wechat_channels", "platform: douyn", "choice", (65, 15), "'douyn' is not allowed", "douyin, bilibili", "did you mean 'douyin'?"),
    "poster-to-customers": change(
        "      - {id: A, hook: 进群抽保温杯}\n  join:", "      - {id: A, hook: 进群抽保温杯}\n    channels: [console, wecom_customer]\n  join:",
        "poster-channel", (47, 25), "posters go to guides", "wecom_customer reaches customers only", "use email, sms, webhook"),
    "bad-channel": change(
        "channels: [sms, console]", "channels: [sms, consol]", "choice", (55, 23), "did you mean 'console'?"),
    "bad-version": change("version: 1", "version: 2", "choice", (1, 10), "choose one of: 1"),
    "bad-id": change("id: mini-live", "id: mini live", "pattern", (2, 5), "'mini live' is not a valid id", "no spaces"),
    "bad-incentive-id": change(
        "    - id: discount", "    - id: Discount", "pattern", (24, 11), "lowercase", "lever.<id>"),
    "bad-sms-template-code": change(
        "SMS_100001", "SMS-100001", "pattern", (59, 24), "SMS_123456789"),
    "title-too-long": change("title: 迷你直播", "title: " + "长" * 61, "too-long", (3, 8), "60 characters"),
    "no-segments": change(
        "  segments:\n    - id: friends\n      name: 导购好友\n      file: members.csv\n", "  segments: []\n",
        "too-few", (14, 13), "at least 1"),
    "segment-two-sources": change(
        "      file: members.csv\n", "      file: members.csv\n      members: []\n", "one-source", (15, 7), "'file' or 'members'"),
    "copy-and-copy-file": change(SMS_COPY, SMS_COPY + "\n      copy_file: hour.txt", "one-copy", (53, 7), "'copy' or 'copy_file'"),
    "empty-copy": change(SMS_COPY, '      copy: ""', "empty", (56, 13), "must not be empty"),
    # --- times ---
    "bad-time": change("at: T-1h", "at: T-1 hour", "timespec", (54, 11), "'T-1 hour' is not a time", "T-1d 20:00"),
    "clock-needs-whole-days": change("at: T-1h", "at: T-1h 20:00", "timespec", (54, 11), "'T-1h 20:00'"),
    "offset-over-a-year": change("at: T-2d 10:00", "at: T-400d 10:00", "too-far", (43, 9), "366 days"),
    "bad-duration": change(
        "    room_url: https://channels.weixin.qq.com/live/mini",
        "    room_url: https://channels.weixin.qq.com/live/mini\n    close_after: half an hour",
        "duration", (67, 18), "'half an hour' is not a duration", "1h30m"),
    "bad-moment": change("start: 2026-12-05 19:00", "start: 2026-12-5 7pm", "moment", (63, 12), "2026-12-05 19:00"),
    "implausible-year": change("start: 2026-12-05 19:00", "start: 0026-12-05 19:00", "year", (63, 12), "between 2000 and 2199"),
    "bad-timezone": change("timezone: Asia/Shanghai", "timezone: Asia/Shangai", "timezone", (4, 11), "IANA", "Asia/Shanghai"),
    "bad-quiet-window": Broken(
        (policy("  quiet_hours: 21:00 to 08:00"),), "quiet-window", (69, 16), ("not a daily window", "21:00-08:00")),
    "live-ends-before-start": change(
        "end: 2026-12-05 21:00", "end: 2026-12-05 18:00", "live-end-before-start", (64, 10), "before it starts", "18:00"),
    "live-too-long": change("end: 2026-12-05 21:00", "end: 2026-12-25 21:00", "live-too-long", (64, 10), "at most 7 days"),
    "reminder-after-live-start": change(
        "at: T-1h", "at: T+10m", "message-after-live", (54, 11), "reminder:hour", "not before the live starts"),
    "poster-after-live-start": change(
        "at: T-2d 10:00", "at: T+1h", "path-after-live", (43, 9), "poster at 2026-12-05 20:00"),
    "reminder-in-quiet-hours": change(
        "at: T-1h", "at: T-1d 22:00", "quiet-hours", (54, 11), "22:00", "21:00-08:00", "quiet_hours: allow"),
    "deposit-draw-after-live": change(
        "  notice:", DEPOSIT.replace("draw_at: T+90m", "draw_at: T+3h"), "draw-outside-live", (40, 14), "outside the live", "22:00"),
    "deposit-draw-before-live": change(
        "  notice:", DEPOSIT.replace("cutoff: T+1h", "cutoff: T-1h").replace("draw_at: T+90m", "draw_at: T-30m"),
        "draw-outside-live", (40, 14), "18:30"),
    "deposit-cutoff-after-draw": change(
        "  notice:", DEPOSIT.replace("cutoff: T+1h", "cutoff: T+100m"), "cutoff-after-draw", (39, 13), "20:40", "after the draw"),
    "no-whole-hour-in-live": change(
        "start: 2026-12-05 19:00\n    end: 2026-12-05 21:00", "start: 2026-12-05 19:10\n    end: 2026-12-05 19:50",
        "no-whole-hour", (31, 3), "no whole hour", "never runs"),
    "sop-cue-after-show": change(
        "{minute: 60, cue: 第一次抽奖}", "{minute: 150, cue: 第一次抽奖}", "cue-after-show", (71, 16), "minute 150", "120 minutes"),
    # --- ids and references ---
    "duplicate-reminder-id": Broken((reminder("hour", "T-2h"),), "duplicate-id", (62, 11), ("duplicate reminder id 'hour'", "item 1")),
    "duplicate-segment-id": change(
        "      file: members.csv\n", "      file: members.csv\n    - id: friends\n      name: 又一组\n      file: members.csv\n",
        "duplicate-id", (18, 11), "duplicate segment id 'friends'"),
    "unknown-prize": change("    prize: cup\n  notice", "    prize: mug\n  notice", "unknown-prize", (34, 12), "'mug'", "known: cup"),
    "unknown-segment": change(
        "      channels: [sms, console]", "      channels: [sms, console]\n      segments: [friend]",
        "unknown-segment", (56, 18), "'friend'", "did you mean 'friends'?"),
    # --- the law ---
    "prize-over-limit": change("value_cny: 199", "value_cny: 60000", "prize-over-limit", (30, 39), "60,000", "50,000"),
    "notice-field-missing": change(
        "    redemption: 中奖后7天内联系客服领取\n", "", "notice-missing", (35, 3), "公示", "'redemption'"),
    # --- platform limits ---
    "join-way-over-5-groups": change(
        "kind: wechat_group_codes", "kind: wecom_join_way\n    groups_per_join_way: 6", "join-way-groups", (49, 26), "at most 5", "not 6"),
    "join-way-state-too-long": change(
        "kind: wechat_group_codes", "kind: wecom_join_way\n    state_prefix: spring-reactivation-2026-xx-",
        "join-state-too-long", (49, 19), "'spring-reactivation-2026-xx-G01'", "31 characters", "30"),
    "wecom-group-over-500": change(
        "kind: wechat_group_codes\n    capacity: 200", "kind: wecom_join_way\n    capacity: 600",
        "group-capacity", (49, 15), "capacity 600", "at most 500"),
    "wechat-group-over-200": change("capacity: 200", "capacity: 300", "group-capacity", (49, 15), "capacity 300", "about 200"),
    "margin-not-below-capacity": change("margin: 190", "margin: 200", "group-margin", (50, 13), "below capacity 200", "190"),
    "group-name-without-number": change("group_name: 迷你群{n}", "group_name: 迷你群", "group-name", (51, 17), "'{n}'", "迷你群{n}"),
    "comment-source-wrong-platform": change(
        "platform: wechat_channels", "platform: douyin\n    comment_source: bilibili_open_live",
        "comment-source-platform", (66, 21), "bilibili_open_live", "douyin"),
    "sms-without-opt-out": change("，回复TD退订", "", "sms-opt-out", (60, 15), "回复TD退订", "拒收请回复R"),
    "sms-param-without-value": change(
        "${name}，直播一小时后开始", "${name}，直播${time}开始", "sms-params", (60, 15), "'${time}' has no value"),
    "sms-param-not-in-text": change(
        'params: {name: "{{ member.name }}"}', 'params: {name: "{{ member.name }}", time: "19:00"}',
        "sms-params", (61, 45), "'time' is not in the template text"),
    "sms-channel-without-template": change(
        '      sms:\n        sign: 迷你品牌\n        template_code: SMS_100001\n        text: "${name}，直播一小时后开始，回复TD退订"\n'
        '        params: {name: "{{ member.name }}"}\n', "",
        "sms-template-missing", (55, 18), "approved template", "sms: {sign, template_code, text, params}"),
    "caps-per-day": Broken(
        (reminder("two", "T-2h"), policy("  caps: {per_day: 1}")), "caps-day", (73, 19), ("2026-12-05", "2 messages", "cap of 1 a day")),
    "caps-per-month": Broken(
        (reminder("two", "T-1d 10:00"), policy("  caps:\n    per_month: 1")), "caps-month", (74, 16), ("2026-12", "cap of 1 a month")),
    "wecom-monthly-quota": Broken(
        (("  reminders:\n", "  reminders:\n" + REMINDER.format(id="w1", at="T-2d 12:00", channels="wecom_group").replace("  live:\n", "")
          + REMINDER.format(id="w2", at="T-1d 12:00", channels="wecom_group").replace("  live:\n", "")),
         policy("  wecom_monthly_quota: 1")),
        "wecom-quota", (77, 24), ("2 WeCom mass messages", "allows 1")),
    "robot-alert-over-2048-bytes": change(
        "support:\n", "support:\n  alerts:\n    draw_soon: " + "抽奖" * 350 + "\n", "robot-text-too-long", (70, 16), "2048 bytes", "2100"),
    # --- copy ---
    "personal-copy-into-groups": Broken((
        ("channels: [sms, console]", "channels: [wecom_group]"),
        ('      sms:\n        sign: 迷你品牌\n        template_code: SMS_100001\n        text: "${name}，直播一小时后开始，回复TD退订"\n'
         '        params: {name: "{{ member.name }}"}\n', ""),
    ), "copy-personal-in-group", (56, 13), ("only goes into groups", "cannot use 'member'")),
    "copy-unknown-variable": change(
        "copy: \"{{ member.name }}", "copy: \"{{ membr.name }}", "copy-unknown-name", (56, 13), "'membr'", "did you mean 'member'?"),
    "copy-unknown-attribute": change(
        "copy: \"{{ member.name }}", "copy: \"{{ member.nmae }}", "copy-unknown-attribute", (56, 13), "'member' has no 'nmae'", "did you mean 'name'?"),
    "copy-syntax-in-block": change(
        SMS_COPY, "      copy: |\n        {{ member.name }}，你好\n        {{ event.title }}一小时后开始\n"
        "        {% if guide %}{{ guide.name }}{% endfi %}\n        {{ event.room_url }}",
        "copy-syntax", (59, 9), "does not compile", "'endfi'"),
    "copy-attribute-in-block": change(
        SMS_COPY, "      copy: |\n        {{ member.name }}，你好\n        {{ event.titel }}一小时后开始\n        {{ event.room_url }}",
        "copy-unknown-attribute", (58, 9), "'event' has no 'titel'", "did you mean 'title'?"),
    "copy-needs-guide-check": change(
        "copy: \"{{ member.name }}", "copy: \"{{ guide.name }}", "copy-render", (56, 13), "member 'm1'", "{% if guide %}"),
    "copy-fails-when-rendered": change(
        "copy: \"{{ member.name }}", "copy: \"{{ member.name + 1 }}", "copy-render", (56, 13), "member 'm1'", "concatenate"),
    "copy-changes-what-it-is-given": change(
        "copy: \"{{ member.name }}", "copy: \"{{ member.tags.append('x') }}{{ member.name }}", "copy-render", (56, 13), "member 'm1'", "unsafe"),
    "copy-file-missing": change(SMS_COPY, "      copy_file: hour.txt", "file-missing", (56, 18), "'hour.txt' not found"),
    # --- referenced CSV files ---
    "members-csv-missing": change("file: members.csv", "file: member.csv", "file-missing", (17, 13), "'member.csv' not found"),
    "guides-csv-missing": change("guides: guides.csv", "guides: guide.csv", "file-missing", (44, 13), "'guide.csv' not found"),
    "csv-missing-column": sheet(
        "members.csv", MEMBERS.replace("id,name,", "id,nmae,"), "csv-missing-column", (1, 1), "missing column(s): name"),
    "csv-gbk-from-excel": sheet(
        "members.csv", MEMBERS.encode("gbk"), "encoding", (2, 1), "not valid utf-8", "GBK", "CSV UTF-8", "encoding: gbk"),
    "csv-utf16-from-excel": sheet("members.csv", MEMBERS.encode("utf-16"), "encoding", (1, 1), "UTF-16", "CSV UTF-8"),
    "csv-duplicate-member-id": sheet(
        "members.csv", MEMBERS + "m2,赵六,13800000004,1\n", "csv-duplicate-id", (5, 1), "duplicate id 'm2'", "line 3"),
    "csv-bad-consent": sheet(
        "members.csv", MEMBERS.replace("13800000001,1", "13800000001,maybe"), "csv-bad-consent", (2, 19),
        "'maybe'", "consent_sms", "是/否"),
    "csv-unclosed-quote": sheet("members.csv", MEMBERS.replace("m2,李四", 'm2,"李四'), "csv-syntax", (3, 1), "never closed"),
    "csv-semicolons": sheet("members.csv", MEMBERS.replace(",", ";"), "csv-delimiter", (1, 1), "commas"),
    "guides-duplicate-channel-code": sheet(
        "guides.csv", GUIDES + "g2,小张,G01,wx_zhang\n", "csv-duplicate-channel-code", (3, 7), "'G01'", "line 2"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_broken_playbook_is_reported_at_the_exact_place(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    path = write_playbook(tmp_path, case.edits, case.files)
    diags = findings(path)
    matching = [d for d in diags if d.code == case.code]
    assert len(matching) == 1, "\n".join(str(d) for d in diags)
    found = matching[0]
    assert found.is_error
    assert Path(found.file).name == case.file
    assert (found.line, found.col) == case.at, str(found)
    for words in case.words:
        assert words in found.message, found.message
    assert "{{" not in found.message  # a message template left unformatted shows doubled braces

    result = CliRunner().invoke(cli, ["--lang", "en", "validate", str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert f"{case.file}:{case.at[0]}:{case.at[1]}: {found.message}" in result.output


def test_without_a_notice_each_missing_field_is_named_at_the_mechanism(tmp_path: Path) -> None:
    notice = TEXT[TEXT.index("  notice:\n"):TEXT.index("path:")]
    diags = [d for d in findings(write_playbook(tmp_path, ((notice, "\n"),))) if d.code == "notice-missing"]
    assert [(d.line, d.col) for d in diags] == [(28, 1)] * 4
    assert [d.message.split("'")[1] for d in diags] == ["eligibility", "method", "redemption", "organiser"]


def test_a_recursive_alias_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    path = write_playbook(tmp_path, (("version: 1\n", "version: 1\nx: &loop\n  - [*loop, *loop]\n"),))
    assert [(d.line, d.col, d.code) for d in findings(path)] == [(3, 6, "recursive-alias")]


def test_a_start_in_an_implausible_year_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = write_playbook(tmp_path, ())
    result = CliRunner().invoke(cli, ["--lang", "en", "validate", "--start", "2300-01-01T19:00", str(path)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"{path}:63:12: cannot plan a live starting 2300-01-01 19:00: the year must be between 2000 and 2199" in result.output


def test_there_are_at_least_30_kinds_of_broken_playbook() -> None:
    kinds = {(c.code, c.words) for c in CASES.values()}
    assert len(kinds) == len(CASES) >= 30


def test_the_fixture_itself_has_no_errors(tmp_path: Path) -> None:
    diags = findings(write_playbook(tmp_path, ()))
    assert [d for d in diags if d.is_error] == []


def test_all_errors_of_a_file_are_reported_at_once(tmp_path: Path) -> None:
    path = write_playbook(tmp_path, (
        ("title: 迷你直播", "title: 2026"),
        ("platform: wechat_channels", "platform: douyn"),
        ("  expected_reach: 100", "  expected_rech: 100"),
    ))
    codes = [(d.line, d.code) for d in findings(path) if d.is_error]
    assert (3, "type") in codes and (13, "unknown-key") in codes and (65, "choice") in codes
    assert codes == sorted(codes)


# --- warnings are not errors, unless --strict ----------------------------------------------------


def test_a_message_allowed_in_quiet_hours_is_a_warning_not_an_error(tmp_path: Path) -> None:
    path = write_playbook(tmp_path, (("at: T-1h", "at: T-1d 22:00\n      quiet_hours: allow"),))
    diags = findings(path)
    assert not any(d.is_error for d in diags)
    allowed = [d for d in diags if d.code == "quiet-hours-allowed"]
    assert [(d.line, d.col) for d in allowed] == [(54, 11)]
    assert "allowed on this message" in allowed[0].message

    runner = CliRunner()
    assert runner.invoke(cli, ["--lang", "en", "validate", str(path)]).exit_code == 0
    strict = runner.invoke(cli, ["--lang", "en", "validate", "--strict", str(path)])
    assert strict.exit_code == 1
    assert f"{path}:54:11: warning: reminder:hour at 22:00 goes out in quiet hours" in strict.stdout


def test_a_group_post_names_personal_copy_and_groups_wecom_cannot_post_into_as_warnings(tmp_path: Path) -> None:
    path = write_playbook(tmp_path, (("channels: [sms, console]", "channels: [sms, wecom_group]"),))
    diags = findings(path)
    assert not any(d.is_error for d in diags)
    personal = [d for d in diags if d.code == "copy-personal-in-group-post"]
    assert [(d.line, d.col) for d in personal] == [(56, 13)] and "'member' is empty" in personal[0].message
    wechat = [d for d in diags if d.code == "group-post-wechat-groups"]
    assert [(d.line, d.col) for d in wechat] == [(55, 23)] and "WeChat group codes" in wechat[0].message
    wecom = write_playbook(tmp_path / "wecom", (("channels: [sms, console]", "channels: [sms, wecom_group]"),
                                                ("kind: wechat_group_codes", "kind: wecom_join_way\n    chat_ids: [wr-1]"),
                                                ("copy: \"{{ member.name }}，", "copy: \"")))
    assert not [d for d in findings(wecom) if d.code in ("copy-personal-in-group-post", "group-post-wechat-groups")], "WeCom groups, greeting all alike"


def test_personal_copy_for_wecom_tasks_is_a_warning_at_the_copy(tmp_path: Path) -> None:
    path = write_playbook(tmp_path, (("channels: [sms, console]", "channels: [sms, wecom_customer]"),))
    diags = findings(path)
    assert not any(d.is_error for d in diags)
    personal = [d for d in diags if d.code == "copy-personal-in-wecom-task"]
    assert [(d.line, d.col) for d in personal] == [(56, 13)]
    assert "a task per customer" in personal[0].message
    generic = write_playbook(tmp_path / "generic", (("channels: [sms, console]", "channels: [sms, wecom_customer]"),
                                                    ('copy: "{{ member.name }}', 'copy: "老朋友')))
    assert not [d for d in findings(generic) if d.code == "copy-personal-in-wecom-task"]


def test_a_malformed_phone_or_email_is_named_at_its_csv_line_and_the_member_kept(tmp_path: Path) -> None:
    members = "id,name,phone,email,consent_sms,consent_email\nm1,张三,13800000001,a@example.com,1,1\n" \
              "m2,李四,+1 415 555 0100,b@example.com,1,1\nm3,王五,13800000003,not-an-address,1,1\n"
    path = write_playbook(tmp_path, (), {"members.csv": members})
    diags = findings(path)
    bad = {d.code: d for d in diags if d.code in ("csv-bad-phone", "csv-bad-email")}
    assert not any(d.is_error for d in bad.values()), "a warning: the member stays, without that channel"
    assert (Path(bad["csv-bad-phone"].file).name, bad["csv-bad-phone"].line, bad["csv-bad-phone"].col) == ("members.csv", 3, 7)
    assert "'+1 415 555 0100' is not a mainland mobile number" in bad["csv-bad-phone"].message
    assert (Path(bad["csv-bad-email"].file).name, bad["csv-bad-email"].line) == ("members.csv", 4)
    assert "'not-an-address' is not an address" in bad["csv-bad-email"].message
