"""The service's systemd unit: state, result, main PID and restarts."""

from __future__ import annotations

from typing import Any

from roxy_triage.collect import CollectContext, Evidence, collector
from roxy_triage.collect.command import Unavailable

# What a postmortem asks of a unit; `systemctl show` prints some 300 more,
# all of which are kept in the raw file.
PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "Result",
    "MainPID",
    "NRestarts",
    "ExecMainStatus",
    "ExecMainCode",
    "ExecMainStartTimestamp",
    "ExecMainExitTimestamp",
    "ActiveEnterTimestamp",
    "ActiveExitTimestamp",
    "InactiveEnterTimestamp",
    "StateChangeTimestamp",
    "FragmentPath",
    "UnitFileState",
    "Type",
    "Restart",
    "NotifyAccess",
    "StatusText",
    "MemoryCurrent",
    "TasksCurrent",
)

# What systemctl says when there is no manager to talk to; the capture goes
# on without the unit.
_NO_MANAGER = (
    "has not been booted with systemd",
    "Failed to connect to bus",
    "Failed to connect to user scope bus",
    "No medium found",
    "DBUS_SESSION_BUS_ADDRESS",
    "Transport endpoint is not connected",
)


def parse_show(text: str) -> dict[str, str]:
    """``systemctl show`` output as a dict; later duplicates win, as in systemd."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values


def unit_state(values: dict[str, str]) -> dict[str, Any]:
    """The properties a reader needs, typed where they are numbers."""
    state: dict[str, Any] = {name: values.get(name, "") for name in PROPERTIES}
    for name in ("MainPID", "NRestarts", "ExecMainStatus"):
        raw = state[name]
        state[name] = int(raw) if raw.isdigit() else None
    state["found"] = values.get("LoadState") not in ("not-found", "", None)
    return state


@collector("systemd")
def collect_systemd(evidence: Evidence, context: CollectContext) -> None:
    target = context.config.target
    scope = ["--user"] if target.scope == "user" else []
    show = evidence.run(
        ["systemctl", *scope, "show", "--no-pager", target.unit], "systemctl_show.txt"
    )
    if show.exit_code != 0:
        message = show.stderr.strip() or f"systemctl exited {show.exit_code}"
        if any(sign in message for sign in _NO_MANAGER):
            raise Unavailable(
                f"no systemd {target.scope} manager: {message.splitlines()[0]}"
            )
        evidence.record.status = "failed"
        evidence.record.reason = message.splitlines()[0]
        return
    values = parse_show(context.staging.read_text(show.output))
    status = evidence.run(
        [
            "systemctl",
            *scope,
            "status",
            "--no-pager",
            "--full",
            "--lines=30",
            target.unit,
        ],
        "systemctl_status.txt",
    )
    state = unit_state(values)
    # status exits 3 for an inactive or failed unit and 4 for an unknown one;
    # both are answers about the unit, kept as evidence.
    state["status_exit_code"] = status.exit_code
    state["unit"] = target.unit
    state["scope"] = target.scope
    if not state["found"]:
        evidence.note(f"unit {target.unit} is not known to the {target.scope} manager")
    evidence.write_json("summary.json", state)
