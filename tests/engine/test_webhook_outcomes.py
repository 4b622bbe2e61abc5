"""What a webhook send whose answer never comes becomes: with an idempotency key, a retry (the
peer de-duplicates); without one, `unknown`, because the peer may already have the message."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.channels.base import Outgoing
from orchestrator.channels.webhook import WebhookTransport
from orchestrator.fanout import result_of
from orchestrator.ledger import Claimed
from tests.engine.receiver import Receiver, RunningReceiver
from tests.ports import refusing_port


def message(member: str) -> Outgoing:
    return Outgoing(f"ev:reminder:go:{member}:webhook", "ev", "reminder:go", member, "webhook", "王伟", "提醒", {"phone": "13900000000"})


@pytest.mark.parametrize(("idempotent", "state", "ledger_state"), [(True, "retry", "planned"), (False, "unknown", "unknown")])
def test_a_request_that_went_out_but_got_no_answer(idempotent: bool, state: str, ledger_state: str) -> None:
    with RunningReceiver(Receiver(delay=1.0, honour_keys=idempotent)) as receiver:
        arrived = receiver.notify_at(1)
        async def main() -> None:
            transport = WebhookTransport(receiver.url, receiver.secret, idempotent=idempotent, timeout=0.3)
            [outcome] = await transport.send_batch([message("m1")])
            await transport.close()
            assert outcome.state == state and "no answer within 0.3 s" in (outcome.error or "")
            row = Claimed(1, "m1", "webhook", "webhook", 1, "ev:reminder:go:m1:webhook", False)
            assert result_of(row, outcome).state == ledger_state  # unknown: listed by `orchestrator status`, never sent again
        asyncio.run(main())
        assert arrived.wait(10) and len(receiver.requests) == 1  # it did reach the peer (logged once its answer is due)


def test_a_request_that_never_left_is_retried_even_without_an_idempotency_key() -> None:
    async def main() -> None:
        port = await refusing_port()
        transport = WebhookTransport(f"http://127.0.0.1:{port}/hook", "s", idempotent=False)
        [outcome] = await transport.send_batch([message("m1")])
        await transport.close()
        assert outcome.state == "retry" and "cannot connect" in (outcome.error or "")
    asyncio.run(main())
