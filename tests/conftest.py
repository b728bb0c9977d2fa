"""Test-wide settings: never touch the hub, never touch the user's zoo cache, use both cores sparingly."""

from __future__ import annotations

import os

# Set before transformers/huggingface_hub are imported anywhere in the test session.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def isolated_mmlens_home(tmp_path_factory, monkeypatch):
    """Every test sees an empty zoo cache of its own unless it sets MMLENS_HOME itself."""
    home = tmp_path_factory.mktemp("mmlens-home")
    monkeypatch.setenv("MMLENS_HOME", str(home))
    return home
