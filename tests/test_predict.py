"""predict: zero-shot scores equal a direct forward of the same library on the same frames (open_clip and
X-CLIP, random weights, tiny configs written here); lazy rows are composed with the render's pixels; reruns do
nothing and a changed manifest redoes only its variant; bad input is one line and exit 2."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.evaluate.run import EvaluateConfig, run_evaluate
from pipeline.executor import ExecOptions
from pipeline.manifests.write import ManifestConfig, write_manifests
from pipeline.masks import MasksRun, run_masks
from pipeline.predict.inputs import positions, read_frames
from pipeline.predict.runner import PredictConfig, run_predict
from pipeline.predict.scorers import ScorerSpec
from pipeline.render import run_render
from pipeline.render.encode import EncodeOptions
from pipeline.render.variants import resolve
from tests.test_masks_stage import config as masks_config
from tests.test_render import render_config

LAZY_VARIANTS = ["human_only", "background_only", "swap", "scuba", "scufo"]
RENDER_SEED = 3  # not the default: the stage must take the render's own


def tiny_open_clip(folder: Path) -> str:
    """An open_clip model folder (config only: random weights) of a few thousand parameters; its scorer name."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32,
                                                            "patch_size": 8, "head_width": 16},
                            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                         "layers": 2}},
              "preprocess_cfg": {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28], "interpolation": "bicubic"}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return f"open_clip:local-dir:{folder}"


def tiny_xclip(folder: Path) -> str:
    """An X-CLIP folder: a tiny config, a CLIP tokenizer from a vocabulary of single letters, a processor."""
    from transformers import CLIPTokenizer, VideoMAEImageProcessor, XCLIPConfig, XCLIPProcessor

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz.()":
        vocab[char], vocab[char + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    XCLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=77),
                vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   image_size=32, patch_size=8, num_frames=4, mit_hidden_size=32,
                                   mit_intermediate_size=64, mit_num_hidden_layers=1, mit_num_attention_heads=2),
                projection_dim=32, prompt_layers=1, prompt_attention_heads=2,
                prompt_projection_dim=32).save_pretrained(folder)
    processor = VideoMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    XCLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return f"xclip:{folder}"


@pytest.fixture
def listed(shapes_dataset, tmp_path):
    """Masks of the shape clips, `original` (links) and lazy protocol variants, their manifests: (out, run_dir)."""
    root, _ = shapes_dataset
    out = tmp_path / "out"
    run_dir = Path(run_masks(masks_config(root, out), progress=False).output)
    run_render(render_config(out, ["original"]), progress=False)
    run_render(render_config(out, LAZY_VARIANTS, encode=EncodeOptions(format="lazy"), seed=RENDER_SEED),
               progress=False)
    write_manifests(ManifestConfig(dataset="kinetics400", out=out))
    return out, run_dir


def predict_config(out: Path, scorer: str, **overrides) -> PredictConfig:
    fields = dict(dataset="kinetics400", out=out, split="train", scorer=ScorerSpec.parse(scorer, weights="random"),
                  execution=ExecOptions(workers=0), batch=3)
    return PredictConfig(**{**fields, **overrides})


def one_template(path: Path, template: str = "a video of {}.") -> Path:
    path.write_text(f"templates = [{json.dumps(template)}]\n")
    return path


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {row[0]: np.array([float(v) for v in row[1:]]) for row in rows[1:]}


def decoded(path: Path, wanted: list[int]) -> np.ndarray:
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return np.stack([frames[p] for p in wanted])


def test_open_clip_scores_equal_the_library_forward_on_the_same_frames(listed, tmp_path):
    import open_clip

    out, run_dir = listed
    scorer = tiny_open_clip(tmp_path / "model")
    prompts = tmp_path / "prompts.toml"
    prompts.write_text('templates = ["a video of {}.", "a photo of a person {}."]\n')
    summary = run_predict(predict_config(out, scorer, prompts=prompts, variants=("original",), frames=5),
                          progress=False)
    assert not summary.failed
    found = read_csv(Path(summary.folder) / "original.csv")
    name = scorer.removeprefix("open_clip:")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(name, load_weights=False)
    model.eval()
    classes = (out / "manifests" / "kinetics400" / run_dir.name / "original" / "label_map.txt").read_text().splitlines()
    tokenizer = open_clip.get_tokenizer(name)
    templates = [[f"a video of {c.lower()}." for c in classes], [f"a photo of a person {c.lower()}." for c in classes]]
    clips = {clip.clip_id: clip for clip in MasksRun(run_dir).clips()}
    assert set(found) == {c for c, clip in clips.items() if clip.split == "train"}
    from PIL import Image

    for clip_id, scores in found.items():
        frames = decoded(Path(clips[clip_id].path), positions(clips[clip_id].frames, 5))
        images = torch.stack([preprocess(Image.fromarray(f)) for f in frames])
        with torch.no_grad():  # the model's forward, once per template; the templates' mean per class
            outputs = [model(images, tokenizer(texts))[:3] for texts in templates]
        image_features, _, scale = outputs[0]
        text = torch.nn.functional.normalize(torch.stack([o[1] for o in outputs]).mean(0), dim=-1)
        video = torch.nn.functional.normalize(image_features.mean(0), dim=-1)
        expected = (scale * video @ text.T).numpy()
        np.testing.assert_allclose(scores, expected, atol=1e-4)
        assert np.abs(expected).max() > 1e-3  # the comparison is not between zeros


