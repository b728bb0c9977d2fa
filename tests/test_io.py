"""mmlens.io: atomic writes leave the old file in place on error."""

from __future__ import annotations

import json

import pytest

from mmlens.io import write_json_atomic, write_jsonl_atomic


def test_atomic_json_leaves_old_file_on_error(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    write_jsonl_atomic(tmp_path / "r.jsonl", [{"a": 1}, {"b": 2}])
    assert (tmp_path / "r.jsonl").read_text().splitlines() == ['{"a": 1}', '{"b": 2}']
