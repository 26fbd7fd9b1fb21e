"""The ``roxy-triage`` command line: parse, call, print; no logic of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from roxy_triage import __version__
from roxy_triage.bundle import Bundle
from roxy_triage.bundle import verify as verify_bundle
from roxy_triage.capture import CaptureOptions, run_capture
from roxy_triage.config import load_config
from roxy_triage.demo import run_demo
from roxy_triage.errors import EXIT_GATE_FAILED, TargetUnreachable, TriageError
from roxy_triage.load import render_table, run_matrix, with_overrides
from roxy_triage.report import render_bundle, write_report
from roxy_triage.stress import run_suite
from roxy_triage.summary import (
    render_capture_summary,
    render_demo_summary,
    render_stress_table,
)


class TriageGroup(click.Group):
    """Turn anticipated errors into one line on stderr and their exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TriageError as err:
            click.echo(f"Error: {err.message}", err=True)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML config file (default: ./roxy-triage.toml when present).",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print results as JSON."
)


@click.group(cls=TriageGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="roxy-triage")
def cli() -> None:
    """Evidence, load and a report for a misbehaving local HTTP service."""


def progress(line: str) -> None:
    click.echo(f"roxy-triage: {line}", err=True)


@cli.command()
@config_option
@click.option("--url", help="Target service, http://HOST:PORT (overrides the config).")
@json_option
def stress(config_path: Path | None, url: str | None, as_json: bool) -> None:
    """Run the stress checks alone; exit 1 if any fails."""
    config = load_config(config_path, url=url)
    outcome = run_suite(config, progress)
    if as_json:
        click.echo(json.dumps(outcome.to_dict(), indent=2))
    else:
        click.echo(render_stress_table(outcome))
    if outcome.interrupted:
        raise SystemExit(130)
    if outcome.failed:
        raise SystemExit(EXIT_GATE_FAILED)


