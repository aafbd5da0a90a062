"""CSV errors name the line where the bad record starts, even when a quote left open swallows the lines after it."""

from pathlib import Path

import pytest

from pipeline.datasets import DatasetError, ReaderOptions, list_clips

HEADER = "label,youtube_id,time_start,time_end,split"


def rows(first: int, last: int) -> list[str]:
    return [f'"class {i % 3}",yt{i},{i},{i + 10},train' for i in range(first, last)]


def kinetics_csv(root: Path, lines: list[str]) -> Path:
    (root / "annotations").mkdir(parents=True)
    path = root / "annotations" / "train.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


@pytest.mark.parametrize("name", ["kinetics400", "mimetics"])
def test_an_unterminated_quote_is_named_at_the_line_it_opens(tmp_path, name):
    # line 6 opens a quote; the quoted labels of lines 7-11 close it, and the record would otherwise end there
    lines = rows(2, 6) + ['"class 1,yt6,6,16,train'] + rows(7, 12)
    path = kinetics_csv(tmp_path / "k", lines)
    root = path if name == "mimetics" else tmp_path / "k"
    with pytest.raises(DatasetError, match=rf"^{path}:6: this record runs on to line 7 \(unterminated quote\?\)$"):
        list_clips(name, root, tmp_path, options=ReaderOptions(class_list=_class_list(tmp_path)))


def _class_list(tmp_path: Path) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("class 0\nclass 1\nclass 2\n")
    return path


def test_an_unterminated_quote_at_the_end_and_a_record_of_the_wrong_width(tmp_path):
    path = kinetics_csv(tmp_path / "a", rows(2, 5) + ['"class 1,yt5,5,15,train', "", '"class 2",yt7,7,17,train'])
    with pytest.raises(DatasetError, match=rf"^{path}:5: this record runs on to line 7 \(unterminated quote\?\)$"):
        list_clips("kinetics400", tmp_path / "a", tmp_path)
    path = kinetics_csv(tmp_path / "b", rows(2, 4) + ["", "passing American football, in game,yt5,5,15,train"])
    with pytest.raises(DatasetError, match=rf"^{path}:5: expected 5 fields as in the header, got 6$"):
        list_clips("kinetics400", tmp_path / "b", tmp_path)
    path = kinetics_csv(tmp_path / "c", rows(2, 4) + ["", "", '"class 1",yt6,zero,16,train'])
    with pytest.raises(DatasetError, match=rf"^{path}:6: time_start/time_end must be numbers$"):
        list_clips("kinetics400", tmp_path / "c", tmp_path)  # after blank lines too


def test_a_csv_list_file_names_the_line_a_quote_opens(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text('path,label,split\na.mp4,"x",train\n\nb.mp4,"y,train\nc.mp4,"z",train\nd.mp4,"x",val\n')
    with pytest.raises(DatasetError, match=rf"^{path}:4: this record runs on to line 5 \(unterminated quote\?\)$"):
        list_clips("list", path, tmp_path)
    path.write_text('path,label,split\na.mp4,"x",train\n\nb.mp4,y,train\n')
    assert [(c.clip_id, c.source) for c in list_clips("list", path, tmp_path).clips] == [
        ("a", f"{path}:2"), ("b", f"{path}:4")]


def test_the_fast_reader_refuses_what_the_record_reader_refuses(tmp_path):
    # a label over two lines and a bare carriage return: the columnar parse would count the same rows
    lines = ['"class 0",yt2,2,12,train', '"class\n1",yt3,3,13,train', '"class 0",yt4,4,14,train\r"class 1",yt5,5,15,train']
    path = kinetics_csv(tmp_path / "k", lines)
    with pytest.raises(DatasetError, match=rf"^{path}:3: this record runs on to line 4 \(unterminated quote\?\)$"):
        list_clips("kinetics400", tmp_path / "k", tmp_path)
