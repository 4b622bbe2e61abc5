"""How fast each channel's transport sends into its local fake, against a bare client loop in the same run.

One function per channel, `bench_<channel>(args)`; `main` runs those asked for (`--channel`, default
all) and skips a channel whose function is not written yet.

  sms    N recipients (default 20,000), each a different number and name (so one SendSms call each,
         as real reminders are), through AliyunSmsTransport.send_batch in batches of fanout.BATCH on
         stages.LANES concurrent lanes, as the drain calls it; beside it, a bare aiohttp loop sending
         the same signed requests (signed beforehand, outside the timing) at the same concurrency. The
         fake Aliyun (orchestrator/fakes/aliyun_sms.py, V3/V1 signatures checked) runs in its own process.
         Rates are N over the wall time of the run, beside the client process's CPU time per send
         (both sides share one fake, which checks every signature and is usually the bottleneck).

  email  N recipients (default 20,000), each a different address and name, through SmtpTransport.send_batch
         in batches of fanout.BATCH on stages.LANES concurrent lanes (one multipart message each: text and
         html, List-Unsubscribe with a signed link; `concurrency` pooled SMTP connections); beside it, a
         bare aiosmtplib loop: `concurrency` connections sending the same messages, built and flattened
         beforehand (outside the timing). The fake SMTP server (tests/engine/fake_smtp.py, aiosmtpd,
         counting only) runs in its own process and is usually the bottleneck.

Prints figures and ratios; asserts nothing about them.

    python bench/channels.py [--channel sms|email|both] [--recipients 20000] [--signature v3|v1]
    python bench/channels.py --channel email [--recipients 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' fakes, run from anywhere

from orchestrator.channels.base import Outgoing  # noqa: E402
from orchestrator.fanout import BATCH  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.stages import LANES  # noqa: E402


def _phone(i: int) -> str:
    return f"13{i % 7 + 3}{i:08d}"  # 133..139, all different


async def _fake_stats(base: str, reset: bool = False) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request("POST" if reset else "GET", base + ("/reset" if reset else "/stats")) as resp:
            data: dict[str, Any] = await resp.json()
            return data


async def _sms_transport_run(settings: Settings, messages: list[Outgoing]) -> tuple[float, float, dict[str, int]]:
    from orchestrator.channels.aliyun_sms import AliyunSmsTransport

    transport = AliyunSmsTransport.from_settings(settings)
    batches = iter(range(0, len(messages), BATCH))
    states: dict[str, int] = {}

    async def lane() -> None:
        for i in batches:  # shared: each lane takes the next batch
            for outcome in await transport.send_batch(messages[i:i + BATCH]):
                states[outcome.state] = states.get(outcome.state, 0) + 1

    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        await asyncio.gather(*(lane() for _ in range(LANES)))
    finally:
        await transport.close()
    return time.perf_counter() - t0, time.process_time() - cpu0, states


async def _sms_bare_run(settings: Settings, messages: list[Outgoing]) -> tuple[float, float, int]:
    """The same SendSms requests, signed beforehand, sent by `concurrency` plain aiohttp workers."""
    from yarl import URL

    from orchestrator.channels.aliyun_sms import v1_request, v3_request

    build = v3_request if settings.sms_signature == "v3" else v1_request
    assert settings.sms_access_key_id and settings.sms_access_key_secret
    api = URL(settings.sms_api)
    requests = []
    for m in messages:
        params = {"PhoneNumbers": m.address["phone"], "SignName": m.extra["sms_sign"], "TemplateCode": m.extra["sms_template"],
                  "TemplateParam": json.dumps(m.extra["sms_params"], ensure_ascii=False, separators=(",", ":")), "OutId": m.key}
        requests.append(build(api, settings.sms_access_key_id, settings.sms_access_key_secret, params))
    pending = iter(requests)
    ok = 0

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=settings.concurrency)) as session:
        async def sender() -> None:
            nonlocal ok
            for method, url, headers in pending:
                async with session.request(method, url, headers=headers) as resp:
                    answer = await resp.json(content_type=None)
                    ok += resp.status == 200 and answer.get("Code") == "OK"

        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(sender() for _ in range(settings.concurrency)))
        return time.perf_counter() - t0, time.process_time() - cpu0, ok


def bench_sms(args: argparse.Namespace) -> None:
    from orchestrator.fakes.aliyun_sms import ACCESS_KEY_ID, ACCESS_KEY_SECRET

    n = args.recipients
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.fakes.aliyun_sms"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        base = f"http://127.0.0.1:{int(proc.stdout.readline())}"
        env = {"ORCH_SMS_API": base + "/", "ORCH_SMS_ACCESS_KEY_ID": ACCESS_KEY_ID, "ORCH_SMS_ACCESS_KEY_SECRET": ACCESS_KEY_SECRET,
               "ORCH_SMS_SIGNATURE": args.signature, "ORCH_DATA_DIR": str(ROOT / ".orchestrator-bench"),
               "DATABASE_URL": "sqlite:///:memory:"}
        settings = Settings.from_env(env, env_file=None)
        messages = [Outgoing(f"bench:reminder:go:m{i:06d}:sms", "bench", "reminder:go", f"m{i:06d}", "sms", f"顾客{i}",
                             f"【测试品牌】顾客{i}，直播即将开始，回复TD退订", {"phone": _phone(i)},
                             extra={"sms_template": "SMS_100001", "sms_params": {"name": f"顾客{i}"}, "sms_sign": "测试品牌"})
                    for i in range(n)]
        print(f"SMS (Aliyun SendSms, {args.signature} signatures) to {n:,} recipients, concurrency {settings.concurrency}, "
              f"{LANES} lanes of {BATCH}; fake Aliyun in its own process")
        asyncio.run(_fake_stats(base, reset=True))
        took, cpu, states = asyncio.run(_sms_transport_run(settings, messages))
        fake = asyncio.run(_fake_stats(base))
        transport_rate = n / took
        print(f"  transport  {transport_rate:9,.0f} sends/s   {took:6.2f} s   client CPU {cpu / n * 1e6:5.0f} µs/send   "
              f"outcomes {states}   fake accepted {fake['accepted']:,} of {fake['requests']:,} requests")
        asyncio.run(_fake_stats(base, reset=True))
        took_bare, cpu_bare, ok = asyncio.run(_sms_bare_run(settings, messages))
        fake = asyncio.run(_fake_stats(base))
        bare_rate = n / took_bare
        print(f"  bare loop  {bare_rate:9,.0f} req/s     {took_bare:6.2f} s   client CPU {cpu_bare / n * 1e6:5.0f} µs/send   "
              f"OK answers {ok:,}   fake accepted {fake['accepted']:,}")
        print(f"  ratio transport / bare: {transport_rate / bare_rate:.2f} (rate), {cpu / max(cpu_bare, 1e-9):.2f} (client CPU per send;"
              f" the bare loop's requests were signed beforehand)")
    finally:
        proc.terminate()
        proc.wait()


class _FakeSmtpProcess:
    """tests/engine/fake_smtp.py in its own process, asked for its counts over stdin/stdout."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator.fakes.smtp"], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        data: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return data

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait()


