"""Writes small event playbooks for engine tests: members with every kind of consent, staff, reminders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LIVE_START = "2027-06-10 19:00"
LIVE_END = "2027-06-10 21:00"


@dataclass
class Person:
    id: str
    name: str
    phone: str = ""
    email: str = ""
    sms: bool = False
    mail: bool = False


@dataclass
class EventFiles:
    id: str = "engine-test"
    people: list[Person] = field(default_factory=list)
    staff: list[Person] = field(default_factory=list)
    reminders: list[tuple[str, str, str]] = field(default_factory=lambda: [("hour", "T-1h", "[sms, email]"), ("soon", "T-10m", "[sms, email]")])
    preview: str | None = "T-2h"
    policy: str = "caps: {per_day: 5, per_month: 20}"
    live_start: str = LIVE_START
    live_end: str = LIVE_END
    poster_at: str = "T-3h"
    join: str = 'join: {kind: wechat_group_codes, capacity: 200, margin: 190, group_name: "测试群{n}"}'
    guides: str = "id,name,channel_code\ng1,小李,G01\n"
    variants: str = "[{id: A, hook: 进群抽奖}]"
    draws: str = "  screenshot_draw: {winners_per_draw: 1, screen_size: 10, prize: cup}"
    accounts: str = ""  # extra exclusions.accounts items, YAML flow mappings one per line

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        rows = ["id,name,phone,email,consent_sms,consent_email"]
        rows += [f"{p.id},{p.name},{p.phone},{p.email},{int(p.sms)},{int(p.mail)}" for p in self.people + self.staff]
        (folder / "members.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        (folder / "guides.csv").write_text(self.guides, encoding="utf-8")
        staff = "\n".join([f"      - {{id: {p.id}, name: {p.name}, role: staff}}" for p in self.staff]
                          + [f"      - {a}" for a in self.accounts.splitlines() if a.strip()])
        staff_block = f"    accounts:\n{staff}" if staff else "    accounts: []"
        preview = (f"""  preview:
    id: preview
    at: {self.preview}
    channels: [sms, email]
    copy: "{{{{ member.name }}}}，预告：{{{{ event.title }}}} {{{{ event.start_text }}}}"
    sms: {{sign: 测试品牌, template_code: SMS_100002, text: "${{name}}，直播预告，回复TD退订", params: {{name: "{{{{ member.name }}}}"}}}}
    email: {{subject: "预告 {{{{ event.title }}}}"}}
""" if self.preview else "")
        reminders = "".join(f"""    - id: {rid}
      at: {at}
      channels: {channels}
      copy: "{{{{ member.name }}}}，{{{{ event.title }}}} 即将开始 {{{{ event.room_url }}}}"
      sms: {{sign: 测试品牌, template_code: SMS_100001, text: "${{name}}，直播即将开始，回复TD退订", params: {{name: "{{{{ member.name }}}}"}}}}
      email: {{subject: "{{{{ event.title }}}} 提醒"}}
""" for rid, at, channels in self.reminders)
        text = f"""version: 1
id: {self.id}
title: 引擎测试直播
timezone: Asia/Shanghai
goal:
  statement: 测试引擎
audience:
  expected_reach: {max(1, len(self.people))}
  segments:
    - {{id: all, name: 全部, file: members.csv}}
  exclusions:
{staff_block}
lever:
  incentives:
    - {{id: discount, name: 老客折扣, copy: 老客立减50元}}
mechanism:
  prizes:
    - {{id: cup, name: 保温杯, value_cny: 199}}
{self.draws}
  notice:
    eligibility: 所有观众
    method: 整点随机截屏
    redemption: 七天内领取
    organiser: {{name: 测试品牌, contact: 400-000-0000}}
path:
  poster:
    at: {self.poster_at}
    guides: guides.csv
    variants: {self.variants}
  {self.join}
{preview}  reminders:
{reminders}  live:
    start: {self.live_start}
    end: {self.live_end}
    platform: wechat_channels
    room_url: https://channels.weixin.qq.com/live/engine-test
    close_after: 10m
policy:
  {self.policy}
"""
        path = folder / "playbook.yaml"
        path.write_text(text, encoding="utf-8")
        return path


def crowd(n: int, *, start: int = 1, sms: bool = True, mail: bool = False) -> list[Person]:
    return [Person(f"m{i:06d}", f"顾客{i}", f"138{i:08d}", f"c{i}@example.com", sms, mail) for i in range(start, start + n)]
