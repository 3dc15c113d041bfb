"""Image ops: Resize, Upsample, GridSample, AffineGrid, RoiAlign."""
