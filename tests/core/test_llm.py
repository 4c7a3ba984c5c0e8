"""The bundled chat model, loaded for real through llama.cpp."""
from __future__ import annotations

import threading

import pytest

from core.errors import UnsupportedModel
from core.jobs import CancelToken
from core.models.llm import ChatMessage, LocalLLM

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm() -> LocalLLM:
    return LocalLLM.default(n_ctx=2048, device="cpu")


def test_answers_from_the_given_context(llm):
    context = ("Accident report NYC08CA055. The pilot, age 85, was attempting to land a Piper PA-22-150 "
               "at his private airstrip near Tallahassee. The airplane contacted trees, then utility wires.")
    reply = llm.chat([
        ChatMessage("system", "Answer only from the context. Be brief."),
        ChatMessage("user", f"Context:\n{context}\n\nQuestion: How old was the pilot?"),
    ], max_tokens=32)
    assert "85" in reply
    assert llm.last_stats.completion_tokens > 0 and llm.last_stats.stopped_by in ("stop", "length")


def test_chat_template_comes_from_the_file(llm):
    assert llm.chat_template and "im_start" in llm.chat_template


def test_streams_and_stops_on_cancel(llm):
    cancel = CancelToken()
    pieces = []
    for piece in llm.stream_chat([ChatMessage("user", "Count from 1 to 200, separated by commas.")],
                                 max_tokens=400, cancel=cancel):
        pieces.append(piece)
        if len(pieces) == 5:
            cancel.cancel()
    assert len(pieces) == 5
    assert llm.last_stats.stopped_by == "cancel"


def test_one_generation_at_a_time(llm):
    """A second caller waits for the model instead of corrupting the first generation."""
    gen = llm.stream_chat([ChatMessage("user", "Say hello.")], max_tokens=8)
    next(gen)  # first generation now holds the model
    got = []
    t = threading.Thread(target=lambda: got.append(llm.chat([ChatMessage("user", "Say yes.")], max_tokens=4)))
    t.start()
    t.join(timeout=0.5)
    assert t.is_alive(), "second generation must wait while the first holds the model"
    list(gen)
    t.join(timeout=120)
    assert not t.is_alive() and got and got[0]


def test_rejects_a_file_that_is_not_gguf(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(UnsupportedModel, match="not a GGUF"):
        LocalLLM(bogus)
