"""What the evaluator (:mod:`zutiscli.engine.evaluator`) can be asked for, importable without numpy.

``zutis evaluate``'s options (:mod:`zutiscli.pipeline.evaluate_config`) offer these values, and
the command line builds its ``--help`` from them without loading the evaluator.
"""

from __future__ import annotations

#: what can be scored, in the order ``metrics.json`` reports them
TASKS = ("instance", "semantic", "panoptic")
#: how predicted classes (or cluster ids) meet the ground-truth classes
MATCH_MODES = ("names", "hungarian", "majority")
#: COCOeval IoU types: masks and boxes
IOU_TYPES = ("segm", "bbox")
#: COCOeval implementations
BACKENDS = ("pycocotools", "faster-coco-eval")
