"""The embedded endpoint's guarantee, fast: grammar-constrained decoding gives schema-valid JSON within
`max_tokens` even from a model with random weights (SmolLM2's tokenizer, a one-layer random Llama)."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
from pydantic import BaseModel

from tuneforge.augment.local_engine import Engine, Job
from tuneforge.augment.local_grammar import BadRequest, closed, grammar_for
from tuneforge.augment.local_server import create_app
from tuneforge.augment.ops.base import Score
from tuneforge.augment.ops.extend_turns import Extension
from tuneforge.augment.ops.extend_turns import wire_schema as extension_schema
from tuneforge.augment.ops.kb_queries import KBQuery
from tuneforge.augment.ops.question_from_passage import QAList
from tuneforge.augment.ops.question_from_passage import wire_schema as qa_schema


@pytest.fixture(scope="module")
def engine(smollm2_path, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny")
    for f in smollm2_path.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, folder / f.name)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return Engine(str(folder))


CASES: list[tuple[type[BaseModel], dict]] = [
    (QAList, qa_schema(2)), (Extension, extension_schema(1, True)), (KBQuery, KBQuery.model_json_schema()),
    (Score, Score.model_json_schema())]


@pytest.mark.parametrize("max_tokens", [48, 96])  # Extension's shortest instance: 32 tokens
def test_random_weights_still_give_valid_json(engine, max_tokens):
    loop = asyncio.new_event_loop()
    msgs = [{"role": "user", "content": "Reply in JSON."}]
    jobs, models = [], []
    for model, schema in CASES:
        for seed in range(3):
            g = grammar_for({"type": "json_schema", "json_schema": {"name": model.__name__, "schema": schema}})
            jobs.append(Job(msgs, max_tokens, 1.0, 1.0, g, seed, loop.create_future(), loop))
            models.append(model)
    jobs.append(Job(msgs, max_tokens, 1.0, 1.0, grammar_for({"type": "json_object"}), 0, loop.create_future(), loop))
    models.append(None)
    for j in jobs:
        j.prompt_ids = engine.prompt_ids(j.messages)
    out = engine.generate(jobs)  # one batch, rows finishing at different steps
    for (text, n_tokens, finish), model in zip(out, models, strict=True):
        assert n_tokens <= max_tokens and finish == "stop", (text, finish)
        value = json.loads(text)
        if model is None:
            assert isinstance(value, dict)
        else:
            model.model_validate(value)
    ext = [Extension.model_validate_json(t) for (t, _, _), m in zip(out, models, strict=True) if m is Extension]
    assert all(len(e.followups) == 1 and e.closing is not None for e in ext)  # the tighter wire schema holds
    qa = [QAList.model_validate_json(t) for (t, _, _), m in zip(out, models, strict=True) if m is QAList]
    assert all(1 <= len(q.pairs) <= 2 for q in qa)
    loop.close()


def test_a_tokenizer_the_grammar_misreads_is_refused(engine):
    """The engine checks llguidance's bytes for every token against the tokenizer's decoding: the real
    tokenizer agrees everywhere; one that maps byte-level pieces differently is caught."""
    from tuneforge.augment.local_engine import byte_mismatches

    assert byte_mismatches(engine.tok, engine.ll_tok) == []

    class Misread:  # what a tokenizer converted by another transformers version looked like to llguidance
        def decode_bytes(self, ids: list[int]) -> bytes:
            piece = engine.tok.convert_ids_to_tokens(ids[0])
            return piece.encode("utf-8")  # the raw byte-level piece: "Ġthe" where the text is " the"

    bad = byte_mismatches(engine.tok, Misread())
    assert len(bad) > 1000 and any(text.startswith(" ") for _, _, text in bad)


def test_a_request_samples_the_same_whatever_shares_its_batch(engine):
    """Each row has its own random stream (its `seed`) and its own temperature: a seeded request is
    reproducible, and a greedy request batched with sampled ones stays greedy."""
    loop = asyncio.new_event_loop()
    msgs = [{"role": "user", "content": "Write anything."}]

    def job(temperature: float, seed: int | None) -> Job:
        j = Job(msgs, 12, temperature, 1.0, None, seed, loop.create_future(), loop)
        j.prompt_ids = engine.prompt_ids(msgs)
        return j

    alone = engine.generate([job(1.0, 7)])[0]
    greedy = engine.generate([job(0.0, None)])[0]
    mixed = engine.generate([job(1.0, 3), job(0.0, None), job(1.0, 7), job(1.0, 7)])
    assert mixed[2] == alone and mixed[3] == alone  # same seed, same reply, wherever it sits in the batch
    assert mixed[1] == greedy  # temperature is per request, not the batch's first one
    others = {engine.generate([job(1.0, s)])[0][0] for s in range(4)}
    assert len(others) > 1  # the seed does choose the sample
    loop.close()


def test_the_http_endpoint_speaks_openai(engine):
    from fastapi.testclient import TestClient

    client = TestClient(create_app(engine, "embedded:tiny", max_batch=4))
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/v1/models").json()["data"][0]["id"] == "embedded:tiny"
    body = {"model": "embedded:tiny", "messages": [{"role": "user", "content": "Score this."}], "max_tokens": 20,
            "temperature": 0, "response_format": {"type": "json_schema",
                                                  "json_schema": {"name": "Score", "schema": Score.model_json_schema()}}}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    Score.model_validate_json(data["choices"][0]["message"]["content"])
    assert data["usage"]["completion_tokens"] <= 20 and data["usage"]["prompt_tokens"] > 0
    plain = client.post("/v1/chat/completions", json={**body, "response_format": None, "max_tokens": 5}).json()
    assert plain["usage"]["completion_tokens"] <= 5
    bad = client.post("/v1/chat/completions", json={**body, "response_format": {"type": "grammar"}})
    assert bad.status_code == 400 and "not supported" in bad.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 400


def test_schema_tightening():
    s = closed(QAList.model_json_schema())
    assert s["additionalProperties"] is False and s["$defs"]["QA"]["additionalProperties"] is False
    assert closed({"type": "object"}) == {"type": "object"}  # json_object: any object stays allowed
    with pytest.raises(BadRequest):
        grammar_for({"type": "json_schema", "json_schema": {}})
    assert grammar_for(None) is None and grammar_for({"type": "text"}) is None
