"""The playbook model: the five-part plan (goal, audience, lever, mechanism, path) plus support and policy.

These pydantic models are the single source of truth for the file format: the loader
validates YAML against them, `orchestrator schema` prints their JSON Schema, and
docs/playbook.md documents every field (a test keeps the two in step).
Members, guides and excluded accounts read from CSV files are plain dataclasses
(`Member`, `Guide`, `Excluded`): a playbook may name 100,000 of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from orchestrator.i18n import N_
from orchestrator.timespec import DEFAULT_QUIET_HOURS, Duration, Moment, QuietWindow, When

SLUG = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$"
IDENT = r"^[a-z][a-z0-9_]{0,39}$"
COLOUR = r"^#[0-9A-Fa-f]{6}$"
Slug = Annotated[str, Field(pattern=SLUG, description="an id: letters, digits, '-' and '_', at most 40")]
Ident = Annotated[str, Field(pattern=IDENT, description="an id usable in copy: lowercase letters, digits, '_'")]
Cny = Annotated[int, Field(ge=0, description="an amount in whole CNY (元)")]
Count = Annotated[int, Field(ge=0)]
SHOW_MINUTES = 7 * 24 * 60  # a live lasts at most 7 days (validate.py); cues beyond are typos


TEMPLATES = {
    "one_source": N_("a segment needs exactly one of 'file' or 'members'"),
    "one_copy": N_("a message needs exactly one of 'copy' or 'copy_file'"),
    "timezone": N_("'{value}' is not an IANA timezone; write e.g. Asia/Shanghai"),
    "quota": N_("'{value}' is not a quota; write a whole number of messages (at least 1) or days_in_month"),
}


class Channel(str, Enum):
    """Where a message goes. Per-member channels need an address and consent on the member."""

    SMS = "sms"
    EMAIL = "email"
    WECOM_CUSTOMER = "wecom_customer"
    WECOM_GROUP = "wecom_group"
    WEBHOOK = "webhook"
    CONSOLE = "console"


PER_MEMBER_CHANNELS = (Channel.SMS, Channel.EMAIL, Channel.WECOM_CUSTOMER, Channel.WEBHOOK, Channel.CONSOLE)
WECOM_CHANNELS = (Channel.WECOM_CUSTOMER, Channel.WECOM_GROUP)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


# --- goal (目的) ----------------------------------------------------------------------------


class Kpi(Model):
    """Targets for each funnel step; any may be left out."""

    reached: Count | None = Field(None, description="people the poster and messages reach")
    scanned: Count | None = Field(None, description="unique people who scan a poster code")
    joined: Count | None = Field(None, description="unique people who join a group")
    reminded: Count | None = Field(None, description="people a reminder was delivered to")
    entered_live: Count | None = Field(None, description="unique people who enter the live room")
    commented: Count | None = Field(None, description="unique people who comment in the live")
    deposits: Count | None = Field(None, description="paid deposits (定金)")
    orders: Count | None = Field(None, description="orders")
    gmv_cny: Cny | None = Field(None, description="gross merchandise value in CNY")


class Goal(Model):
    statement: str = Field(min_length=1, description="what the event is for, in one or two sentences (目的)")
    kpi: Kpi = Field(default_factory=Kpi, description="targets per funnel step")


# --- audience (对象) ------------------------------------------------------------------------


class Consent(Model):
    """Consent per channel for an inline member (CSV files use consent_* columns)."""

    sms: bool = False
    email: bool = False
    wecom: bool = False


class InlineMember(Model):
    id: Slug
    name: str = Field(min_length=1, description="display name")
    phone: str | None = Field(None, description="mainland mobile number, 11 digits")
    email: str | None = None
    wecom_external_userid: str | None = Field(None, description="WeCom external user id (客户 id)")
    guide: Slug | None = Field(None, description="id of the guide who owns this customer")
    tags: list[str] = Field(default_factory=list)
    consent: Consent = Field(default_factory=Consent)


class Segment(Model):
    """A named part of the audience, from a CSV file or an inline list."""

    id: Slug
    name: str = Field(min_length=1, description="how managers call the segment")
    file: str | None = Field(None, description="CSV of members, relative to the playbook (UTF-8, BOM allowed)")
    encoding: str = Field("utf-8", description="encoding of the CSV file; Excel's plain 'CSV' on Chinese Windows is gbk")
    members: list[InlineMember] | None = Field(None, description="members written inline instead of a file")

    @model_validator(mode="after")
    def _one_source(self) -> Segment:
        if (self.file is None) == (self.members is None):
            raise PydanticCustomError("one_source", TEMPLATES["one_source"], {})
        return self


class InlineExcluded(Model):
    id: Slug
    name: str = Field(min_length=1)
    role: Literal["staff", "shill"] = "staff"
    phone: str | None = None
    wecom_external_userid: str | None = None
    live_ids: list[str] = Field(default_factory=list, description="platform user ids, e.g. 'douyin:SEC_OPENID'")


class Exclusions(Model):
    """Staff and shill (水军) accounts: never reminded, never winners."""

    file: str | None = Field(None, description="CSV of excluded accounts (id, name, role, phone, ...)")
    encoding: str = "utf-8"
    accounts: list[InlineExcluded] = Field(default_factory=list)


class Audience(Model):
    expected_reach: Count = Field(description="people the event expects to reach (曝光)")
    segments: list[Segment] = Field(min_length=1)
    exclusions: Exclusions = Field(default_factory=Exclusions)


# --- lever (抓手) ---------------------------------------------------------------------------


class Incentive(Model):
    id: Ident = Field(description="used in copy as {{ lever.<id> }}")
    name: str = Field(min_length=1)
    copy_text: str = Field(alias="copy", min_length=1, description="the incentive's wording")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Lever(Model):
    incentives: list[Incentive] = Field(min_length=1)


# --- mechanism (机制) -----------------------------------------------------------------------


class Prize(Model):
    id: Slug
    name: str = Field(min_length=1)
    kind: Literal["goods", "coupon", "cash", "service"] = "goods"
    value_cny: Cny = Field(description="market value of one prize in CNY; the law caps it at 50,000")


class ScreenshotDraw(Model):
    """整点随机截屏抽奖: at every whole hour of the live the comments on screen are frozen."""

    enabled: bool = True
    winners_per_draw: int = Field(3, ge=1, le=100)
    screen_size: int = Field(20, ge=1, le=500, description="comments visible on the 'screen' at the freeze")
    keyword: str | None = Field(None, description="only comments containing this text enter")
    prize: Slug = Field(description="id of the prize each winner gets")
    allow_repeat_winners: bool = Field(False, description="whether one person may win more than one draw")
    include_end: bool = Field(True, description="whether the whole hour at which the live ends holds a draw")


class Product(Model):
    id: Slug
    name: str = Field(min_length=1)
    deposit_cny: Cny
    price_cny: Cny | None = None


class DepositDraw(Model):
    """A draw among people with a paid, not refunded deposit on a featured product."""

    enabled: bool = True
    products: list[Product] = Field(min_length=1)
    winners: int = Field(1, ge=1, le=1000, description="winners per pool")
    pools: Literal["per_product", "single"] = "per_product"
    prize: Slug
    cutoff: When = Field(description="deposits paid after this do not enter")
    draw_at: When | None = Field(None, description="when the draw runs (default: at the cut-off)")


class Organiser(Model):
    name: str = Field(min_length=1)
    contact: str = Field(min_length=1, description="phone or WeChat id for questions about prizes")


class Notice(Model):
    """公示: what the promotion rules require to be published before the event.

    Prize types, counts and values and the draw times are taken from the mechanism.
    """

    eligibility: str | None = Field(None, description="who may take part")
    method: str | None = Field(None, description="how winners are drawn, in plain words")
    redemption: str | None = Field(None, description="how and by when winners receive their prize")
    organiser: Organiser | None = None


class Mechanism(Model):
    prizes: list[Prize] = Field(default_factory=list)
    screenshot_draw: ScreenshotDraw | None = None
    deposit_draw: DepositDraw | None = None
    notice: Notice = Field(default_factory=Notice)


# --- path (路径) ----------------------------------------------------------------------------


class Variant(Model):
    id: Slug
    hook: str = Field(min_length=1, description="the incentive line printed on the poster (钩子)")
    weight: int = Field(1, ge=1, description="relative share of guides posting this variant")


class PosterLayout(Model):
    """The poster's look; rendered to PNG by the poster stage."""

    background: str = Field("#C8102E", description="a colour (#RRGGBB) or an image file beside the playbook")
    width: int = Field(1080, ge=320, le=4096)
    height: int = Field(1920, ge=320, le=8192)
    title: str | None = Field(None, description="headline; default: the event title")
    subtitle: str | None = None
    text_colour: str = Field("#FFFFFF", pattern=COLOUR, description="#RRGGBB")
    accent_colour: str = Field("#FFD166", pattern=COLOUR, description="the label, the hook's band and the bullets, #RRGGBB")
    incentives: list[Slug] | None = Field(None, description="ids of the lever's incentives printed under the hook (default: all; [] for none)")


