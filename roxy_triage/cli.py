"""The ``roxy-triage`` command line: parse, call, print; no logic of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from roxy_triage import __version__
from roxy_triage.errors import TriageError


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


def main() -> None:
    cli(prog_name="roxy-triage")
