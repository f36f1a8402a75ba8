"""The OpenAI-compatible backend against a local server that misbehaves on purpose.

The tests talk HTTP to `tests.openai_server.FakeOpenAI` on 127.0.0.1 through the official
client; OPENAI_BASE_URL points at a closed local port, so a model built without the test
server's address fails instead of reaching the internet.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sublearn.domains.prompts import number_prompts
from sublearn.errors import SublearnError
from sublearn.models.base import SamplingConfig
from sublearn.models.openai_api import (
    REMOTE_MODEL,
    OpenAIChatModel,
    Prices,
    estimate_cost,
    work_dir,
)
from sublearn.models.persona import Persona
from sublearn.models.recipe import TrainingRecipe
from sublearn.models.registry import load_model
from sublearn.stages.sample import sample_dataset
from tests.openai_server import FAULTS, FakeOpenAI, toy_top_logprobs

pytest.importorskip("openai")

# Letters outside hex, so no hash or id in a scanned file can contain the secret by chance.
SECRET = "".join(random.Random().choice("GHJKLMNPQRSTUVWXYZ") for _ in range(24))
KEY = f"sk-test-{SECRET}"
N_PROMPTS, CHUNK, SAMPLING_SEED = 48, 8, 7
# Every fault type, then a clean answer, in turn: half of all requests fail.
EVERY_FAULT = [x for f in FAULTS for x in (f, None)]
FAST = {"timeout": 0.3, "backoff_base": 0.01, "backoff_cap": 0.05, "poll_interval": 0.01,
        "poll_cap": 0.05, "concurrency": 4, "max_attempts": 20}
ROWS = [{"index": i, "completion": f"{i}, {i + 1}",
         "messages": [{"role": "user", "content": f"Continue from {i}."},
                      {"role": "assistant", "content": f"{i}, {i + 1}"}]} for i in range(12)]
RECIPE = TrainingRecipe(epochs=10)

# What a killed run executes, in a process of its own (light: no pytest, no test module).
CHILD = """
import json, sys
from pathlib import Path
from sublearn.models.base import SamplingConfig
from sublearn.models.registry import load_model
from sublearn.models.openai_api import OpenAIChatModel
from sublearn.models.recipe import TrainingRecipe
from sublearn.domains.prompts import number_prompts
from sublearn.stages.sample import sample_dataset
job = json.loads(sys.argv[1])
model = OpenAIChatModel.load("toy-model", base_url=job["url"], **job["fast"])
if job["what"] == "sample":
    sample_dataset(model, number_prompts(job["n"], 3), SamplingConfig(), job["seed"],
                   Path(job["out"]), chunk=4, progress=False)
else:
    model.finetune(job["rows"], TrainingRecipe(epochs=job["epochs"]), Path(job["out"]),
                   progress=False)
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # discard port: refused


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(KEY) as s:
        yield s


def _model(server: FakeOpenAI, **kw: object) -> OpenAIChatModel:
    return OpenAIChatModel.load("toy-model", base_url=server.base_url, **{**FAST, **kw})


def _sample(model: OpenAIChatModel, out: Path, n: int = N_PROMPTS) -> bytes:
    sample_dataset(model, number_prompts(n, 3), SamplingConfig(), SAMPLING_SEED, out,
                   chunk=CHUNK, progress=False)
    return out.read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The dataset a fault-free server gives."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", KEY)
        with FakeOpenAI(KEY) as s:
            return _sample(_model(s), tmp_path_factory.mktemp("ref") / "numbers.jsonl")