class Poster(Model):
    at: When = Field(description="when guides get the poster to post in Moments (朋友圈)")
    guides: str = Field(description="CSV of guides: id, name, channel_code, wecom_userid, contact_code")
    encoding: str = "utf-8"
    variants: list[Variant] = Field(min_length=1, description="A/B hook variants")
    layout: PosterLayout = Field(default_factory=PosterLayout)
    channels: list[Channel] = Field(default_factory=lambda: [Channel.CONSOLE], description="how guides receive their posters")


class WeChatGroupCode(Model):
    """An uploaded QR code of an ordinary WeChat group (valid 7 days)."""

    name: str = Field(min_length=1)
    image: str = Field(description="PNG/JPEG of the group QR, relative to the playbook")
    expires: Moment = Field(description="when the code stops working (7 days after it was saved)")


class Join(Model):
    """活码: one code that sends each scanner to a group with room."""

    kind: Literal["wecom_join_way", "wechat_group_codes"]
    opens_at: When | None = Field(None, description="when scanning starts to route to groups (default: poster time)")
    capacity: int = Field(200, ge=2, description="members a group holds")
    margin: int = Field(190, ge=1, description="rotate to the next group when this many have joined")
    group_name: str = Field(description="name pattern; {n} is the group number, e.g. 春季焕活{n}群")
    welcome: str | None = Field(None, description="welcome copy sent once to each member who joins")
    welcome_file: str | None = None
    welcome_channels: list[Channel] = Field(default_factory=lambda: [Channel.WECOM_CUSTOMER], min_length=1,
                                            description="how the welcome reaches a person who joined, in order of preference")
    groups_per_join_way: int = Field(5, ge=1, description="WeCom: groups behind one join way (at most 5)")
    state_prefix: str = Field("", description="WeCom: prefix of the join way 'state' (+ guide channel code, ≤30 chars)")
    chat_ids: list[str] = Field(default_factory=list, description="WeCom: chat ids of the customer groups the join way starts with (made in the WeCom app)")
    codes: list[WeChatGroupCode] = Field(default_factory=list, description="uploaded WeChat group codes")


