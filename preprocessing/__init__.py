"""Series reading, HU preprocessing, lung masks, slice selection, vote, phantom.

Pure functions over numpy arrays in (N, H, W) axis order; HU for intensities, mm for
distances. Nothing here imports Triton or torch.
"""
