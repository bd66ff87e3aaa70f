"""The options of copy-paste scene synthesis (:class:`CopyPasteConfig`), importable without torch.

``zutis copypaste`` builds its scene options from these fields; :mod:`zutiscli.data.copypaste`
synthesises the scenes (see there for what each option does).
"""

from __future__ import annotations

from dataclasses import dataclass

from zutiscli.config_fields import not_an_option, option
from zutiscli.errors import UsageError

#: Colour jitter of the official recipe: brightness, contrast, saturation, hue.
JITTER = (0.8, 0.8, 0.8, 0.2)


@dataclass(frozen=True)
class CopyPasteConfig:
    """Scene synthesis options. ``size`` in pixels; probabilities in [0, 1]; scales relative to ``size``."""

    size: int = option(384, "Scene side in pixels.")
    max_objects: int = option(10, "Most archive images per scene (canvas included).")
    same_class_prob: float = option(0.5, "Chance that all objects come from one archive.")
    scale_range: tuple[float, float] = option((0.1, 1.0), parts=(
        ("--scale-min", "Smallest pasted object, as a fraction of the side."),
        ("--scale-max", "Largest pasted object, as a fraction of the side."),
    ))
    canvas_scale: tuple[float, float] = option((1.0, 1.0), parts=(
        ("--canvas-min", "Smallest scale of the canvas (first) image, shrunk onto its own background colour "
                         "(1 = full size, the official recipe)."),
        ("--canvas-max", "Largest scale of the canvas image."),
    ))
    outside: float = option(
        0.0, "Largest share of an object's box placed beyond the scene's edge, where it is cut off, as objects are "
             "in photographs (0 = every object inside, as pasted by the official code before its crop).")
    hflip_prob: float = option(0.5, "Horizontal flip probability.")
    jitter: tuple[float, float, float, float] = not_an_option(JITTER, "Python API only: brightness, contrast, saturation, hue")
    jitter_prob: float = option(0.8, f"Colour jitter {JITTER} probability.")
    grayscale_prob: float = option(0.2, "Grayscale probability.")
    blur_prob: float = option(0.5, "Gaussian blur probability.")
    blur_sigma: tuple[float, float] = not_an_option((0.1, 2.0), "Python API only")
    blur_kernel_fraction: float = not_an_option(0.1, "Python API only: kernel size as a fraction of the side")
    min_visible_fraction: float = option(
        0.25, "Drop an occluded instance showing less than this fraction of itself.")
    min_visible_pixels: int = not_an_option(16, "Python API only")

    def validate(self) -> None:
        if self.size < 16:
            raise UsageError(f"--size must be >= 16 pixels (got {self.size})")
        if self.max_objects < 1:
            raise UsageError(f"--max-objects must be >= 1 (got {self.max_objects})")
        lo, hi = self.scale_range
        if not 0 < lo <= hi <= 1.0:
            raise UsageError(f"--scale-min/--scale-max must satisfy 0 < min <= max <= 1 (got {lo}, {hi})")
        lo, hi = self.canvas_scale
        if not 0 < lo <= hi <= 1.0:
            raise UsageError(f"--canvas-min/--canvas-max must satisfy 0 < min <= max <= 1 (got {lo}, {hi})")
        if not 0.0 <= self.outside < 1.0:
            raise UsageError(f"--outside must lie in [0, 1) (got {self.outside}); it is the largest share of an "
                             "object's box that may fall beyond the scene's edge")
        for name in ("same_class_prob", "hflip_prob", "jitter_prob", "grayscale_prob", "blur_prob",
                     "min_visible_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"--{name.replace('_', '-')} must lie in [0, 1] (got {value})")
