"""autofuse.costmodel."""
