"""Op lowerings: sequence family (see registry.py for the conventions)."""
