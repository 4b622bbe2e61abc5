"""How long validating and planning takes for a big playbook: 100,000 audience rows, 1,000 steps.

Prints figures and the ratio to a bare `csv.reader` pass over the same files, measured in the
same run (PERFORMANCE.md: figures on these machines are noisy; ratios are what we compare).
Target: well under a second per 10,000 rows.

    python bench/plan.py [--rows 100000] [--steps 1000]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from pathlib import Path

from orchestrator import check_playbook, plan, validate

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英"


def write_playbook(folder: Path, rows: int, steps: int) -> Path:
    rng = random.Random(7)
    guides = 40
    with (folder / "guides.csv").open("w", encoding="utf-8-sig", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "name", "channel_code", "contact_code"])
        for g in range(guides):
            w.writerow([f"g{g}", rng.choice(SURNAMES) + rng.choice(GIVEN), f"G{g:03d}", f"wx_g{g}"])
    halves = (rows // 2, rows - rows // 2)
    for seg, count in zip(("a", "b"), halves, strict=True):
        with (folder / f"members-{seg}.csv").open("w", encoding="utf-8-sig", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "name", "phone", "email", "wecom_external_userid", "guide", "tags", "consent_sms", "consent_email", "consent_wecom"])
            for i in range(count):
                w.writerow([
                    f"{seg}{i}", rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN),
                    f"139{rng.randrange(10**8):08d}", f"u{seg}{i}@example.com" if i % 3 == 0 else "",
                    f"wm{seg}{i}" if i % 2 == 0 else "", f"g{rng.randrange(guides)}", "老客|春季",
                    rng.choice("10"), rng.choice("10"), rng.choice("10"),
                ])
    reminders = 30
    cues = steps - reminders - 4 - 5 - 1  # poster, join, live start/end, close; 4 draws + ...; deposit
    lines = [
        "version: 1", "id: bench", "title: 压测直播", "timezone: Asia/Shanghai",
        "goal: {statement: 压测}",
        "audience:", f"  expected_reach: {rows}", "  segments:",
        "    - {id: a, name: 甲, file: members-a.csv}", "    - {id: b, name: 乙, file: members-b.csv}",
        "lever: {incentives: [{id: discount, name: 折扣, copy: 立减50元}]}",
        "mechanism:", "  prizes: [{id: cup, name: 杯子, value_cny: 199}]",
        "  screenshot_draw: {prize: cup}",
        "  deposit_draw: {prize: cup, cutoff: T+3h, products: [{id: p1, name: 商品, deposit_cny: 50}]}",
        "  notice: {eligibility: 所有人, method: 随机, redemption: 七天内, organiser: {name: 品牌, contact: '400'}}",
        "path:",
        "  poster: {at: T-20d 10:00, guides: guides.csv, variants: [{id: A, hook: 甲}, {id: B, hook: 乙}]}",
        "  join: {kind: wecom_join_way, capacity: 500, margin: 480, group_name: '压测{n}群'}",
        "  reminders:",
    ]
    for r in range(reminders):
        lines += [
            f"    - id: r{r}", f"      at: T-{r + 1}d 10:00", "      channels: [wecom_customer, sms, console]",
            "      copy: '{{ member.name }}，{{ event.title }} {{ event.start_text }} 开播'",
            "      sms: {sign: 品牌, template_code: SMS_1, text: '${name}您好，直播即将开始，回复TD退订', params: {name: '{{ member.name }}'}}",
        ]
    lines += [
        "  live: {start: 2027-03-20 19:00, end: 2027-03-20 23:00, platform: douyin, room_url: 'https://live.example/1'}",
        "support:", "  sop:",
    ]
    lines += [f"    - {{minute: {i % 240}, cue: 第{i}条}}" for i in range(cues)]
    lines += ["policy:", "  caps: {per_day: 50, per_month: 500}", "  wecom_monthly_quota: 500"]
    target = folder / "bench.yaml"
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - t0


def bare_read(folder: Path) -> int:
    n = 0
    for name in ("members-a.csv", "members-b.csv"):
        with (folder / name).open(encoding="utf-8-sig", newline="") as fh:
            n += sum(1 for _ in csv.reader(fh))
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = write_playbook(folder, args.rows, args.steps)
        _, t_bare = timed(bare_read, folder)
        (loaded, diags), t_load = timed(check_playbook, path)
        errors = [d for d in diags if d.is_error]
        if loaded is None or errors:
            sys.exit("bench playbook does not load:\n" + "\n".join(map(str, errors[:10])))
        findings, t_validate = timed(validate, loaded)
        if any(d.is_error for d in findings):
            sys.exit("bench playbook does not validate:\n" + "\n".join(str(d) for d in findings if d.is_error))
        p, t_plan = timed(plan, loaded)
    total = t_load + t_validate + t_plan
    per10k = total / (args.rows / 10_000)
    print(f"rows {args.rows:,}  steps {len(p.steps):,}  members {len(loaded.members):,}")
    print(f"load (YAML + CSV)   {t_load * 1000:8.1f} ms")
    print(f"validate            {t_validate * 1000:8.1f} ms")
    print(f"plan                {t_plan * 1000:8.1f} ms")
    print(f"total               {total * 1000:8.1f} ms   = {per10k * 1000:.1f} ms per 10,000 rows (target: well under 1,000 ms)")
    print(f"bare csv.reader     {t_bare * 1000:8.1f} ms   ratio total/bare = {total / t_bare:.1f}x")


if __name__ == "__main__":
    main()
