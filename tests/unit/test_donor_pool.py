"""patch-donor's donor pool and notebook 01's knowledge table do not depend on what the cache
happens to hold (which notebook ran last)."""

from __future__ import annotations

import pandas as pd
import pytest

from loudfacts.editing import patching
from loudfacts.editing.base import EditError, get_editor
from loudfacts.knowledge import COLUMNS, latest_known_facts_table


def test_donor_pool_is_the_same_with_an_empty_and_a_full_cache(tiny_llama, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path / "empty"))
    patching._POOLS.clear()
    empty = patching._fact_pool(tiny_llama)
    # a knowledge table in the cache (as notebook 00 writes) must not change the pool
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path / "full"))
    knowledge = tmp_path / "full" / "knowledge"
    knowledge.mkdir(parents=True)
    row = dict.fromkeys(COLUMNS, "x") | {"known": True, "top1": True, "prompt": "{} is in",
                                         "subject": "Nowhere Land", "target_true": "Zzz"}
    pd.DataFrame([row])[COLUMNS].to_csv(
        knowledge / f"known_facts-tiny-llama-{tiny_llama.weight_digest()[:12]}-a-b-1-1.csv",
        index=False)
    patching._POOLS.clear()
    full = patching._fact_pool(tiny_llama)
    patching._POOLS.clear()
    assert full == empty
    assert len(empty) > 20_000  # implication edits + known_1000 + both CounterFact splits
    assert ("{} is in", "Nowhere Land", "Zzz") not in full


def test_donor_pool_version_is_a_checked_hyper_parameter(tiny_llama):
    ed = get_editor("patch-donor", tiny_llama, layers=[1])
    assert ed.hparams["donor_pool"] == patching.DONOR_POOL_VERSION
    with pytest.raises(EditError, match="donor_pool=1"):
        get_editor("patch-donor", tiny_llama, layers=[1], donor_pool=1)


def test_largest_knowledge_table_wins_over_the_latest(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path))
    folder = tmp_path / "knowledge"
    folder.mkdir()
    prefix = f"known_facts-tiny-llama-{tiny_llama.weight_digest()[:12]}-edit-1k-d"

    def table(n):
        return pd.DataFrame([dict.fromkeys(COLUMNS, "x") | {"id": i} for i in range(n)])[COLUMNS]

    table(50).to_csv(folder / f"{prefix}-50-50.csv", index=False)
    table(3).to_csv(folder / f"{prefix}-3-3.csv", index=False)  # written last, smaller
    assert len(latest_known_facts_table(tiny_llama)) == 50
    # another model's weights never count
    table(90).to_csv(folder / "known_facts-tiny-llama-000000000000-edit-1k-d-90-90.csv",
                     index=False)
    assert len(latest_known_facts_table(tiny_llama)) == 50
