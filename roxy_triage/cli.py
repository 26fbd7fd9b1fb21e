"""The ``roxy-triage`` command line: parse, call, print; no logic of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from roxy_triage import __version__
from roxy_triage.bundle import verify as verify_bundle
from roxy_triage.capture import CaptureOptions, run_capture
from roxy_triage.config import load_config
from roxy_triage.errors import EXIT_GATE_FAILED, TargetUnreachable, TriageError
from roxy_triage.summary import render_capture_summary


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
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(),
    show_default="current directory",
    help="Where the bundle and its .sha256 are written.",
)
@click.option("--label", help="Appended to the bundle name, e.g. 'before-fix'.")
@click.option("--no-load", is_flag=True, help="Take the state alone; send no load.")
@json_option
def capture(
    config_path: Path | None,
    url: str | None,
    out_dir: Path,
    label: str | None,
    no_load: bool,
    as_json: bool,
) -> None:
    """Collect the evidence around the service and seal it into a bundle."""
    config = load_config(config_path, url=url)
    options = CaptureOptions(
        out_dir=out_dir, label=label, load=False if no_load else None
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


def main() -> None:
    cli(prog_name="roxy-triage")
