"""The `orchestrator` command: validate, plan, schema, init, render, demo.

Domain errors become CLI errors only here; nothing below prints or exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click
from rich.console import Console

from orchestrator.diagnostics import Diagnostic
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.i18n import _, language_from_env, set_language
from orchestrator.load import LoadedPlaybook
from orchestrator.plan import localize, plan
from orchestrator.settings import Settings
from orchestrator.timespec import parse_moment

T = TypeVar("T")


def _console(err: bool = False) -> Console:
    stream = sys.stderr if err else sys.stdout
    # piped output (files, CI logs) gets a wide table rather than rich's 80-column default
    return Console(stderr=err, highlight=False, emoji=False, soft_wrap=True, width=None if stream.isatty() else 140)


def _start_option(value: str | None) -> datetime | None:
    if value is None:
        return None
    moment = parse_moment(value)
    if moment is None:
        raise click.BadParameter(_("'{value}' is not a date and time; write 2026-12-05T19:00 or 2026-12-05T19:00+08:00").format(value=value))
    return moment


def _check(file: str, start: datetime | None) -> tuple[LoadedPlaybook | None, list[Diagnostic]]:
    from orchestrator.validate import check

    return check(file, start)


def _checked_or_exit(file: str, start: datetime | None) -> LoadedPlaybook:
    """The loaded playbook; its findings printed; exit 1 when it has errors."""
    loaded, diags = _check(file, start)
    errors, _warnings = _report(file, diags, _console(err=True))
    if loaded is None or errors:
        click.echo(_summary(file, errors, len(diags) - errors), err=True)
        sys.exit(1)
    return loaded


def _localized(loaded: LoadedPlaybook, start: datetime | None) -> datetime | None:
    return None if start is None else localize(start, loaded.playbook.tz)


def _report(file: str, diags: list[Diagnostic], console: Console) -> tuple[int, int]:
    errors = [d for d in diags if d.is_error]
    warnings = [d for d in diags if not d.is_error]
    from orchestrator.table import print_diagnostics

    print_diagnostics(errors, console)
    if warnings:
        if errors:
            console.print("")
        print_diagnostics(warnings, console)
    return len(errors), len(warnings)


def _summary(file: str, errors: int, warnings: int) -> str:
    if errors:
        return _("{file}: {errors} error(s), {warnings} warning(s)").format(file=file, errors=errors, warnings=warnings)
    if warnings:
        return _("{file}: valid, {warnings} warning(s)").format(file=file, warnings=warnings)
    return _("{file}: valid").format(file=file)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--lang", type=click.Choice(["zh", "en"]), envvar="ORCH_LANG", help="Language of messages and tables (default: from the locale).")
@click.version_option(package_name="live-orchestrator")
def cli(lang: str | None) -> None:
    """Plan, check and run live-stream commerce events from a playbook file."""
    set_language(lang or language_from_env())


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True, help="Fail on warnings too.")
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON.")
@click.option("--start", help="Check as if the live started at this moment (ISO 8601).")
@click.option("--offline", is_flag=True, help="Do not ask the platforms (with ORCH_SMS_* set, SMS templates and signs are checked on Aliyun).")
def validate(files: tuple[str, ...], strict: bool, as_json: bool, start: str | None, offline: bool) -> None:
    """Check playbooks; print every problem as file:line:col: message."""
    moment = _start_option(start)
    failed = False
    out = _console()
    results: list[dict[str, Any]] = []
    platforms = None if offline else _platform_settings()
    for file in files:
        loaded, diags = _check(file, moment)
        if platforms is not None and loaded is not None and not any(d.is_error for d in diags):
            from orchestrator.diagnostics import sorted_diagnostics
            from orchestrator.smstemplates import check as check_sms

            diags = sorted_diagnostics(diags + asyncio.run(check_sms(platforms, loaded)))
        errors = sum(d.is_error for d in diags)
        warnings = len(diags) - errors
        failed |= bool(errors) or (strict and bool(warnings))
        if as_json:
            results.append({"file": file, "valid": not errors, "diagnostics": [d.as_json() for d in diags]})
        else:
            _report(file, diags, out)
            click.echo(_summary(file, errors, warnings), err=True)
    if as_json:
        click.echo(json.dumps(results, ensure_ascii=False, indent=2))
    sys.exit(1 if failed else 0)


def _platform_settings() -> Settings | None:
    """The settings, when they let `validate` ask Aliyun about SMS templates (else None: nothing to ask)."""
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        click.echo(_("warning: the settings are unusable ({error}); the platforms are not asked").format(error=e), err=True)
        return None
    return settings if settings.sms_on else None


@cli.command("plan")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--start", help="Plan the live for this start (ISO 8601; without an offset, the event timezone). Default: the playbook's.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Also write a self-contained page with the timeline drawn.")
def plan_command(file: str, start: str | None, as_json: bool, html_out: str | None) -> None:
    """Show the exact timeline the engine will run."""
    moment = _start_option(start)
    loaded = _checked_or_exit(file, moment)
    p = plan(loaded, _localized(loaded, moment))
    if html_out:
        from orchestrator.timeline import write_timeline

        write_timeline(p, loaded, Path(html_out))
        click.echo(_("wrote {path}").format(path=html_out), err=True)
    if as_json:
        click.echo(json.dumps(p.as_json(), ensure_ascii=False, indent=2))
    elif not html_out or sys.stdout.isatty():
        from orchestrator.table import print_plan

        print_plan(p, _console())


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs and an index.html to look at them.")
@click.option("--start", help="Print this live start instead of the playbook's (ISO 8601).")
def posters(file: str, out: str, start: str | None) -> None:
    """Render the posters, one per guide x hook variant, for review (nothing is scheduled).

    Their QR codes carry draft links (/s/draft-<channel code>-<variant>); the posters the
    engine delivers to guides carry each guide's real scan code."""
    from rich.progress import Progress

    from orchestrator import poster

    moment = _start_option(start)
    loaded = _checked_or_exit(file, moment)
    settings = Settings.from_env()
    font = settings.font_path
    for what, chars in poster.coverage(loaded, font).items():
        click.echo(_("warning: the poster font has no glyph for {chars} ({what}); they print as boxes. Set ORCH_POSTER_FONT to a font that has them").format(
            chars=" ".join(chars), what=what), err=True)
    links = {(g.id, v.id): poster.scan_link(settings.public_url, poster.draft_code(g, v.id))
             for g in loaded.guides for v in loaded.playbook.path.poster.variants}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    made: list[poster.Made] = []
    specs = list(poster.specs(loaded, _localized(loaded, moment), links))
    with Progress(console=_console(err=True), transient=True) as progress:
        task = progress.add_task(_("posters"), total=len(specs))
        for guide, variant, spec in specs:
            m = poster.Made(guide, variant, spec.link, poster.render(spec, font))
            (folder / m.filename).write_bytes(m.png)
            made.append(m)
            progress.advance(task)
    poster.write_index(folder / "index.html", loaded.playbook.title, made)
    click.echo(_("{count} posters in {folder} (open index.html to see them side by side)").format(count=len(made), folder=folder))


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False), help="Write to this file instead of standard output.")
def schema(out: str | None) -> None:
    """Print the playbook's JSON Schema (for editors such as VS Code's YAML extension)."""
    from orchestrator.schema import playbook_schema

    text = json.dumps(playbook_schema(), ensure_ascii=False, indent=2)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
        click.echo(_("wrote {path}").format(path=out), err=True)
    else:
        click.echo(text)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--template", type=click.Choice(["spring", "flash"]), default="spring", show_default=True, help="spring: a multi-day reactivation live; flash: a one-evening flash-group sale.")