def test_xclip_scores_equal_the_library_forward_on_the_same_frames(listed, tmp_path):
    from transformers import XCLIPConfig, XCLIPModel, XCLIPProcessor

    out, run_dir = listed
    folder = tmp_path / "xclip"
    scorer = tiny_xclip(folder)
    prompts = one_template(tmp_path / "prompts.toml", "{}")
    summary = run_predict(predict_config(out, scorer, prompts=prompts, variants=("original", "human_only")),
                          progress=False)
    assert not summary.failed and summary.scorer["frames"] == 4  # the model's own
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = XCLIPModel(XCLIPConfig.from_pretrained(folder)).eval()
    processor = XCLIPProcessor.from_pretrained(folder)
    classes = (out / "manifests" / "kinetics400" / run_dir.name / "original" / "label_map.txt").read_text().splitlines()
    clips = {clip.clip_id: clip for clip in MasksRun(run_dir).clips()}
    found = read_csv(Path(summary.folder) / "original.csv")
    for clip_id, scores in found.items():
        frames = decoded(Path(clips[clip_id].path), positions(clips[clip_id].frames, 4))
        inputs = processor(text=[c.lower() for c in classes], videos=[list(frames)], return_tensors="pt", padding=True)
        with torch.no_grad():
            expected = model(**inputs).logits_per_video[0].numpy()
        np.testing.assert_allclose(scores, expected, atol=1e-4)
    assert read_csv(Path(summary.folder) / "human_only.csv").keys() == found.keys()


def test_lazy_rows_are_scored_on_the_render_pixels(listed, tmp_path, monkeypatch):
    """Through the stage: the variant from the manifest's settings, the render's seed, the masks' rate."""
    import pipeline.predict.stage as stage

    out, run_dir = listed
    seen = {}

    def spy(item, wanted, **kwargs):
        frames = read_frames(item, wanted, **kwargs)
        seen[(kwargs["variant"].name, item.key)] = (item, wanted, kwargs["seed"], frames)
        return frames

    monkeypatch.setattr(stage, "read_frames", spy)
    assert not run_predict(predict_config(out, tiny_open_clip(tmp_path / "model"), variants=tuple(LAZY_VARIANTS),
                                          frames=6), progress=False).failed
    assert {name for name, _ in seen} == set(LAZY_VARIANTS)
    run = MasksRun(run_dir)
    for (name, key), (item, wanted, seed, frames) in seen.items():
        assert seed == RENDER_SEED and wanted == positions(item.clip.frames, 6)
        variant = resolve([name])[0]
        whole = composed_clip(run, item.clip, variant, key=key, partner=item.partner)
        if variant.still:  # SCUFO: the render's one still frame throughout
            assert all((frame == frames[0]).all() for frame in frames)
            assert any((frames[0] == frame).all() for frame in whole)
        else:
            np.testing.assert_array_equal(frames, whole[wanted])


def composed_clip(run: MasksRun, clip, variant, *, key: str, partner=None) -> np.ndarray:
    """Every frame of a clip as the render stage composes it before encoding, with the fixture's render seed."""
    from pipeline.decode import DecodeOptions
    from pipeline.render.compose import composed, partner_frames
    from pipeline.render.regions import RegionMasks

    swap = partner_frames(partner, run.clip_masks(partner), clip, options=variant.masks, decode_fps=run.decode_fps,
                          seed=RENDER_SEED) if partner else None
    regions = RegionMasks(run.clip_masks(clip), clip.height, clip.width, variant.masks)
    return np.stack([frame for frame, _ in composed(clip.path, regions, variant, decode=DecodeOptions(),
                                                    frames=clip.frames, seed=RENDER_SEED, clip_id=clip.clip_id,
                                                    key=key, swap=swap)])


