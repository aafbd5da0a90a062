"""A model's predictions for one variant, read from the files trainers write, and matched to the manifest rows
they belong to. Formats:

- mmaction2 1.x `tools/test.py --dump x.pkl`: a list, in the list file's order, of dicts with `pred_score` (a
  torch tensor, or an array, of class scores);
- mmaction2 0.x `--out x.pkl`: a list of score arrays, in the list file's order;
- CSV `clip_id,pred` (a label index per clip);
- CSV `clip_id,score_0,…,score_{C-1}`.

The list formats are matched to the manifest rows by position, the CSVs by clip id. Anything that does not fit
is an InputError naming the file and the first offending row. Pickles run code when loaded: read only your own.
"""

from __future__ import annotations

import csv
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import InputError

FORMATS = (".pkl", ".csv")


@dataclass(frozen=True)
class Predictions:
    """A variant's predictions aligned with its manifest rows: the predicted label of each row, and the class
    scores when the file had them (top-5 needs them)."""

    path: Path
    labels: np.ndarray  # (N,) int, the top-1 class of each row
    scores: np.ndarray | None  # (N, C) float, or None for `clip_id,pred` files


def read_predictions(path: Path, clip_ids: list[str], labels: list[int], classes: int) -> Predictions:
    """The predictions in `path` for the rows whose ids and true labels are `clip_ids` and `labels` (in the list
    file's order). A 1.x dump's `gt_label` must agree with the row it is matched to: a pickle made from another
    list of the same length is caught at its first disagreeing row."""
    path = Path(path)
    if path.suffix == ".pkl":
        scores, truth = _pickle_scores(path, classes)
        for i, (given, label) in enumerate(zip(truth, labels)):
            if given is not None and given != label:
                raise InputError(f"{path}: row {i} has gt_label {given} but the list's row {i} ({clip_ids[i]!r}) is "
                                 f"labelled {label}; the predictions were made from another list")
        if len(scores) != len(clip_ids):
            first = min(len(scores), len(clip_ids))
            raise InputError(f"{path}: {len(scores)} predictions for a list of {len(clip_ids)} clips (first offending "
                             f"row {first}: {'no prediction for ' + repr(clip_ids[first]) if first < len(clip_ids) else 'a prediction past the list'})")
        return Predictions(path=path, labels=scores.argmax(axis=1), scores=scores)
    if path.suffix == ".csv":
        return _csv_predictions(path, clip_ids, classes)
    raise InputError(f"{path}: predictions are .pkl (mmaction2 --dump / --out) or .csv (clip_id,pred or clip_id,score_*)")


def _pickle_scores(path: Path, classes: int) -> tuple[np.ndarray, list[int | None]]:
    """(N, C) scores and each row's `gt_label` where the dump has one."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ModuleNotFoundError) as exc:
        raise InputError(f"{path}: not a readable predictions pickle ({exc})") from None
    if not isinstance(data, (list, tuple)):
        raise InputError(f"{path}: expected a list of predictions (mmaction2 --dump or --out), got {type(data).__name__}")
    rows, truth = [], []
    for i, item in enumerate(data):
        given = None
        if isinstance(item, dict):
            given = item.get("gt_label", item.get("gt_labels"))
            if isinstance(given, dict):  # mmaction2 1.0/1.1: {'item': tensor}
                given = given.get("item")
            if "pred_score" in item:
                item = item["pred_score"]
            elif isinstance(item.get("pred_scores"), dict) and "item" in item["pred_scores"]:  # mmaction2 1.0/1.1
                item = item["pred_scores"]["item"]
            else:
                raise InputError(f"{path}: row {i} has no 'pred_score' (keys: {', '.join(map(str, item))})")
        try:
            scores = np.asarray(_array(item), dtype=np.float64).reshape(-1)
            if given is not None:  # one class index; a multi-label (one-hot) or empty label is not checked
                given = np.asarray(_array(given)).reshape(-1)
                given = int(given[0]) if given.size == 1 else None
        except (TypeError, ValueError, IndexError) as exc:
            raise InputError(f"{path}: row {i} is not an array of class scores ({exc})") from None
        if len(scores) != classes:
            raise InputError(f"{path}: row {i} has {len(scores)} class scores; the label map has {classes} classes")
        if not np.isfinite(scores).all():
            raise InputError(f"{path}: row {i} has scores that are not finite numbers")
        rows.append(scores)
        truth.append(given)
    return (np.stack(rows) if rows else np.zeros((0, classes))), truth


def _array(value):
    """A torch tensor as numpy (anything else as it is)."""
    return value.detach().cpu().float().numpy() if hasattr(value, "detach") else value


def _csv_predictions(path: Path, clip_ids: list[str], classes: int) -> Predictions:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [cell.strip() for cell in next(reader, [])]
        by_score = header == ["clip_id", *(f"score_{c}" for c in range(classes))]
        if header != ["clip_id", "pred"] and not by_score:
            detail = (f"{len(header) - 1} score columns; the label map has {classes} classes"
                      if header[:1] == ["clip_id"] and all(h.startswith("score_") for h in header[1:]) else f"{header}")
            raise InputError(f"{path}:1: expected the header clip_id,pred or clip_id,score_0,…,score_{classes - 1}; "
                             f"got {detail}")
        wanted = {clip_id: i for i, clip_id in enumerate(clip_ids)}
        labels = np.full(len(clip_ids), -1, dtype=np.int64)
        scores = np.zeros((len(clip_ids), classes)) if by_score else None
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            clip_id = row[0].strip()
            if clip_id not in wanted:
                raise InputError(f"{path}:{line}: clip {clip_id!r} is not in the manifest's list")
            i = wanted[clip_id]
            if labels[i] >= 0:
                raise InputError(f"{path}:{line}: clip {clip_id!r} is predicted twice")
            try:
                values = [float(v) for v in row[1:]]
            except ValueError:
                raise InputError(f"{path}:{line}: not a number in {row[1:]}") from None
            if not np.isfinite(values).all():
                raise InputError(f"{path}:{line}: values that are not finite numbers")
            if len(values) != len(header) - 1:
                raise InputError(f"{path}:{line}: {len(values)} values for {len(header) - 1} columns")
            if by_score:
                scores[i] = values
                labels[i] = int(np.argmax(values))
            else:
                if not values[0].is_integer() or not 0 <= values[0] < classes:
                    raise InputError(f"{path}:{line}: pred {row[1]!r} is not a label index in 0..{classes - 1}")
                labels[i] = int(values[0])
    missing = np.flatnonzero(labels < 0)
    if len(missing):
        raise InputError(f"{path}: {len(clip_ids) - len(missing)} predictions for a list of {len(clip_ids)} clips "
                         f"(first missing: {clip_ids[missing[0]]!r})")
    return Predictions(path=path, labels=labels, scores=scores)
