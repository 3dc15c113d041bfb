"""Op lowerings: signal family (see registry.py for the conventions)."""
