"""How each task trained, remembered (issue 29): the settings recorded with every task, reused
by remove-task's reconnection unless the command line says otherwise; a batch size chosen for
a small training set; and remove-task's words agreeing with its table."""

from __future__ import annotations

import json
from pathlib import Path

from test_few_steps import TASK as THREE_ROWS_TASK
from test_few_steps import THREE_ROWS


def manifest(store: Path, version: int) -> dict:
    return json.loads((store / "versions" / f"v{version:06d}.json").read_text())


def add_prime(run_cli, store: Path, *options: str) -> None:
    """digits.prime onto the digits store, one epoch in batches of 12."""
    run_cli("add-task", "digits.prime", "--store", store, "--epochs", "1", "--batch-size", "12",
            *options, "--no-tracking")  # fmt: skip


def test_remove_task_retrains_each_task_with_its_own_settings(run_cli, store_copy) -> None:
    """digits.prime trained with batch size 12 and lr 0.003: removing digits.class
    reconnects it with those, and digits.even with its own 64 and 0.001."""
    add_prime(run_cli, store_copy, "--lr", "0.003")
    added = manifest(store_copy, 4)
    training = {t["name"]: t["training"] for t in added["tasks"]}
    assert training["digits.prime"]["batch_size"] == 12
    assert training["digits.prime"]["lr"] == 0.003 and training["digits.prime"]["epochs"] == 1
    assert training["digits.even"]["batch_size"] == 64 and training["digits.even"]["epochs"] == 2

    result = run_cli(
        "remove-task",
        "digits.class",
        "--store",
        store_copy,
        "--epochs",
        "1",
        "--no-tracking",
        "--json",
    )
    used = json.loads(result.stdout)["task_settings"]
    assert (used["digits.prime"]["batch_size"], used["digits.prime"]["lr"]) == (12, 0.003)
    assert (used["digits.even"]["batch_size"], used["digits.even"]["lr"]) == (64, 0.001)
    assert used["digits.prime"]["epochs"] == used["digits.even"]["epochs"] == 1  # given
    assert manifest(store_copy, 5)["operation"]["task_settings"] == used


def test_the_command_line_wins_for_every_task(run_cli, store_copy) -> None:
    add_prime(run_cli, store_copy)
    result = run_cli(
        "remove-task",
        "digits.class",
        "--store",
        store_copy,
        "--batch-size",
        "32",
        "--no-tracking",
        "--json",
    )
    used = json.loads(result.stdout)["task_settings"]
    assert used["digits.prime"]["batch_size"] == used["digits.even"]["batch_size"] == 32
    # Epochs not given: each task's own differ (1 and 2), so the command's default holds.
    assert used["digits.prime"]["epochs"] == used["digits.even"]["epochs"] == 3
    assert "the tasks were trained with different epochs (" in result.stderr
    assert "reconnecting them with 3" in result.stderr


def test_a_small_training_set_gets_the_batch_size_that_gives_ten_steps(
    run_cli, write_plugin, tmp_path
) -> None:
    """140 training images: batch size 14 (10 steps per epoch), said in one line, no
    few-steps warning; an explicit --batch-size always wins (and then warns)."""
    plugin = write_plugin("three_rows_auto_batch", THREE_ROWS)
    store = tmp_path / "store"
    result = run_cli(
        "add-task",
        THREE_ROWS_TASK,
        "-p",
        plugin,
        "--store",
        store,
        "--epochs",
        "2",
        "--no-tracking",
    )
    assert (
        f"{THREE_ROWS_TASK}: batch size 14 (140 training images: 10 optimiser steps per epoch "
        "at 14, 2 at the usual 64; --batch-size sets it)" in result.stderr
    )
    assert "gets only" not in result.stderr
    assert manifest(store, 2)["tasks"][0]["training"]["batch_size"] == 14
    given = run_cli(
        "add-task",
        THREE_ROWS_TASK,
        "-p",
        plugin,
        "--store",
        tmp_path / "other",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--no-tracking",
    )
    assert "batch size 14 (" not in given.stderr and "gets only 2 optimiser steps" in given.stderr


def test_a_large_training_set_keeps_64_without_a_word(run_cli, tmp_path) -> None:
    result = run_cli(
        "add-task", "digits.even", "--store", tmp_path / "store", "--epochs", "1", "--no-tracking"
    )
    assert "batch size" not in result.stderr
    assert manifest(tmp_path / "store", 2)["tasks"][0]["training"]["batch_size"] == 64


def test_remove_task_says_what_its_table_says_when_the_cut_is_kept(
    run_cli, store_copy, monkeypatch
) -> None:
    """When no epoch of reconnection beats the cut, the line and the table say the same
    (retrained yes, kept cut). The cut is made unbeatable: reconnection is told it already
    scored a perfect 1.0."""
    from dmtcore.operations import removing

    real_fit = removing.fit

    def fit(*args, start, **options):
        perfect = {t: {m: 1.0 for m in metrics} for t, metrics in start.items()}
        return real_fit(*args, start=perfect, **options)

    monkeypatch.setattr(removing, "fit", fit)
    result = run_cli(
        "remove-task", "digits.class", "--store", store_copy, "--epochs", "1", "--no-tracking"
    )
    assert (
        "retrained digits.even for 1 epoch(s); none beat the state right after the cut on "
        "validation, so the cut's weights are kept (table: kept cut)" in result.stderr
    )
    header, _, row = result.stdout.splitlines()[1:4]
    assert header.split() == ["task", "metric", "before", "cut", "after", "retrained", "kept"]
    assert row.split()[-2:] == ["yes", "cut"]


def test_status_names_a_store_once_and_says_what_sources_are(run_cli, store_copy) -> None:
    text = run_cli("status", "--store", store_copy).stdout
    assert text.startswith(f"Store {store_copy}, version 3 of ")
    assert "sources: how many columns the task reads through its connections" in text