def test_reruns_do_nothing_and_a_changed_manifest_redoes_only_its_variant(listed, tmp_path):
    out, _ = listed
    config = predict_config(out, tiny_open_clip(tmp_path / "model"), frames=2)
    first = run_predict(config, progress=False)
    assert all(v.computed for v in first.variants) and not first.failed
    csvs = {p.name: p.read_bytes() for p in Path(first.folder).glob("*.csv")}
    again = run_predict(config, progress=False)
    assert [v.computed for v in again.variants] == [0] * len(again.variants)
    run_render(render_config(out, ["swap"], encode=EncodeOptions(format="lazy"), seed=1), progress=False)
    write_manifests(ManifestConfig(dataset="kinetics400", out=out, variants=("swap",)))
    evaluate = EvaluateConfig(dataset="kinetics400", out=out, predictions=Path(first.folder), split="train",
                              bootstrap=0, report=False)
    with pytest.raises(InputError, match="not predicted from the manifest of swap"):  # its CSV is stale now
        run_evaluate(evaluate)
    changed = run_predict(config, progress=False)
    run_evaluate(evaluate)
    computed = {v.stage.removeprefix("predict "): v.computed for v in changed.variants}
    assert computed.pop("swap") > 0 and set(computed.values()) == {0}
    assert {p.name: p.read_bytes() for p in Path(first.folder).glob("*.csv") if p.name != "swap.csv"} == \
        {name: data for name, data in csvs.items() if name != "swap.csv"}


def test_a_clip_scored_alone_gets_the_bytes_of_a_batch_and_another_batch_size_keys_other_files(listed, tmp_path,
                                                                                               monkeypatch):
    from pipeline.predict.stage import PredictWork

    out, _ = listed
    scorer = tiny_open_clip(tmp_path / "model")
    together = run_predict(predict_config(out, scorer, variants=("original",), frames=2, batch=3), progress=False)
    assert together.variants[0].by_status == {"ok": 4}
    first = (Path(together.folder) / "original.csv").read_bytes()
    monkeypatch.setattr(PredictWork, "process_together", None)  # every clip alone, padded to the batch
    alone = run_predict(predict_config(out, scorer, variants=("original",), frames=2, batch=3, overwrite=True),
                        progress=False)
    assert alone.variants[0].computed and alone.folder == together.folder
    assert (Path(alone.folder) / "original.csv").read_bytes() == first
    other = run_predict(predict_config(out, scorer, variants=("original",), frames=2, batch=1), progress=False)
    assert other.folder != together.folder and (Path(together.folder) / "original.csv").read_bytes() == first


