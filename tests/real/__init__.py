"""Real daemons and journal files for the tests, usable outside pytest too.

- :mod:`tests.real.systemd`: journald and a systemd manager in a private mount
  namespace, running real units.
- :mod:`tests.real.docker`: a private Docker engine with a locally built
  busybox image and containers in every health state.
- :mod:`tests.real.journal`: journal files written from export-format entries,
  without any daemon.
- :mod:`tests.real.lifecycle`: what they share: PID files, cgroup slices,
  leftovers of sessions that were killed outright.

A component that cannot start raises
:class:`~tests.real.lifecycle.ComponentUnavailable` with the reason; the
pytest fixtures in ``tests/plugins/real_components.py`` turn that into a skip,
or a failure under ``CI=true``.
"""

from tests.real.lifecycle import ComponentUnavailable, reap_stale

__all__ = ["ComponentUnavailable", "reap_stale"]
