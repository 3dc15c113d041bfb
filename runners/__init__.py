"""autofuse.runners."""
