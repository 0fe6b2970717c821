"""The embedded model converted to its quantisation (rvchat_llm/gguf.py), with the real llama.cpp quantiser."""

from __future__ import annotations

import logging

import llama_cpp
import pytest
from rvchat_common.models import smollm2_gguf
from rvchat_llm.gguf import embedded_gguf, model_file

pytestmark = pytest.mark.models


def test_converted_once_loadable_and_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("RVCHAT_MODELS_DIR", str(tmp_path))
    path = embedded_gguf("q8_0")
    assert path.parent == tmp_path and path.name == "SmolLM2-135M-Instruct.Q8_0.gguf"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left behind
    stamp = path.stat().st_mtime_ns
    assert embedded_gguf("q8_0") == path and path.stat().st_mtime_ns == stamp
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False)
    assert llm.metadata["general.file_type"] == str(llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0)
    out = llm.create_completion("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                                "<|im_start|>assistant\n", max_tokens=12, temperature=0.0)
    assert "Paris" in out["choices"][0]["text"]


def test_the_shipped_file_when_asked_or_when_nothing_can_be_written(tmp_path, monkeypatch, caplog):
    assert embedded_gguf("q4_1") == smollm2_gguf()
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("RVCHAT_MODELS_DIR", str(blocker / "models"))  # under a file: cannot be created
    with caplog.at_level(logging.WARNING, "rvchat.llm.gguf"):
        assert embedded_gguf("q8_0") == smollm2_gguf()
    assert "using SmolLM2-135M-Instruct.Q4_1.gguf as shipped" in caplog.text


def test_your_own_file_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("RVCHAT_MODELS_DIR", str(tmp_path))
    own = tmp_path / "mine.gguf"
    own.write_bytes(smollm2_gguf().read_bytes()[:16])
    assert model_file("embedded").name == "SmolLM2-135M-Instruct.Q8_0.gguf"
    monkeypatch.setattr("rvchat_llm.gguf.smollm2_gguf", lambda: 1 / 0)  # the embedded package is not needed
    assert model_file(str(own)) == own
