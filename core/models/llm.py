"""The local chat model: a GGUF file run by llama.cpp.

One generation at a time (llama.cpp contexts are not thread-safe); tokens stream out
as they are made and generation stops at once when the consumer cancels. The chat
template comes from the GGUF file itself. All layers go to the GPU when the installed
llama.cpp build can offload and the user allows it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from core.errors import ModelError, UnsupportedModel
from core.jobs import CancelToken
from core.models import devices

__all__ = ["ChatMessage", "GenerationStats", "LocalLLM"]

log = logging.getLogger(__name__)
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ChatMessage:
    role: str
    """``system``, ``user`` or ``assistant``."""
    content: str


@dataclass
class GenerationStats:
    """Timing of the last generation."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_s: float | None = None
    total_s: float = 0.0
    stopped_by: str = ""
    """``stop`` (end of turn or a stop string), ``length``, or ``cancel``."""

    @property
    def tokens_per_s(self) -> float | None:
        if not self.completion_tokens or self.first_token_s is None:
            return None
        gen = self.total_s - self.first_token_s
        return self.completion_tokens / gen if gen > 0 else None


def check_gguf(path: Path) -> None:
    """Raise UnsupportedModel unless ``path`` is a readable GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise UnsupportedModel(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UnsupportedModel(f"{path}: not a GGUF model file (it starts with {magic!r}, not b'GGUF')")


class LocalLLM:
    """A loaded GGUF chat model."""

    def __init__(self, path: Path, *, n_ctx: int = 4096, device: str = "auto", n_threads: int | None = None,
                 seed: int = 0) -> None:
        check_gguf(path)
        import llama_cpp

        self.path = Path(path)
        self.device = devices.llm_device(device)
        n_gpu_layers = -1 if self.device == "cuda" else 0
        threads = n_threads or int(os.environ.get("SIFT_THREADS", 0)) or max(1, os.cpu_count() or 1)
        t0 = time.monotonic()
        try:
            self._llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers,
                                        n_threads=threads, n_batch=512, seed=seed, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{self.path}: llama.cpp could not load it ({e})") from None
        self.load_s = time.monotonic() - t0
        self.n_ctx = n_ctx
        self.chat_template = self._llm.metadata.get("tokenizer.chat_template")
        self.name = self._llm.metadata.get("general.name", self.path.stem)
        self._lock = threading.Lock()
        self.last_stats = GenerationStats()

    @classmethod
    def default(cls, tier: str = "default", **kw) -> "LocalLLM":
        """The bundled model of ``tier``, prepared if needed."""
        from core.models import registry

        return cls(registry.prepare(registry.llm_for_tier(tier)), **kw)

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream_chat(self, messages: Sequence[ChatMessage], *, max_tokens: int = 512, temperature: float = 0.0,
                    stop: Sequence[str] = (), cancel: CancelToken | None = None) -> Iterator[str]:
        """Yield the reply piece by piece. Holds the model for the whole generation."""
        msgs = [{"role": m.role, "content": m.content} for m in messages]
        stats = GenerationStats()
        with self._lock:
            t0 = time.monotonic()
            stream = self._llm.create_chat_completion(messages=msgs, max_tokens=max_tokens, temperature=temperature,
                                                      stop=list(stop) or None, stream=True)
            try:
                for chunk in stream:
                    if cancel is not None and cancel.cancelled:
                        stats.stopped_by = "cancel"
                        break
                    choice = chunk["choices"][0]
                    piece = choice.get("delta", {}).get("content")
                    if piece:
                        if stats.first_token_s is None:
                            stats.first_token_s = time.monotonic() - t0
                        stats.completion_tokens += 1
                        yield piece
                    if choice.get("finish_reason"):
                        stats.stopped_by = choice["finish_reason"]
            finally:
                stream.close()
                stats.total_s = time.monotonic() - t0
                self.last_stats = stats

    def chat(self, messages: Sequence[ChatMessage], **kw) -> str:
        """The whole reply as one string."""
        return "".join(self.stream_chat(messages, **kw))

    # ------------------------------------------------------------------ scoring (rerankers)

    def format_chat(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt text the GGUF's own chat template makes of ``messages``, ending where the
        assistant's reply starts (what ``stream_chat`` sends, without generating)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not self.chat_template:
            raise ModelError(f"{self.path}: the GGUF file has no chat template")
        llm = self._llm

        def piece(tok: int) -> str:
            return llm._model.token_get_text(tok) if tok >= 0 else ""

        fmt = Jinja2ChatFormatter(self.chat_template, eos_token=piece(llm.token_eos()),
                                  bos_token=piece(llm.token_bos()))
        return fmt(messages=[{"role": m.role, "content": m.content} for m in messages]).prompt

    def token_id(self, text: str) -> int | None:
        """The vocabulary id of ``text`` when it is exactly one token, else None."""
        ids = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        return int(ids[0]) if len(ids) == 1 else None

    def next_token_logits(self, prompts: Sequence[str], token_ids: Sequence[int], *,
                          max_prompt_tokens: int | None = None, cancel: CancelToken | None = None):
        """For each prompt, the logits of ``token_ids`` at the position right after it.

        Returns float32 ``[len(prompts), len(token_ids)]``. Holds the model for the whole call.
        Consecutive prompts that share a beginning reuse its evaluated cache (a reranker puts the
        query first and the passage last, so only the passage is evaluated again). A prompt longer
        than ``max_prompt_tokens`` (default: the context size) loses tokens from its middle, i.e.
        the end of the passage before the closing question. Logits are read with
        ``llama_get_logits_ith(ctx, -1)``: in llama-cpp-python 0.3.36 ``Llama.scores`` stays zero
        unless the model was loaded with ``logits_all=True``.
        """
        import llama_cpp
        import numpy as np

        ids = [int(t) for t in token_ids]
        out = np.zeros((len(prompts), len(ids)), dtype=np.float32)
        limit = min(int(max_prompt_tokens or self.n_ctx), self.n_ctx - 1)
        llm = self._llm
        add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
        with self._lock:
            for i, prompt in enumerate(prompts):
                if cancel is not None and cancel.cancelled:
                    from core.errors import Cancelled

                    raise Cancelled("scoring cancelled")
                toks = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
                if len(toks) > limit:
                    tail = 48  # keep the closing question and the start of the reply intact
                    toks = toks[: limit - tail] + toks[-tail:]
                cached = llm._input_ids
                prefix = 0
                for a, b in zip(cached, toks):
                    if a != b:
                        break
                    prefix += 1
                prefix = min(prefix, len(toks) - 1)  # at least one token is evaluated to get logits
                llm.n_tokens = prefix
                llm.eval(toks[prefix:])
                logits = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
                out[i] = [logits[t] for t in ids]
        return out
