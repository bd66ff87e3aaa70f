"""zutis: zero-shot unsupervised transfer instance and semantic segmentation.

Give class names and a pile of unlabelled images; get a semantic and instance segmenter.
The command line (`zutis ...`) and this package share the same stage functions.
"""

from zutiscli._version import __version__

__all__ = ["__version__"]
