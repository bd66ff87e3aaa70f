"""`zutis demo --discover`, small, through the real command line: the chain with no class names.

pseudolabel over the pile -> cluster at each k (purity) -> train on the clusters -> predict the
clusters -> evaluate with Hungarian and majority matching, on both splits; compare beside MaskCLIP.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zutiscli.artefacts.manifest import read_manifest

from test_demo import zutis  # noqa: E402

pytestmark = pytest.mark.slow

KS = (3, 5)
STUFF_NAMES = [f"stuff-{i:02d}" for i in range(6)]  # --discover-stuff-k's default 6


@pytest.fixture(scope="module")
def discovered(tmp_path_factory):
    out = tmp_path_factory.mktemp("discover") / "run"
    done = zutis("demo", "--fast", "--discover", "--discover-k", ",".join(map(str, KS)), "--pile", "120",
                 "--scenes", "12", "--iterations", "10", "--json", "-o", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads(done.stdout)


def test_no_name_reaches_the_chain_before_scoring(discovered) -> None:
    out, payload = discovered
    for absent in ("index", "archives", "copypaste", "train", "references"):  # the named chain's stages
        assert not (out / absent).exists(), absent
    assert read_manifest(out / "discover" / "pseudolabels").params["source"] == "images"
    for k in KS:
        where = out / "discover" / f"k{k}"
        assert read_manifest(where / "clusters").kind == "zutis.clusters"
        assert read_manifest(where / "train").kind == "zutis.run"
        categories = json.loads((where / "predict" / "images.json").read_text())["categories"]
        # the model's clusters, then the stuff clusters that travel with it
        assert [c["name"] for c in categories] == [f"cluster-{i:02d}" for i in range(k)] + STUFF_NAMES
    assert Path(payload["summary_picture"]) == out / "compare" / "compare.png"


def test_every_k_is_scored_by_both_matchings_on_both_splits(discovered) -> None:
    out, payload = discovered
    headline = payload["headline"]
    for k in KS:
        for match in ("hungarian", "majority"):
            for suffix, place in (("", f"k{k}"), (", shift split", f"k{k}/shift")):
                values = headline[f"discovery, k {k} ({match}){suffix}"]
                assert 0.0 <= values["mIoU"] <= 1.0 and "mask_AP" in values
                mapping = json.loads((out / "discover" / place / f"evaluate-{match}" / "cluster_mapping.json")
                                     .read_text())
                assert mapping["mode"] == match and len(mapping["tasks"]["semantic"]) == k + 1 + len(STUFF_NAMES)
                # scored over things and stuff against the scenes' panoptic truth
                assert {"PQ", "PQ_things", "PQ_stuff"} <= set(values) and 0.0 <= values["PQ_stuff"] <= 1.0
        reused = headline[f"discovery, k {k} (hungarian, the test split's mapping), shift split"]
        given = json.loads((out / "discover" / f"k{k}" / "shift" / "evaluate-test-mapping" / "metrics.json")
                           .read_text())["semantic"]["cluster_mapping"]
        found = json.loads((out / "discover" / f"k{k}" / "evaluate-hungarian" / "cluster_mapping.json").read_text())
        assert given["given"] and given["mapping"] == found["tasks"]["semantic"] and 0.0 <= reused["mIoU"] <= 1.0
        quality = payload["stage_quality"]["clusters"][str(k)]
        assert 0.0 < quality["purity"] <= 1.0 and 0.0 <= quality["nmi"] <= 1.0
        assert quality["stuff"]["k"] == 6 and 0.0 < quality["stuff"]["purity"] <= 1.0
    assert {"maskclip", "maskclip, shift split"} <= set(headline)
    assert "PQ_stuff" in headline["maskclip"]  # MaskCLIP named the stuff too


def test_compare_holds_the_clusters_beside_maskclip(discovered) -> None:
    out, payload = discovered
    rows = json.loads((out / "compare" / "compare.json").read_text())["runs"]
    assert rows["maskclip"]["method"] == "maskclip"
    for k in KS:
        row = rows[f"discovery, k {k}"]
        assert row["method"] == "zutis (clusters, hungarian)"
        assert row["metrics"]["mIoU"] == pytest.approx(payload["headline"][f"discovery, k {k} (hungarian)"]["mIoU"],
                                                       abs=1e-4)


def test_more_clusters_than_the_pile_has_masks_stop_before_any_training(tmp_path) -> None:
    out = tmp_path / "run"
    done = zutis("demo", "--discover", "--discover-k", "3,100", "--pile", "20", "--scenes", "4", "--iterations", "5",
                 "-q", "-o", str(out))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "--discover-k 100: the pile gave" in done.stderr
    assert not (out / "discover" / "k3").exists() and not (out / "manifest.json").exists()
