"""A grid of runs against one results store: planning, claiming with leases, launchers, the
store itself, and the adaptive attacker's search."""
