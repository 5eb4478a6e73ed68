"""One checkout, several studies: each in results/<study>/, a folder refusing a config made from other data, and a
one-line note for a results/ left by an earlier version."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from conftest import ROOT, SCHEMA, new_study, run_workflow
from transfer_scaling.config import load_schema, validate_config
from transfer_scaling.plan import ConfigError
from transfer_scaling.studies import (RECORD, check_study, check_study_folder, config_differences,
                                      earlier_layout_message, study_dir, write_study_record)


@pytest.fixture()
def config() -> dict:
    with open(ROOT / "config.yaml", encoding="utf-8") as handle:
        return validate_config(yaml.safe_load(handle), load_schema(SCHEMA))


def test_every_preset_names_its_own_study():
    def study_of(*files):
        merged = {}
        for name in files:
            merged.update(yaml.safe_load((ROOT / name).read_text()))
        return merged["study"]

    names = [study_of("config.yaml"), study_of("config.yaml", "presets/smoke.yaml"),
             study_of("config.yaml", "presets/smoke.yaml", "presets/gpu-smoke.yaml"),
             study_of("config.yaml", "presets/paper.yaml")]
    assert names == ["default", "smoke", "smoke-gpu", "paper"]


def test_a_study_name_that_could_leave_results_is_refused(config):
    for name in ("../outside", "a/b", "", ".hidden", "Upper"):
        with pytest.raises(ConfigError, match="'study'"):
            validate_config({**config, "study": name}, load_schema(SCHEMA))


def test_differences_are_listed_leaf_by_leaf():
    old = {"a": {"b": [1, 2], "c": 3}, "files": [{"version": "1"}], "gone": 1}
    new = {"a": {"b": [1, 2, 4], "c": 3}, "files": [{"version": "2"}], "added": True}
    assert config_differences(old, new) == [("a.b", [1, 2], [1, 2, 4]), ("added", None, True),
                                            ("files.0.version", "1", "2"), ("gone", 1, None)]
    assert config_differences(old, copy.deepcopy(old)) == []


def test_a_new_folder_and_its_own_record_pass(config, tmp_path):
    assert check_study_folder(config, tmp_path) == []
    record = write_study_record(config, tmp_path)
    assert record == tmp_path / "default" / RECORD
    assert json.loads(record.read_text())["study"] == "default"
    assert check_study_folder(config, tmp_path) == []


def test_grid_and_size_changes_are_made_in_place_and_listed(config, tmp_path):
    write_study_record(config, tmp_path)
    changed = copy.deepcopy(config)
    changed["finetune"]["d_f_chars"] = [*config["finetune"]["d_f_chars"], 7000]
    changed["training"]["lr"] = 0.5
    differences = check_study_folder(changed, tmp_path)
    assert [key for key, _, _ in differences] == ["finetune.d_f_chars", "training.lr"]
    [note] = check_study(changed, tmp_path)
    assert f"training.lr: {config['training']['lr']} -> 0.5" in note and "re-runs" in note


@pytest.mark.parametrize("key, value", [("target", "text"), ("context", 32), ("seed", 7)])
def test_a_folder_made_from_other_data_refuses_the_config_and_says_what_differs(config, tmp_path, key, value):
    write_study_record(config, tmp_path)
    changed = {**config, key: value}
    with pytest.raises(ConfigError) as error:
        check_study_folder(changed, tmp_path)
    message = str(error.value)
    assert f"{key}: {json.dumps(config[key])} -> {json.dumps(value)}" in message
    assert str(tmp_path / "default") in message and "--config study=NAME" in message


def test_a_corpus_or_option_on_one_side_only_is_a_change_in_place(config, tmp_path):
    """Adding a source corpus, or an option a newer version fills with a default, keeps the study's outputs valid."""
    older = copy.deepcopy(config)
    del older["tokenizer"]["kind"]
    write_study_record(older, tmp_path)
    changed = copy.deepcopy(config)
    changed["corpora"]["extra"] = copy.deepcopy(config["corpora"]["python"])
    assert [key for key, _, _ in check_study_folder(changed, tmp_path)] == ["corpora.extra", "tokenizer.kind"]


def test_a_changed_corpus_file_is_named_by_its_full_key(config, tmp_path):
    write_study_record(config, tmp_path)
    changed = copy.deepcopy(config)
    changed["corpora"]["python"]["files"][0]["version"] = "1.12.0"
    with pytest.raises(ConfigError, match=r"corpora\.python\.files\.0\.version: \"1\.13\.3\" -> \"1\.12\.0\""):
        check_study_folder(changed, tmp_path)


def test_a_damaged_record_is_named(config, tmp_path):
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / RECORD).write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a study record"):
        check_study_folder(config, tmp_path)


def test_an_earlier_results_folder_is_named_in_one_line_with_the_command_that_adopts_it(config, tmp_path):
    assert earlier_layout_message(config, tmp_path) is None
    (tmp_path / "downloads").mkdir()  # shared by every study: not an earlier study
    assert earlier_layout_message(config, tmp_path) is None
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs.csv").write_text("run\n")
    message = earlier_layout_message(config, tmp_path)
    assert "\n" not in message and "runs, runs.csv" in message
    assert f"cd {tmp_path} && mkdir -p default && mv runs runs.csv default/" in message
    assert study_dir(config, tmp_path) == tmp_path / "default"


def test_snakemake_refuses_a_config_from_other_data_in_the_study_folder_and_writes_nothing(tmp_path, config):
    study = new_study(tmp_path / "study")
    record = write_study_record({**config, "seed": 3}, study / "results")
    before = record.read_bytes()
    result = run_workflow(study, "--dry-run", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "invalid configuration: config key 'study'" in output and "seed: 3 -> 0" in output
    assert sorted(p.relative_to(study) for p in (study / "results").rglob("*")) == [
        (record.parent).relative_to(study), record.relative_to(study)]
    assert record.read_bytes() == before


def test_snakemake_plans_in_the_study_folder_and_notes_an_earlier_results_folder(tmp_path):
    study = new_study(tmp_path / "study")
    (study / "results" / "fit").mkdir(parents=True)
    result = run_workflow(study, "--dry-run")
    notes = [line for line in (result.stdout + result.stderr).splitlines() if "before per-study folders" in line]
    assert len(notes) == 1 and "mv fit default/" in notes[0]
    assert "results/default/runs.csv" in result.stdout and " results/runs.csv" not in result.stdout
    assert not (study / "results" / "default").exists()  # a dry run writes nothing, the record included