class SmsTemplate(Model):
    """An approved Aliyun SMS template and how to fill it."""

    sign: str = Field(min_length=1, description="approved sign name (签名)")
    template_code: str = Field(pattern=r"^SMS_\d+$", description="e.g. SMS_123456789")
    text: str = Field(min_length=1, description="the approved template text with ${name} parameters")
    params: dict[str, str] = Field(default_factory=dict, description="parameter -> Jinja2 copy")
    marketing: bool = Field(True, description="marketing templates must carry an opt-out (回复TD退订)")


class EmailCopy(Model):
    subject: str = Field(min_length=1)
    html_file: str | None = Field(None, description="an HTML body (Jinja2); default: the copy as paragraphs")


class Message(Model):
    """A push to the audience: the preview or a reminder."""

    id: Slug
    at: When
    channels: list[Channel] = Field(min_length=1, description="in order of preference: each member gets it once, through the first channel that reaches them")
    segments: list[Slug] | None = Field(None, description="segment ids; default: the whole audience")
    copy_text: str | None = Field(None, alias="copy", min_length=1, description="Jinja2 copy, inline")
    copy_file: str | None = Field(None, description="Jinja2 copy in a file beside the playbook")
    sms: SmsTemplate | None = None
    email: EmailCopy | None = None
    quiet_hours: Literal["respect", "allow"] = Field("respect", description="'allow' lets this message go out in quiet hours")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_copy(self) -> Message:
        if (self.copy_text is None) == (self.copy_file is None):
            raise PydanticCustomError("one_copy", TEMPLATES["one_copy"], {})
        return self


class Live(Model):
    start: Moment = Field(description="live start in the event timezone")
    end: Moment
    platform: Literal["wechat_channels", "douyin", "bilibili", "taobao", "kuaishou", "other"]
    room_url: str = Field(pattern=r"^https?://", description="link people open to enter the room")
    comment_source: Literal["bilibili_open_live", "douyin_push", "wxlivespy", "csv", "api"] = "api"
    close_after: Duration = Field(timedelta(minutes=30), description="the event closes this long after the live ends")


class PathPlan(Model):
    poster: Poster
    join: Join
    preview: Message | None = None
    reminders: list[Message] = Field(default_factory=list)
    live: Live


