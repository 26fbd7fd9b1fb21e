"""roxy-triage: evidence, load and a report for a misbehaving local HTTP service."""

__version__ = "0.1.0"