def test_bad_input_is_one_line_and_exit_2(listed, tmp_path, capsys):
    out, _ = listed
    base = ["predict", "--dataset", "kinetics400", "--out", str(out), "--split", "train"]
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"not a checkpoint")
    cases = [
        (["--scorer", "clip:ViT-B-32"], "unknown scorer"),
        (["--scorer", "open_clip:ViT-B-32", "--weights", str(garbage)], "does not load"),
        (["--scorer", "open_clip:ViT-B-32"], "give its weights"),
        (["--scorer", tiny_open_clip(tmp_path / "no-weights")], "no weights found there"),
        (["--scorer", tiny_open_clip(tmp_path / "m"), "--weights", "random", "--variants", "nope"], "no manifest for nope"),
        (["--scorer", tiny_open_clip(tmp_path / "m"), "--weights", "random", "--prompts", str(garbage)],
         "not a readable prompts file"),
    ]
    run_render(render_config(out, ["person"], encode=EncodeOptions(format="webdataset")), progress=False)
    write_manifests(ManifestConfig(dataset="kinetics400", out=out, variants=("person",)))
    cases.append((["--scorer", tiny_open_clip(tmp_path / "m"), "--weights", "random", "--variants", "person"],
                  "listed as webdataset only"))
    for flags, message in cases:
        assert main(base + flags) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_the_benchmark_chain_on_the_sample_ends_with_every_protocol_metric(tmp_path, capsys, selfie_model):
    """What `make benchmark DATASET=sample` runs (a tiny random model instead of ViT-B-32, in this process)."""
    out = tmp_path / "out"
    common = ["--dataset", "sample", "--out", str(out)]
    assert main(["masks", *common, "--selfie-model", str(selfie_model), "--workers", "0"]) == 0
    assert main(["render", *common, "--format", "lazy", "--workers", "0"]) == 0
    assert main(["manifests", *common]) == 0
    scorer = tiny_open_clip(tmp_path / "model")
    argv = ["predict", *common, "--scorer", scorer, "--weights", "random", "--split", "train", "--evaluate",
            "--bootstrap", "50"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    (path,) = (out / "reports" / "sample").glob("*/evaluations/*/metrics.json")
    metrics = json.loads(path.read_text())
    for key in ("BOR", "HOR", "SHAcc", "SBErr", "SCUBA", "SCUFO", "contrasted"):
        assert key in metrics, key
    assert metrics["SHAcc"]["rand"]["clips"] > 0 and metrics["SCUBA"]["clips"] > 0
    assert metrics["scorer"]["weights"] == "random" and metrics["scorer"]["scorer"] == scorer
    assert f"metrics: {path}" in printed
    report = (path.parents[2] / "index.html").read_text()
    assert "zero-shot scorer" in report and html_escape(scorer) in report
    assert main(argv) == 0  # a rerun scores nothing again
    assert "0 computed" in capsys.readouterr().out


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def test_the_report_shows_lazy_rows_composed(listed):
    import pyarrow.parquet as pq

    from pipeline.report.frames import RowFrames
    from pipeline.report.sheets import Picture, VariantView

    out, run_dir = listed
    run = MasksRun(run_dir)
    clips = run.clips()
    folder = out / "manifests" / "kinetics400" / run_dir.name / "human_only"
    settings = json.loads((folder / "manifest.json").read_text())["settings"]
    view = VariantView.of("human_only", out / "renders", pq.read_table(folder / "manifest.parquet").to_pylist(),
                          settings, RowFrames(run, clips))
    clip = next(c for c in clips if c.split == "train")
    picture = Picture.of(view, clip.clip_id, 3)
    whole = composed_clip(run, clip, resolve(["human_only"])[0], key=clip.clip_id)
    np.testing.assert_array_equal(picture.middle, whole[clip.frames // 2])
    assert len(picture.strip) == 3


def test_mimetics_is_scored_in_its_own_classes_or_in_kinetics_400_and_evaluated_in_either(tmp_path, capsys):
    from tests.test_datasets import mimetics_tree
    from tests.test_datasets_e2e import replace_with_videos, run_stages

    root = tmp_path / "mimetics"
    class_list = mimetics_tree(root)
    (root / "playing bass guitar").mkdir()
    (root / "playing bass guitar" / "Qq1_000005_000015.mp4").touch()
    assert replace_with_videos(root, ".mp4") == 3
    out = tmp_path / "out"
    run_stages(["--dataset", "mimetics"], out, ["--root", str(root), "--class-list", str(class_list)])
    assert main(["render", "--dataset", "mimetics", "--out", str(out), "--variants", "original", "--workers", "0"]) == 0
    assert main(["manifests", "--dataset", "mimetics", "--out", str(out)]) == 0
    scorer = tiny_open_clip(tmp_path / "model")
    base = ["predict", "--dataset", "mimetics", "--out", str(out), "--scorer", scorer, "--weights", "random",
            "--variants", "original", "--evaluate", "--bootstrap", "10"]
    found = {}
    for space, classes in (("dataset", 3), ("kinetics400", 400)):
        capsys.readouterr()
        assert main([*base, "--label-space", space]) == 0
        printed = capsys.readouterr().out
        folder = Path(next(line for line in printed.splitlines() if line.startswith("predictions: ")).split(": ")[1])
        scores = read_csv(folder / "original.csv")
        assert {len(v) for v in scores.values()} == {classes}
        metrics = json.loads(Path(printed.split("metrics: ")[1].strip()).read_text())
        assert metrics["classes"] == classes and metrics["variants"]["original"]["clips"] == 3
        found[space] = (scores, metrics)
    own = json.loads((Path(found["dataset"][1]["predictions"]) / "scorer.json").read_text())
    assert own["label_space"] == "mimetics" and own["classes"] == ["playing bass guitar", "punching person (boxing)",
                                                                   "reading book"]
    # top-1 in each space is the argmax over that space's own columns, checked against the true labels
    for space, (scores, metrics) in found.items():
        classes = json.loads((Path(metrics["predictions"]) / "scorer.json").read_text())["classes"]
        clips = {c.clip_id: c for c in MasksRun(next((out / "masks" / "mimetics").iterdir())).clips()}
        right = np.mean([classes[int(np.argmax(s))] == clips[c].label for c, s in scores.items()])
        assert metrics["variants"]["original"]["top1"] == pytest.approx(right)


def test_a_label_space_that_does_not_fit_is_one_line_and_exit_2(tmp_path, capsys):
    from tests.test_datasets import ucf101_tree
    from tests.test_datasets_e2e import replace_with_videos, run_stages

    root = tmp_path / "ucf101"
    ucf101_tree(root)
    replace_with_videos(root / "UCF-101", ".avi")
    out = tmp_path / "out"
    run_stages(["--dataset", "ucf101"], out, ["--root", str(root)])
    capsys.readouterr()
    argv = ["predict", "--dataset", "ucf101", "--out", str(out), "--scorer", tiny_open_clip(tmp_path / "m"),
            "--weights", "random", "--label-space", "kinetics400", "--split", "test"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "label space kinetics400 (400 classes) does not fit ucf101-split1" in err and err.count("\n") == 1


def test_a_swap_partner_recomputed_redoes_the_clips_on_its_background(shapes_dataset, tmp_path):
    """A lazy swap row holds no pixels, so its render shard's bytes do not change when its partner's masks do;
    the partner's masks shard keys the predictions instead."""
    import pickle

    from pipeline.datasets.sample import shape_clip, write_video

    root, _ = shapes_dataset
    out = tmp_path / "out"
    run_masks(masks_config(root, out), progress=False)
    run_dir = next((out / "masks" / "kinetics400").iterdir())
    clips = {clip.clip_id: clip for clip in MasksRun(run_dir).clips()}
    fg, bg = next((a, b) for a in sorted(clips) for b in sorted(clips)
                  if clips[a].split == "train" and clips[a].shard != clips[b].shard)
    pairs = tmp_path / "actionswap_rand_0.pickle"
    pairs.write_bytes(pickle.dumps({f"x/{fg}": [f"y/{bg}", clips[bg].frames, 0]}))

    def listed_again() -> None:
        assert main(["render", "--dataset", "kinetics400", "--out", str(out), "--format", "lazy", "--workers", "0",
                     "--variants", "original", "--swap-pairs", str(pairs)]) == 0
        write_manifests(ManifestConfig(dataset="kinetics400", out=out))

    listed_again()
    config = predict_config(out, tiny_open_clip(tmp_path / "model"), variants=("actionswap_rand_0",), frames=3)
    before = read_csv(Path(run_predict(config, progress=False).folder) / "actionswap_rand_0.csv")[fg]
    write_video(Path(clips[bg].path), shape_clip(clips[bg].frames, 96, 64, seed=99)[0], 12, lossless=True)
    run_masks(masks_config(root, out), progress=False)  # the partner's shard is recomputed, the clip's is not
    assert {c.clip_id: c for c in MasksRun(run_dir).clips()}[fg].shard == clips[fg].shard
    listed_again()
    again = run_predict(config, progress=False)
    assert again.variants[0].computed == 1
    after = read_csv(Path(again.folder) / "actionswap_rand_0.csv")[fg]
    assert not np.array_equal(before, after)
    fresh = run_predict(dataclasses.replace(config, overwrite=True), progress=False)
    np.testing.assert_array_equal(read_csv(Path(fresh.folder) / "actionswap_rand_0.csv")[fg], after)


def test_open_clip_weights_from_a_file_or_a_folder_holding_one(tmp_path):
    import open_clip

    from pipeline.predict.load import load_scorer
    from pipeline.predict.scorers import state_sha256

    name = tiny_open_clip(tmp_path / "model")
    torch.manual_seed(5)
    model = open_clip.create_model(name.removeprefix("open_clip:"), load_weights=False)
    (tmp_path / "w").mkdir()
    torch.save(model.state_dict(), tmp_path / "w" / "trained.pt")
    for weights in (tmp_path / "w", tmp_path / "w" / "trained.pt"):
        scorer = load_scorer(ScorerSpec.parse(name, weights=str(weights)))
        assert scorer.weights_sha256 == state_sha256(model)
    assert scorer.weights_sha256 != load_scorer(ScorerSpec.parse(name, weights="random")).weights_sha256
    torch.save(model.state_dict(), tmp_path / "w" / "other.pt")
    with pytest.raises(InputError, match="2 checkpoint files"):
        load_scorer(ScorerSpec.parse(name, weights=str(tmp_path / "w")))


def test_dask_workers_write_the_bytes_of_a_run_in_this_process(listed, tmp_path):
    out, _ = listed
    config = predict_config(out, tiny_open_clip(tmp_path / "model"), variants=("original", "swap"), frames=2)
    here = run_predict(config, progress=False)
    csvs = {p.name: p.read_bytes() for p in Path(here.folder).glob("*.csv")}
    there = run_predict(dataclasses.replace(config, execution=ExecOptions(workers=2), overwrite=True), progress=False)
    assert all(v.computed for v in there.variants) and there.folder == here.folder
    assert {p.name: p.read_bytes() for p in Path(there.folder).glob("*.csv")} == csvs
    assert len({w for v in there.variants for w in v.workers}) >= 1 and not there.failed
