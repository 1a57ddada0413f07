"""benchmarks/transfer_ablation.py: choosing settings, the eval command it runs, and its table."""

from pathlib import Path

import pytest

from benchmarks.transfer_ablation import eval_command, parse_arguments, render, rows


def leave_one_out_report() -> dict:
    def side(tp_rate: float, accuracy: float) -> dict:
        return {
            "at_threshold": {"tp_rate": tp_rate, "accuracy": accuracy},
            "best_threshold": {"accuracy": 0.8},
        }

    return {
        "leave_one_out": {
            "dlib-resnet": {
                "clean": side(1.0, 0.987),
                "cloaked": side(0.154, 0.577),
                "face_ssimulacra2": {"mean": 42.04, "min": -13.2},
                "faces": 10,
                "faces_protected_by_the_cloaking_models": 5,
            },
            "faceres": {
                "clean": side(0.949, 0.949),
                "cloaked": side(0.205, 0.603),
                "face_ssimulacra2": {"mean": 46.6, "min": -0.7},
                "faces": 10,
                "faces_protected_by_the_cloaking_models": 6,
            },
        }
    }


def test_only_takes_names_that_hold_commas():
    args = parse_arguments(["data", "--only", "joint, defaults", "no momentum"])
    assert args.only == ["joint, defaults", "no momentum"]


def test_only_rejects_an_unknown_setting(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(["data", "--only", "joint"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'joint'" in capsys.readouterr().err


def test_every_setting_runs_without_only():
    assert parse_arguments(["data", "--pool", "others"]).only is None


def test_strategy_settings_pass_the_pool():
    args = parse_arguments(["data", "--pool", "/others"])
    command = eval_command(args, ["--strategy", "farthest"], Path("out"))
    assert command[command.index("--pool") + 1] == "/others"
    assert "--pool" not in eval_command(args, ["--diversity", "0"], Path("out"))


def test_strategy_settings_need_a_pool_before_any_run(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(["data", "--only", "joint, defaults", "nearest pool face"])
    assert exit_info.value.code == 2
    assert "nearest pool face need --pool" in capsys.readouterr().err
    assert parse_arguments(["data", "--only", "joint, defaults"]).pool is None


def test_eval_command_passes_cache_threads_and_single_identities():
    args = parse_arguments(["data", "--cache-dir", "/c", "--threads", "1", "--allow-single", "--pool", "p"])
    command = eval_command(args, ["--diversity", "0"], Path("out"))
    assert command[command.index("--cache-dir") + 1] == "/c"
    assert command[command.index("--threads") + 1] == "1"
    assert command[command.index("--pairs") + 1] == str(Path("data") / "pairs.csv")
    assert "--allow-single" in command
    assert command[command.index("--diversity") + 1] == "0"


def test_eval_command_defaults_to_a_cache_under_work_and_all_threads():
    args = parse_arguments(["data", "--work", "w", "--pool", "p"])
    command = eval_command(args, [], Path("out"))
    assert command[command.index("--cache-dir") + 1] == str(Path("w") / "cache")
    assert "--threads" not in command
    assert "--allow-single" not in command


def test_rows_give_one_line_per_held_out_model():
    lines = rows("no momentum", leave_one_out_report())
    assert lines == [
        "| no momentum | dlib-resnet | 100.0 -> 15.4 % | 57.7 % | 80.0 % | 42.0 / -13.2 | 5 / 10 |",
        "| no momentum | faceres | 94.9 -> 20.5 % | 60.3 % | 80.0 % | 46.6 / -0.7 | 6 / 10 |",
    ]


def test_page_holds_the_command_rows_and_time_of_each_setting():
    argv = ["data", "--only", "joint, defaults", "--models", "dlib-resnet,sface"]
    page = render(["| a | row |"], {"joint, defaults": 1234.4}, argv, parse_arguments(argv))
    assert "transfer_ablation.py data --only 'joint, defaults' --models dlib-resnet,sface`" in page
    assert "(dlib-resnet,sface) judges" in page
    assert "\n| a | row |\n" in page
    assert "joint, defaults 1234 s" in page