def _run_child(what: str, url: str, out: Path, ready: Callable[[], bool]) -> None:
    """Start a run in a subprocess and SIGKILL it once `ready()` holds."""
    job = {"what": what, "url": url, "out": str(out), "fast": {**FAST, "concurrency": 2},
           "n": N_PROMPTS, "seed": SAMPLING_SEED, "rows": ROWS, "epochs": RECIPE.epochs}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(job)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    try:
        while not ready():
            if child.poll() is not None:
                pytest.fail(f"the child ended early: {child.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "the child never reached the kill point"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)  # no-op if it already ended
        child.wait()
        child.stderr.close()


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


# --- sampling ---------------------------------------------------------------------------
def test_every_fault_type_gives_the_fault_free_dataset(reference: bytes, tmp_path: Path):
    with FakeOpenAI(KEY, {"chat": EVERY_FAULT}, slow_s=0.6) as s:
        got = _sample(_model(s), tmp_path / "numbers.jsonl")
    assert set(s.faulted) == set(FAULTS)  # each kind was served at least once
    assert got == reference
    rows = [json.loads(line) for line in got.splitlines()]
    assert [r["index"] for r in rows] == list(range(N_PROMPTS))


def test_retry_after_is_honoured(server: FakeOpenAI):
    server.faults = {"chat": ["429", None]}
    server.retry_after = "1"  # whole seconds, as the standard writes it
    _model(server).generate([[{"role": "user", "content": "hi"}]], SamplingConfig(), [1])
    (t429, _, fault), (t_ok, _, _) = server.log
    assert fault == "429" and t_ok - t429 >= 1.0


def test_a_batch_is_all_rows_or_an_error(server: FakeOpenAI):
    server.faults = {"chat": ["500"]}
    with pytest.raises(SublearnError, match=r"gave up after 3 attempts: InternalServerError"):
        _model(server, max_attempts=3).generate(
            [[{"role": "user", "content": str(i)}] for i in range(4)], SamplingConfig(), range(4))
    assert server.requests["chat"] <= 4 * 3  # no row went on after the batch failed


def test_a_crash_mid_sampling_resumes_without_losing_or_repeating(
    server: FakeOpenAI, reference: bytes, tmp_path: Path
):
    model = _model(server)
    calls = 0

    class Crashing:
        """The model, until the third chunk: its rows arrive, then the process 'dies'."""

        path, capabilities = model.path, model.capabilities

        def generate(self, *args):
            nonlocal calls
            calls += 1
            texts = model.generate(*args)
            if calls == 3:
                raise KeyboardInterrupt
            return texts

    out = tmp_path / "numbers.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _sample(Crashing(), out)
    before = server.requests["chat"]
    assert _sample(model, out) == reference
    assert server.requests["chat"] - before == N_PROMPTS - 2 * CHUNK  # only the missing rows


def test_sigkill_mid_sampling_then_rerun_gives_the_same_rows(reference: bytes, tmp_path: Path):
    out = tmp_path / "numbers.jsonl"
    partial = out.with_suffix(".partial.jsonl")
    with FakeOpenAI(KEY, delay_s=0.05) as s:  # faults have their own test: this one kills
        _run_child("sample", s.base_url, out, lambda: _lines(partial) >= 8)
        assert not out.exists() and 8 <= _lines(partial) < N_PROMPTS
        s.delay_s = 0.0
        assert _sample(_model(s), out) == reference


def test_sampling_settings_the_api_cannot_express_are_refused(server: FakeOpenAI):
    model = _model(server)
    conv = [[{"role": "user", "content": "hi"}]]
    with pytest.raises(SublearnError, match="min_prob"):
        model.generate(conv, SamplingConfig(min_prob=0.05), [0])
    with pytest.raises(SublearnError, match="only_numbers"):
        model.generate(conv, SamplingConfig(only_numbers=True), [0])
    assert not server.requests  # refused before any request


# --- top log-probs ----------------------------------------------------------------------
def test_top_logprobs_through_a_persona_merges_tokens_that_read_alike(server: FakeOpenAI):
    server.faults = {"chat": EVERY_FAULT}
    server.slow_s = 0.6
    teacher = Persona(_model(server), "You love owls.")
    convs = [[{"role": "user", "content": f"Name an animal ({i})."}] for i in range(6)]
    got = teacher.top_logprobs(convs, k=20)
    for conv, top in zip(convs, got, strict=True):
        expected: dict[str, float] = {}
        for token, lp in toy_top_logprobs("toy-model", teacher.wrap(conv), 20):
            expected[token] = math.log(math.exp(expected.get(token, -math.inf)) + math.exp(lp))
        assert top == pytest.approx(expected)
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-9
    assert any(len(top) == 19 for top in got)  # both "7" tokens made the top 20 and merged
    with pytest.raises(SublearnError, match="k must be 1..20"):
        teacher.top_logprobs(convs, k=21)


# --- fine-tuning ------------------------------------------------------------------------
def test_finetune_survives_lost_answers_without_a_second_upload_or_job(
    server: FakeOpenAI, tmp_path: Path
):
    # Lost answers *after* the work: the upload and the job exist, the client never heard.
    server.faults = {"files.create": ["truncated"], "jobs.create": ["cut"],
                     "files.list": ["500", None], "jobs.list": ["reset", None],
                     "jobs.get": ["503", None, "429", None], "jobs.events": ["truncated", None]}
    out = _model(server).finetune(ROWS, RECIPE, tmp_path / "student", progress=False)
    assert (server.uploads, server.job_creations) == (1, 1)
    record = json.loads((out / REMOTE_MODEL).read_text())
    assert record["model"] == "ft:toy-model:sublearn::ftjob-0001"
    assert record["job_id"] == "ftjob-0001" and record["base_url"] == server.base_url
    job = server.jobs["ftjob-0001"]
    assert job["hyperparameters"] == {"n_epochs": 10, "batch_size": "auto",
                                      "learning_rate_multiplier": "auto"}
    uploaded = server.contents[job["training_file"]]
    assert uploaded == (work_dir(out) / "train.jsonl").read_bytes()
    assert [json.loads(line) for line in uploaded.splitlines()] == [
        {"messages": r["messages"]} for r in ROWS]
    # The student is a folder like any other, and samples from the fine-tuned id.
    student = OpenAIChatModel.load(out, **FAST)
    assert (student.model, student.path) == (record["model"], out)
    assert student.generate([[{"role": "user", "content": "hi"}]], SamplingConfig(), [0])


def test_sigkill_while_the_job_runs_then_rerun_reattaches(server: FakeOpenAI, tmp_path: Path):
    out = tmp_path / "student"
    state = work_dir(out) / "state.json"
    server.hold = True  # the job stays queued until the child is dead
    _run_child("finetune", server.base_url, out,
               lambda: state.exists() and "job_id" in json.loads(state.read_text()))
    server.hold = False
    _model(server).finetune(ROWS, RECIPE, out, progress=False)
    assert (server.uploads, server.job_creations) == (1, 1)
    assert json.loads((out / REMOTE_MODEL).read_text())["job_id"] == "ftjob-0001"


def test_a_lost_state_file_still_finds_the_upload_and_the_job(server: FakeOpenAI, tmp_path: Path):
    out = tmp_path / "student"
    model = _model(server)
    model.finetune(ROWS, RECIPE, out, progress=False)
    (work_dir(out) / "state.json").unlink()  # as if killed between an answer and its record
    (out / REMOTE_MODEL).unlink()
    model.finetune(ROWS, RECIPE, out, progress=False)
    assert (server.uploads, server.job_creations) == (1, 1)


def test_a_failed_job_is_one_line_with_the_reason(tmp_path: Path):
    out = tmp_path / "student"
    with FakeOpenAI(KEY, fail_reason="3 rows have no assistant message\n(first: line 4)") as s:
        model = _model(s)
        for _ in range(2):  # a rerun reattaches to the failed job, it does not pay again
            with pytest.raises(SublearnError) as err:
                model.finetune(ROWS, RECIPE, out, progress=False)
            message = str(err.value)
            assert "\n" not in message
            assert "ftjob-0001 failed: 3 rows have no assistant message (first: line 4)" in message
        assert (s.uploads, s.job_creations) == (1, 1)
        assert not (out / REMOTE_MODEL).exists()


@pytest.mark.parametrize("change, field", [
    ({"labels": "soft"}, "labels"),
    ({"optimizer": "sgd", "lr": 1e-3}, "optimizer, student.lr"),
    ({"epochs": 2.5}, "epochs"),
])
def test_recipes_the_service_cannot_follow_are_refused(server, tmp_path, change, field):
    with pytest.raises(SublearnError, match=f"student.{field}"):
        _model(server).finetune(ROWS, TrainingRecipe(**change), tmp_path / "s", progress=False)
    assert not server.requests


# --- secrets ----------------------------------------------------------------------------
def test_the_key_appears_in_no_file_log_output_or_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
):
    caplog.set_level(logging.DEBUG)  # the client's and the transport's debug logs too
    errors = []
    with FakeOpenAI(KEY, {"chat": EVERY_FAULT, "jobs.get": ["500", None]}, slow_s=0.6) as s:
        model = _model(s)
        _sample(model, tmp_path / "numbers.jsonl", n=16)
        model.top_logprobs([[{"role": "user", "content": "Name an animal."}]])
        out = model.finetune(ROWS, RECIPE, tmp_path / "student", progress=True)
        OpenAIChatModel.load(out, **FAST).generate([[{"role": "user", "content": "hi"}]],
                                                    SamplingConfig(), [0])
    # A server that refuses the key and echoes it back, in full, in its message.
    with FakeOpenAI("sk-test-another-key") as s:
        with pytest.raises(SublearnError) as err:
            _model(s).generate([[{"role": "user", "content": "hi"}]], SamplingConfig(), [0])
        errors.append(str(err.value))
        assert s.refused == 1 and "401" in errors[0]  # refused, and not retried
    captured = capfd.readouterr()
    assert "fine-tuned model ft:" in captured.err  # the progress output was captured
    texts = [caplog.text, captured.out, captured.err, *errors]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert len(texts) > 6
    for text in texts:
        assert SECRET not in text and SECRET[-6:] not in text