async def _email_transport_run(settings: Settings, messages: list[Outgoing]) -> tuple[float, float, dict[str, int]]:
    from orchestrator.channels.smtp import SmtpTransport

    transport = SmtpTransport.from_settings(settings)
    batches = iter(range(0, len(messages), BATCH))
    states: dict[str, int] = {}

    async def lane() -> None:
        for i in batches:  # shared: each lane takes the next batch
            for outcome in await transport.send_batch(messages[i:i + BATCH]):
                states[outcome.state] = states.get(outcome.state, 0) + 1

    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        await asyncio.gather(*(lane() for _ in range(LANES)))
    finally:
        await transport.close()
    return time.perf_counter() - t0, time.process_time() - cpu0, states


async def _email_bare_run(settings: Settings, messages: list[Outgoing]) -> tuple[float, float, int]:
    """The same messages, built and flattened beforehand, sent by `concurrency` plain aiosmtplib connections."""
    import socket

    import aiosmtplib

    from orchestrator.channels.smtp import POLICY, SmtpTransport

    builder = SmtpTransport.from_settings(settings)
    prepared = [(m.address["email"], builder.build(m, m.address["email"])[0].as_bytes(policy=POLICY)) for m in messages]
    pending = iter(prepared)
    hostname = socket.getfqdn()
    ok = 0

    async def sender() -> None:
        nonlocal ok
        client = aiosmtplib.SMTP(hostname=settings.smtp_host, port=int(settings.smtp_port), start_tls=False, local_hostname=hostname)
        await client.connect()
        for address, raw in pending:
            errors, _reply = await client.sendmail(builder.sender, [address], raw)
            ok += not errors
        await client.quit()

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(sender() for _ in range(settings.concurrency)))
    return time.perf_counter() - t0, time.process_time() - cpu0, ok


