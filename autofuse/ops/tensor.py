"""Op lowerings: tensor family (see registry.py for the conventions)."""
