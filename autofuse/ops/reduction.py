"""Op lowerings: reduction family (see registry.py for the conventions)."""
