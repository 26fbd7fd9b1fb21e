"""roxy-core: the small command service that roxy-triage ships and triages."""

__version__ = "1.4.0"
