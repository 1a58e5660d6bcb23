"""Key statistics: exactness against a plain loop, checkpoints, caching, corrupt caches."""

import pytest
import torch

from loudfacts import stats


@pytest.fixture()
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUDFACTS_CACHE", str(tmp_path))
    return tmp_path


def _reference(model, layer, n, seq_len):
    tokens, _ = stats.corpus_tokens(model)
    keys = []
    hook = lambda act, hook: keys.append(act.detach().reshape(-1, act.shape[-1]).clone())
    with torch.no_grad(), model.bridge.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", hook)]):
        for i in range(0, -(-n // seq_len) * seq_len, seq_len):
            model.bridge(tokens[i: i + seq_len][None])
    k = torch.cat(keys)[:n].double()
    return k.T @ k / n


def test_matches_plain_loop_at_every_checkpoint(tiny_llama, tmp_cache):
    got = stats.second_moment_sweep(tiny_llama, [0, 1], [100, 300, 640], seq_len=64,
                                    batch_tokens=256, progress=False)
    assert set(got) == {(L, n) for L in (0, 1) for n in (100, 300, 640)}
    for n in (100, 300, 640):
        ref = _reference(tiny_llama, 1, n, 64)
        c = got[(1, n)]
        assert c.dtype == torch.float64 and c.shape == (tiny_llama.d_mlp, tiny_llama.d_mlp)
        torch.testing.assert_close(c, ref, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(c, c.T)


def test_stop_at_layer_gives_same_stats_as_full_forward(tiny_llama, tmp_cache):
    low = stats.second_moment(tiny_llama, [0], n_tokens=256, seq_len=64, progress=False,
                              use_cache=False)[0]
    both = stats.second_moment(tiny_llama, [0, 1], n_tokens=256, seq_len=64, progress=False,
                               use_cache=False)
    torch.testing.assert_close(low, both[0])


def test_cache_roundtrip_and_corrupt_cache(tiny_llama, tmp_cache):
    first = stats.second_moment(tiny_llama, [1], n_tokens=200, seq_len=50, progress=False)[1]
    files = list((tmp_cache / "stats").glob("*.pt"))
    assert len(files) == 1 and "_L1_" in files[0].name and "_n200_" in files[0].name
    again = stats.second_moment(tiny_llama, [1], n_tokens=200, seq_len=50, progress=False)[1]
    assert torch.equal(first, again)
    files[0].write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable"):
        fixed = stats.second_moment(tiny_llama, [1], n_tokens=200, seq_len=50, progress=False)[1]
    assert torch.equal(first, fixed)
    # A well-formed file whose key does not match (e.g. another token count) is recomputed.
    blob = torch.load(files[0], weights_only=True)
    blob["meta"]["n_tokens"] = 999
    torch.save(blob, files[0])
    with pytest.warns(UserWarning, match="does not match"):
        fixed = stats.second_moment(tiny_llama, [1], n_tokens=200, seq_len=50, progress=False)[1]
    assert torch.equal(first, fixed)


def test_bad_arguments(tiny_llama, tmp_cache):
    with pytest.raises(ValueError, match="out of range"):
        stats.second_moment(tiny_llama, [7], n_tokens=100, progress=False)
    with pytest.raises(ValueError, match="fewer than"):
        stats.second_moment(tiny_llama, [0], n_tokens=10**9, seq_len=64, progress=False)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="positive"):
            stats.second_moment(tiny_llama, [0], n_tokens=bad, seq_len=64, progress=False)
    with pytest.raises(ValueError, match="seq_len"):
        stats.second_moment(tiny_llama, [0], n_tokens=100, progress=False)  # 1,024 > 128


def test_all_text_corpus_and_every_window(tiny_llama, tmp_cache):
    """corpus="all" joins the three shipped texts; n_tokens=None takes every whole window."""
    from loudfacts.data import load_text

    text = stats.corpus_text("all")
    for name in stats.ALL_CORPORA:
        assert load_text(name).strip()[:200] in text
    n_all = stats.corpus_size(tiny_llama, "all", seq_len=64)
    assert n_all > stats.corpus_size(tiny_llama, "wikitext", seq_len=64) > 0
    assert n_all % 64 == 0