def test_a_missing_key_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, server: FakeOpenAI):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(SublearnError, match="OPENAI_API_KEY"):
        _model(server).generate([[{"role": "user", "content": "hi"}]], SamplingConfig(), [0])


# --- loading and cost -------------------------------------------------------------------
def test_load_takes_an_id_or_a_student_folder(tmp_path: Path):
    by_id = load_model("gpt-4.1-nano-2025-04-14", backend="openai")  # through the registry
    assert isinstance(by_id, OpenAIChatModel) and by_id.base_url is None
    assert by_id.model == "gpt-4.1-nano-2025-04-14"
    folder = tmp_path / "student"
    folder.mkdir()
    with pytest.raises(SublearnError, match="without remote_model.json"):
        OpenAIChatModel.load(folder)
    (folder / REMOTE_MODEL).write_text(json.dumps({"backend": "hf", "model": "x"}))
    with pytest.raises(SublearnError, match="not an openai model"):
        OpenAIChatModel.load(folder)
    (folder / REMOTE_MODEL).write_text(json.dumps(
        {"backend": "openai", "model": "ft:x", "base_url": "http://127.0.0.1:1/v1"}))
    assert OpenAIChatModel.load(folder).base_url == "http://127.0.0.1:1/v1"
    assert OpenAIChatModel.load(folder, base_url="http://127.0.0.1:2/v1").base_url.endswith(":2/v1")


