"""Spreadsheets as managers save them: CSV in UTF-8 (with or without Excel's BOM), typed rows.

Headers may be English or Chinese (`phone` or `手机`). Every problem is reported at the
file, line and column of the cell, naming the column.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from orchestrator.diagnostics import Diagnostic, Severity, did_you_mean
from orchestrator.i18n import _
from orchestrator.playbook import SLUG, Excluded, Guide, Member
from orchestrator.timespec import parse_moment

PHONE = re.compile(r"^1[3-9]\d{9}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
SLUG_RE = re.compile(SLUG)
CHANNEL_CODE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
TAG_SEPARATORS = re.compile(r"[|;；、]")
YES = {"1", "y", "yes", "true", "是", "同意", "已同意", "√", "✓"}
NO = {"", "0", "n", "no", "false", "否", "不同意", "未同意", "×"}

MEMBER_COLUMNS = {
    "id": ("编号", "会员编号", "会员id"),
    "name": ("姓名", "昵称", "名称"),
    "phone": ("手机", "手机号", "电话"),
    "email": ("邮箱", "电子邮件"),
    "wecom_external_userid": ("企微客户id", "external_userid"),
    "guide": ("导购", "导购编号"),
    "tags": ("标签",),
    "consent_sms": ("短信同意",),
    "consent_email": ("邮件同意",),
    "consent_wecom": ("企微同意",),
    "consent_source": ("同意来源",),
    "consent_at": ("同意时间",),
}
GUIDE_COLUMNS = {
    "id": ("编号", "导购编号"),
    "name": ("姓名",),
    "channel_code": ("渠道码",),
    "wecom_userid": ("企微账号", "userid"),
    "contact_code": ("微信号", "联系方式"),
    "phone": ("手机", "手机号"),
    "email": ("邮箱",),
}
EXCLUDED_COLUMNS = {
    "id": ("编号",),
    "name": ("姓名", "昵称"),
    "role": ("身份", "角色"),
    "phone": ("手机", "手机号"),
    "wecom_external_userid": ("企微客户id",),
    "live_ids": ("直播账号",),
}


@dataclass
class Sheet:
    """A CSV read into rows of canonical column -> text, with positions for messages."""

    file: str
    header: dict[str, int]  # canonical column -> index
    raw_header: list[str]
    rows: list[tuple[int, list[str]]]  # (line, cells stripped and padded: one cell per header, then one "")
    lines: list[str]

    def col(self, line: int, index: int) -> int:
        """1-based character column where cell `index` of the record at `line` starts."""
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        field, pos, quoted = 0, 0, False
        while pos < len(text) and field < index:
            ch = text[pos]
            if ch == '"':
                quoted = not quoted
            elif ch == "," and not quoted:
                field += 1
            pos += 1
        return pos + 1

    def index(self, column: str) -> int:
        """Where `column` stands in a row; a column the file lacks reads as the trailing ""."""
        return self.header.get(column, len(self.raw_header))

    def cell(self, cells: list[str], column: str) -> str:
        return cells[self.index(column)]


def _decode(data: bytes, encoding: str) -> str:
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    return data.decode(enc)


def read_sheet(
    path: Path, shown: str, encoding: str, columns: dict[str, tuple[str, ...]], required: tuple[str, ...]
) -> tuple[Sheet | None, list[Diagnostic]]:
    """Read a CSV; on errors return None and say what is wrong where."""
    diags: list[Diagnostic] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, [Diagnostic(shown, 1, 1, "file-missing", _("file not found"))]
    except OSError as e:
        return None, [Diagnostic(shown, 1, 1, "file-unreadable", _("cannot read the file: {reason}").format(reason=e.strerror or e))]
    try:
        text = _decode(data, encoding)
    except LookupError:
        return None, [Diagnostic(shown, 1, 1, "encoding-unknown", _("unknown encoding '{encoding}'; use utf-8 or gbk").format(encoding=encoding))]
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        hint = ""
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = " " + _("(it is UTF-16, Excel's 'Unicode Text': save as 'CSV UTF-8')")
        else:
            try:
                data.decode("gb18030")
                hint = " " + _("(it reads as GBK, Excel's plain 'CSV' on Chinese Windows: save as 'CSV UTF-8' or set encoding: gbk)")
            except UnicodeDecodeError:
                pass
        return None, [Diagnostic(shown, line, 1, "encoding", _("the file is not valid {encoding}").format(encoding=encoding) + hint)]
    if "\x00" in text:
        return None, [Diagnostic(shown, 1, 1, "binary", _("the file contains NUL bytes; it is not a CSV text file"))]
    lines = text.splitlines()
    records: list[tuple[int, list[str]]] = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # newline="": \r, \n and \r\n all end rows
    start = 1
    try:
        for cells in reader:
            records.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as e:
        hint = " " + _("(a quote opened in this row is never closed)") if "end of data" in str(e) else ""
        return None, [Diagnostic(shown, start, 1, "csv-syntax", _("not a readable CSV: {reason}").format(reason=e) + hint)]
    if not records:
        return None, [Diagnostic(shown, 1, 1, "csv-empty", _("the file is empty; the first line must name the columns: {columns}").format(columns=", ".join(columns)))]
    head_line, raw_header = records[0]
    aliases = {name: name for name in columns}
    for name, others in columns.items():
        for other in others:
            aliases[other.lower()] = name
    header: dict[str, int] = {}
    sheet = Sheet(shown, header, raw_header, [], lines)
    for i, title in enumerate(raw_header):
        key = aliases.get(title.strip().lower())
        col = sheet.col(head_line, i)
        if key is None:
            if len(raw_header) == 1 and (";" in title or "\t" in title):
                diags.append(Diagnostic(shown, head_line, col, "csv-delimiter", _("columns are separated by ';' or tabs; save the file as CSV with commas")))
                return None, diags
            diags.append(Diagnostic(shown, head_line, col, "csv-unknown-column", _("unknown column '{column}' is ignored").format(column=title) + did_you_mean(title, columns), Severity.WARNING))
        elif key in header:
            diags.append(Diagnostic(shown, head_line, col, "csv-duplicate-column", _("column '{column}' appears twice").format(column=title)))
        else:
            header[key] = i
    missing = [c for c in required if c not in header]
    if missing:
        diags.append(Diagnostic(shown, head_line, 1, "csv-missing-column", _("missing column(s): {columns}; the first line must name them").format(columns=", ".join(missing))))
        return None, diags
    width = len(raw_header) + 1
    rows = []
    for line, cells in records[1:]:
        stripped = [c.strip() for c in cells[:width - 1]]
        if any(stripped):
            rows.append((line, stripped + [""] * (width - len(stripped))))
    sheet.rows = rows
    return sheet, diags


CONSENT = {**{v: True for v in YES}, **{v: False for v in NO}}


def _bool(sheet: Sheet, line: int, cells: list[str], column: str, diags: list[Diagnostic]) -> bool:
    value = sheet.cell(cells, column)
    answer = CONSENT.get(value) if value in CONSENT else CONSENT.get(value.lower())
    if answer is not None:
        return answer
    diags.append(Diagnostic(sheet.file, line, sheet.col(line, sheet.header[column]), "csv-bad-consent",
                            _("'{value}' in column '{column}' is not yes or no (write 1/0, yes/no or 是/否)").format(value=value, column=column)))
    return False


def normalise_phone(raw: str) -> str | None:
    if PHONE.match(raw):  # the common case, written plainly
        return raw
    digits = re.sub(r"[\s\-()]", "", raw)
    if digits.startswith("+86"):
        digits = digits[3:]
    elif digits.startswith("0086"):
        digits = digits[4:]
    return digits if PHONE.match(digits) else None


def _ids(sheet: Sheet, diags: list[Diagnostic]) -> Iterator[tuple[int, list[str], str]]:
    """Rows with a valid, unique id (others reported)."""
    seen: dict[str, int] = {}
    idx = sheet.header["id"]
    for line, cells in sheet.rows:
        ident = sheet.cell(cells, "id")
        if not SLUG_RE.match(ident):
            what = _("empty id") if not ident else _("id '{value}' may use only letters, digits, '-' and '_' (at most 40)").format(value=ident)
            diags.append(Diagnostic(sheet.file, line, sheet.col(line, idx), "csv-bad-id", what))
            continue
        if ident in seen:
            diags.append(Diagnostic(sheet.file, line, sheet.col(line, idx), "csv-duplicate-id",
                                    _("duplicate id '{value}' (first on line {line})").format(value=ident, line=seen[ident])))
            continue
        seen[ident] = line
        yield line, cells, ident


def _name(sheet: Sheet, line: int, cells: list[str], diags: list[Diagnostic]) -> str | None:
    name = sheet.cell(cells, "name")
    if not name:
        diags.append(Diagnostic(sheet.file, line, sheet.col(line, sheet.header["name"]), "csv-empty-name", _("empty name")))
        return None
    return name


def _optional(sheet: Sheet, line: int, cells: list[str], column: str, check: Callable[[str], str | None],
              diags: list[Diagnostic], message: str) -> str | None:
    raw = sheet.cell(cells, column)
    if not raw:
        return None
    value = check(raw)
    if value is None:
        diags.append(Diagnostic(sheet.file, line, sheet.col(line, sheet.header[column]), f"csv-bad-{column}",
                                message.format(value=raw), Severity.WARNING))
    return value


def members_from_sheet(sheet: Sheet, segment: str) -> tuple[list[Member], list[Diagnostic]]:
    """Members from a sheet. The loop is the hot path of a 100,000-row audience: cells are read by
    precomputed index, and the reporting helpers run only for a cell that is wrong."""
    diags: list[Diagnostic] = []
    out: list[Member] = []
    ix = sheet.index
    i_name, i_phone, i_email, i_wecom = ix("name"), ix("phone"), ix("email"), ix("wecom_external_userid")
    i_guide, i_tags, i_source, i_at = ix("guide"), ix("tags"), ix("consent_source"), ix("consent_at")
    i_sms, i_mail, i_wc = ix("consent_sms"), ix("consent_email"), ix("consent_wecom")
    bad_phone = _("phone '{value}' is not a mainland mobile number (11 digits starting with 1); this member gets no SMS")
    bad_email = _("e-mail '{value}' is not an address; this member gets no e-mail")
    consent = CONSENT.get
    for line, cells, ident in _ids(sheet, diags):
        name = cells[i_name]
        if not name:
            _name(sheet, line, cells, diags)
            continue
        raw_tags = cells[i_tags]
        tags = tuple(t.strip() for t in TAG_SEPARATORS.split(raw_tags) if t.strip()) if raw_tags else ()
        consent_at = None
        if cells[i_at]:
            consent_at = parse_moment(cells[i_at])
            if consent_at is None:
                diags.append(Diagnostic(sheet.file, line, sheet.col(line, i_at), "csv-bad-consent-at",
                                        _("'{value}' in column 'consent_at' is not a date and time like 2026-03-01 10:00").format(value=cells[i_at])))
        phone: str | None = cells[i_phone]
        if phone and not PHONE.match(phone):
            phone = _optional(sheet, line, cells, "phone", normalise_phone, diags, bad_phone)
        email: str | None = cells[i_email]
        if email and not EMAIL.match(email):
            email = _optional(sheet, line, cells, "email", lambda v: None, diags, bad_email)
        sms, mail, wc = consent(cells[i_sms]), consent(cells[i_mail]), consent(cells[i_wc])
        if sms is None or mail is None or wc is None:  # unusual spelling (YES, True) or a wrong value
            sms = _bool(sheet, line, cells, "consent_sms", diags)
            mail = _bool(sheet, line, cells, "consent_email", diags)
            wc = _bool(sheet, line, cells, "consent_wecom", diags)
        out.append(Member(
            id=ident, name=name, segment=segment, phone=phone or None, email=email or None,
            wecom_external_userid=cells[i_wecom] or None, guide=cells[i_guide] or None, tags=tags,
            consent_sms=sms, consent_email=mail, consent_wecom=wc,
            consent_source=cells[i_source] or None, consent_at=consent_at, where=(sheet.file, line),
        ))
    return out, diags


def guides_from_sheet(sheet: Sheet) -> tuple[list[Guide], list[Diagnostic]]:
    diags: list[Diagnostic] = []
    out: list[Guide] = []
    codes: dict[str, int] = {}
    for line, cells, ident in _ids(sheet, diags):
        name = _name(sheet, line, cells, diags)
        code = sheet.cell(cells, "channel_code")
        col = sheet.col(line, sheet.header["channel_code"])
        if not CHANNEL_CODE.match(code):
            diags.append(Diagnostic(sheet.file, line, col, "csv-bad-channel-code",
                                    _("channel code '{value}' must be 1-16 letters, digits, '-' or '_'").format(value=code)))
            continue
        if code in codes:
            diags.append(Diagnostic(sheet.file, line, col, "csv-duplicate-channel-code",
                                    _("channel code '{value}' is already used on line {line}; each guide needs their own").format(value=code, line=codes[code])))
            continue
        codes[code] = line
        if name is None:
            continue
        out.append(Guide(
            id=ident, name=name, channel_code=code,
            wecom_userid=sheet.cell(cells, "wecom_userid") or None,
            contact_code=sheet.cell(cells, "contact_code") or None,
            phone=normalise_phone(sheet.cell(cells, "phone")) if sheet.cell(cells, "phone") else None,
            email=sheet.cell(cells, "email") or None,
            where=(sheet.file, line),
        ))
    return out, diags


def excluded_from_sheet(sheet: Sheet) -> tuple[list[Excluded], list[Diagnostic]]:
    diags: list[Diagnostic] = []
    out: list[Excluded] = []
    roles = {"staff": "staff", "员工": "staff", "工作人员": "staff", "shill": "shill", "水军": "shill", "托": "shill"}
    for line, cells, ident in _ids(sheet, diags):
        name = _name(sheet, line, cells, diags)
        raw_role = sheet.cell(cells, "role") or "staff"
        role = roles.get(raw_role.lower())
        if role is None:
            diags.append(Diagnostic(sheet.file, line, sheet.col(line, sheet.header["role"]), "csv-bad-role",
                                    _("role '{value}' must be staff or shill (员工 or 水军)").format(value=raw_role)))
            continue
        if name is None:
            continue
        phone_raw = sheet.cell(cells, "phone")
        out.append(Excluded(
            id=ident, name=name, role=role,
            phone=normalise_phone(phone_raw) if phone_raw else None,
            wecom_external_userid=sheet.cell(cells, "wecom_external_userid") or None,
            live_ids=tuple(v.strip() for v in re.split(r"[|;]", sheet.cell(cells, "live_ids")) if v.strip()),
        ))
    return out, diags


def parse_consent_time(text: str) -> datetime | None:
    return parse_moment(text)