def bench_email(args: argparse.Namespace) -> None:
    n = args.recipients
    fake = _FakeSmtpProcess()
    try:
        env = {"ORCH_SMTP_HOST": "127.0.0.1", "ORCH_SMTP_PORT": str(fake.port), "ORCH_SMTP_TLS": "off",
               "ORCH_MAIL_FROM": "测试品牌 <live@brand.example>", "ORCH_LINK_SECRET": "bench-link-secret",
               "ORCH_PUBLIC_URL": "https://live.brand.example", "ORCH_DATA_DIR": str(ROOT / ".orchestrator-bench"),
               "DATABASE_URL": "sqlite:///:memory:"}
        settings = Settings.from_env(env, env_file=None)
        messages = [Outgoing(f"bench:reminder:go:m{i:06d}:email", "bench", "reminder:go", f"m{i:06d}", "email", f"顾客{i}",
                             f"顾客{i}，引擎测试直播 今晚 19:00 开播，点这里进直播间：https://channels.weixin.qq.com/live/engine-test",
                             {"email": f"c{i}@example.com"}, subject="引擎测试直播 提醒")
                    for i in range(n)]
        print(f"\nE-mail (SMTP, multipart text + html, List-Unsubscribe) to {n:,} recipients, concurrency {settings.concurrency}, "
              f"{LANES} lanes of {BATCH}; fake SMTP server (aiosmtpd) in its own process")
        fake.ask("reset")
        took, cpu, states = asyncio.run(_email_transport_run(settings, messages))
        seen = fake.ask("stats")
        transport_rate = n / took
        print(f"  transport  {transport_rate:9,.0f} sends/s   {took:6.2f} s   client CPU {cpu / n * 1e6:5.0f} µs/send   "
              f"outcomes {states}   fake accepted {seen['accepted']:,} over {seen['sessions']} connections")
        fake.ask("reset")
        took_bare, cpu_bare, ok = asyncio.run(_email_bare_run(settings, messages))
        seen = fake.ask("stats")
        bare_rate = n / took_bare
        print(f"  bare loop  {bare_rate:9,.0f} msgs/s    {took_bare:6.2f} s   client CPU {cpu_bare / n * 1e6:5.0f} µs/send   "
              f"accepted {ok:,}   fake accepted {seen['accepted']:,} over {seen['sessions']} connections")
        print(f"  ratio transport / bare: {transport_rate / bare_rate:.2f} (rate), {cpu / max(cpu_bare, 1e-9):.2f} (client CPU per send;"
              f" the bare loop's messages were built beforehand)")
    finally:
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--channel", choices=("sms", "email", "both"), default="both")
    parser.add_argument("--recipients", type=int, default=20000)
    parser.add_argument("--signature", choices=("v3", "v1"), default="v3", help="SMS: Aliyun signature version")
    args = parser.parse_args()
    wanted = ("sms", "email") if args.channel == "both" else (args.channel,)
    t0 = time.perf_counter()
    for channel in wanted:
        run: Callable[[argparse.Namespace], None] | None = globals().get(f"bench_{channel}")
        if run is None:
            print(f"{channel}: no benchmark yet (bench_{channel} is not written); skipped")
            continue
        run(args)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
