"""The 公示 notice: the draw rules published before the live, with the commitment that binds them.

The promotion rules require the prize kinds, counts and values, the draw times and method, and
the organiser to be published beforehand (and kept two years). The text is made from the frozen
playbook and the event's commitment, so what is published is exactly what the draws will use.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from orchestrator.load import LoadedPlaybook
from orchestrator.plan import Stage, plan


def notice_text(loaded: LoadedPlaybook, event_id: str, live_start: datetime, commitment: str, rules_hash: str) -> str:
    pb = loaded.playbook
    m = pb.mechanism
    tz = pb.tz
    p = plan(loaded, live_start.astimezone(tz))
    prizes = {x.id: x for x in m.prizes}
    lines = [f"【活动公示】{pb.title}", "", f"活动编号：{event_id}",
             f"直播时间：{p.live_start.astimezone(tz):%Y年%m月%d日 %H:%M} 至 {p.live_end.astimezone(tz):%H:%M}（{pb.timezone}）", ""]
    n = 1
    sd = m.screenshot_draw
    if sd is not None and sd.enabled:
        hours = [s.at.astimezone(tz) for s in p.steps if s.stage is Stage.DRAW_SCREENSHOT]
        prize = prizes.get(sd.prize)
        lines += [f"{n}. 整点截屏抽奖",
                  f"   时间：{'、'.join(f'{h:%H:%M}' for h in hours)}，每次在该整点后第一分钟内的随机时刻截屏（时刻由下方承诺的随机种子决定）",
                  f"   方式：截屏时屏幕上最后 {sd.screen_size} 条评论{f'中含「{sd.keyword}」的' if sd.keyword else '的'}作者参与，"
                  f"每人一次，工作人员和水军账号除外{'' if sd.allow_repeat_winners else '，已中奖者不再参与'}；每次抽 {sd.winners_per_draw} 位",
                  f"   奖品：{prize.name if prize else sd.prize}，每份价值 {prize.value_cny if prize else '?'} 元，共 {len(hours) * sd.winners_per_draw} 份"]
        n += 1
    dd = m.deposit_draw
    if dd is not None and dd.enabled:
        prize = prizes.get(dd.prize)
        step = next((s for s in p.steps if s.stage is Stage.DRAW_DEPOSIT), None)
        cutoff = step.detail.get("cutoff") if step and step.detail else None
        pools = len(dd.products) if dd.pools == "per_product" else 1
        lines += [f"{n}. 定金抽奖",
                  f"   参与：截至 {datetime.fromisoformat(cutoff).astimezone(tz):%m月%d日 %H:%M} 已付定金且未退款的顾客"
                  if cutoff else "   参与：截止时刻前已付定金且未退款的顾客",
                  f"   商品：{'、'.join(x.name for x in dd.products)}（{'每款单独抽取' if dd.pools == 'per_product' else '合并抽取'}），每池 {dd.winners} 位",
                  f"   奖品：{prize.name if prize else dd.prize}，每份价值 {prize.value_cny if prize else '?'} 元，共 {pools * dd.winners} 份"]
        n += 1
    notice = m.notice
    if notice.eligibility:
        lines.append(f"参与资格：{notice.eligibility}")
    if notice.method:
        lines.append(f"抽奖说明：{notice.method}")
    if notice.redemption:
        lines.append(f"领奖方式：{notice.redemption}")
    if notice.organiser:
        lines.append(f"主办方：{notice.organiser.name}（咨询：{notice.organiser.contact}）")
    lines += ["", "【公平性承诺】",
              "中奖者由一个随机种子、抽奖编号和参与名单的哈希唯一确定。种子在活动前生成并保密，下面是它的承诺值；",
              "活动结束后公布种子和全部参与名单，任何人都可以复算每一次抽奖的结果（orchestrator verify，或文档中的独立脚本）。",
              f"规则哈希：{rules_hash}", f"种子承诺：{commitment}", "本公示及抽奖记录保存两年。"]
    return "\n".join(lines) + "\n"


def write_notice(folder: Path, event_id: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{event_id}-notice.txt"
    path.write_text(text, encoding="utf-8")
    return path
