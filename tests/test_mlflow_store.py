"""The folder's own MLflow store is derived data: one that cannot be opened (a process killed while MLflow created
or migrated it) is moved aside, kept, and started afresh; a store that is not the folder's own is never touched."""
import json

import pytest

from ptray.layout import DB_FILE
from ptray.tracking.store import Tracker, resolve_tracking_uri


def test_a_broken_folder_store_is_moved_aside_and_rebuilt(tmp_path, capsys):
    (tmp_path / "experiment.json").write_text(json.dumps({"name": "x", "configs": {}}))
    (tmp_path / DB_FILE).write_bytes(b"not a database, as a killed migration can leave it" * 100)
    tracker = Tracker(resolve_tracking_uri(tmp_path), "x", tmp_path)
    assert tracker.client.get_experiment(tracker.experiment_id).name == "x"
    [aside] = tmp_path.glob(f"{DB_FILE}.broken-*")
    assert aside.read_bytes().startswith(b"not a database")  # kept, not deleted
    assert "moved it to" in capsys.readouterr().err


def test_a_store_that_is_not_the_folders_own_is_not_touched(tmp_path):
    (tmp_path / "experiment.json").write_text(json.dumps({"name": "x", "configs": {}}))
    other = tmp_path / "elsewhere.db"
    other.write_bytes(b"not a database" * 100)
    with pytest.raises(Exception):
        Tracker(f"sqlite:///{other}", "x", tmp_path)
    assert other.read_bytes().startswith(b"not a database") and not list(tmp_path.glob("*.broken-*"))
