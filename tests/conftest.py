"""Test-wide settings: never touch the hub, never touch the user's zoo cache or the shipped zoo, share the 2 cores
politely."""

from __future__ import annotations

import os

# Set before transformers/huggingface_hub/torch are imported anywhere in the test session.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Spinning OpenMP waits make torch 5-20x slower when another process shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# No test sees the zoo shipped with the package unless it asks (tests/test_zoo_shipping.py): the smoke zoos built
# below must not be replaced by shipped full-budget models. Set here so that session fixtures and subprocesses see it.
os.environ["MMLENS_SHIPPED_ZOO"] = "none"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def isolated_mmlens_home(tmp_path_factory, monkeypatch):
    """Every test sees an empty zoo cache of its own unless it sets MMLENS_HOME itself."""
    home = tmp_path_factory.mktemp("mmlens-home")
    monkeypatch.setenv("MMLENS_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def smoke_zoo_home(tmp_path_factory):
    """An MMLENS_HOME holding the whole zoo built at the smoke budget (built once per session, in seconds).

    Tests that need zoo models point MMLENS_HOME here: ``monkeypatch.setenv("MMLENS_HOME", str(smoke_zoo_home))``.
    """
    from mmlens import zoo

    home = tmp_path_factory.mktemp("mmlens-smoke-zoo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMLENS_HOME", str(home))
        zoo.build(configs=zoo.smoke_configs(), progress=False)
    return home
