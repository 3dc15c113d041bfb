"""autofuse.search."""
