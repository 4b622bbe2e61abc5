"""Times as playbooks write them: durations, `T-1h`-style offsets, absolute moments, quiet hours.

Pure functions only: resolving a spec takes the live start and the event timezone as values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

from orchestrator.i18n import N_

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_RELATIVE = re.compile(r"^T\s*(?:([+-])\s*([0-9dhms]+))?(?:\s+(\d{1,2}:\d{2}))?$")
_ABSOLUTE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?\s*(Z|[+-]\d{2}:?\d{2})?$"
)
DURATION_PATTERN = r"^(\d+d)?(\d+h)?(\d+m)?(\d+s)?$"
TIMESPEC_PATTERN = (
    r"^(T\s*([+-]\s*[0-9dhms]+)?(\s+\d{1,2}:\d{2})?"
    r"|\d{4}-\d{2}-\d{2}[ T]\d{1,2}:\d{2}(:\d{2})?\s*(Z|[+-]\d{2}:?\d{2})?)$"
)
MOMENT_PATTERN = r"^\d{4}-\d{2}-\d{2}[ T]\d{1,2}:\d{2}(:\d{2})?\s*(Z|[+-]\d{2}:?\d{2})?$"
# Offsets and durations beyond a year, and dates outside these years, are typos (T-400d, 0026-12-05);
# refusing them also keeps every sum the planner makes far from datetime's limits.
MAX_SPAN = timedelta(days=366)
FIRST_YEAR, LAST_YEAR = 2000, 2199


def parse_duration(text: str) -> timedelta | None:
    """'1h30m' -> timedelta; None when the text is not a duration."""
    m = _DURATION.match(text.strip())
    if not m or not any(m.groups()):
        return None
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    try:
        return timedelta(days=d, hours=h, minutes=mi, seconds=s)
    except OverflowError:  # more than a billion days: no date arithmetic could use it
        return None


def format_duration(delta: timedelta) -> str:
    """timedelta -> '1d2h30m' (the inverse of parse_duration)."""
    total = int(abs(delta).total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts) or "0m"


def parse_clock(text: str) -> time | None:
    m = _CLOCK.match(text.strip())
    return time(int(m.group(1)), int(m.group(2))) if m else None


def _parse_offset(text: str) -> tzinfo | None:
    from datetime import timezone

    if text == "Z":
        return timezone.utc
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


def parse_moment(text: str) -> datetime | None:
    """'2026-12-05 19:00' (naive: event-local) or with an offset; None if not a moment."""
    m = _ABSOLUTE.match(text.strip())
    if not m:
        return None
    y, mo, d, h, mi, s, off = m.groups()
    try:
        value = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0))
        return value.replace(tzinfo=_parse_offset(off)) if off else value
    except ValueError:  # no such day or time, or an offset of 24 hours or more
        return None


@dataclass(frozen=True, slots=True)
class TimeSpec:
    """When a step happens: relative to the live start (`T-1d 20:00`) or absolute."""

    text: str
    offset: timedelta | None = None  # relative: signed offset from the live start
    clock: time | None = None  # relative with a wall-clock time on the offset's day
    moment: datetime | None = None  # absolute; naive means event-local

    @property
    def is_relative(self) -> bool:
        return self.moment is None

    def resolve(self, live_start: datetime, tz: tzinfo, shift: timedelta = timedelta(0)) -> datetime:
        """The aware moment this spec names for a live starting at `live_start`.

        `shift` moves absolute moments along when the live itself was moved (`plan --start`).
        Offsets are elapsed time, so the sums run in UTC: `+` on datetimes of one zone would move
        the wall clock instead, and be an hour off across a daylight-saving change.
        """
        if self.moment is not None:
            m = self.moment if self.moment.tzinfo else self.moment.replace(tzinfo=tz)
            return m.astimezone(timezone.utc) + shift
        offset = self.offset or timedelta(0)
        if self.clock is None:
            return live_start.astimezone(timezone.utc) + offset
        day: date = live_start.astimezone(tz).date() + timedelta(days=offset.days)
        return datetime.combine(day, self.clock, tzinfo=tz).astimezone(timezone.utc)

    def __str__(self) -> str:
        return self.text


def parse_timespec(text: str) -> TimeSpec | None:
    """Parse a time as playbooks write it; None when it is neither relative nor absolute."""
    raw = text.strip()
    m = _RELATIVE.match(raw)
    if m:
        sign, dur, clock_text = m.groups()
        offset = timedelta(0)
        if dur:
            parsed = parse_duration(dur)
            if parsed is None:
                return None
            offset = -parsed if sign == "-" else parsed
        clock = None
        if clock_text:
            clock = parse_clock(clock_text)
            if clock is None or offset % timedelta(days=1):
                return None  # a wall-clock time needs a whole-day offset: `T-1d 20:00`
        return TimeSpec(raw, offset=offset, clock=clock)
    moment = parse_moment(raw)
    return TimeSpec(raw, moment=moment) if moment else None


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily window, possibly across midnight (21:00-08:00), in the event timezone."""

    start: time
    end: time
    text: str

    def contains(self, local: time) -> bool:
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def __str__(self) -> str:
        return self.text


