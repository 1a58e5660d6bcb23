"""The committed report is the output of the committed code: the run card's commit must have
the same lib/, notebooks/, params/ and hparams/ as HEAD (a code change ships with a rerun)."""

import json
import shutil
import subprocess

import pytest

from loudfacts.paths import REPO_ROOT

PRODUCING_PATHS = ["lib", "notebooks", "params", "hparams"]


def _git(*args):
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def card_commit():
    if shutil.which("git") is None or _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout")
    card = json.loads((REPO_ROOT / "report" / "run.json").read_text())["card"]
    return card["commit"]


def test_run_card_names_a_clean_commit(card_commit):
    assert "+" not in card_commit, (
        f"report/run.json was made from uncommitted code ({card_commit}); rerun `make report` "
        "after committing")
    assert _git("cat-file", "-e", f"{card_commit}^{{commit}}").returncode == 0, (
        f"report/run.json names commit {card_commit}, which this repository does not have")


def test_report_was_made_by_the_code_at_head(card_commit):
    diff = _git("diff", "--stat", card_commit, "HEAD", "--", *PRODUCING_PATHS)
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout.strip() == "", (
        f"report/run.json names {card_commit}, but these paths changed since then; rerun "
        f"`make report` and commit report/:\n{diff.stdout}")