@click.option("--force", is_flag=True, help="Write into a folder that already has files.")
def init(directory: str, template: str, force: bool) -> None:
    """Start a new playbook folder from a template."""
    from orchestrator.scaffold import scaffold

    written = scaffold(Path(directory), template, force=force)
    for path in written:
        click.echo(str(path))
    click.echo(_("next: orchestrator validate {path}").format(path=written[0]), err=True)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("step")
@click.option("--member", "member_id", help="Member id (default: the first member).")
@click.option("--start", help="Render as if the live started at this moment.")
def render(file: str, step: str, member_id: str | None, start: str | None) -> None:
    """Show the exact copy a member receives for STEP (preview, reminder:<id>, welcome)."""
    from orchestrator.render import render_step

    moment = _start_option(start)
    loaded, diags = _check(file, moment)
    errors, _w = _report(file, [d for d in diags if d.is_error], _console(err=True))
    if loaded is None or errors:
        sys.exit(1)
    r = render_step(loaded, step, member_id, _localized(loaded, moment))
    click.echo(_("step: {step}").format(step=r.step))
    click.echo(_("channel: {channel}").format(channel=r.channel or _("none")))
    if r.note:
        click.echo(_("note: {note}").format(note=r.note))
    if r.sms_template:
        click.echo(_("sms template: {code} {params}").format(code=r.sms_template, params=json.dumps(r.sms_params, ensure_ascii=False)))
    if r.subject:
        click.echo(_("subject: {subject}").format(subject=r.subject))
    click.echo("")
    click.echo(r.text)
    if r.html:
        click.echo("")
        click.echo(r.html)


@cli.command()
@click.option("--playbook", "playbook_file", type=click.Path(dir_okay=False),
              help="Playbook to rehearse (default: playbooks/spring-reactivation.yaml if present, else the spring template written to --dir).")