def parse_quiet_hours(text: str) -> QuietHours | None:
    parts = re.split(r"\s*[-–~]\s*", text.strip())
    if len(parts) != 2:
        return None
    a, b = parse_clock(parts[0]), parse_clock(parts[1])
    if a is None or b is None or a == b:
        return None
    return QuietHours(a, b, f"{a:%H:%M}-{b:%H:%M}")


# --- pydantic field types ------------------------------------------------------------------


TEMPLATES = {
    "duration": N_("'{value}' is not a duration; write e.g. 30m, 1h30m or 2d"),
    "timespec": N_(
        "'{value}' is not a time; write T-1h, T-1d 20:00, T+30m (relative to the live start) "
        "or 2026-12-05 19:00 (event timezone)"
    ),
    "moment": N_("'{value}' is not a date and time; write 2026-12-05 19:00 (event timezone) or add an offset: 2026-12-05T19:00+08:00"),
    "quiet_window": N_("'{value}' is not a daily window; write HH:MM-HH:MM, e.g. 21:00-08:00, or off"),
    "too_far": N_("'{value}' is more than a year; offsets and durations may be at most 366 days"),
    "year": N_("'{value}' is not a plausible date: the year must be between 2000 and 2199"),
}


def _out_of_range(value: Any) -> str | None:
    """The TEMPLATES code for a parsed time beyond MAX_SPAN or the plausible years, else None."""
    if isinstance(value, TimeSpec):
        value = value.moment if value.moment is not None else value.offset or timedelta(0)
    if isinstance(value, timedelta) and abs(value) > MAX_SPAN:
        return "too_far"
    if isinstance(value, datetime) and not FIRST_YEAR <= value.year <= LAST_YEAR:
        return "year"
    return None


def _check(parser: Any, code: str) -> Any:
    message = TEMPLATES[code]

    def validate(value: Any) -> Any:
        if isinstance(value, (datetime, timedelta, time, TimeSpec, QuietHours)):
            return value
        if isinstance(value, int) and code == "duration":
            value = f"{value}m" if value else "0m"  # a bare number of minutes
        if not isinstance(value, str):
            raise PydanticCustomError(code, message, {"value": repr(value)})
        parsed = parser(value)
        if parsed is None:
            raise PydanticCustomError(code, message, {"value": value})
        problem = _out_of_range(parsed)
        if problem is not None:
            raise PydanticCustomError(problem, TEMPLATES[problem], {"value": value})
        return parsed

    return validate


Duration = Annotated[
    timedelta,
    BeforeValidator(_check(parse_duration, "duration")),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({
        "anyOf": [
            {"type": "string", "pattern": DURATION_PATTERN},
            {"type": "integer", "minimum": 0, "description": "minutes"},
        ],
        "examples": ["30m", "1h30m", "2d"],
    }),
]

When = Annotated[
    TimeSpec,
    BeforeValidator(
        _check(parse_timespec, "timespec")
    ),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": TIMESPEC_PATTERN, "examples": ["T-1h", "T-1d 20:00", "2026-12-05 19:00"]}
    ),
]

Moment = Annotated[
    datetime,
    BeforeValidator(
        _check(parse_moment, "moment")
    ),
    PlainSerializer(lambda d: d.isoformat(sep=" ", timespec="minutes"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": MOMENT_PATTERN, "examples": ["2026-12-05 19:00"]}),
]

QuietWindow = Annotated[
    QuietHours,
    BeforeValidator(
        _check(parse_quiet_hours, "quiet_window")
    ),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({
        "anyOf": [
            {"type": "string", "pattern": r"^(\d{1,2}:\d{2}\s*[-–~]\s*\d{1,2}:\d{2}|off|none|no)$"},
            {"const": False},
        ],
        "examples": ["21:00-08:00", "off"],
    }),
]


DEFAULT_QUIET_HOURS = QuietHours(time(21, 0), time(8, 0), "21:00-08:00")
