"""Neural networks: the CLIP backbone over open_clip, and (later) the ZUTIS model."""
