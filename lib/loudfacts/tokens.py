"""Finding a subject's tokens in any prompt, and tokenising targets.

Causal tracing corrupts the subject's tokens, ROME reads the key at the subject's *last* token,
and the path-patching editors patch wherever the subject occurs. All of them need the token
span of a subject inside a prompt, and tokenisation makes that less trivial than a substring
search: " Louvre" and "Louvre" tokenise differently, a subject may span several tokens, and may
occur several times. We work on characters and map back through the tokenizer's offsets, so
the span is right whatever the tokenizer does with leading spaces.

Targets follow ROME's convention: a target "Rome" is scored as the continuation " Rome" (one
leading space), teacher-forced over all its tokens.
"""

from __future__ import annotations

import warnings

PLACEHOLDER = "{}"


class SubjectNotFoundError(ValueError):
    """The subject does not occur in the prompt."""


def fill(template: str, subject: str) -> str:
    """Put `subject` into a template holding one `{}`.

    Raises:
        ValueError: the template has no `{}` or more than one, or the subject is empty.
    """
    if not isinstance(template, str) or template.count(PLACEHOLDER) != 1:
        raise ValueError(
            f"prompt template {template!r} must contain exactly one '{{}}' where the subject goes"
        )
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError(f"subject {subject!r} is empty")
    return template.replace(PLACEHOLDER, subject)


def _char_offsets(model, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` and each token's (start, end) character offsets."""
    tok = model.tokenizer
    ids = model.encode(text)
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        if enc["input_ids"] == ids and len(offsets) == len(ids):
            return ids, offsets
    except (NotImplementedError, TypeError, KeyError):
        pass
    # Slow tokenizers: recover offsets by decoding growing prefixes.
    offsets, prev = [], 0
    for i in range(len(ids)):
        cur = len(tok.decode(ids[: i + 1]))
        offsets.append((prev, cur))
        prev = cur
    return ids, offsets


def _char_to_token_span(offsets, start: int, stop: int) -> tuple[int, int]:
    """Smallest token span [a, b) whose characters cover text[start:stop]."""
    a = b = None
    for i, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        if a is None and e > start:
            a = i
        if s < stop:
            b = i + 1
    if a is None or b is None or b <= a:
        raise SubjectNotFoundError(f"no tokens cover characters {start}..{stop}")
    return a, b


def find_subject_spans(model, text: str, subject: str) -> list[tuple[int, int]]:
    """Every occurrence of `subject` in `text` as a token span (start, stop), left to right.

    The match is on characters, case-sensitive; a subject written with or without a leading
    space in `subject` matches the same occurrences. Returns [] when the subject is absent.
    """
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError(f"subject {subject!r} is empty")
    needle = subject.strip()
    ids, offsets = _char_offsets(model, text)
    spans, pos = [], 0
    while True:
        at = text.find(needle, pos)
        if at < 0:
            break
        spans.append(_char_to_token_span(offsets, at, at + len(needle)))
        pos = at + len(needle)
    return spans


def subject_span(model, text: str, subject: str, occurrence: int = -1) -> tuple[int, int]:
    """Token span of one occurrence of `subject` in `text` (the last by default, as in ROME
    prompts with prefixes the subject comes after the prefix).

    Raises:
        SubjectNotFoundError: naming both the subject and the prompt.
    """
    spans = find_subject_spans(model, text, subject)
    if not spans:
        raise SubjectNotFoundError(f"subject {subject!r} does not occur in prompt {text!r}")
    return spans[occurrence]


def last_subject_token(model, text: str, subject: str) -> int:
    """Index of the subject's last token in `text` (ROME's key position)."""
    return subject_span(model, text, subject)[1] - 1


def check_subject_position(span: tuple[int, int], text: str, subject: str) -> None:
    """Warn when the subject starts at token 0: that position acts as an attention sink in
    models without a BOS token, so corrupting or patching it perturbs everything after it."""
    if span[0] == 0:
        warnings.warn(
            f"subject {subject!r} starts at token 0 of {text!r}: with no BOS token that position "
            "is the attention sink, so effects there mix the subject with the sink",
            stacklevel=3,
        )


def document_separator(model) -> str:
    """The text of the model's document separator ("<|endoftext|>", else its EOS token), or ""
    when it has neither. Put in front of a prompt it takes position 0 (the attention sink) the
    way a document boundary does in training, so a subject that starts the prompt does not.

    SmolLM2's tokenizer uses "<|endoftext|>" as its unknown token too, so there the EOS token
    ("<|im_end|>", which ends every chat turn) is used.
    """
    tok = model.tokenizer
    i = tok.convert_tokens_to_ids("<|endoftext|>")
    if i is None or not isinstance(i, int) or i == tok.unk_token_id:
        i = tok.eos_token_id
    if i is None:
        return ""
    text = tok.convert_ids_to_tokens(i)
    # usable only if the tokenizer reads the text back as that one special id
    return text if isinstance(text, str) and model.encode(text) == [i] else ""


def target_ids(model, target: str) -> list[int]:
    """Token ids of a target as it follows a prompt: " " + target unless it starts with a space.

    Raises:
        ValueError: the target is empty or tokenises to nothing.
    """
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"target {target!r} is empty")
    text = target if target.startswith(" ") else " " + target
    ids = model.encode(text)
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return ids


def check_context(model, n_tokens: int, text: str) -> None:
    """Raise if a prompt does not fit the model's context window."""
    if n_tokens > model.n_ctx:
        raise ValueError(
            f"prompt of {n_tokens} tokens is longer than {model.name}'s context of "
            f"{model.n_ctx} tokens: {text[:80]!r}..."
        )
