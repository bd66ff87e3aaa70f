"""The options of ``zutis cluster`` (:class:`ClusterConfig`), importable without numpy or torch.

The command line builds ``zutis cluster --help`` from these fields; :mod:`zutiscli.pipeline.cluster`
runs the stage (and exports :class:`ClusterConfig` too).
"""

from __future__ import annotations

from dataclasses import dataclass

from zutiscli.config_fields import check_choices, device_option, not_an_option, option, precision_option
from zutiscli.errors import UsageError

#: What ``--features`` may embed each mask as (see :class:`ClusterConfig`).
FEATURES = ("clip", "cls")
#: The feature of a mask when neither ``--features`` nor ``--features-from`` says.
DEFAULT_FEATURES = "clip"
#: A mask takes the class of the ground-truth instance it overlaps best at this IoU or more.
MATCH_IOU = 0.5


@dataclass
class ClusterConfig:
    """Options of ``zutis cluster`` (sizes in pixels).

    MaskDistill's and U2Seg's step from class-agnostic masks to pseudo-classes: one feature per
    mask, L2-normalised, then spherical k-means (faiss) into ``k`` clusters. Neither paper gives
    its k-means settings beyond k (MaskDistill: the benchmark's number of classes; U2Seg: 300,
    800 or 2911, over-clustering); ``restarts`` 3, ``iterations`` 25 (faiss's default) are ours.
    """

    pseudolabels: str = not_an_option(why="the command's PSEUDO argument")
    k: int = option(help="Clusters, i.e. pseudo-classes (MaskDistill: the benchmark's classes, e.g. 20 on VOC; "
                         "U2Seg over-clusters into 300 or 800).", flag="-k")
    features: str | None = option(
        None, "What embeds a mask: clip = the CLIP image embedding of a square crop around it, the outside "
        "painted in the model's mean colour; cls = a ViT's [CLS] token of the whole image, the outside painted "
        "over (MaskDistill). Default: clip, or what --features-from holds.", choices=FEATURES, show_default=False)
    model: str | None = option(
        None, "The model that embeds the masks: an open_clip name, or for cls also timm:NAME or dino-vits16 "
        "(default: the pseudo-labels' model).", kind="model", show_default=False)
    pretrained: str | None = option(
        None, "Weights of --model: tag, file, builtin or none (default: the pseudo-labels' weights, or --model's "
        "usual ones).", show_default=False)
    features_from: str | None = option(
        None, "Reuse the mask features of an earlier `zutis cluster` directory of the same pseudo-labels, to "
        "cluster again (another -k or --seed) without embedding.", kind="path", metavar="CLUSTERS",
        show_default=False)
    size: int | None = option(
        None, "Side of the square model input (default: the model's own input size, 224 for timm ViTs).",
        show_default=False)
    margin: float = option(0.2, "Context around the mask's box in its crop, a fraction of the box's longer side "
                                "(clip features).")
    restarts: int = option(3, "k-means runs from different random centroids; the tightest is kept (faiss nredo).")
    iterations: int = option(25, "k-means iterations per run (faiss niter).")
    seed: int = option(0, "Seed of k-means' initial centroids: the same seed gives the same clusters.")
    ground_truth: str | None = option(
        None, "COCO instances JSON of the same images (file_name matched by relative path or name): each mask "
        f"takes the class of the instance it overlaps best (IoU >= {MATCH_IOU}); the clusters' purity and NMI "
        "are reported.", kind="path", metavar="COCO_JSON", show_default=False)
    stuff_k: int = option(
        0, "Also cluster the stuff: a CLIP's patch tokens outside every mask, k-means into this many stuff "
        "clusters (U2Seg's stuff, without STEGO's trained head; 0 = none). A model trained on the clusters labels "
        "what no thing claims with them (zutis predict --task semantic|panoptic).")
    stuff_patches: int = option(64, "Most patches sampled from one image for --stuff-k.")
    stuff_layer: int | None = option(
        None, "Blocks of the CLIP image tower run before its patch tokens become the stuff features (0 = the patch "
        "embedding). Default: half its depth; lower layers separate one renderer's textures better and transfer "
        "worse (docs/discovery.md).", show_default=False)
    contact: int = option(16, "Masks nearest each centroid on its contact sheet contact/cluster-XX.jpg (0 = none).")
    batch_size: int = option(64, "Masks per forward pass.", short="-b")
    workers: int | None = option(
        None, "Threads decoding images and cutting the masked crops (default: one per core, at most 8); the "
        "clusters do not depend on it.", show_default=False)
    device: str = device_option()
    precision: str = precision_option()
    chunk_size: int = not_an_option(4096, "Python API only: masks embedded between two commits of their features")

    def validate(self) -> None:
        check_choices(self)
        if self.k < 2:
            raise UsageError(f"-k must be >= 2: one cluster groups nothing (got {self.k})")
        if self.stuff_k < 0 or self.stuff_k == 1:
            raise UsageError(f"--stuff-k must be 0 (no stuff) or >= 2 (got {self.stuff_k})")
        if self.stuff_layer is not None and self.stuff_layer < 0:
            raise UsageError(f"--stuff-layer must be >= 0 (got {self.stuff_layer})")
        if self.stuff_patches < 1:
            raise UsageError(f"--stuff-patches must be >= 1 (got {self.stuff_patches})")
        if self.restarts < 1 or self.iterations < 1:
            raise UsageError(f"--restarts and --iterations must be >= 1 (got {self.restarts} and {self.iterations})")
        if self.size is not None and self.size < 16:
            raise UsageError(f"--size must be >= 16 pixels (got {self.size})")
        if self.margin < 0:
            raise UsageError(f"--margin must be >= 0 (got {self.margin})")
        if self.contact < 0 or self.batch_size < 1:
            raise UsageError(f"--contact must be >= 0 and --batch-size >= 1 (got {self.contact} and {self.batch_size})")
        if self.chunk_size < 1:
            raise UsageError(f"chunk_size must be >= 1 (got {self.chunk_size})")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers must be >= 0 (got {self.workers})")
        if self.features_from is not None and (self.model is not None or self.pretrained is not None):
            raise UsageError("--features-from reuses the features of an earlier run and its model; leave out "
                             "--model and --pretrained")
