"""Op lowerings: control family (see registry.py for the conventions)."""
