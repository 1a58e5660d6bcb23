"""ROME's components on disk: keyed by their whole content, verified on read, never served
for other weights, settings or code, and timed as what a fresh edit costs."""

import pytest
import torch

from loudfacts.editing import EditRequest, get_editor
from loudfacts.editing import rome as rome_mod
from loudfacts.editing.rome import COMPONENTS_CACHE_ENV, clear_components_memo

FAST = {"layer": 0, "prefix_recipe": [[3, 2]], "v_num_grad_steps": 5,
        "mom2_n_tokens": 512, "mom2_seq_len": 64, "mom2_ridge": 1e-3}
REQ = EditRequest("{} is located in the city of", "The Louvre", "Rome", "Paris")


@pytest.fixture(autouse=True)
def disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path))
    monkeypatch.setenv(COMPONENTS_CACHE_ENV, "1")
    clear_components_memo()
    yield tmp_path
    clear_components_memo()


def _files(tmp_path):
    return sorted((tmp_path / "rome").glob("components_*.pt"))


def test_a_second_process_reads_the_same_components_back(tiny_llama, disk_cache):
    editor = get_editor("rome", tiny_llama, **FAST)
    first = editor.components(REQ)
    assert not first["reused"] and len(_files(disk_cache)) == 1
    clear_components_memo()  # as a new process would start
    again = get_editor("rome", tiny_llama, **FAST).components(REQ)
    assert again["reused"]
    for name in ("k_star", "k_bare", "target_init", "v_star", "w_k", "delta"):
        assert torch.equal(first[name], again[name]), name
    assert again["v_history"] == first["v_history"]


def test_other_settings_weights_or_code_are_computed_afresh(tiny_llama, disk_cache, monkeypatch):
    get_editor("rome", tiny_llama, **FAST).components(REQ)
    clear_components_memo()
    other = get_editor("rome", tiny_llama, **{**FAST, "v_num_grad_steps": 4}).components(REQ)
    assert not other["reused"] and len(_files(disk_cache)) == 2
    clear_components_memo()
    with get_editor("ft", tiny_llama, layer=1, steps=2).edit(
            EditRequest(REQ.prompt, REQ.subject, "Berlin", "Paris")).applied():
        assert not get_editor("rome", tiny_llama, **FAST).components(REQ)["reused"]
    clear_components_memo()
    rome_mod._code_digest.cache_clear()
    monkeypatch.setattr(rome_mod, "_code_digest", lambda: "another version of the code")
    assert not get_editor("rome", tiny_llama, **FAST).components(REQ)["reused"]


@pytest.mark.parametrize("damage", ["truncate", "foreign key", "nan"])
def test_a_damaged_or_foreign_file_is_recomputed_and_replaced(tiny_llama, disk_cache, damage):
    first = get_editor("rome", tiny_llama, **FAST).components(REQ)
    (path,) = _files(disk_cache)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    else:
        blob = torch.load(path, weights_only=True)
        if damage == "foreign key":
            blob["key"]["request"] = ["{} is in", "Somewhere", "Else"]
        else:
            blob["components"]["delta"][0] = float("nan")
        torch.save(blob, path)
    clear_components_memo()
    again = get_editor("rome", tiny_llama, **FAST).components(REQ)
    assert not again["reused"]
    torch.testing.assert_close(again["delta"], first["delta"])
    clear_components_memo()
    assert get_editor("rome", tiny_llama, **FAST).components(REQ)["reused"]  # rewritten


def test_hooks_in_place_keep_results_in_memory_only(tiny_llama, disk_cache):
    editor = get_editor("rome", tiny_llama, **FAST)
    with tiny_llama.bridge.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", lambda a, hook: a * 1.0)]):
        assert not editor.components(REQ)["reused"]
    assert _files(disk_cache) == []


def test_a_reused_edit_reports_the_seconds_a_fresh_one_took(tiny_llama, disk_cache):
    fresh = get_editor("rome", tiny_llama, **FAST).edit(REQ)
    assert fresh.info["components_reused"] is False and "reused_seconds" not in fresh.info
    clear_components_memo()
    again = get_editor("rome", tiny_llama, **FAST).edit(REQ)
    assert again.info["components_reused"] is True
    t = fresh.info["timings"]
    assert again.info["reused_seconds"] == pytest.approx(t["k"] + t["v"])