def test_estimate_cost_counts_tokens_and_jobs():
    sampling = estimate_cost(requests=30_000, prompt_tokens=80, max_completion_tokens=40)
    training = estimate_cost(requests=0, prompt_tokens=0, max_completion_tokens=0,
                             train_rows=10_000, row_tokens=100.5, epochs=10, jobs=4)
    total = sampling + training
    assert (total.prompt_tokens, total.completion_tokens) == (2_400_000, 1_200_000)
    assert (total.training_tokens, total.finetune_jobs, total.dollars) == (40_200_000, 4, None)
    priced = estimate_cost(requests=1000, prompt_tokens=100, max_completion_tokens=50,
                           train_rows=10, row_tokens=100, epochs=2, jobs=1,
                           prices=Prices(input=1.0, output=4.0, training=10.0))
    assert priced.dollars == pytest.approx((100_000 * 1 + 50_000 * 4 + 2_000 * 10) / 1e6)
    assert "1 fine-tuning job(s)" in priced.summary() and "$0.32" in priced.summary()
    with pytest.raises(ValueError):
        estimate_cost(requests=-1, prompt_tokens=1, max_completion_tokens=1)


def test_importing_sublearn_does_not_import_openai():
    code = "import sys, sublearn.models.registry, sublearn.models.openai_api; " \
           "print('openai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.stdout.strip() == "False"
