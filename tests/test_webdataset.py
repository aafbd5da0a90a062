"""FORMAT=webdataset: one tar per render shard, read back with `webdataset.WebDataset` through the manifests'
shard lists; the mp4 inside is the mp4 render's bytes; reruns, failed clips and failed shards."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import tarfile
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.manifests.write import ManifestConfig, write_manifests
from pipeline.masks import run_masks
from pipeline.render import run_render
from pipeline.render.encode import EncodeOptions
from pipeline.render.tars import TAR_MODE, TAR_MTIME, TAR_OWNER, render_key
from pipeline.report import write_report
from tests.test_masks_stage import config as masks_config
from tests.test_render import render_config

DOTTED = "dot.clip_000001_000011"  # a clip id holding '.', where WebDataset would cut the key
WDS = EncodeOptions(format="webdataset")


@pytest.fixture
def masked(shapes_dataset, tmp_path):
    """Masks of the shape clips plus one whose id holds a '.': (out, masks run name)."""
    root, _ = shapes_dataset
    shutil.copy(next(root.glob("train/-clip1_x_*.mp4")), root / "train" / f"{DOTTED}.mp4")
    csv = root / "annotations" / "train.csv"
    csv.write_text(csv.read_text() + '"juggling balls",dot.clip,1,11,train\n')
    out = tmp_path / "out"
    return out, Path(run_masks(masks_config(root, out), progress=False).output).name


def variant_dir(out: Path, tag: str, variant: str) -> Path:
    return out / "renders" / "kinetics400" / tag / variant


def samples(out: Path, tag: str, variant: str, split: str) -> list[dict]:
    """Every sample of a split, read as a trainer would: the manifests' shard list through wds.WebDataset."""
    lines = (out / "manifests" / "kinetics400" / tag / variant / f"{split}_shards.txt").read_text().splitlines()
    prefix = f"{variant_dir(out, tag, variant)}/"
    return list(wds.WebDataset([prefix + line for line in lines], shardshuffle=False))


def decoded_frames(mp4: bytes) -> int:
    with av.open(io.BytesIO(mp4)) as container:
        return sum(1 for _ in container.decode(video=0))


def tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def planned(folder: Path) -> list[str]:
    """The render shards of a webdataset render, by name."""
    return sorted(json.loads((folder / "_status" / "webdataset" / "plan.json").read_text()))


def test_shards_read_back_with_webdataset_and_hold_the_mp4_renders(masked):
    out, tag = masked
    mp4 = run_render(render_config(out, ["bg_obj2"]), progress=False).variants[0]
    summary = run_render(render_config(out, ["bg_obj2"], encode=WDS), progress=False).variants[0]
    assert summary.by_status == mp4.by_status == {"ok": 6} and summary.totals == {"samples": 6}
    folder = variant_dir(out, tag, "bg_obj2")
    shards = planned(folder)
    assert sorted(tars(folder)) == [f"{shard}.tar" for shard in shards] and len(shards) == 4
    assert not [p for p in folder.rglob("*") if ".tmp-" in p.name or p.suffix == ".mp4" and "_status" in p.parts]
    made_of = {fmt: json.loads((folder / f"variant.{fmt}.json").read_text()) for fmt in ("mp4", "webdataset")}
    assert made_of["mp4"]["fingerprint"] != made_of["webdataset"]["fingerprint"]
    assert made_of["mp4"]["composite"] == made_of["webdataset"]["composite"] == "yuv420p"  # the same mp4 bytes
    again = run_render(render_config(out, ["bg_obj2"]), progress=False).variants[0]
    assert (again.computed, again.skipped) == (0, len(shards))  # the mp4 render is untouched by the tars

    write_manifests(ManifestConfig(dataset="kinetics400", out=out))
    manifests = out / "manifests" / "kinetics400" / tag / "bg_obj2"
    rows = pq.read_table(manifests / "manifest.parquet").to_pylist()
    by_format = {fmt: {r["clip_id"]: r for r in rows if r["format"] == fmt} for fmt in ("mp4", "webdataset")}
    lists = json.loads((manifests / "manifest.json").read_text())["lists"]
    assert {"train_shards.txt", "val_shards.txt"} <= set(lists)
    assert (manifests / "train_shards.txt").read_text() == "".join(f"{s}.tar\n" for s in shards if s.startswith("train"))

    read = [sample for split in ("train", "val") for sample in samples(out, tag, "bg_obj2", split)]
    assert len(read) == sum(1 for r in by_format["webdataset"].values() if r["path"]) == 6
    for sample in read:
        row = json.loads(sample["json"])
        assert render_key(sample["__key__"]) == row["clip_id"]
        listed = by_format["webdataset"][row["clip_id"]]
        assert row["path"] == listed["path"] == f"{listed['masks_shard']}.tar"
        for key, value in row.items():  # the manifest row (its Parquet floats are float32)
            assert math.isclose(value, listed[key], rel_tol=1e-6) if isinstance(value, float) else value == listed[key], key
        assert decoded_frames(sample["mp4"]) == row["frames"] > 0
        assert sample["mp4"] == (folder / by_format["mp4"][row["clip_id"]]["path"]).read_bytes()
    dotted = next(sample for sample in read if json.loads(sample["json"])["clip_id"] == DOTTED)
    assert dotted["__key__"] == "dot%2Eclip_000001_000011"


