"""Variants as data: presets, user definitions (TOML, --define), clear errors; deterministic swap pairing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.masks import StoredClip
from pipeline.render.definitions import parse_fill
from pipeline.render.kinds import Fill, MaskOptions, VariantError
from pipeline.render.pairing import pair_clips
from pipeline.render.variants import PRESETS, resolve


def test_presets_cover_the_literature_settings():
    assert set(PRESETS) == {"bg", "bg_obj", "bg_obj2", "person", "obj", "human_only", "background_only", "swap",
                            "swap_same", "swap_close", "swap_far", "original", "scuba", "scufo"}
    bg_obj2 = PRESETS["bg_obj2"]
    assert bg_obj2.background.kind == bg_obj2.objects.kind == "color" and bg_obj2.background.rgb != bg_obj2.objects.rgb
    assert PRESETS["human_only"].background.rgb == (124, 116, 104)
    assert PRESETS["swap"].needs_pair and not PRESETS["bg"].needs_pair


@pytest.mark.parametrize("text, fill", [
    ("keep", Fill()), ("color(0, 0, 255)", Fill("color", rgb=(0, 0, 255))), ("#ff8000", Fill("color", rgb=(255, 128, 0))),
    ("blur(4.5)", Fill("blur", sigma=4.5)), ("blur", Fill("blur", sigma=8.0)), ("noise", Fill("noise")),
    ("inpaint", Fill("inpaint")), ("black", Fill("color", rgb=(0, 0, 0))),
])
def test_fill_syntax(text, fill):
    assert parse_fill(text) == fill


def test_user_variants_from_toml_and_command_line(tmp_path):
    path = tmp_path / "variants.toml"
    path.write_text('[variants.blue_bg]\nbackground = "color(0,0,255)"\nobjects = "blur(3)"\n'
                    '[variants.blue_bg.masks]\ndilate = 4\n')
    blue, mine, bg = resolve(["blue_bg", "mine", "bg"], defaults=MaskOptions(temporal=1), file=path,
                             defines=["mine:person=noise;background=#000000"])
    assert (str(blue.background), str(blue.objects), blue.masks) == ("color(0,0,255)", "blur(3)", MaskOptions(temporal=1, dilate=4))
    assert (mine.person.kind, mine.background.rgb, mine.masks.temporal) == ("noise", (0, 0, 0), 1)
    assert bg.masks == MaskOptions(temporal=1)  # the flags' mask options reach the presets
    assert blue.spec()["masks"]["dilate"] == 4


@pytest.mark.parametrize("names, kwargs, message", [
    (["nope"], {}, "unknown variant(s) nope"),
    (["x"], {"defines": ["x:background=purple"]}, "variant 'x': bad fill 'purple'"),
    (["x"], {"defines": ["x:sky=keep"]}, "unknown keys ['sky']"),
    (["x"], {"defines": ["x"]}, "expected NAME:REGION=FILL"),
    (["x"], {"defines": ["../x:person=noise"]}, "names may hold"),
])
def test_bad_definitions_name_the_variant(names, kwargs, message):
    with pytest.raises(VariantError) as error:
        resolve(names, **kwargs)
    assert message in str(error.value)


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "v.toml"
    path.write_text("[variants.a]\nbackground = \n")
    with pytest.raises(VariantError, match=str(path)):
        resolve(["a"], file=path)


def clips(n: int) -> list[StoredClip]:
    return [StoredClip(clip_id=f"c{i:03d}", path=Path(f"c{i:03d}.mp4"), split="train" if i % 5 else "val",
                       label=f"L{i % 3}", label_index=i % 3, meta=None, status="ok", error=None, frames=10, fps=12.0,
                       width=8, height=8, shard="train-00000") for i in range(n)]


def test_swap_pairing_is_seeded_in_range_and_across_labels():
    rows = clips(60)
    coverage = {r.clip_id: (0.01 if i % 7 == 0 else 0.6 if i % 11 == 0 else 0.2) for i, r in enumerate(rows)}
    pairs = pair_clips(rows, coverage, seed=3)
    assert pairs == pair_clips(list(reversed(rows)), coverage, seed=3)  # order of listing does not matter
    assert pairs != pair_clips(rows, coverage, seed=4)
    by_id = {r.clip_id: r for r in rows}
    for a, b in pairs.items():
        assert 0.05 <= coverage[a] <= 0.5 and 0.05 <= coverage[b.clip_id] <= 0.5
        assert by_id[a].split == b.split and by_id[a].label != b.label
    eligible = [r.clip_id for r in rows if 0.05 <= coverage[r.clip_id] <= 0.5]
    assert sorted(pairs) == sorted(eligible)