# --- support (辅助) and policy -------------------------------------------------------------


class Cue(Model):
    minute: int = Field(ge=0, le=SHOW_MINUTES, description="minute of the show, 0 = live start")
    cue: str = Field(min_length=1, description="what the host does or says")


class StaffScript(Model):
    """水军话术: lines staff post in the room. Shown to staff, never sent."""

    id: Slug
    minute: int | None = Field(None, ge=0, le=SHOW_MINUTES)
    lines: list[str] = Field(min_length=1)


class Alerts(Model):
    """Staff alerts sent to the internal WeCom robot (text ≤ 2048 bytes each)."""

    draw_soon: str | None = Field(None, description="copy of the 'draw coming' alert")
    draw_soon_before: Duration = timedelta(minutes=5)
    pool_low: str | None = Field(None, description="copy of the 'pool running low' alert")
    pool_low_below: int = Field(50, ge=1, description="alert when fewer places than this are left in the group pool")
    tasks_unconfirmed: str | None = None


class Support(Model):
    sop: list[Cue] = Field(default_factory=list, description="host cues by minute of the show")
    staff_scripts: list[StaffScript] = Field(default_factory=list)
    alerts: Alerts = Field(default_factory=Alerts)


class Caps(Model):
    per_day: int = Field(3, ge=1, description="messages one person may get per day, across events")
    per_month: int = Field(12, ge=1, description="messages one person may get per calendar month, across events")


class LateSteps(Model):
    action: Literal["run_late", "mark_missed"] = "run_late"
    tolerance: Duration = Field(timedelta(minutes=15), description="how late a step may still run")


def _quota(value: object) -> object:
    if value == "days_in_month" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise PydanticCustomError("quota", TEMPLATES["quota"], {"value": value})


class Policy(Model):
    quiet_hours: QuietWindow | None = Field(DEFAULT_QUIET_HOURS, description="no messages to people in this window (event timezone); 'off' for none")
    quiet_hours_action: Literal["defer", "skip"] = Field(
        "defer", description="what the engine does with a message whose moment falls in quiet hours: defer it to the window's end, or skip it"
    )
    caps: Caps = Field(default_factory=Caps)
    rate_limits: dict[Channel, Annotated[int, Field(ge=1)]] = Field(default_factory=dict, description="messages per second per channel")
    late_steps: LateSteps = Field(default_factory=LateSteps)
    wecom_monthly_quota: Annotated[int | Literal["days_in_month"], BeforeValidator(_quota)] = Field(
        "days_in_month", description="WeCom mass messages per customer per month: a number, or days_in_month (WeCom's rule since 2025)"
    )

    @field_validator("quiet_hours", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "none", "no")):
            return None
        return value



# --- the playbook -------------------------------------------------------------------------


class Playbook(Model):
    """An event: goal — audience — lever — mechanism — path (目的—对象—抓手—机制—路径)."""

    version: Literal[1] = Field(description="format version; always 1")
    id: Slug = Field(description="the event's id, used in codes and links")
    title: str = Field(min_length=1, max_length=60)
    timezone: str = Field("Asia/Shanghai", description="IANA timezone of every local time in the file")
    goal: Goal
    audience: Audience
    lever: Lever
    mechanism: Mechanism
    path: PathPlan
    support: Support = Field(default_factory=Support)
    policy: Policy = Field(default_factory=Policy)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise PydanticCustomError("timezone", TEMPLATES["timezone"], {"value": value}) from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


SECTIONS = ("goal", "audience", "lever", "mechanism", "path", "support", "policy")


# --- rows read from CSV files ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    name: str
    segment: str
    phone: str | None = None
    email: str | None = None
    wecom_external_userid: str | None = None
    guide: str | None = None
    tags: tuple[str, ...] = ()
    consent_sms: bool = False
    consent_email: bool = False
    consent_wecom: bool = False
    consent_source: str | None = None
    consent_at: datetime | None = None
    where: tuple[str, int] = ("", 0)  # file and line it came from


@dataclass(frozen=True, slots=True)
class Guide:
    id: str
    name: str
    channel_code: str
    wecom_userid: str | None = None
    contact_code: str | None = None
    phone: str | None = None
    email: str | None = None
    where: tuple[str, int] = ("", 0)


@dataclass(frozen=True, slots=True)
class Excluded:
    id: str
    name: str
    role: str
    phone: str | None = None
    wecom_external_userid: str | None = None
    live_ids: tuple[str, ...] = field(default=())
