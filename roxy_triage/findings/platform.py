"""Findings about what runs the service: its systemd unit and Docker containers."""

from __future__ import annotations

from roxy_triage.findings import Cited, Evidence, Finding, read, rule

SYSTEMD = "before/systemd/summary.json"
DOCKER = "before/docker/summary.json"


@rule
def unit_failing(evidence: Evidence) -> list[Finding]:
    """The unit failed, or systemd has been restarting it."""
    unit = read(evidence, SYSTEMD)
    if not unit or not unit.get("found"):
        return []
    restarts = unit.get("NRestarts") or 0
    failed = unit["ActiveState"] in ("failed", "inactive") or unit["Result"] not in (
        "success",
        "",
    )
    restarting = unit["SubState"] == "auto-restart" or restarts > 0
    if not failed and not restarting:
        return []
    state = f"ActiveState={unit['ActiveState']}, SubState={unit['SubState']}"
    figures = (
        f"{state}, Result={unit['Result']}, ExecMainStatus={unit['ExecMainStatus']}, "
        f"NRestarts={restarts}"
    )
    what = "failed" if failed else "restarting"
    result = unit["Result"] or "none"
    title = (
        f"Unit {unit['unit']} is {what} (Result={result}, "
        f"exit status {unit['ExecMainStatus']}), restarted {restarts} times"
    )
    return [
        Finding(
            "unit-failing",
            "critical" if failed else "high",
            "cause",
            title,
            [
                Cited(SYSTEMD, figures),
                Cited(
                    "before/systemd/systemctl_status.txt", "the unit's last log lines"
                ),
            ],
            f"Read why the main process exits (journalctl -u {unit['unit']}), fix "
            "that, then reset-failed and start it; restarts only hide a process that "
            "cannot run.",
            numbers={"restarts": restarts, "result": unit["Result"]},
        )
    ]


@rule
def containers(evidence: Evidence) -> list[Finding]:
    """Containers that are unhealthy, restarting or exited with an error."""
    docker = read(evidence, DOCKER)
    findings = []
    for box in (docker or {}).get("containers", []):
        name = box["name"]
        health = box.get("health") or {}
        if health.get("status") == "unhealthy":
            probe = (health.get("probes") or [{}])[-1]
            output = (probe.get("output") or "").strip() or "(no output)"
            findings.append(
                Finding(
                    f"container-unhealthy-{name}",
                    "high",
                    "cause",
                    f"Container {name} is unhealthy: "
                    f"{health.get('failing_streak')} failed probes in a row, "
                    f"the last exited {probe.get('exit_code')}",
                    [
                        Cited(
                            DOCKER,
                            f"health {health['status']}, last probe output: "
                            f"{output[:300]}",
                        )
                    ],
                    f"Run the health check by hand (docker exec {name} ...) and read "
                    f"docker logs {name}; fix what it reports before trusting the "
                    "container.",
                )
            )
        if box.get("restarting") or box.get("restart_count", 0) > 0:
            findings.append(
                Finding(
                    f"container-restarting-{name}",
                    "high",
                    "cause",
                    f"Container {name} has restarted "
                    f"{box.get('restart_count', 0)} times (status "
                    f"{box.get('status')}, last exit code {box.get('exit_code')})",
                    [
                        Cited(
                            DOCKER,
                            f"restart_count {box.get('restart_count')}, "
                            f"policy {box.get('restart_policy', {}).get('Name')}",
                        )
                    ],
                    f"Read docker logs {name} for why it exits; a restart policy "
                    "keeps a crashing container looking alive.",
                )
            )
        elif box.get("status") == "exited" and box.get("exit_code"):
            findings.append(
                Finding(
                    f"container-exited-{name}",
                    "medium",
                    "cause",
                    f"Container {name} exited with code {box['exit_code']}",
                    [
                        Cited(
                            DOCKER,
                            f"status exited, exit code {box['exit_code']}, "
                            f"finished {box.get('finished_at')}",
                        )
                    ],
                    f"Read docker logs {name}; start it again once the cause is fixed.",
                )
            )
    return findings
