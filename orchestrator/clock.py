"""The engine's one source of time: real, or accelerated for rehearsals and tests.

An accelerated clock maps real elapsed time onto event time: with speed 60, one real second is
one event minute. Every event keeps its clock (origin and speed) in the store, so every process
that works on it agrees on "now" and on when, in real time, a step falls due.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

UTC = timezone.utc


@dataclass(frozen=True)
class Clock:
    """Event time = `virtual_origin` + (real time - `real_origin`) x `speed`."""

    speed: float = 1.0
    real_origin: float = 0.0  # epoch seconds
    virtual_origin: float = 0.0  # epoch seconds

    @classmethod
    def real(cls) -> Clock:
        return cls()

    @classmethod
    def accelerated(cls, speed: float, virtual_start: datetime, real_start: float | None = None) -> Clock:
        """A clock that shows `virtual_start` now (or at `real_start`) and runs `speed` times faster."""
        if speed <= 0:
            raise ValueError("speed must be positive")
        return cls(speed, time.time() if real_start is None else real_start, virtual_start.timestamp())

    @property
    def is_real(self) -> bool:
        return self.speed == 1.0 and self.real_origin == self.virtual_origin

    def now(self) -> datetime:
        return self.at_real(time.time())

    def at_real(self, real_epoch: float) -> datetime:
        """The event time at real moment `real_epoch`."""
        return datetime.fromtimestamp(self.virtual_origin + (real_epoch - self.real_origin) * self.speed, UTC)

    def real_epoch(self, moment: datetime) -> float:
        """When, in real epoch seconds, the event clock shows `moment`."""
        return self.real_origin + (moment.timestamp() - self.virtual_origin) / self.speed

    def real_delay(self, event_time: timedelta) -> float:
        """Real seconds that pass while `event_time` passes on this clock."""
        return event_time.total_seconds() / self.speed
