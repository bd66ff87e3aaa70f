"""Input data: finding image files and decoding them to RGB (PIL + numpy only, no torch); benchmark adapters."""
