"""The `dunning` command line (CONTRACT.md §8). Thin: every command calls into the modules."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from service.config import Settings


def _fail(message: str, code: int = 2) -> int:
    print(f"dunning: {message}", file=sys.stderr)
    return code


# ---- worker ----------------------------------------------------------------------------------

def cmd_worker(args: argparse.Namespace) -> int:
    from service.app import StartupError, Worker
    from service.logs import configure

    settings = Settings()
    configure(settings.log_level, settings.log_format)
    try:
        _run(Worker(settings).run())
    except StartupError as exc:
        return _fail(str(exc))
    return 0


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# ---- publish ---------------------------------------------------------------------------------

def read_events(path: str) -> Iterator[tuple[str, Any]]:
    """(where, decoded JSON or the error text) for every event in a file: object, array or JSONL."""
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    name = "<stdin>" if path == "-" else path
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    else:
        items = whole if isinstance(whole, list) else [whole]
        for index, item in enumerate(items, 1):
            yield (f"{name}: item {index}" if isinstance(whole, list) else name), item
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"{name}:{number}", json.loads(line)
            except ValueError as exc:
                yield f"{name}:{number}", ValueError(f"not valid JSON: {exc}")


def _validated(paths: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
    from service.events import BadEvent, validate_event

    good: list[dict[str, Any]] = []
    bad = 0
    for path in paths:
        for where, item in read_events(path):
            try:
                if isinstance(item, ValueError):
                    raise BadEvent("invalid_json", str(item))
                validate_event(item)
            except BadEvent as exc:
                bad += 1
                print(f"{where}: skipped, {exc.code}: {exc.detail}", file=sys.stderr)
                continue
            good.append(item)
    return good, bad


def cmd_publish(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from service.intake import connect, declare, publish_events

    try:
        events, bad = _validated(args.files)
    except OSError as exc:
        return _fail(f"cannot read {exc.filename}: {exc.strerror}")
    settings = Settings()

    async def go() -> None:
        connection = await connect(settings)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            topology = await declare(channel, settings)
            show = len(events) >= 1000 or (sys.stderr.isatty() and len(events) > 50)
            with tqdm(total=len(events), unit="event", disable=not show, file=sys.stderr) as bar:
                for start in range(0, len(events), 500):
                    chunk = events[start:start + 500]
                    await publish_events(topology.events, chunk)
                    bar.update(len(chunk))

    try:
        asyncio.run(go())
    except ConnectionError as exc:
        return _fail(str(exc))
    print(f"published {len(events)} event(s), skipped {bad} invalid", file=sys.stderr)
    return 1 if bad and not events else 0


# ---- render, templates, schema ---------------------------------------------------------------

def cmd_render(args: argparse.Namespace) -> int:
    from service.preview import PreviewError, preview

    settings = Settings()
    try:
        output = preview(settings, Path(args.event), args.template, args.channel, args.locale)
    except PreviewError as exc:
        return _fail(str(exc), 1)
    if args.output and args.channel == "letter":
        return _write_letter(settings, output, Path(args.output))
    if args.output:
        Path(args.output).write_text(output, encoding="utf-8")
    else:
        sys.stdout.write(output + "\n")
    return 0


def _write_letter(settings: Settings, html: str, output: Path) -> int:
    from service.preview import letter_pdf

    pdf = letter_pdf(settings, html)
    output.write_bytes(pdf.data)
    print(f"{output}: {pdf.pages} page(s), {pdf.paper}", file=sys.stderr)
    if pdf.missing_glyphs:
        return _fail(f"no installed font has {' '.join(pdf.missing_glyphs)}; the worker would "
                     "refuse this letter", 1)
    return 0


def cmd_templates_check(args: argparse.Namespace) -> int:
    from service.checks import TemplateChecker

    settings = Settings()
    directory = Path(args.dir) if args.dir else settings.templates_dir
    policy = None if args.dir else settings.policy_path
    checker = TemplateChecker(directory, policy)
    problems = checker.run()
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {directory}", file=sys.stderr)
        return 1
    print(f"ok: {checker.rendered} template file(s) rendered without problems in {directory}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from service.events import event_json_schema
    from service.outcomes import outcome_json_schema

    schema = event_json_schema() if args.which == "event" else outcome_json_schema()
    print(json.dumps(schema, indent=2, ensure_ascii=False))
    return 0


def cmd_dead(args: argparse.Namespace) -> int:
    from service.deadletters import list_dead, replay_dead

    settings = Settings()
    try:
        if args.dead_command == "list":
            asyncio.run(list_dead(settings, sys.stdout))
        else:
            count = asyncio.run(replay_dead(settings, args.id))
            print(f"replayed {count} dead letter(s)", file=sys.stderr)
    except ConnectionError as exc:
        return _fail(str(exc))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from service.explain import explain

    if not asyncio.run(explain(Settings(), args.notice_id, sys.stdout)):
        return _fail(f"no notice {args.notice_id} in the ledger (DUNNING_DATABASE_URL)", 1)
    return 0


def cmd_ledger_show(args: argparse.Namespace) -> int:
    from service.explain import show_account

    if not asyncio.run(show_account(Settings(), args.account, sys.stdout)):
        return _fail(f"no notices for account {args.account} in the ledger", 1)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from service.bench import missing_extra

    problem = missing_extra()
    if problem:
        return _fail(problem)
    from service.bench.runner import run_bench

    return run_bench(quick=args.quick, json_only=args.json_only)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dunning", description="Collections notices: "
                                     "escalation events in, letters, calls, SMS and email out.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="consume, dispatch, serve HTTP").set_defaults(func=cmd_worker)
    publish = sub.add_parser("publish", help="validate and publish events")
    publish.add_argument("files", nargs="+", metavar="FILE", help="JSON, JSON array or JSON "
                         "Lines; - for stdin")
    publish.set_defaults(func=cmd_publish)
    render = sub.add_parser("render", help="preview one notice")
    render.add_argument("--event", required=True)
    render.add_argument("--template", required=True)
    render.add_argument("--channel", required=True, choices=["email", "sms", "voice", "letter"])
    render.add_argument("--locale")
    render.add_argument("-o", "--output", help="write to this file (a letter: as PDF)")
    render.set_defaults(func=cmd_render)
    templates = sub.add_parser("templates", help="template tools")
    tsub = templates.add_subparsers(dest="templates_command", required=True)
    check = tsub.add_parser("check", help="render every template against sample events")
    check.add_argument("dir", nargs="?")
    check.set_defaults(func=cmd_templates_check)
    schema = sub.add_parser("schema", help="print a JSON Schema")
    schema.add_argument("which", nargs="?", choices=["event", "outcome"], default="event")
    schema.set_defaults(func=cmd_schema)
    dead = sub.add_parser("dead", help="inspect and replay dead letters")
    dsub = dead.add_subparsers(dest="dead_command", required=True)
    dsub.add_parser("list").set_defaults(func=cmd_dead)
    replay = dsub.add_parser("replay")
    replay.add_argument("--id", help="only the dead letter of this event id")
    replay.set_defaults(func=cmd_dead)
    explain = sub.add_parser("explain", help="why a notice was or was not sent")
    explain.add_argument("notice_id")
    explain.set_defaults(func=cmd_explain)
    ledger = sub.add_parser("ledger", help="read the ledger")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True)
    show = lsub.add_parser("show", help="every notice of an account with its decisions")
    show.add_argument("--account", required=True)
    show.set_defaults(func=cmd_ledger_show)
    _add_bench(sub)
    return parser


def _add_bench(sub: Any) -> None:
    bench = sub.add_parser("bench", help="measure throughput, latency and memory on loopback")
    bench.add_argument("--quick", action="store_true", help="a small smoke run (CI)")
    bench.add_argument("--json-only", action="store_true", help="print only the JSON line")
    bench.set_defaults(func=cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is not cmd_worker:  # the worker configures its own logs from its settings
        from service.logs import configure

        configure("WARNING", "console")  # stderr: stdout is the commands' output
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
