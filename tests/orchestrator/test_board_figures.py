"""The board's arithmetic: pace projection and the A/B difference with its confidence interval."""

from __future__ import annotations


def test_the_board_projects_a_count_at_its_pace_only_inside_the_window() -> None:
    from datetime import datetime, timedelta, timezone

    from orchestrator.board import diff_interval, projection

    start = datetime(2027, 6, 10, 12, tzinfo=timezone.utc)
    end = start + timedelta(hours=10)
    assert projection(300, start, end, start + timedelta(hours=2)) == 1500
    assert projection(300, start, end, start) is None and projection(300, start, end, end) is None and projection(0, start, end, end - timedelta(hours=1)) is None
    d, low, high = diff_interval(100, 1000, 150, 1000) or (0, 0, 0)
    assert round(d, 3) == 0.05 and low < 0.05 < high and low > 0  # 10% vs 15% of 1,000 each: a real difference
    assert diff_interval(0, 0, 1, 10) is None
