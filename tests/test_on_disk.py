"""Which listed files are on disk: folders listed once, and a folder that cannot be listed asked file by file."""

import os

from pipeline.datasets.common import on_disk
from pipeline.masks.runner import file_signatures


def test_a_folder_that_cannot_be_listed_is_asked_file_by_file(tmp_path, monkeypatch):
    (tmp_path / "open").mkdir()
    (tmp_path / "shut").mkdir()
    for folder in ("open", "shut"):
        (tmp_path / folder / "a.mp4").write_bytes(b"video")
    paths = [str(tmp_path / f / n) for f in ("open", "shut", "gone") for n in ("a.mp4", "b.mp4")]
    scandir = os.scandir

    def refusing(folder):
        if str(folder).endswith("shut"):  # execute but no read permission, or a network error while listing
            raise PermissionError(13, "Permission denied", folder)
        return scandir(folder)

    monkeypatch.setattr(os, "scandir", refusing)
    assert on_disk(paths) == [True, False, True, False, False, False]
    signatures = file_signatures(paths)
    stat = os.stat(tmp_path / "shut" / "a.mp4")
    assert signatures[2] == f"{stat.st_size}:{stat.st_mtime_ns}"
    assert signatures[1] == signatures[3] == signatures[5] == "absent"


def test_a_file_at_the_root_is_looked_up_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bin").write_bytes(b"not the root's")  # a name the root has too, as a folder
    (tmp_path / "here.mp4").write_bytes(b"video")
    assert on_disk(["/bin", "here.mp4", "/here.mp4"]) == [os.path.isfile("/bin"), True, False]
