"""Pure functions on arrays and tensors: masks and RLE, mask NMS, CRF, metrics.

Nothing here imports other zutis modules, reads files or keeps state.
"""
