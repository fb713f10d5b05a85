"""Health checking: probes for every target of the served state, a state per probe, and the
down keys the compiler marks (all-dead-all-alive is the compiler's). See docs/health.md."""
