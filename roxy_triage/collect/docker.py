"""Docker containers around the service: state, restarts, health and recent logs."""

from __future__ import annotations

import os
import re
import socket
from typing import Any

from roxy_triage.collect import CollectContext, Evidence, collector
from roxy_triage.collect.command import Unavailable

# How long one Docker API call may take; a daemon that answers slower than
# this is as good as absent for an on-call snapshot.
API_TIMEOUT_S = 5


def connect(base_url: str) -> Any:
    """A Docker client, or Unavailable saying why there is none."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        raise Unavailable(
            "the docker SDK is not installed (pip install docker)"
        ) from None
    where = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if where.startswith("unix://"):
        _probe_socket(where, where.removeprefix("unix://"))
    client = None
    try:
        if base_url:
            client = docker.DockerClient(base_url=base_url, timeout=API_TIMEOUT_S)
        else:
            client = docker.from_env(timeout=API_TIMEOUT_S)
        client.ping()
    except DockerException as err:
        if client is not None:
            client.close()
        raise Unavailable(f"no Docker daemon at {where} ({_cause(err)})") from None
    return client


def _probe_socket(where: str, path: str) -> None:
    """Try the daemon's socket ourselves before the SDK does.

    docker-py's unix transport leaks its socket when connect() fails; a
    plain probe finds a missing or dead daemon without that, and words the
    reason better.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(API_TIMEOUT_S)
    try:
        probe.connect(path)
    except OSError as err:
        raise Unavailable(f"no Docker daemon at {where} ({err.strerror})") from None
    finally:
        probe.close()


def _cause(err: BaseException) -> str:
    """The innermost reason, e.g. 'No such file or directory' for a missing socket."""
    seen = err
    while True:
        inner = seen.__cause__ or seen.__context__
        if inner is None:
            break
        seen = inner
    if isinstance(seen, OSError) and seen.strerror:
        return seen.strerror
    return _first_line(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def container_view(container: Any) -> dict[str, Any]:
    """What the bundle keeps of one container's inspect data."""
    attrs = container.attrs
    state = attrs.get("State", {})
    health = state.get("Health") or {}
    return {
        "id": attrs.get("Id", "")[:12],
        "name": attrs.get("Name", "").lstrip("/"),
        "image": attrs.get("Config", {}).get("Image"),
        "labels": attrs.get("Config", {}).get("Labels") or {},
        "status": state.get("Status"),
        "running": state.get("Running"),
        "restarting": state.get("Restarting"),
        "exit_code": state.get("ExitCode"),
        "error": state.get("Error") or "",
        "oom_killed": state.get("OOMKilled"),
        "started_at": state.get("StartedAt"),
        "finished_at": state.get("FinishedAt"),
        "restart_count": attrs.get("RestartCount", 0),
        "restart_policy": attrs.get("HostConfig", {}).get("RestartPolicy", {}),
        "health": {
            "status": health.get("Status"),
            "failing_streak": health.get("FailingStreak"),
            "probes": [
                {
                    "start": probe.get("Start"),
                    "exit_code": probe.get("ExitCode"),
                    "output": (probe.get("Output") or "")[-2000:],
                }
                for probe in health.get("Log") or []
            ],
        }
        if health
        else None,
    }


def _select(
    client: Any, names: list[str], labels: list[str], evidence: Evidence
) -> list[Any]:
    from docker.errors import NotFound

    if not names and not labels:
        return client.containers.list(all=True)
    chosen: dict[str, Any] = {}
    for name in names:
        try:
            container = client.containers.get(name)
            chosen[container.id] = container
        except NotFound:
            evidence.note(f"no container named {name!r}")
    if labels:
        for container in client.containers.list(all=True, filters={"label": labels}):
            chosen[container.id] = container
    return list(chosen.values())


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "container"


@collector("docker")
def collect_docker(evidence: Evidence, context: CollectContext) -> None:
    from docker.errors import DockerException

    target = context.config.target
    client = connect(target.docker_host)
    try:
        views = []
        containers = _select(
            client, target.containers, target.container_labels, evidence
        )
        for container in containers:
            view = container_view(container)
            name = _safe_name(view["name"])
            try:
                logs = container.logs(
                    tail=context.config.collect.docker_log_lines, timestamps=True
                )
                view["log_file"] = evidence.write_text(
                    f"{name}.log", logs.decode("utf-8", "replace")
                )
            except DockerException as err:
                evidence.note(f"logs of {view['name']}: {_first_line(err)}")
            evidence.write_json(f"{name}.json", container.attrs)
            views.append(view)
    finally:
        client.close()
    evidence.write_json(
        "summary.json",
        {
            "selected_by": "names and labels"
            if target.containers or target.container_labels
            else "all containers",
            "containers": views,
        },
    )
