"""Op lowerings: quantization family (see registry.py for the conventions)."""
