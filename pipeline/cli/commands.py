"""Run one parsed command and print its summary; `main` turns bad input into one line and exit code 2."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path

from pipeline.cli.configs import execution, make_args, masks_config, reader_options, render_config, splits
from pipeline.cli.parser import build_parser
from pipeline.cli.types import UsageError
from pipeline.datasets import output_name
from pipeline.engine import Interrupted, stop_on_signals
from pipeline.engine.record import NOT_WRITABLE
from pipeline.errors import InputError
from pipeline.predict.scorers import ScorerSpec
from pipeline.segment import SegmenterLoadError


def run(args: argparse.Namespace) -> int:
    """Run one command; returns the exit code (bad input raises InputError or SegmenterLoadError)."""
    if args.command == "fetch-models":
        from pipeline.weights import fetch_selfie_model

        print(fetch_selfie_model(args.dest))
        return 0
    if args.command == "list":
        from pipeline.listing import check_listing

        check = check_listing(args.dataset, args.root, args.out, options=reader_options(args), splits=splits(args),
                              shard_size=args.shard_size)
        print("\n".join(check.lines()))
        return 0
    if args.command == "masks":
        from pipeline.masks import run_masks

        summary = run_masks(masks_config(args))
        print("\n".join(summary.lines()))
        return 1 if summary.failed_shards else 0
    if args.command == "render":
        from pipeline.render import run_render

        rendered = run_render(render_config(args))
        print("\n".join(rendered.lines()))
        return 1 if rendered.failed else 0
    if args.command == "manifests":
        from pipeline.manifests.write import ManifestConfig, write_manifests

        variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else None
        dataset = output_name(args.dataset, args.split_id)
        config = ManifestConfig(dataset=dataset, out=args.out, masks_tag=args.masks, make_args=make_args(args),
                                variants=variants, min_coverage=args.min_coverage, min_frames_frac=args.min_frames_frac)
        summaries = write_manifests(config)
        for summary in summaries:
            counts = "; ".join(f"{key}: " + ", ".join(f"{s} {n}" for s, n in c.items()) for key, c in summary["counts"].items())
            print(f"manifests {dataset}/{summary['variant']}: {counts}")
        print(f"output: {Path(args.out) / 'manifests' / dataset / summaries[0]['masks_run']}")
        failed = [summary for summary in summaries if summary["failed"]]
        for summary in failed:
            print(f"FAILED {summary['variant']}: {summary['failed']}")
        return 1 if failed else 0
    if args.command == "predict":
        from pipeline.predict.runner import PredictConfig, run_predict

        variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else None
        execution_options = execution(args)
        if args.device.startswith("cuda") and not execution_options.in_process:
            raise UsageError("predict on CUDA runs in this process (one GPU); leave WORKERS at 0")
        config = PredictConfig(
            dataset=output_name(args.dataset, args.split_id), out=args.out, masks_tag=args.masks,
            make_args=make_args(args), variants=variants, split=args.split, frames=args.frames, prompts=args.prompts,
            label_space=args.label_space,
            scorer=ScorerSpec.parse(args.scorer, weights=args.weights, device=args.device, precision=args.precision),
            batch=args.batch, readers=args.readers, execution=execution_options, overwrite=args.overwrite,
            retry_failed=args.retry_failed)
        summary = run_predict(config)
        print("\n".join(summary.lines()))
        if summary.failed:
            if args.evaluate:
                print("not evaluated: some clips were not scored (rerun to retry them)")
            return 1
        if args.evaluate:
            from pipeline.evaluate.run import EvaluateConfig, run_evaluate

            path, metrics = run_evaluate(EvaluateConfig(
                dataset=config.dataset, predictions=Path(summary.folder), out=args.out, masks_tag=summary.masks_tag,
                make_args=config.make_args, split=summary.split, bootstrap=args.bootstrap))
            print("\n".join(evaluation_lines(metrics)))
            print(f"metrics: {path}")
        return 0
    if args.command == "export-pairs":
        from pipeline.manifests.pairs import export_pairs

        count = export_pairs(out=args.out, dataset=output_name(args.dataset, args.split_id), variant=args.variant,
                             dest=args.output, masks_tag=args.masks, split=args.split, make_args=make_args(args))
        print(f"export-pairs: {count} pairs of {args.variant} -> {args.output}")
        return 0
    if args.command == "status":
        from pipeline.status import run_status, status_lines

        stages = run_status(args.out, output_name(args.dataset, args.split_id), args.masks, make_args=make_args(args))
        print("\n".join(status_lines(stages)))
        return 0
    if args.command == "evaluate":
        from pipeline.evaluate.run import EvaluateConfig, run_evaluate

        config = EvaluateConfig(dataset=output_name(args.dataset, args.split_id), predictions=args.predictions,
                                out=args.out, masks_tag=args.masks, make_args=make_args(args), split=args.split,
                                bootstrap=args.bootstrap)
        path, metrics = run_evaluate(config)
        print("\n".join(evaluation_lines(metrics)))
        print(f"metrics: {path}")
        return 0
    from pipeline.report import write_report

    dataset = output_name(args.dataset, args.split_id)
    path = write_report(dataset=dataset, out=args.out, masks_tag=args.masks, make_args=make_args(args),
                        clips=args.clips, frames=args.frames, all_evaluations=args.all_evaluations)
    print(f"report: {path}")
    return 0



def evaluation_lines(metrics: dict) -> list[str]:
    """The CLI's summary of an evaluation: top-1 per variant, then each protocol metric with its interval."""
    def value(entry: dict) -> str:
        ci = entry.get("ci95")
        shown = "n/a" if entry.get("value") is None else f"{entry['value']:.3f}"
        return shown + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + f" ({entry['clips']} clips)"

    lines = [f"evaluate {metrics['dataset']} ({metrics['split']}):"]
    for name, entry in metrics.get("variants", {}).items():
        top1 = "n/a" if entry["top1"] is None else f"{entry['top1']:.3f}"
        top5 = "" if entry["top5"] is None else f", top-5 {entry['top5']:.3f}"
        lines.append(f"  {name}: top-1 {top1}{top5} ({entry['clips']} clips)")
    for key in ("BOR", "HOR", "SCUBA", "SCUFO", "contrasted"):
        if key in metrics:
            lines.append(f"  {key}: {value(metrics[key])}")
    for key in ("SHAcc", "SBErr"):
        for mode, entry in metrics.get(key, {}).items():
            lines.append(f"  {key} ({mode}): {value(entry)}")
    for train, row in metrics.get("grid", {}).items():
        lines.append(f"  trained on {train}: " + ", ".join(f"{v} {'n/a' if a is None else f'{a:.3f}'}"
                                                          for v, a in row.items()))
    return lines



def main(argv: list[str] | None = None) -> int:
    with stop_on_signals():  # Ctrl-C and SIGTERM: Interrupted, until the command has said how it ended
        try:
            args = build_parser().parse_args(argv)
            logging.basicConfig(
                level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            )
            return run(args)
        except (UsageError, InputError, SegmenterLoadError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Interrupted as exc:
            print(f"interrupted: {exc}; rerun to resume", file=sys.stderr)
            return 128 + exc.signum
        except KeyboardInterrupt:  # outside the main thread, where no handler is set
            print("interrupted; rerun to resume", file=sys.stderr)
            return 130
        except OSError as exc:
            if exc.errno not in NOT_WRITABLE:
                raise
            hint = "; make it writable, or pick another OUT" if exc.errno == errno.EROFS else ""
            print(f"error: {exc.filename or 'a file'}: {exc.strerror}{hint}", file=sys.stderr)
            return 2
