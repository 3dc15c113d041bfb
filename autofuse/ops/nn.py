"""Op lowerings: nn family (see registry.py for the conventions)."""