def test_tars_are_reproducible_and_a_rerun_does_nothing(masked, tmp_path):
    out, tag = masked
    other = tmp_path / "other"
    shutil.copytree(out / "masks", other / "masks")
    for target in (out, other):
        run_render(render_config(target, ["bg"], encode=WDS), progress=False)
    folder = variant_dir(out, tag, "bg")
    before = tars(folder)
    assert before == tars(variant_dir(other, tag, "bg")) and len(before) == len(planned(folder))
    with tarfile.open(folder / "train-00000.tar") as archive:
        members = archive.getmembers()
    assert [m.name.split(".", 1)[1] for m in members] == ["json", "mp4"] * (len(members) // 2)
    assert {(m.mtime, m.uname, m.gname, m.uid, m.gid, m.mode) for m in members} == {(TAR_MTIME, TAR_OWNER, TAR_OWNER,
                                                                                     0, 0, TAR_MODE)}

    mtimes = {p: p.stat().st_mtime_ns for p in folder.glob("*.tar")}
    again = run_render(render_config(out, ["bg"], encode=WDS), progress=False).variants[0]
    assert (again.computed, again.skipped) == (0, len(before))
    assert tars(folder) == before and {p: p.stat().st_mtime_ns for p in folder.glob("*.tar")} == mtimes

    write_manifests(ManifestConfig(dataset="kinetics400", out=out))  # the report's sheet reads the tars
    page = write_report(dataset="kinetics400", out=out, clips=2, frames=2).read_text()
    # 2 clips: side by side, masks outlined, the bg strips; and the coverage histogram
    assert "<h2>bg</h2>" in page and len(re.findall(r'<img src="data:image/', page)) == 2 + 2 + 2 + 1


def test_a_failed_clip_has_no_sample_and_a_failed_shard_no_tar(masked, monkeypatch):
    out, tag = masked
    import pipeline.render.stage as stage
    from pipeline.render.tars import SampleTar

    render_clip = stage.render_clip

    def breaks_on_dotted(item, *args, **kwargs):
        if item.clip.clip_id == DOTTED:
            raise ValueError("broken on purpose")
        return render_clip(item, *args, **kwargs)

    monkeypatch.setattr(stage, "render_clip", breaks_on_dotted)
    summary = run_render(render_config(out, ["bg"], encode=WDS), progress=False).variants[0]
    assert summary.by_status == {"ok": 5, "failed": 1} and not summary.failed_shards
    write_manifests(ManifestConfig(dataset="kinetics400", out=out))
    read = samples(out, tag, "bg", "train")
    assert len(read) == 4 and DOTTED not in {json.loads(s["json"])["clip_id"] for s in read}
    rows = pq.read_table(out / "manifests" / "kinetics400" / tag / "bg" / "manifest.parquet").to_pylist()
    failed = next(r for r in rows if r["clip_id"] == DOTTED)
    assert (failed["status"], failed["path"]) == ("failed", None) and "broken on purpose" in failed["error"]
    monkeypatch.undo()

    def disk_full(self, key, mp4, row):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SampleTar, "add", disk_full)
    folder = variant_dir(out, tag, "bg_obj")
    summary = run_render(render_config(out, ["bg_obj"], encode=WDS), progress=False).variants[0]
    assert len(summary.failed_shards) == summary.planned and "No space left on device" in summary.failed_shards["val-00000"]
    assert not (folder / "_status" / "webdataset" / "plan.json").exists(), "a run that committed nothing records nothing"
    assert not list(folder.rglob("*.tar")) and not [p for p in folder.rglob("*") if ".tmp-" in p.name]
    monkeypatch.undo()
    assert run_render(render_config(out, ["bg_obj"], encode=WDS), progress=False).variants[0].by_status == {"ok": 6}
    assert len(tars(folder)) == len(planned(folder))