@click.option("--dir", "directory", default="demo-event", show_default=True, type=click.Path(file_okay=False), help="Where to write the template when no example is at hand.")
@click.option("--seconds", default=90.0, show_default=True, help="About how long, in real seconds, the whole timeline takes.")
@click.option("--port", default=8000, show_default=True, help="Port of the web app started beside the worker (posters, scans, join pages); 0: none.")
@click.option("--fake-platforms", is_flag=True, help="Deliver SMS, e-mail and WeCom tasks to local fakes of the platforms through the real clients.")
def demo(playbook_file: str | None, directory: str, seconds: float, port: int, fake_platforms: bool) -> None:
    """Rehearse a whole event on this machine: plan it, run it on a fast clock, show it live, write the report."""
    from orchestrator.demo import run_demo
    from orchestrator.table import print_plan
    from orchestrator.timeline import write_timeline

    if seconds <= 0:
        raise click.BadParameter(_("the run needs a positive number of seconds"))
    if playbook_file is None:
        example = Path("playbooks") / "spring-reactivation.yaml"
        if example.exists():
            playbook_file = str(example)
        else:
            from orchestrator.scaffold import scaffold

            target = Path(directory)
            if not (target / "playbook.yaml").exists():
                scaffold(target, "spring")
            playbook_file = str(target / "playbook.yaml")
    loaded, diags = _check(playbook_file, None)
    errors, _w = _report(playbook_file, diags, _console(err=True))
    if loaded is None or errors:
        sys.exit(1)
    out = _console()
    p = plan(loaded)
    print_plan(p, out)
    from orchestrator.demo import speed_for

    with _fakes(fake_platforms, speed_for(p.steps[0].at, p.steps[-1].at, seconds)) as fakes, \
            _services(fakes.env() if fakes else None) as (settings, engine, url):
        if fakes and port:
            fakes.push_receipts_to(f"http://127.0.0.1:{port}")  # the demo's own web app takes the SMS receipts
        page = settings.data_path / "plan.html"
        settings.data_path.mkdir(parents=True, exist_ok=True)
        write_timeline(p, loaded, page)
        out.print(_("the timeline is drawn in {path}").format(path=page.resolve().as_uri()))
        result = asyncio.run(run_demo(settings, engine, url, Path(playbook_file), seconds=seconds, console=out, web_port=port or None))
        _said_by_fakes(fakes, out)
    out.print(_("event {event} closed after {seconds:.0f} s").format(event=result.event_id, seconds=result.seconds))
    if result.report is not None:
        out.print(_("report: {path}").format(path=result.report.resolve().as_uri()))
    out.print(_("every message, as the console channel delivered it: {path}").format(path=result.console_log))
    out.print(_("status: orchestrator status {event}").format(event=result.event_id))


def _board_url(settings: Settings, engine: Any, event_id: str) -> str:
    from orchestrator.scheduling import get_event

    return f"{settings.public_url.rstrip('/')}/board/{event_id}?t={get_event(engine, event_id).board_key}"


def _open(url: str) -> Any:
    """The migrated store at `url`, disposed of when the command is done (its connections closed)."""
    from orchestrator.store import open_store

    engine = open_store(url)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(engine.dispose)
    return engine


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--speed", type=float, default=600, show_default=True, help="Clock speed: 600 turns an event hour into 6 real seconds.")
@click.option("--seed", type=int, default=1, show_default=True, help="The synthetic audience's seed: the same seed, the same audience.")
@click.option("--port", default=8000, show_default=True, help="Port of the web app the audience and the board use.")
@click.option("--fake-platforms", is_flag=True, help="Send SMS, e-mail and WeCom tasks through the real clients to local fakes of "
              "Aliyun SMS, an SMTP server and WeCom (instead of the console log), and say what each received.")
def rehearse(file: str, speed: float, seed: int, port: int, fake_platforms: bool) -> None:
    """Rehearse FILE on a fast clock with a synthetic audience on the real endpoints: posters
    scanned, groups joined, the room entered, comments, deposits, orders; the board shows it live."""
    from orchestrator.demo import run_demo

    _speed_option(speed)
    _checked_or_exit(file, None)  # errors printed, exit 1
    out = _console()
    with _fakes(fake_platforms, speed) as fakes, _services(fakes.env() if fakes else None) as (settings, engine, url):
        if fakes:
            fakes.push_receipts_to(f"http://127.0.0.1:{port}")  # the rehearsal's web app takes the SMS receipts
        result = asyncio.run(run_demo(settings, engine, url, Path(file), seconds=0, console=out, web_port=port, speed=speed, seed=seed))
        _said_by_fakes(fakes, out)
    out.print(_("event {event} closed after {seconds:.0f} s").format(event=result.event_id, seconds=result.seconds))
    if result.report is not None:
        out.print(_("report: {path}").format(path=result.report.resolve().as_uri()))


@contextlib.contextmanager
def _fakes(wanted: bool, speed: float) -> Iterator[Any]:
    """The platforms' fakes for a rehearsal at `speed` when `wanted` (else None)."""
    if not wanted:
        yield None
        return
    from orchestrator.fakes.platforms import running

    with running(speed) as fakes:
        yield fakes


def _said_by_fakes(fakes: Any, out: Console) -> None:
    if fakes is not None:
        out.print(_("what the fake platforms received:"))
        for line in fakes.summary():
            out.print("  " + line)


@contextlib.contextmanager
def _services(overrides: dict[str, str] | None = None) -> Iterator[tuple[Settings, Any, str]]:
    """Settings (the environment's, with `overrides`), the migrated store and a Redis URL (the embedded server when REDIS_URL is unset)."""
    from orchestrator.embedded_redis import redis_url
    from orchestrator.store import open_store

    settings = Settings.from_env({**os.environ, **overrides} if overrides else None)
    engine = open_store(settings.database_url)
    try:
        with redis_url(settings.redis_url, settings.data_path) as url:
            yield settings, engine, url
    finally:
        engine.dispose()


