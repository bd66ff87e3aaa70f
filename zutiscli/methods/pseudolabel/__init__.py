"""Pseudo-labellers: the ways ``zutis pseudolabel`` finds object masks, one module per method.

A pseudo-labeller is a :class:`PseudoLabeller` subclass registered under its name with
:func:`register`. It says what it needs (the last-block features of a ViT, or its own saliency
network), the default input size, and turns one image (plus those features or that saliency map)
into soft object masks at image resolution. Everything after that (edge-aware refinement, holes,
components, small specks, one object per pixel) is the stage's and the same for every method.

Adding a method: write ``zutiscli/methods/pseudolabel/<name>.py`` with a registered subclass and
add its module name to :data:`BUILTIN`; ``--method``, the config's validation and the help text
pick it up from the registry. The mask maths itself belongs in :mod:`zutiscli.ops`.

Built-in methods (in ``--method`` order): ``spectral`` (default), ``attention``, ``maskcut``,
``onnx``; see each module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

from zutiscli.errors import UsageError

if TYPE_CHECKING:  # numpy stays unimported until a method runs (the command line starts faster)
    import numpy as np

    #: One found object: ``(mask (H, W) float32 in [0, 1] at image resolution, score in [0, 1] or None)``.
    SoftMask = tuple[np.ndarray, float | None]

    #: What a ViT-feature method receives per image: the last block's ``tokens`` ``(h, w, C)``,
    #: ``keys`` ``(h, w, C)`` and ``cls_attention`` ``(heads, h, w)``, float32 numpy, patch resolution.
    Features = dict[str, np.ndarray]

__all__ = ["PseudoLabeller", "BUILTIN", "register", "get_labeller", "labeller_names"]

#: Modules of this package that define the built-in methods, in the order ``--method`` lists them.
BUILTIN = ("spectral", "attention", "maskcut", "onnx")


class PseudoLabeller:
    """One mask-discovery method. Subclass, set the class attributes, implement :meth:`propose`.

    Class attributes:
        name: the ``--method`` value.
        summary: one line for help texts.
        default_size: input short side in pixels when ``--size`` is not given (square side when
            ``square_input``).
        needs: ``"features"`` (last-block features of the stage's ViT, see
            :mod:`zutiscli.models.backbones`) or ``"saliency"`` (the method brings its own network:
            implement :meth:`load_saliency`, :meth:`describe_saliency`, :meth:`plan_saliency`).
        square_input: the ViT sees a ``default_size`` square instead of a short-side resize.
        default_components: ``--components`` when not given (``largest``, ``split`` or ``none``).
        options: the config fields the method reads (for documentation and checks).

    ``config`` below is the stage's ``PseudolabelConfig`` (read, never changed).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    default_size: ClassVar[int] = 512
    needs: ClassVar[str] = "features"
    square_input: ClassVar[bool] = False
    default_components: ClassVar[str] = "largest"
    options: ClassVar[tuple[str, ...]] = ()

    def validate(self, config: Any) -> None:
        """Refuse options this method cannot run with (:class:`UsageError`); the default accepts all."""

    def propose(self, image: np.ndarray, features: Features | None, saliency: np.ndarray | None,
                config: Any) -> list[SoftMask]:
        """Soft object masks of one image, most salient first.

        Args:
            image: ``(H, W, 3)`` uint8 RGB at original resolution.
            features: for ``needs == "features"``, the last block's ``tokens`` ``(h, w, C)``,
                ``keys`` ``(h, w, C)`` and ``cls_attention`` ``(heads, h, w)``, float32 numpy at
                patch resolution; else None.
            saliency: for ``needs == "saliency"``, the ``(H, W)`` float32 map in [0, 1] that
                :meth:`load_saliency`'s callable returned; else None.
            config: the stage's options.

        Returns:
            ``[(mask (H, W) float32 in [0, 1], score or None), ...]``; empty when nothing is found.
        """
        raise NotImplementedError

    # ---- methods with their own saliency network (needs == "saliency") ----------------------
    def load_saliency(self, config: Any) -> Callable[[np.ndarray], np.ndarray]:
        """The network as a callable ``(H, W, 3) uint8 -> (H, W) float32 in [0, 1]``."""
        raise NotImplementedError(f"{self.name}: needs ViT features, not a saliency network")

    def describe_saliency(self, config: Any) -> dict[str, Any]:
        """The manifest's ``model`` record of the network (what a resumed run must match)."""
        raise NotImplementedError(f"{self.name}: needs ViT features, not a saliency network")

    def plan_saliency(self, config: Any) -> dict[str, Any]:
        """The dry run's ``model`` entry: the checks of :meth:`load_saliency` without loading."""
        raise NotImplementedError(f"{self.name}: needs ViT features, not a saliency network")


_REGISTRY: dict[str, PseudoLabeller] = {}
_Labeller = TypeVar("_Labeller", bound=type[PseudoLabeller])


def register(cls: _Labeller) -> _Labeller:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a pseudo-labeller needs a name")
    if cls.needs not in ("features", "saliency"):
        raise ValueError(f"{cls.__name__}: needs must be 'features' or 'saliency', not {cls.needs!r}")
    if cls.default_components not in ("largest", "split", "none"):
        raise ValueError(f"{cls.__name__}: default_components must be largest, split or none")
    _REGISTRY[cls.name] = cls()
    return cls


def _load_builtin() -> None:
    for module in BUILTIN:
        importlib.import_module(f"{__name__}.{module}")


def labeller_names() -> tuple[str, ...]:
    """The registered method names: the built-in ones in :data:`BUILTIN` order, then any others."""
    _load_builtin()
    return tuple(_REGISTRY)


def get_labeller(name: str) -> PseudoLabeller:
    """The registered pseudo-labeller called ``name``; a :class:`UsageError` lists the choices."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"--method {name!r} is not one of {', '.join(_REGISTRY)}") from None
