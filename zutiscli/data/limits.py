"""Limits on input data, kept apart from the decoders so that option declarations can name them cheaply."""

#: PIL's own default limit (``Image.MAX_IMAGE_PIXELS``), in pixels (width * height).
DEFAULT_MAX_PIXELS = 178_956_970
