"""Physics simulators and simulated instruments (installed as satlab.simulators)."""
