"""Neural networks: the CLIP backbone over open_clip, and (later) the ZUTIS model."""

from pathlib import Path

#: zutis' own open_clip model configs (``shapes-clip``, ``zutis-tiny``, ...): one JSON file per model.
CONFIG_DIR = Path(__file__).with_name("configs")
