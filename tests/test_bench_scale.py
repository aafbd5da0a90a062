"""`make bench-scale` at toy size: every figure is there with sane values, and its listing is Kinetics-400-shaped
(the CVDF CSVs, the official classes, train/val proportions, a few real clips, the same files for the same seed)."""

import csv
import json
import os
import re

from pipeline.bench.listing import HEADER, ListingSpec, write_listing
from pipeline.bench.scale import GOALS, main
from pipeline.datasets.classes import official_classes
from pipeline.datasets.kinetics import clip_name, list_kinetics


def read_rows(root):
    return {split: list(csv.reader(open(root / "annotations" / f"{split}.csv"))) for split in ("train", "val")}


def real_files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.mp4"))


def test_listing_is_kinetics400_shaped_and_deterministic(tmp_path):
    listing = write_listing(tmp_path / "a", ListingSpec(clips=4000, seed=3))
    rows = read_rows(listing.root)
    assert all(table[0] == list(HEADER) for table in rows.values())
    assert {split: len(table) - 1 for split, table in rows.items()} == listing.clips == {"train": 3692, "val": 308}
    assert all(row[4] == split for split, table in rows.items() for row in table[1:])
    labels = [row[0] for table in rows.values() for row in table[1:]]
    assert sorted(set(labels)) == list(official_classes("kinetics400"))  # all 400, 10 clips each
    assert {labels.count(name) for name in set(labels)} == {10}
    assert all(len(row[1]) == 11 and int(row[3]) - int(row[2]) == 10 for table in rows.values() for row in table[1:])
    real = real_files(listing.root)
    assert len(real) == 8 == sum(listing.real.values())  # 0.2%
    names = {f"{split}/{clip_name(row[1], int(row[2]), int(row[3]))}.mp4" for split, table in rows.items()
             for row in table[1:]}
    assert set(real) <= names
    read = list_kinetics(listing.root)  # the pipeline's own reader
    assert len(read.clips) == 4000 and len(read.classes) == 400
    assert sum(os.path.isfile(clip.path) for clip in read.clips) == 8  # a str or a Path
    again = write_listing(tmp_path / "b", ListingSpec(clips=4000, seed=3))
    assert read_rows(again.root) == rows and real_files(again.root) == real
    assert read_rows(write_listing(tmp_path / "c", ListingSpec(clips=4000, seed=4)).root) != rows


def test_scale_bench_reports_every_figure(tmp_path, selfie_model, capsys):
    out = tmp_path / "scale"
    result = main(["--clips", "300", "--overhead-clips", "0", "--real", "3", "--selfie-model", str(selfie_model),
                   "--out", str(out)])
    assert json.loads((out / "bench_scale.json").read_text()) == result == json.loads(capsys.readouterr().out)
    assert result["clips"] == 300 and result["cores"] >= 1 and result["cpu"] and result["date"]
    assert result["listing"]["clips"] == {"train": 277, "val": 23}
    assert sum(result["listing"]["real_clips"].values()) == 3
    plan = result["plan"]
    assert plan["seconds"] > 0 and plan["peak_rss_mb"] > 50 and plan["clips"] == 300
    split = plan["split"]
    assert split["listing_s"] >= 0 and split["identities_s"] >= 0 and split["rest_s"] > 0
    for stage in ("masks", "render"):
        for mode in ("in_process", "workers_2"):
            figures = result[stage][mode]
            one, rest = figures["one_shard"], figures["rest"]
            assert figures["run_clips"] == one["clips"] + rest["clips"] == 300, (stage, mode)
            assert figures["run_shards"] == 1 + rest["shards"] and rest["shards"] >= 5, (stage, mode)
            assert one["real_clips"] + rest["real_clips"] == 3, (stage, mode)  # every real clip ok
            assert rest["frames"] == 4 * rest["real_clips"] and rest["real_excess_s"] >= 0, (stage, mode)
            assert rest["seconds"] > 0 and rest["peak_rss_mb"] > 50, (stage, mode)
            # differences of two short runs: at this size mostly noise, and may come out below zero
            assert isinstance(figures["per_shard_ms"], float) and isinstance(figures["per_clip_ms"], float)
    assert result["noop_rerun"]["seconds"] > 0 and result["noop_rerun"]["done_clips"] == 300
    for name in ("manifests", "report"):
        assert result[name]["seconds"] > 0 and result[name]["clips"] == 300, name
    assert (out / "in-process" / "reports" / "kinetics400").is_dir()
    assert result["status"]["seconds"] > 0 and result["status"]["done_clips"] == 300
    assert re.search(r"^  shards: [\d,]+ of [\d,]+ done", (out / "logs" / "status.log").read_text(), re.M)
    assert set(result["goals"]) == set(GOALS)
    assert result["goals"]["plan_s"]["measured"] == plan["seconds"]
