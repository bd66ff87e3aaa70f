"""The options of ``zutis demo`` (:class:`DemoConfig`) and its presets, importable without numpy or torch.

The command line builds ``zutis demo --help`` from these fields; :mod:`zutiscli.pipeline.demo`
runs the chain (and exports :class:`DemoConfig` and :func:`preset` too). The training settings
are those of the shipped recipe ``zutiscli/recipes/demo.yaml`` (``demo-fast.yaml`` with ``--fast``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from zutiscli.config_fields import (
    check_choices, device_option, join_commas, not_an_option, option, option_fields, split_commas,
)
from zutiscli.errors import UsageError
from zutiscli.pipeline.train_config import TrainConfig, load_recipe

#: The shapes world's CLIPs the demo runs on (configs and weights shipped in the package).
SHAPES_CLIPS = ("shapes-clip-v2", "shapes-clip")


@dataclass(frozen=True)
class DemoConfig:
    """The demo recipe. ``fast`` presets trade quality for time (see :func:`preset`).

    The training recipe is a shipped one, ``recipe`` (``zutiscli/recipes/demo.yaml``, with
    ``--fast`` ``demo-fast.yaml``; ``zutis train --config demo`` trains the same way), of which the
    demo sets the model, weights, seed, workers and device; ``iterations`` and
    ``training_options`` (``zutis train`` options by name) override it (:meth:`training`). The
    copy-paste scenes the demo writes have the recipe's size and geometry.

    The demo trains for minutes on a CPU, not for 20,000 GPU iterations at 384 px, so some settings
    differ from the paper's; why each does, with what was measured, is in ``docs/demo.md``
    ("How the recipe differs from the paper's" and "Every setting of the recipe, measured").

    The first fields are the options of ``zutis demo``, in the order its ``--help`` lists them;
    the others are set from Python. Sizes are in pixels; ``k`` is images per archive;
    ``copypaste`` is the number of scenes written for training.
    """

    # the options of `zutis demo`, in the order --help lists them
    ablation: bool = option(
        False, "Also reproduce the paper's findings: no NMS, no stop-gradient (also at the paper's temperature 1), "
        "zero-shot to an untrained shape and to colour-shape names; and, beyond the paper, the crop adapter left "
        "out and the same model trained on ground-truth scenes, the bound of the chain.")
    discover: bool = option(
        False, "Run the chain with no class names instead (MaskDistill, U2Seg): masks in every pile image, "
        "clustered at each --discover-k (purity against the pile's hidden ground truth) with --discover-stuff-k "
        "stuff clusters, a model trained on each clustering (the demo-fast recipe; a 1,200-image pile and 100 scenes "
        "a split, over named stuff), scored on both splits by Hungarian and majority matching, beside MaskCLIP "
        "with the names.")
    discover_k: tuple[int, ...] = option(
        (6, 12, 36), "--discover: the cluster counts swept (the world has 6 shapes; U2Seg sweeps 300, 800, 2911 "
        "on COCO's 80 classes).", metavar="K,K,...", parse=lambda text: tuple(_integers(text, "--discover-k")),
        text=join_commas)
    discover_stuff_k: int = option(
        6, "--discover: the pile and the scenes drawn over named stuff, and the stuff outside the masks clustered "
        "into this many stuff clusters (scored with PQ over things and stuff; the world has 6 materials); 0 = "
        "plain backgrounds, no stuff.")
    varied: bool = option(
        False, "Draw the pile over varied training looks (`zutis synth pile --varied`: eight background families, "
        "clutter, brightness and contrast), so copy-paste lays the objects on them; the held-out scenes are drawn "
        "as without it.")
    model: str = option(
        "shapes-clip-v2", "The shapes world's CLIP: shapes-clip-v2 (knows the stuff names; dense tokens MaskCLIP can "
        "read), or shapes-clip, the first release (the training recipe was chosen with it).",
        choices=SHAPES_CLIPS)
    pretrained: str = option("builtin", "Its weights: builtin (shipped) or a file from `zutis synth train-clip`.")
    iterations: int | None = option(None, "Training iterations (default: the recipe's).", show_default=False)
    pile: int = option(3000, "Unlabelled images to index (default: the recipe's).", show_default=False)
    scenes: int = option(200, "Held-out evaluation scenes (default: the recipe's).", show_default=False)
    k: int = option(250, "Images retrieved per shape name (default: the recipe's).", flag="-k", show_default=False)
    stuff_scenes: int = option(
        100, "Held-out scenes over named stuff (sky, grass, ...) on each split, scored panoptically: MaskCLIP with "
        "the shape and stuff names, the model with the shape names (0 = none; default: the recipe's).",
        show_default=False)
    zero_shot_class: str = option("star", "--ablation: the shape left out of training.")
    seed: int = option(0, "Seed of the pile, of copy-paste and of training.")
    workers: int = option(
        1, "Data-loading processes of training; with 0, the synthetic images and copy-paste scenes are written in "
        "this process too (else by one process per CPU, up to 4).")
    device: str = device_option()
    # the rest of the recipe, set from Python (DemoConfig, preset)
    pile_size: int = not_an_option(128, "set from Python only")
    scene_size: int = not_an_option(128, "set from Python only")
    min_objects: int = not_an_option(1, "set from Python only: objects per held-out scene")
    max_objects: int = not_an_option(6, "set from Python only: objects per held-out scene")
    method: str = not_an_option("maskcut", "set from Python only: the pseudo-labeller")
    pseudo_size: int = not_an_option(128, "set from Python only: the pseudo-labeller's input size")
    fill_holes: bool = not_an_option(False, "set from Python only")
    copypaste: int = not_an_option(3000, "set by --fast, else from Python only: training scenes written")
    recipe: str = not_an_option("demo", "set by --fast (demo-fast), else from Python only: the shipped training recipe")
    training_options: dict[str, Any] = not_an_option(default_factory=dict, why="set from Python only: zutis train options")
    photometric: bool = not_an_option(False, "set from Python only: copy-paste's photometric augmentation")
    eval_seed: int = not_an_option(1, "set from Python only: seed of the held-out scenes")
    discover_match_score: float = not_an_option(
        0.0, "set from Python only: --discover's instance vote threshold (U2Seg's 0.6 is for its detector's scores; "
        "the demo's short-trained models score 0.2-0.5, docs/discovery.md)")
    reco_threshold: float = not_an_option(
        0.62, "set from Python only: ReCo's background threshold, chosen on validation scenes (docs/reco.md)")
    reco_rule: str = not_an_option(
        "match", "set from Python only: how ReCo decides the background (`zutis predict --background-rule`): "
        "where no reference matches (shapes-clip-v2's gated maps are alike over objects and background, so "
        "no class holds a large share anywhere; docs/reco.md)")

    def validate(self) -> None:
        from zutiscli.shapes.world import SHAPES

        check_choices(self)
        for name in ("pile", "scenes", "k", "copypaste"):
            if getattr(self, name) < 1:
                flag = "-k" if name == "k" else f"--{name.replace('_', '-')}"
                raise UsageError(f"{flag} must be >= 1 (got {getattr(self, name)})")
        self.training().validate()
        if self.zero_shot_class not in SHAPES:
            raise UsageError(f"--zero-shot-class must be one of {', '.join(SHAPES)} (got {self.zero_shot_class!r})")
        if self.stuff_scenes < 0:
            raise UsageError(f"--stuff-scenes must be >= 0 (got {self.stuff_scenes})")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0 (got {self.workers})")
        if self.discover:
            if self.ablation:
                raise UsageError("--discover and --ablation are separate runs of the demo; give one of them")
            if not self.discover_k or min(self.discover_k) < 2 or len(set(self.discover_k)) < len(self.discover_k):
                raise UsageError(f"--discover-k needs distinct cluster counts >= 2 (got "
                                 f"{join_commas(self.discover_k) or 'none'})")
            if self.discover_stuff_k < 0 or self.discover_stuff_k == 1:
                raise UsageError(f"--discover-stuff-k must be 0 (no stuff) or >= 2 (got {self.discover_stuff_k})")

    def training(self, source: str | Path = "", **changes: Any) -> TrainConfig:
        """The :class:`~zutiscli.pipeline.train.TrainConfig` of the demo's training on ``source``.

        The shipped recipe ``recipe``, with the chain's model, weights, seed, workers and device;
        then ``iterations`` (a checkpoint only at the end, 50 lines of metrics), then
        ``training_options``, then ``changes``.
        """
        values = load_recipe(self.recipe)
        values.update(source=str(source), model=self.model, pretrained=self.pretrained, seed=self.seed,
                      workers=self.workers, device=self.device)
        if self.iterations is not None:
            values["iterations"] = self.iterations
        iterations = values.get("iterations", TrainConfig.iterations)
        values.update(checkpoint_every=iterations, log_every=max(1, iterations // 50))
        values.update(self.training_options)
        values.update(changes)
        return TrainConfig.from_dict(values, where=f"the demo's recipe {self.recipe!r}")


def _integers(text: str, flag: str) -> list[int]:
    try:
        return [int(value) for value in split_commas(text)]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give whole numbers separated by commas, e.g. 6,12,36") from None


#: How the demo's metrics name the scenes of the shift split (``zutis synth scenes --split shift``).
SHIFT = "shift split"

#: What ``--fast`` changes.
FAST = {"pile": 1200, "scenes": 100, "k": 100, "stuff_scenes": 50, "copypaste": 1200, "recipe": "demo-fast"}

#: What ``--discover`` changes (before ``--fast``): a model per cluster count, each trained with the
#: ``demo-fast`` recipe, pseudo-labels over a pile of ``--fast``'s size and its 100 scenes per split
#: (under 10 minutes on 2 cores).
DISCOVER = {"pile": 1200, "scenes": 100, "recipe": "demo-fast"}

#: The defaults of ``zutis demo`` that differ from :class:`DemoConfig`'s: the options ``--fast``
#: presets are not given by default (None: the preset's value, see :func:`preset`).
COMMAND_DEFAULTS: dict[str, Any] = {field.name: None for field, _, _ in option_fields(DemoConfig) if field.name in FAST}


def preset(fast: bool, **overrides: Any) -> DemoConfig:
    """The default recipe, or the ``--fast`` one (and with ``discover`` the ``--discover`` one:
    :data:`DISCOVER`), with ``overrides`` (None values ignored) applied.

    An override that is not a :class:`DemoConfig` field but a ``zutis train`` option (``crop``,
    ``batch_size``, ...) goes to ``training_options``.
    """
    values: dict[str, Any] = {**(DISCOVER if overrides.get("discover") else {}), **(FAST if fast else {})}
    demo = {f.name for f in fields(DemoConfig)}
    training = {f.name for f in fields(TrainConfig)}
    options: dict[str, Any] = {}
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in demo and name in training:
            options[name] = value
        else:
            values[name] = value
    if options:
        values["training_options"] = {**values.get("training_options", {}), **options}
    return DemoConfig(**values)
