"""dunning: escalation events in, letters, calls, SMS and email out, under contact rules."""

__version__ = "0.1.0"