async def _with_pool(url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    from orchestrator.worker import pool_for

    pool = await pool_for(url)
    try:
        return await work(pool)
    finally:
        await pool.aclose()


def _speed_option(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise click.BadParameter(_("the speed must be a positive number, e.g. 60 (one event minute per second)"))
    return value


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--start", help="Live start (ISO 8601; default: the playbook's).")
@click.option("--as", "event_id", help="Event id (default: the playbook's id).")
@click.option("--speed", type=float, help="Run on an accelerated clock: 60 turns an event hour into a real minute (rehearsals, tests).")
@click.option("--clock-from", help="With --speed: start the accelerated clock at this moment instead of just before the first step (ISO 8601).")
@click.option("--rehearsal", is_flag=True, help="Deliver every channel to the console log unless ORCH_ROUTES says otherwise.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def schedule(file: str, start: str | None, event_id: str | None, speed: float | None, clock_from: str | None, rehearsal: bool, as_json: bool) -> None:
    """Freeze a playbook and schedule its event: one deferred job per step."""
    from orchestrator.errors import PlaybookError
    from orchestrator.scheduling import schedule as do_schedule

    moment = _start_option(start)
    origin = _start_option(clock_from)
    _speed_option(speed)
    with _services() as (settings, engine, url):
        try:
            result = asyncio.run(_with_pool(url, lambda pool: do_schedule(engine, pool, settings, file, moment, event_id=event_id, speed=speed,
                                                                          rehearsal=rehearsal, clock_from=origin)))
        except PlaybookError as e:
            _report(file, e.diagnostics, _console(err=True))
            click.echo(_("{file}: not scheduled, {errors} error(s)").format(file=file, errors=len(e.diagnostics)), err=True)
            sys.exit(1)
        board = _board_url(settings, engine, result.event_id)
    if as_json:
        click.echo(json.dumps({"event": result.event_id, "created": result.created, "steps": result.steps, "jobs": result.jobs,
                               "playbook_hash": result.playbook_hash, "speed": result.clock.speed, "board": board}, ensure_ascii=False))
    elif result.created:
        click.echo(_("scheduled {event}: {steps} steps, {people} people, playbook {hash}").format(
            event=result.event_id, steps=result.steps, people=result.audience, hash=result.playbook_hash[:12]))
        click.echo(_("host board: {url}").format(url=board))
    else:
        click.echo(_("{event} is already scheduled with this playbook; nothing changed ({jobs} lost jobs restored)").format(event=result.event_id, jobs=result.jobs))


@cli.command()
@click.argument("event")
@click.option("--start", required=True, help="The new live start (ISO 8601).")
def reschedule(event: str, start: str) -> None:
    """Move an event's steps that have not run to a new live start."""
    from orchestrator.errors import PlaybookError
    from orchestrator.scheduling import reschedule as do_reschedule

    moment = _start_option(start)
    assert moment is not None
    with _services() as (_settings, engine, url):
        try:
            result = asyncio.run(_with_pool(url, lambda pool: do_reschedule(engine, pool, event, moment)))
        except PlaybookError as e:
            _report(event, e.diagnostics, _console(err=True))
            sys.exit(1)
    click.echo(_("rescheduled {event}: live {start}; {moved} steps moved").format(event=event, start=result["live_start"], moved=result["moved"]))


@cli.command()
@click.argument("event")
def cancel(event: str) -> None:
    """Cancel an event: nothing that has not run will run; what was sent stays recorded."""
    from orchestrator.scheduling import cancel as do_cancel

    with _services() as (_settings, engine, url):
        result = asyncio.run(_with_pool(url, lambda pool: do_cancel(engine, pool, event)))
    if result["already"]:
        click.echo(_("{event} was already cancelled").format(event=event))
    else:
        click.echo(_("cancelled {event}: {steps} steps stopped, {sends} planned sends skipped").format(event=event, steps=result["steps"], sends=result["sends"]))


@cli.command()
@click.argument("event")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(event: str, as_json: bool) -> None:
    """Show an event's steps with their state and send counts, and sends whose outcome is unknown."""
    from orchestrator.scheduling import status as get_status
    from orchestrator.settings import Settings as _S

    engine = _open(_S.from_env().database_url)
    data = get_status(engine, event)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
        return
    from orchestrator.table import print_status

    print_status(data, _console())


@cli.command()
@click.argument("event")
@click.option("--step", "only_step", help="Only this step: preview or reminder:<id>.")
@click.option("--people", "show_people", is_flag=True, help="List every person: the channel that reaches them, or why not.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write every person's line to this CSV file (UTF-8 with BOM).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def audience(event: str, only_step: str | None, show_people: bool, csv_path: str | None, as_json: bool) -> None:
    """Who gets the preview and each reminder through which channel, and who is left out and why, as of now."""
    from orchestrator import recipients

    reasons = {"excluded": _("staff or shill account"), "no_address": _("no address for the message's channels"),
               "no_consent": _("no consent on record"), "opted_out": _("opted out")}
    from orchestrator.settings import Settings as _S

    settings = _S.from_env()
    engine = _open(settings.database_url)
    steps = [s for s, _m in recipients.messages(engine, event)]
    if only_step is not None and only_step not in steps:
        raise click.BadParameter(_("{step} is not a message step of {event}; its steps: {steps}").format(
            step=only_step, event=event, steps=", ".join(steps) or "-"), param_hint="--step")
    views = recipients.summary(engine, settings, event, only_step)
    people = list(recipients.decisions(engine, event, only_step)) if (show_people or csv_path or as_json) else []
    if csv_path:
        import csv

        with open(csv_path, "w", newline="", encoding="utf-8-sig") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "member", "name", "channel", "reason"])
            w.writerows([d.step_id, d.member_id, d.name, d.channel or "", d.reason] for d in people)
    if as_json:
        click.echo(json.dumps({"steps": [{"step": v.step_id, "channels": dict(v.by_channel), "transports": v.transports, "group_posts": v.groups,
                                          "left_out": dict(v.skipped)} for v in views],
                               "people": [{"step": d.step_id, "member": d.member_id, "channel": d.channel, "reason": d.reason or None}
                                          for d in people]}, ensure_ascii=False, indent=2))
        return
    from rich.table import Table

    table = Table(title=_("who gets what ({event})").format(event=event))
    for column in (_("step"), _("gets it"), _("left out")):
        table.add_column(column)
    for v in views:
        gets = "\n".join([f"{n:,} {ch} → {v.transports.get(ch, '-')}" for ch, n in v.by_channel.most_common()]
                         + [_("{channel} → {transport}: posted once into each of the event's groups").format(channel=ch, transport=v.transports.get(ch, "-"))
                            for ch in v.groups]) or "0"
        out = "\n".join(f"{n:,} {reasons.get(r, r)}" for r, n in v.skipped.most_common()) or "0"
        table.add_row(v.step_id, gets, out)
    console = _console()
    console.print(table)
    if show_people:
        for d in people:
            console.print(f"{d.step_id}  {d.member_id}  {d.name}  " + (d.channel or f"[dim]{reasons.get(d.reason, d.reason)}[/]"))
    if csv_path:
        click.echo(_("every person's line written to {path}").format(path=csv_path), err=True)


@cli.command()
@click.option("--burst", is_flag=True, help="Stop when the queue is empty instead of waiting for more work.")
@click.option("--max-jobs", default=10, show_default=True, help="Jobs this worker runs at once.")
def worker(burst: bool, max_jobs: int) -> None:
    """Run an arq worker that drives every scheduled event (stop with Ctrl-C)."""
    import logging

    from orchestrator.worker import make_worker, settle_process, use_uvloop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with _services() as (settings, engine, url):
        use_uvloop()
        w = make_worker(settings, url, engine=engine, burst=burst, max_jobs=max_jobs)
        settle_process()
        click.echo(_("worker running on {redis}; Ctrl-C stops it").format(redis=url), err=True)
        w.run()


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", default=8000, show_default=True, help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, help="Web processes (they share nothing but the store and Redis).")
def web(host: str, port: int, workers: int) -> None:
    """Serve the web app: poster scans and join pages (uvicorn; Ctrl-C stops it)."""
    import uvicorn

    if workers < 1:
        raise click.BadParameter(_("at least one web process"), param_hint="--workers")
    with _services() as (settings, _engine, url):
        os.environ["REDIS_URL"] = url  # the processes share this Redis (the embedded one when REDIS_URL was unset)
        click.echo(_("web app on http://{host}:{port} ({n} processes); QR links point at {public}").format(
            host=host, port=port, n=workers, public=settings.public_url), err=True)
        from orchestrator.webserver import APP, OPTIONS

        uvicorn.run(APP, host=host, port=port, workers=workers, **OPTIONS)


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
def verify(bundle: str) -> None:
    """Recompute every draw of an audit bundle from its revealed seed: match or mismatch, and where."""
    from orchestrator import drawproof

    try:
        data = json.loads(Path(bundle).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise click.ClickException(_("{file} is not an audit bundle (JSON): {reason}").format(file=bundle, reason=e)) from e
    if not isinstance(data, dict) or "draws" not in data:
        raise click.ClickException(_("{file} is not an audit bundle: it has no draws").format(file=bundle))
    problems = drawproof.verify(data)
    out = _console()
    if not any(p.startswith(("seed:", "commitment:", "rules_hash:")) for p in problems):
        out.print(_("commitment {hash}: match (seed and rules as published)").format(hash=str(data.get("commitment"))[:16] + "…"))
    for i, d in enumerate(data.get("draws", [])):
        mine = [p for p in problems if p.startswith(f"draws[{i}] ")]
        state = _("void: {reason}").format(reason=d.get("reason")) if d.get("state") == "void" else ", ".join(map(str, d.get("winners", [])))
        out.print(f"{d.get('id')}: " + (_("MISMATCH") if mine else _("match")) + f"  ({state})")
    for p in problems:
        out.print(f"[red]{p}[/]")
    if problems:
        sys.exit(1)


@cli.command("export-audit")
@click.argument("event")
@click.option("--out", "folder", default=".", show_default=True, type=click.Path(file_okay=False), help="Folder to write <event>-audit.json into.")
def export_audit(event: str, folder: str) -> None:
    """Write EVENT's audit bundle: rules, commitment, every draw's entrants and winners, and the seed once it has closed."""
    from orchestrator.draws import bundle as make_bundle
    from orchestrator.draws import write_bundle

    engine = _open(Settings.from_env().database_url)
    path = write_bundle(engine, event, Path(folder))
    if make_bundle(engine, event)["seed"] is None:
        click.echo(_("note: {event} has not closed, so the seed is not in the bundle yet; verify needs it").format(event=event), err=True)
    click.echo(_("wrote {path}").format(path=path))


@cli.command()
@click.argument("event")
@click.option("--out", "folder", default=None, type=click.Path(file_okay=False),
              help="Folder for the report's files (default: ORCH_DATA_DIR/reports, where the close wrote them).")
def report(event: str, folder: str | None) -> None:
    """Write EVENT's report again from what is stored now: delivery receipts, refunds and comments that came after the close count."""
    from orchestrator.recount import figures_from_store
    from orchestrator.report import write_report
    from orchestrator.scheduling import get_event

    with _services() as (settings, engine, url):
        ev = get_event(engine, event)
        board = asyncio.run(_with_redis(url, lambda redis: figures_from_store(redis, engine, ev.id)))
        paths = write_report(engine, ev.id, Path(folder) if folder else settings.data_path / "reports", ev.state, board)
    if board is None:
        click.echo(_("note: Redis could not be reached, so the report has no live figures (funnel, guides, variants)"), err=True)
    for path in paths:
        click.echo(_("wrote {path}").format(path=path))


@cli.command()
@click.argument("event")
@click.argument("draw")
@click.option("--disqualify", required=True, help="The winner (their id, as in the draw) who cannot take the prize.")
@click.option("--why", required=True, help="The reason, kept in the audit bundle.")
def redraw(event: str, draw: str, disqualify: str, why: str) -> None:
    """Draw again for a disqualified winner of DRAW: a new draw linked to it, from the same seed (never a silent re-roll)."""
    from orchestrator.draws import redraw as do_redraw

    engine = _open(Settings.from_env().database_url)
    made = do_redraw(engine, event, draw, disqualify, why)
    if made.state == "void":
        click.echo(_("{draw}: void ({reason})").format(draw=made.draw_id, reason=made.reason))
    else:
        click.echo(_("{draw}: {winner} wins in place of {who}").format(draw=made.draw_id, winner=", ".join(made.winners), who=disqualify))


@cli.command()
@click.argument("event")
@click.option("--round", "round_number", required=True, type=int, help="The drand round (choose one that comes after the commitment).")
@click.option("--randomness", required=True, help="That round's randomness (64 hex characters), as drand publishes it.")
def beacon(event: str, round_number: int, randomness: str) -> None:
    """Mix a public randomness value (a drand round) into EVENT's draws; before the first draw only."""
    from orchestrator.draws import set_beacon

    value = set_beacon(_open(Settings.from_env().database_url), event, round_number, randomness.strip().lower())
    click.echo(_("{event}: every draw from now mixes in {beacon}").format(event=event, beacon=value))


@cli.command("live-ended")
@click.argument("event")
@click.option("--at", "moment", help="When the live ended (ISO 8601; default: now).")
def live_ended(event: str, moment: str | None) -> None:
    """Record that EVENT's live ended before its planned end: the screenshot draws after it are void, with that reason."""
    from orchestrator.draws import set_live_ended
    from orchestrator.scheduling import event_clock, get_event

    engine = _open(Settings.from_env().database_url)
    ev = get_event(engine, event)
    at = _start_option(moment)
    when = event_clock(ev).now() if at is None else (localize(at, ZoneInfo(ev.timezone)) if at.tzinfo is None else at)
    after = set_live_ended(engine, event, when)
    click.echo(_("{event}: the live ended at {at}; draws after it will be void").format(event=event, at=when.isoformat()))
    if after:
        click.echo(_("note: {n} draw(s) were already made after that moment and stay as recorded").format(n=after), err=True)


@cli.group()
def comments() -> None:
    """Live comments for the draws: import a transcribed screen, show where feeds post."""


@comments.command("import")
@click.argument("event")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--platform", default="other", show_default=True,
              type=click.Choice(["wechat_channels", "douyin", "bilibili", "taobao", "kuaishou", "other"]), help="Where the comments were seen.")
def comments_import(event: str, file: str, platform: str) -> None:
    """Import comments transcribed from the screen (CSV: time, user_id, name, text[, message_id][, room]).
    Every row is checked first; one bad row stores nothing. Rows imported before are counted once."""
    from orchestrator import ingest
    from orchestrator.instream import InStream
    from orchestrator.scheduling import get_event

    with _services() as (_settings, engine, url):
        ev = get_event(engine, event)
        rows = ingest.csv_rows(Path(file), ev.id, platform, ZoneInfo(ev.timezone))
        done = asyncio.run(_with_redis(url, lambda redis: InStream(redis).append("comments", ev.id, rows)))  # like every feed
    click.echo(_("{stored} comments stored, {duplicates} already there").format(stored=done.stored, duplicates=done.duplicates))


@comments.command("bilibili")
@click.argument("event")
@click.option("--url", required=True, help="The websocket link the open-live app-start call returned (wss_link).")
@click.option("--auth-body", required=True, help="The auth_body it returned, as is.")
@click.option("--room", default="", help="The room id (kept with each comment).")
def comments_bilibili(event: str, url: str, auth_body: str, room: str) -> None:
    """Follow a Bilibili live room's comments into EVENT until stopped (Ctrl-C)."""
    from orchestrator import ingest
    from orchestrator.bilibili import follow
    from orchestrator.instream import InStream
    from orchestrator.scheduling import get_event

    seen = [0]
    with _services() as (_settings, engine, redis_at):
        ev = get_event(engine, event)
        tz = ZoneInfo(ev.timezone)

        async def run(redis: Any) -> None:
            stream = InStream(redis)

            async def store(batch: list[dict[str, Any]]) -> None:
                try:
                    rows = ingest.comment_rows(ev.id, "bilibili", {"comments": batch}, tz)
                except ingest.BadInput as e:
                    click.echo(_("a batch was skipped: {reason}").format(reason=e), err=True)
                    return
                seen[0] += (await stream.append("comments", ev.id, rows)).stored

            await follow(url, auth_body, room, store)

        try:
            asyncio.run(_with_redis(redis_at, run))
        except KeyboardInterrupt:
            pass
    click.echo(_("{stored} comments stored").format(stored=seen[0]))


@comments.command("urls")
@click.argument("event")
def comments_urls(event: str) -> None:
    """Where each comment feed posts for EVENT (the wxlivespy URL carries its secret: keep it private)."""
    from orchestrator.wxlivespy import path_key

    settings = Settings.from_env()
    base = settings.public_url.rstrip("/")
    click.echo(f"api        POST {base}/api/events/{event}/comments   (signed with ORCH_INGEST_SECRET)")
    click.echo(f"douyin     POST {base}/ingest/douyin/{event}   (signed by Douyin with ORCH_DOUYIN_SECRET)")
    if settings.ingest_secret:
        click.echo(f"wxlivespy  POST {base}/ingest/wxlivespy/{event}/{path_key(settings.ingest_secret, event)}")
    else:
        click.echo(_("wxlivespy  (set ORCH_INGEST_SECRET first)"))


@cli.group()
def groups() -> None:
    """The event's group pool (活码): list the groups, add one to a running event."""


@groups.command("add")
@click.argument("event")
@click.option("--qr", "qr_file", type=click.Path(exists=True, dir_okay=False), help="A WeChat group's QR code picture (PNG or JPEG).")
@click.option("--expires", help="When the code stops working, ISO 8601 in the event's timezone (a WeChat group code: 7 days after it was saved).")
@click.option("--wecom-chat", help="Instead: the chat id of a WeCom customer group to put behind the event's join ways.")
@click.option("--name", help="Group name (default: the playbook's pattern with the next number).")
@click.option("--capacity", type=int, help="Members the group holds (default: the playbook's).")
@click.option("--margin", type=int, help="Move on to the next group at this many (default: the playbook's).")
def groups_add(event: str, qr_file: str | None, expires: str | None, wecom_chat: str | None, name: str | None, capacity: int | None,
               margin: int | None) -> None:
    """Add a group to EVENT's pool: a WeChat group code (--qr, --expires), reached when the groups
    before it are full, or a WeCom customer group (--wecom-chat) behind its join ways."""
    from orchestrator.groups import add_to_event
    from orchestrator.pool import Pool
    from orchestrator.scheduling import get_event

    if wecom_chat is not None:
        if qr_file or expires:
            raise click.UsageError(_("--wecom-chat adds a WeCom group; --qr and --expires are for WeChat group codes"))
        _add_wecom_chat(event, wecom_chat)
        return
    if not qr_file or not expires:
        raise click.UsageError(_("give --qr and --expires (a WeChat group code), or --wecom-chat"))
    with _services() as (_settings, engine, url):
        ev = get_event(engine, event)
        moment = _start_option(expires)
        assert moment is not None
        expires_at = localize(moment, ZoneInfo(ev.timezone)) if moment.tzinfo is None else moment
        number = add_to_event(engine, event, Path(qr_file).read_bytes(), expires_at, name=name, capacity=capacity, margin=margin,
                              where=qr_file)

        async def load(redis: Any) -> int:
            return await Pool(redis, engine).refresh(event)

        asyncio.run(_with_redis(url, load))
    click.echo(_("group {n} added to {event}").format(n=number, event=event))


def _add_wecom_chat(event: str, chat_id: str) -> None:
    import aiohttp

    from orchestrator.errors import ConfigError
    from orchestrator.scheduling import get_event, loaded_event
    from orchestrator.wecom import WeComClient
    from orchestrator.wecomjoins import add_chat

    with _services() as (settings, engine, url):
        if not settings.wecom_api_on:
            raise ConfigError("set ORCH_WECOM_CORP_ID and ORCH_WECOM_SECRET to change WeCom join ways")
        loaded = loaded_event(engine, get_event(engine, event), members=False)

        async def update(redis: Any) -> int:
            async with aiohttp.ClientSession() as session:
                client = WeComClient(session, redis, str(settings.wecom_corp_id), str(settings.wecom_secret), base_url=settings.wecom_api)
                return await add_chat(client, engine, event, loaded, chat_id)

        updated = asyncio.run(_with_redis(url, update))
    click.echo(_("WeCom group {chat} is behind {n} join ways of {event}").format(chat=chat_id, n=updated, event=event))


@groups.command("list")
@click.argument("event")
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
def groups_list(event: str, as_json: bool) -> None:
    """Show EVENT's groups in order: places taken of the margin, capacity, code expiry."""
    from orchestrator.pool import Pool, groups_of
    from orchestrator.scheduling import get_event

    with _services() as (_settings, engine, url):
        ev = get_event(engine, event)
        rows = groups_of(engine, event)

        async def counts(redis: Any) -> dict[int, int]:
            return await Pool(redis, engine).counts(event)

        taken = asyncio.run(_with_redis(url, counts))
    tz = ZoneInfo(ev.timezone)
    data = [{"number": g.number, "name": g.name, "kind": g.kind, "taken": taken.get(g.number, 0), "margin": g.margin,
             "capacity": g.capacity, "expires": g.expires_at.astimezone(tz).isoformat() if g.expires_at else None} for g in rows]
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    if not data:
        click.echo(_("{event} has no groups yet").format(event=event))
        return
    for d in data:
        click.echo(_("{number}. {name}: {taken}/{margin} places taken (holds {capacity}), code expires {expires}").format(
            **{**d, "expires": d["expires"] or "—"}))


@cli.group()
def optout() -> None:
    """Opt-outs (退订), global across events: record one from the console, list them."""


@optout.command("add")
@click.option("--member", help="The member id who said no.")
@click.option("--address", help="Instead: the phone number, e-mail address or WeCom external userid that said no.")
@click.option("--channel", default="*", show_default=True, help="The channel they refused (sms, email, wecom_customer, ...), or * for all.")
def optout_add(member: str | None, address: str | None, channel: str) -> None:
    """Record that someone said no (source `console`); it holds from the next send batch of every event."""
    from orchestrator import optouts
    from orchestrator.ingest import BadInput
    from orchestrator.settings import Settings as _S

    item = {k: v for k, v in (("member", member), ("address", address), ("channel", channel)) if v is not None}
    try:
        said = optouts.parse([item], where="opt-out")
    except BadInput as e:
        raise click.UsageError(_("{problem} (at {at}): give --member ID or --address ADDRESS, and --channel").format(problem=e, at=e.at)) from None
    recorded, _already = optouts.record(_open(_S.from_env().database_url), said, "console")
    who = said[0].member or said[0].address
    if recorded:
        click.echo(_("opt-out recorded: {who} gets nothing through {channel} from the next send on").format(who=who, channel=said[0].channel))
    else:
        click.echo(_("{who} had already opted out of {channel}: nothing changed").format(who=who, channel=said[0].channel))


@optout.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
def optout_list(as_json: bool) -> None:
    """Every opt-out on record, newest first, with its source (api, console, sms-reply, email-link, wecom-tag)."""
    from orchestrator import optouts
    from orchestrator.settings import Settings as _S

    rows = optouts.listed(_open(_S.from_env().database_url))
    if as_json:
        click.echo(json.dumps([{**r, "at": r["at"].isoformat()} for r in rows], ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo(_("nobody has opted out"))
        return
    for r in rows:
        click.echo(f"{r['at']:%Y-%m-%d %H:%M}  {r['member'] or r['address']}  {r['channel']}  {r['source']}")


async def _with_redis(url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    try:
        return await work(redis)
    finally:
        await redis.aclose()


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema (every command also does this by itself)."""
    from orchestrator.settings import redact
    from orchestrator.store import open_store

    settings = Settings.from_env()
    open_store(settings.database_url).dispose()
    click.echo(_("the database at {url} is up to date").format(url=redact(settings.database_url)))


def main() -> None:
    """Entry point: run the CLI; domain errors print one line, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.Abort:
        sys.exit(130)
    except OrchestratorError as e:
        click.echo(_("error: {message}").format(message=e), err=True)
        sys.exit(1)
    except OSError as e:
        click.echo(_("error: {message}").format(message=f"{e.filename or ''} {e.strerror or e}".strip()), err=True)
        sys.exit(1)
    except Exception as e:  # the last guard: one line and a distinct status, never a traceback
        click.echo(_("internal error: {kind}: {message} (please report it with the playbook)").format(kind=type(e).__name__, message=e), err=True)
        sys.exit(70)


if __name__ == "__main__":
    main()
