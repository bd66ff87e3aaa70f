"""Benchmark loading a ZUTIS checkpoint for prediction (``load_zutis``) against the former way.

Run by hand (not a test); needs no download:

    python benchmarks/bench_model_load.py                       # ViT-B-16 ZUTIS model, random weights
    python benchmarks/bench_model_load.py --model shapes-clip --queries 20 --decoder-layers 3

Setup (untimed): a ZUTIS model over ``--model`` with ``--pretrained none`` (random weights, seeded)
and the paper's decoder sizes by default (100 queries, 6 layers), saved as ``zutis train`` saves
``model.pt`` in a temporary directory. Timed, interleaved, best of ``--repeats`` (wall and CPU
seconds of this process, one torch thread):

- "random init + load" (the former ``load_zutis``): the network built with random initialisation
  (``load_backbone(..., "none")``, ``ZutisModel``), the checkpoint read into memory, then
  ``load_state_dict`` copies its tensors over the random ones;
- ``load_zutis`` as it is: the parameters left uninitialised while the network is built
  (:func:`zutiscli.methods.predict.zutis.parameters_left_uninitialised`), the checkpoint
  memory-mapped, the same strict ``load_state_dict``.

Both are checked to give bit-identical dense embeddings, mask logits and text embeddings on one
random image.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from _timing import Timer  # noqa: E402 (benchmarks/ is on sys.path)


def former_load(path: Path) -> torch.nn.Module:
    """``load_zutis`` before the change: random initialisation, then the state dict copied over it."""
    from zutiscli.artefacts.checkpoint import load_checkpoint
    from zutiscli.models.clip import ModelSpec, load_backbone
    from zutiscli.models.zutis import ZutisConfig, ZutisModel

    data = load_checkpoint(path)
    config = ZutisConfig.from_dict(data["config"])
    model = ZutisModel(load_backbone(ModelSpec(config.backbone["name"], "none"), device="cpu"), config)
    model.load_state_dict(data["model"])
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def outputs(model: torch.nn.Module, size: int) -> list[torch.Tensor]:
    """Dense embeddings ``(1, h, w, D)``, last mask logits ``(1, Q, 2h, 2w)`` and text embeddings of
    one seeded random ``(1, 3, size, size)`` image, float32."""
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, size, size, generator=generator)
    with torch.inference_mode():
        backbone = model.backbone
        tokens = backbone.dense_tokens(backbone.normalise(image))
        return [model.dense_embeddings(tokens), model.mask_logits(tokens)[-1], model.text_embeddings(["circle", "star"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--decoder-layers", type=int, default=6)
    parser.add_argument("--decoder-heads", type=int, default=8)
    parser.add_argument("--decoder-ffn", type=int, default=2048)
    parser.add_argument("--mlp-hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="side of the image the outputs are compared on")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from zutiscli.artefacts.checkpoint import save_checkpoint
    from zutiscli.methods.predict.zutis import load_zutis
    from zutiscli.models.clip import ModelSpec, load_backbone
    from zutiscli.models.zutis import ZutisConfig, ZutisModel

    root = Path(tempfile.mkdtemp(prefix="bench_model_load_"))
    try:
        torch.manual_seed(0)
        config = ZutisConfig(backbone={"name": args.model, "pretrained": "none"}, num_queries=args.queries,
                             decoder_layers=args.decoder_layers, decoder_heads=args.decoder_heads,
                             decoder_ffn=args.decoder_ffn, mlp_hidden=args.mlp_hidden)
        model = ZutisModel(load_backbone(ModelSpec(args.model, "none")), config)
        path = save_checkpoint(root / "model.pt", {"config": model.config.to_dict(), "classes": ["a"],
                                                   "model": model.state_dict(), "iteration": 0})
        size_mb = path.stat().st_size / 2**20
        del model
        variants = {"random init + load": former_load,
                    "load_zutis": lambda p: load_zutis(p, torch.device("cpu"))[0]}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        loaded: dict[str, torch.nn.Module] = {}
        for _ in range(max(1, args.repeats)):
            for name, load in variants.items():
                loaded.pop(name, None)
                with Timer() as timer:
                    loaded[name] = load(path)
                times[name].append((timer.wall, timer.cpu))
        same = all(torch.equal(a, b) for a, b in zip(*(outputs(m, args.size) for m in loaded.values())))
        print(f"{args.model} ZUTIS model ({args.queries} queries, {args.decoder_layers} decoder layers), "
              f"checkpoint {size_mb:.0f} MiB, one torch thread, best of {args.repeats}:")
        best = {name: (min(w for w, _ in runs), min(c for _, c in runs)) for name, runs in times.items()}
        for name, runs in times.items():
            print(f"  {name:20s} {best[name][0]:6.2f} s wall {best[name][1]:6.2f} s cpu   all (wall/cpu): "
                  + ", ".join(f"{w:.2f}/{c:.2f}" for w, c in runs))
        former, now = best["random init + load"], best["load_zutis"]
        print(f"  speed-up: {former[0] / now[0]:.1f}x wall, {former[1] / now[1]:.1f}x cpu; "
              f"outputs bit-identical: {'yes' if same else 'NO'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
