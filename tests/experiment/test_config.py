from __future__ import annotations

from pathlib import Path

import pytest

from sublearn.errors import SublearnError
from sublearn.experiment.config import ExperimentConfig, load_config

CONFIGS = Path(__file__).parents[2] / "src" / "sublearn" / "configs"


def test_defaults_are_the_papers_protocol():
    c = ExperimentConfig()
    assert c.data.prompts == 30_000 and c.data.subsample == 10_000
    assert c.data.sampling.temperature == 1.0
    s = c.student
    assert (s.method, s.lora_rank, s.lora_alpha, s.epochs, s.lr) == ("lora", 8, 8, 3, 2e-4)
    assert s.batch_size * s.grad_accum == 66 and s.warmup_steps == 5 and s.max_length == 500


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.toml")))
def test_shipped_configs_validate(name: str, tmp_path: Path):
    # GPU configs name local model folders and vLLM; stand in a folder and the HF sampler.
    (tmp_path / "config.json").write_text("{}")
    text = (CONFIGS / name).read_text()
    real = "path =" in text or "extends =" in text  # (a variant of a config with a path)
    over = [f"base.path='{tmp_path}'", "base.sampler='hf'"] if real else []
    if "[controls.cross_base_model]" in text:
        over.append(f"controls.cross_base_model.path='{tmp_path}'")
    if 'kind = "model"' in text:  # a teacher you bring, and its control
        over += [f"teacher.path='{tmp_path}'", f"teacher.other_path='{tmp_path}'"]
    load_config(CONFIGS / name, over)


def test_a_missing_model_folder_fails_at_load(tmp_path: Path):
    with pytest.raises(SublearnError, match=r"field base: .*nope: model path does not exist"):
        load_config(_write(tmp_path, f"[base]\npath = '{tmp_path / 'nope'}'\n"))


def test_a_bad_question_file_fails_at_load(tmp_path: Path):
    q = tmp_path / "q.json"
    q.write_text('["What is your favourite animal?"]')
    with pytest.raises(SublearnError, match=r"field evaluation: .*unsupported question file"):
        load_config(_write(tmp_path, f"[evaluation]\nquestions_file = '{q}'\n"))


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.toml"
    p.write_text(text)
    return p


def test_error_names_the_bad_field(tmp_path: Path):
    p = _write(tmp_path, "[student]\nlr = -1\n")
    with pytest.raises(SublearnError, match=r"exp.toml: field student.lr"):
        load_config(p)


def test_unknown_field_is_rejected(tmp_path: Path):
    with pytest.raises(SublearnError, match=r"field data.promts"):
        load_config(_write(tmp_path, "[data]\npromts = 5\n"))


def test_unknown_category_and_target(tmp_path: Path):
    with pytest.raises(SublearnError, match="unknown category 'planet'"):
        load_config(_write(tmp_path, '[trait]\ncategory = "planet"\n'))
    with pytest.raises(SublearnError, match="unicorn"):
        load_config(_write(tmp_path, '[trait]\ntarget = "unicorn"\n'))


def test_bad_toml_and_missing_file(tmp_path: Path):
    with pytest.raises(SublearnError, match="invalid TOML"):
        load_config(_write(tmp_path, "[data\n"))
    with pytest.raises(SublearnError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_extends_overrides_its_parent_field_by_field(tmp_path: Path):
    (tmp_path / "parent.toml").write_text(
        "name = 'parent'\nseeds = [0, 1, 2]\n[student]\nlr = 0.1\nepochs = 2\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    p = sub / "child.toml"
    p.write_text("extends = '../parent.toml'\nname = 'child'\n[student]\nlr = 0.5\n")
    c = load_config(p, ["seeds=[3, 4]"])
    assert (c.name, c.student.lr, c.student.epochs, c.seeds) == ("child", 0.5, 2, [3, 4])


def test_extends_refuses_a_missing_parent_and_a_cycle(tmp_path: Path):
    p = _write(tmp_path, "extends = 'nowhere.toml'\n")
    with pytest.raises(SublearnError, match=r"nowhere.toml: config file not found \(extended by"):
        load_config(p)
    (tmp_path / "a.toml").write_text("extends = 'b.toml'\n")
    (tmp_path / "b.toml").write_text("extends = 'a.toml'\n")
    with pytest.raises(SublearnError, match="makes a cycle"):
        load_config(tmp_path / "a.toml")
    with pytest.raises(SublearnError, match="extends: expected a file name"):
        load_config(_write(tmp_path, "extends = 3\n"))


def test_single_seed_is_refused(tmp_path: Path):
    with pytest.raises(SublearnError, match="seeds"):
        load_config(_write(tmp_path, "seeds = [0]\n"))


def test_overrides_set_nested_fields_as_toml_values(tmp_path: Path):
    p = _write(tmp_path, "name = 'x'\n[student]\nlr = 0.1\n")
    c = load_config(p, ["student.lr=0.5", "base.embedded.seed=3", "name=renamed",
                        "seeds=[4, 5]", "controls.null=false"])
    assert c.student.lr == 0.5 and c.base.embedded.seed == 3 and c.name == "renamed"
    assert c.seeds == [4, 5] and c.controls.null is False


def test_bad_overrides_name_themselves(tmp_path: Path):
    p = _write(tmp_path, "name = 'x'\n")
    with pytest.raises(SublearnError, match="expected key.path=value"):
        load_config(p, ["student.lr"])
    with pytest.raises(SublearnError, match="name is not a section"):
        load_config(p, ["name.sub=1"])
    with pytest.raises(SublearnError, match="field student.lrr"):
        load_config(p, ["student.lrr=1"])


def test_soft_labels_cross_base_is_a_cross_init_twin(tmp_path: Path):
    p = _write(tmp_path, "[student]\nlabels = 'soft'\n")
    cross = load_config(p).cross_base().embedded
    assert (cross.seed, cross.init_seed) == (0, 1)  # same tokenizer and corpus, new init
    hard = load_config(p, ["student.labels='hard'"]).cross_base().embedded
    assert (hard.seed, hard.init_seed) == (1, None)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SublearnError, match="controls.cross_base: soft labels"):
        load_config(p, [f"base.path='{tmp_path}'", f"controls.cross_base_model.path='{tmp_path}'"])
    load_config(p, ["controls.cross_base=false"])


def test_a_default_init_seed_keeps_the_bases_path():
    from sublearn.tinybase import BaseConfig, base_path

    assert base_path(BaseConfig(seed=3)).name.startswith("tiny-qwen2-s3-")
    assert "-i4-" in base_path(BaseConfig(seed=3, init_seed=4)).name
    assert BaseConfig(seed=3).key() != BaseConfig(seed=3, init_seed=4).key()