@cli.command()
@config_option
@click.option("--url", help="Target service, http://HOST:PORT (overrides the config).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(),
    show_default="current directory",
    help="Where the bundle and its .sha256 are written.",
)
@click.option("--label", help="Appended to the bundle name, e.g. 'before-fix'.")
@click.option(
    "--baseline",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A bundle from before a fix: the report gets a before/after section.",
)
@click.option(
    "--load/--no-load",
    "load",
    default=None,
    help="--no-load takes the state alone; --load sends load to a target that is "
    "not on loopback (by default only loopback targets are loaded).",
)
@json_option
def capture(
    config_path: Path | None,
    url: str | None,
    out_dir: Path,
    label: str | None,
    baseline: Path | None,
    load: bool | None,
    as_json: bool,
) -> None:
    """Collect evidence, load and stress the service, judge gates, seal a bundle.

    Exit codes: 0 every gate holds, 1 a gate failed, 2 usage or config error,
    3 the target could not be reached, 4 the bundle could not be written,
    130 interrupted (the bundle still holds what finished).
    """
    config = load_config(config_path, url=url)
    options = CaptureOptions(
        out_dir=out_dir,
        label=label,
        load=load,
        baseline=Bundle.open(baseline) if baseline else None,
    )
    result = run_capture(config, options, progress)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(render_capture_summary(result))
    if result.interrupted:
        raise SystemExit(130)
    if not result.reachable:
        raise TargetUnreachable(
            f"nothing answers at {config.target.url} ({result.reach_error}); "
            f"the bundle holds the state around it: {result.bundle.path}"
        )
    if result.judgement is not None and not result.judgement.holds:
        raise SystemExit(EXIT_GATE_FAILED)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--baseline",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A bundle from before a fix, for a before/after section.",
)
@click.option(
    "--format",
    "shape",
    type=click.Choice(["markdown", "json"]),
    default="markdown",
    show_default=True,
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also write <bundle>.md and its latency picture into this directory.",
)
def report(
    bundle: Path, baseline: Path | None, shape: str, out_dir: Path | None
) -> None:
    """Render the report of a bundle on stdout, optionally against a baseline."""
    opened = Bundle.open(bundle)
    name = opened.root
    rendered = render_bundle(
        opened,
        Bundle.open(baseline) if baseline else None,
        f"{name}.svg" if out_dir else None,
    )
    if shape == "json":
        click.echo(json.dumps(rendered.model, indent=2, default=str))
    else:
        click.echo(rendered.markdown, nl=False)
    if out_dir is not None:
        written = write_report(out_dir, name, rendered)
        progress(f"report written to {written}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))
@json_option
def verify(bundle: Path, as_json: bool) -> None:
    """Check a bundle against its .sha256 and every file against its manifest."""
    outcome = verify_bundle(bundle)
    if as_json:
        click.echo(json.dumps(outcome.to_dict(), indent=2))
    elif outcome.ok:
        click.echo(f"OK: {bundle} ({outcome.checked} files match the manifest)")
    else:
        click.echo(f"FAILED: {bundle}")
        for problem in outcome.problems:
            click.echo(f"  {problem}")
    if not outcome.ok:
        raise SystemExit(EXIT_GATE_FAILED)


def _levels(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> list[int] | None:
    if value is None:
        return None
    try:
        levels = [int(level) for level in value.split(",") if level.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma list like 1,5,50") from None
    if not levels or min(levels) < 1:
        raise click.BadParameter(f"{value!r}: levels must be 1 or more")
    return levels


def _headers(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, str] | None:
    if not value:
        return None
    headers = {}
    for header in value:
        name, colon, content = header.partition(":")
        if not colon or not name.strip():
            raise click.BadParameter(f"{header!r} is not 'Name: value'")
        headers[name.strip()] = content.strip()
    return headers


@cli.command()
@click.argument("url")
@click.option(
    "-c",
    "--concurrency",
    "levels",
    callback=_levels,
    help="Concurrency levels, a comma list: -c 1,5,50 (default from config).",
)
@click.option(
    "-n", "--requests", type=click.IntRange(min=1), help="Requests per level."
)
@click.option(
    "-m", "--method", help="HTTP method; GET, HEAD, DELETE send no default body."
)
@click.option("-d", "--data", "body", help="Request body.")
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    callback=_headers,
    help="'Name: value', repeatable.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    help="Client timeout per request, connect and response, in seconds.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Open loop: requests per second, latency from the intended send time.",
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0, min_open=True),
    help="Open loop: seconds per level (with --rate).",
)
@click.option(
    "--keep-alive/--new-connections",
    "keep_alive",
    default=None,
    help="Reuse connections, or open one per request (the default).",
)
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(min=1),
    help="Client processes sharing each level (default 1).",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow load on a target that is not on loopback.",
)
@click.option(
    "--out",
    "records_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write every request's raw record there, as JSON lines.",
)
@config_option
@json_option
@click.pass_context
def load(
    ctx: click.Context,
    url: str,
    config_path: Path | None,
    as_json: bool,
    records_path: Path | None,
    allow_remote: bool,
    **options: Any,
) -> None:
    """Load URL at each concurrency level and print the matrix.

    A new connection per request by default, as the original incident's
    clients did; only loopback targets unless --allow-remote.
    """
    plan = with_overrides(load_config(config_path).load, **options)
    result = run_matrix(
        plan,
        url,
        records_path,
        progress=lambda line: click.echo(line, err=True),
        allow_remote=allow_remote,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(render_table(result), nl=False)
    if result.interrupted:
        click.echo("Interrupted.", err=True)
        ctx.exit(130)


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(),
    show_default="current directory",
    help="Where both bundles and their reports are written.",
)
@json_option
def demo(out_dir: Path, as_json: bool) -> None:
    """Capture the bundled roxy-core before and after its fix, on loopback.

    Needs no config, systemd or Docker. Exit 0 when the legacy profile fails
    its gates and the patched one passes them, as the story goes.
    """
    result = run_demo(out_dir, progress)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(render_demo_summary(result))
    if not result.story_holds:
        raise SystemExit(EXIT_GATE_FAILED)


def main() -> None:
    cli(prog_name="roxy-triage")
