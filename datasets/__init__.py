"""autofuse.datasets."""
