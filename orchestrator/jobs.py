"""Arq jobs: names, deterministic ids, and enqueueing on an event's clock.

One job id per step occurrence (`step:<event>:<step>:r<revision>`): enqueueing it twice is a
no-op for arq, rescheduling raises the revision and so makes new ids, and a job whose revision
is no longer the step's does nothing. Drain jobs (the sending of one step) are numbered lanes
with a generation that grows each time a lane hands over to its successor.
"""

from __future__ import annotations

from datetime import datetime, timezone

from arq.connections import ArqRedis

from orchestrator.clock import Clock

QUEUE = "arq:queue"
RUN_STEP = "run_step"
DRAIN = "drain"
UTC = timezone.utc


def step_job_id(event_id: str, step_id: str, revision: int, suffix: str = "") -> str:
    return f"step:{event_id}:{step_id}:r{revision}{suffix}"


def drain_job_id(event_id: str, step_id: str, revision: int, lane: str, generation: int) -> str:
    return f"drain:{event_id}:{step_id}:r{revision}:{lane}:{generation}"


async def enqueue_step(pool: ArqRedis, clock: Clock, event_id: str, step_id: str, revision: int, at: datetime, suffix: str = "") -> bool:
    """Defer the step's job to the real moment the event clock shows `at`; False if it exists."""
    when = datetime.fromtimestamp(clock.real_epoch(at), UTC)
    job = await pool.enqueue_job(RUN_STEP, event_id, step_id, revision,
                                 _job_id=step_job_id(event_id, step_id, revision, suffix), _defer_until=when)
    return job is not None


async def enqueue_drain(pool: ArqRedis, event_id: str, step_id: str, revision: int, lane: str, generation: int, delay: float = 0.0) -> bool:
    job = await pool.enqueue_job(DRAIN, event_id, step_id, revision, lane, generation,
                                 _job_id=drain_job_id(event_id, step_id, revision, lane, generation),
                                 _defer_by=delay if delay > 0 else None)
    return job is not None


async def job_known(pool: ArqRedis, job_id: str) -> bool:
    """Whether arq still holds the job (queued, running or its kept result)."""
    return bool(await pool.exists(f"arq:job:{job_id}", f"arq:in-progress:{job_id}", f"arq:result:{job_id}"))


async def drop_jobs(pool: ArqRedis, prefix: str) -> int:
    """Remove queued jobs whose id starts with `prefix` (cancel, reschedule); running ones finish and find nothing to do."""
    dropped = 0
    found = [member async for member, _score in pool.zscan_iter(QUEUE, match=f"{prefix}*")]
    for raw in found:
        job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        removed = await pool.zrem(QUEUE, job_id)
        await pool.delete(f"arq:job:{job_id}")
        dropped += int(removed)
    return dropped
