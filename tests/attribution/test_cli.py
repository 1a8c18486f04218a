"""The magic-attr engine subcommands, run in-process."""

import json

import pytest

from service.cli import main

TINY = ["--recipe", "digits-mlp", "--set", "n_train=60", "--set", "n_test=10",
        "--set", "epochs=1", "--set", "batch_size=20", "--set", "hidden=[8]"]


def test_train_then_attribute_reuses_saved_run(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert main(["train", *TINY, "--run-dir", run_dir]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["num_steps"] == 3
    scores_file = str(tmp_path / "scores.npy")
    assert main(["attribute", *TINY, "--run-dir", run_dir, "--test-indices", "0-2",
                 "--output", scores_file]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [entry["test_index"] for entry in report["top"]] == [0, 1, 2]
    assert len(report["top"][0]["proponents"]) == 3
    proponent = report["top"][0]["proponents"][0]["score"]
    opponent = report["top"][0]["opponents"][0]["score"]
    assert proponent <= opponent


def test_lds_prints_json(capsys):
    assert main(["lds", *TINY, "--fractions", "0.1", "--subsets", "4", "--test-samples", "2",
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload["lds"]["magic"]) == {"0.1"}


def test_bad_index_exits_with_message(capsys):
    assert main(["attribute", *TINY, "--test-indices", "10"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_attribute_reuses_saved_spec_without_recipe(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert main(["train", *TINY, "--run-dir", run_dir]) == 0
    capsys.readouterr()
    assert main(["attribute", "--run-dir", run_dir, "--test-indices", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["top"][0]["test_index"] == 1


@pytest.mark.parametrize("arguments,match", [
    (["--test-indices", "a"], "--test-indices 'a' is invalid"),
    (["--test-indices", "3-1"], "reversed"),
    (["--test-indices", "0", "--top-k", "0"], "--top-k 0 must be at least 1"),
])
def test_bad_attribute_arguments_exit_with_message(arguments, match):
    with pytest.raises(SystemExit, match=match):
        main(["attribute", *TINY, *arguments])


def test_cli_warns_on_non_smooth_run(tmp_path, capsys):
    rough = ["--recipe", "digits-mlp", "--set", "n_train=200", "--set", "n_test=50",
             "--set", "epochs=10", "--set", "hidden=[16]", "--set", "output_scale=1.0",
             "--set", "lr=1.0"]
    run_dir = str(tmp_path / "run")
    assert main(["train", *rough, "--run-dir", run_dir]) == 0
    captured = capsys.readouterr()
    assert "not smooth" in captured.err
    assert json.loads(captured.out)["smoothness"]["warning"] is not None
    assert main(["attribute", "--run-dir", run_dir, "--test-indices", "0"]) == 0
    assert "not smooth" in capsys.readouterr().err


def test_train_without_probe(tmp_path, capsys):
    assert main(["train", *TINY, "--run-dir", str(tmp_path / "run"), "--no-smoothness"]) == 0
    assert json.loads(capsys.readouterr().out)["smoothness"] is None
    assert not (tmp_path / "run" / "smoothness.json").exists()
