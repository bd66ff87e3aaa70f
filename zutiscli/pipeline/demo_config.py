"""The options of ``zutis demo`` (:class:`DemoConfig`) and its presets, importable without numpy or torch.

The command line builds ``zutis demo --help`` from these fields; :mod:`zutiscli.pipeline.demo`
runs the chain (and exports :class:`DemoConfig` and :func:`preset` too). The training settings
are those of the shipped recipe ``zutiscli/recipes/demo.yaml`` (``demo-fast.yaml`` with ``--fast``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from zutiscli.config_fields import device_option, not_an_option, option, option_fields
from zutiscli.errors import UsageError
from zutiscli.pipeline.train_config import TrainConfig, load_recipe


@dataclass(frozen=True)
class DemoConfig:
    """The demo recipe. ``fast`` presets trade quality for time (see :func:`preset`).

    The training recipe is a shipped one, ``recipe`` (``zutiscli/recipes/demo.yaml``, with
    ``--fast`` ``demo-fast.yaml``; ``zutis train --config demo`` trains the same way), of which the
    demo sets the model, weights, seed, workers and device; ``iterations`` and
    ``training_options`` (``zutis train`` options by name) override it (:meth:`training`). The
    copy-paste scenes the demo writes have the recipe's size and geometry.

    The demo trains for minutes on a CPU, not for 20,000 GPU iterations at 384 px, so some settings
    differ from the paper's defaults (each measured on the --fast chain, 1,500 iterations of online
    copy-paste, mIoU on the held-out scenes):

    - learning rate 5e-4 (10x) and encoder multiplier 0.3 (paper 0.1);
    - a temperature of 0.1 on the pixel--text cosine logits (paper: raw cosines, temperature 1).
      On the --fast chain (500 iterations, two seeds each, instances scored as below), 100 test and
      100 validation scenes: temperature 0.04 mIoU 0.39-0.40 / 0.44-0.45, mask AP50 0.22-0.23 /
      0.22-0.23; 0.1: mIoU 0.41 / 0.45, mask AP50 0.28-0.30 / 0.23. With the paper's scoring and
      one seed, 0.3 gave mIoU 0.38 and 1 gave 0.37 on the test scenes;
    - no photometric augmentation in copy-paste (paper: colour jitter, grayscale, blur). The
      shapes world's pile and scenes share one photometry, and at 128 px the jitter's contrast
      (down to 0.2x) and the blur (sigma up to 2 px, chosen for 384 px) erase small shapes
      (mIoU 0.34 -> 0.38);
    - holes kept in the pseudo-masks (``zutis pseudolabel --keep-holes``; the paper fills them):
      the world has rings, whose filled masks score IoU 0.55 against the truth, 0.74 with the hole
      kept (the other shapes' masks change by at most 0.01);
    - positions in the decoder's pixel values (``zutis train --positional-values``; not in the
      paper). Without them a mask, ``query . value``, cannot separate instances that look alike,
      and half of the scenes repeat a shape. Measured on 100 held-out scenes: trained on ground
      truth, mask AP50 0.14 -> 0.23 at 500 iterations and 0.22 -> 0.39 at 1,500 (mIoU unchanged,
      the semantic branch does not see the decoder); on the --fast chain, 0.12 -> 0.15, and the
      share of objects that some query covers at IoU >= 0.5 rises from 0.54 to 0.70;
    - copy-paste objects at the scale of the test scenes: the canvas image shrunk to 0.3-1x
      (``--canvas-min``; its object otherwise fills most of the 128 px crop) and pasted objects at
      0.14-0.42 of the side (paper: 0.1-1.0). On the --fast chain, 500 iterations, two copy-paste
      seeds: mIoU 0.42 -> 0.43-0.45 and mask AP50 0.15 -> 0.18-0.23; either change alone did not
      help;
    - instances scored with the class probability ``sigmoid(1 x cos)`` (``zutis predict
      --class-temperature 1``; paper: 5, for a model trained on raw cosines). Trained at a low
      temperature, the embeddings' cosines spread so widely that ``sigmoid(5 x cos)`` outweighs the
      mask quality in the score and ranks good masks below confident poor ones. Chosen on 100
      validation scenes of another seed with a model trained at 0.04 (mask AP50 at 0.1 / 0.3 / 1 /
      5: 0.22 / 0.24 / 0.25 / 0.22; the semantic map does not change).
    - objects kept inside the copy-paste scenes (``zutis copypaste --outside 0``). A third of the
      objects of the test scenes are cut by the scene's edge, and crops of them are named worst
      (80% right against 89% on the true masks); with up to half of each pasted box beyond the edge
      (``--outside 0.5``) the full recipe scored mIoU 0.657 and mask AP50 0.667 against 0.655 and
      0.657 on the test scenes, no gain worth the change; continuing shapes-clip's own training
      on views cut at its border did not name the cut objects better either.

    - three additions to the paper's inference (``zutis predict --refine bilateral --crop-weight
      0.5 --semantic-from instances``, hard NMS at IoU 0.5): candidate masks snapped to the
      image's edges by the bilateral solver, each named a second time by shapes-clip shown a
      masked crop of it, and the semantic map drawn from the instances. With the full recipe's
      model on 100 validation scenes of another seed: mIoU 0.45 -> 0.62, mask AP50 0.29 -> 0.59
      (refinement alone, AP50 0.29; DenseCRF instead of the bilateral solver: 0.52 / 0.43). The
      reason: the objects are found (with refined masks, 83% of them by some instance at IoU >=
      0.5) but the dense embeddings name only 55% of those right, the crops 79%. The crop's
      weight, with the adapter below, on 300 validation scenes of another seed: 0.4 / 0.5 / 0.6 /
      0.75 / 0.9: mIoU 0.743 / 0.741 / 0.735 / 0.726 / 0.723, mask AP 0.527 / 0.533 / 0.537 /
      0.542 / 0.546 (AP50 0.67-0.68 for all); on the test scenes 0.5 vs 0.75: mIoU 0.733 / 0.720.
      (Without the recoloured views, 0.5, 0.75 and 1 scored within 0.01.) The paper's inference
      is still scored on the same model (``zutis, paper's inference``).
    - the crop classifier's adapter (``zutis train --crop-adapter-scenes 1000 --crop-adapter-views
      3 --crop-adapter-decay 0.01``; not in the paper): a linear map of shapes-clip's crop
      embeddings, fitted before training on three recoloured views (any hue, or grey) of each
      object of the first 1,000 copy-paste scenes (3,450 objects, ~45 s). The archives miss the
      colours shapes-clip cannot name a shape in (of the pile's green triangles, purple stars and
      yellow rings, the pairs left out of its training, 0 / 0 / 1 reach their archive), so a map
      fitted on the crops as they are learns those colours as "not this shape" (on the true masks
      of the test scenes: held-out pairs named right 61% plainly, 23% after fine-tuning the
      crop encoder on plain crops). On the 200 test scenes at crop weight 0.75, mIoU without it 0.613,
      fitted on plain crops at a penalty of 0.1 0.655, on recoloured views at 0.01 0.725 (mask
      AP50 0.632 / 0.657 / 0.738). Chosen on 300 validation scenes of another seed (0.666 with the
      plain adapter): three views at a penalty of 0.1 / 0.03 / 0.01 / 0.003 / 0: mIoU 0.693 /
      0.719 / 0.727 / 0.725 / 0.718; five views at 0.03: 0.710; the plain crops plus one view at
      0.1 / 0.03: 0.678 / 0.701. Fine-tuning the crop encoder itself on recoloured crops (300
      steps, 150 s) scored 0.720.

    700 iterations keep the demo under 10 minutes on two CPU cores without bf16 units even when
    the machine trains at only 1.9-2.0 it/s (it varies from 1.9 to 2.5 from one day to another;
    800 took 9 min 27 s at 2.1 it/s and would pass 10 minutes at 1.9).
    With the inference above, the iterations matter little here: on the test scenes 600 / 700 /
    800 / 900 scored mIoU 0.59 / 0.61 / 0.59 / 0.59 and mask AP50 0.61 / 0.63 / 0.63 / 0.62; on 100
    validation scenes 700 vs 900: 0.60 / 0.62 and 0.57 / 0.59. ``--fast`` trains 300 (500: mIoU
    0.60, AP50 0.645; 300: 0.59, 0.63; 200: 0.59, 0.55). The 200 held-out scenes (100 with --fast)
    keep the score steady: on 30-60 scenes one model's mIoU differed by 0.05-0.09 from one scene
    set to another.

    The first fields are the options of ``zutis demo``, in the order its ``--help`` lists them;
    the others are set from Python. Sizes are in pixels; ``k`` is images per archive;
    ``copypaste`` is the number of scenes written for training.
    """

    # the options of `zutis demo`, in the order --help lists them
    ablation: bool = option(
        False, "Also reproduce the paper's findings: no NMS, no stop-gradient (also at the paper's temperature 1), "
        "zero-shot to an untrained shape and to colour-shape names; and, beyond the paper, the crop adapter left "
        "out and the same model trained on ground-truth scenes, the bound of the chain.")
    pretrained: str = option("builtin", "shapes-clip weights: builtin (shipped) or a file from `zutis synth train-clip`.")
    iterations: int | None = option(None, "Training iterations (default: the recipe's).", show_default=False)
    pile: int = option(3000, "Unlabelled images to index (default: the recipe's).", show_default=False)
    scenes: int = option(200, "Held-out evaluation scenes (default: the recipe's).", show_default=False)
    k: int = option(250, "Images retrieved per shape name (default: the recipe's).", flag="-k", show_default=False)
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
    model: str = not_an_option("shapes-clip", "set from Python only")
    eval_seed: int = not_an_option(1, "set from Python only: seed of the held-out scenes")

    def validate(self) -> None:
        from zutiscli.shapes.world import SHAPES

        for name in ("pile", "scenes", "k", "copypaste"):
            if getattr(self, name) < 1:
                flag = "-k" if name == "k" else f"--{name.replace('_', '-')}"
                raise UsageError(f"{flag} must be >= 1 (got {getattr(self, name)})")
        self.training().validate()
        if self.zero_shot_class not in SHAPES:
            raise UsageError(f"--zero-shot-class must be one of {', '.join(SHAPES)} (got {self.zero_shot_class!r})")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0 (got {self.workers})")

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


#: What ``--fast`` changes.
FAST = {"pile": 1200, "scenes": 100, "k": 100, "copypaste": 1200, "recipe": "demo-fast"}

#: The defaults of ``zutis demo`` that differ from :class:`DemoConfig`'s: the options ``--fast``
#: presets are not given by default (None: the preset's value, see :func:`preset`).
COMMAND_DEFAULTS: dict[str, Any] = {field.name: None for field, _, _ in option_fields(DemoConfig) if field.name in FAST}


def preset(fast: bool, **overrides: Any) -> DemoConfig:
    """The default recipe, or the ``--fast`` one, with ``overrides`` (None values ignored) applied.

    An override that is not a :class:`DemoConfig` field but a ``zutis train`` option (``crop``,
    ``batch_size``, ...) goes to ``training_options``.
    """
    values: dict[str, Any] = dict(FAST) if fast else {}
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
