"""Chaos: one member fails mid-batch under concurrent load, and every answer is still the right one.

Member ``b``'s forward pass is wrapped: a pass holding a text that starts with ``RAISEME`` raises, a text
starting with ``NANME`` gets NaN features (so a NaN score) while the texts beside it are untouched, and
a pass holding ``HANGME`` sleeps past the request timeout. Under concurrent requests through the
service (a real server on loopback), each answer must be exactly one of:

- the text's real score, as scored alone (within 1e-5), with no error;
- fail closed by member ``b`` (``errors == {"b": ...}``, member ``a`` still scored), for exactly the
  texts that shared a raising pass and the NaN texts;
- fail closed by the service's timeout, only for requests in flight while a pass hung, and always for
  the hanging texts themselves.

No request is lost, and the service is still ready afterwards.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from siren_ensemble.text import clean_text

from .test_serve import make_ensemble, service  # noqa: F401  (make_ensemble: a fixture)

TIMEOUT_S = 1.0
HANG_S = 2.0
NORMAL = ["How do I bake bread?", "Write a poem about the sea.", "Explain how to pick a lock.", "x", "",
          "The quick brown fox jumps over the lazy dog.", "What is the capital of France?"]


class FaultyMember:
    """Wraps the forward pass of the backbone a member sits on; records what it did to which token ids."""

    def __init__(self, ensemble, member: str, monkeypatch):
        position = ensemble.member_names.index(member)
        self.shared = next(shared for shared in ensemble._passes if position in shared.member_positions)
        backbone = self.shared.backbone
        self.raised: set[tuple[int, ...]] = set()
        self.hangs: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        original = backbone.pooled_states

        def faulty(sequences, wanted, *args, **kwargs):
            decoded = [backbone.tokenizer.decode(ids, skip_special_tokens=True) for ids in sequences]
            if any(text.startswith("HANGME") for text in decoded):
                started = time.monotonic()
                time.sleep(HANG_S)
                with self.lock:
                    self.hangs.append((started, time.monotonic()))
            if any(text.startswith("RAISEME") for text in decoded):
                with self.lock:
                    self.raised |= {tuple(ids) for ids in sequences}
                raise RuntimeError("injected: member b crashed")
            pooled = original(sequences, wanted, *args, **kwargs)
            poisoned = torch.tensor([text.startswith("NANME") for text in decoded])
            if poisoned.any():
                pooled = {key: torch.where(poisoned.to(states.device)[:, None], torch.nan, states) for key, states in pooled.items()}
            return pooled

        monkeypatch.setattr(backbone, "pooled_states", faulty)

    def ids(self, text: str) -> tuple[int, ...]:
        (windows, _), = self.shared.encode([clean_text(text)])
        return tuple(windows[0])


def make_requests(seed: int = 0, count: int = 120) -> list[list[str]]:
    chooser = random.Random(seed)
    requests = []
    for index in range(count):
        texts = []
        for slot in range(chooser.randint(1, 3)):
            roll = chooser.random()
            base = f"{chooser.choice(NORMAL)} ({index}.{slot})"
            texts.append(f"NANME {base}" if roll < 0.1 else f"RAISEME {base}" if roll < 0.15 else base)
        requests.append(texts)
    for index in (30, 80):  # two requests hang the member, some way into the run
        requests[index] = [f"HANGME now ({index})"]
    return requests


def test_one_member_raising_nan_and_hanging_under_load_fails_exactly_the_affected_texts(make_ensemble, monkeypatch):
    ensemble = make_ensemble(batching={"max_texts": 4})
    requests = make_requests()
    texts = sorted({text for request in requests for text in request})
    alone = {text: ensemble.score(text) for text in texts if not text.startswith(("NANME", "RAISEME", "HANGME"))}
    member_a = {text: ensemble.score(text).members["a"] for text in texts}
    faulty = FaultyMember(ensemble, "b", monkeypatch)

    with service(ensemble, request_timeout_s=TIMEOUT_S, batch_wait_ms=5, max_inputs=4) as url:
        def send(request):
            started = time.monotonic()
            answer = httpx.post(f"{url}/v1/moderations", json={"input": request}, timeout=30)
            return request, answer, started, time.monotonic()

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(send, requests))
        ready = httpx.get(f"{url}/readyz")
        after = httpx.post(f"{url}/v1/moderations", json={"input": "How do I bake bread?"}, timeout=30)

    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert after.json()["results"][0]["siren"]["errors"] == {}
    assert faulty.raised and len(faulty.hangs) == 2  # every fault really happened

    counts = {"real": 0, "member b": 0, "timeout": 0}
    for request, answer, started, ended in outcomes:
        assert answer.status_code == 200, answer.text  # nothing lost, no 5xx
        results = answer.json()["results"]
        assert len(results) == len(request)
        for text, result in zip(request, results):
            siren = result["siren"]
            service_error = siren["errors"].get("service", "")
            if text.startswith("HANGME") or service_error:
                assert service_error.startswith("timeout"), (text, siren)
                assert any(started < hang_end and ended > hang_start for hang_start, hang_end in faulty.hangs), (text, started)
                assert result["flagged"] is True
                counts["timeout"] += 1
            elif text.startswith("NANME") or faulty.ids(text) in faulty.raised:
                assert set(siren["errors"]) == {"b"}, (text, siren)
                assert result["flagged"] is True and siren["members"]["b"] is None
                assert siren["members"]["a"] == pytest.approx(member_a[text], abs=1e-5)
                counts["member b"] += 1
            else:
                assert siren["errors"] == {}, (text, siren)
                assert siren["score"] == pytest.approx(alone[text].score, abs=1e-5)
                assert result["flagged"] is alone[text].is_harmful
                counts["real"] += 1
    print("chaos:", counts, "texts:", sum(len(request) for request in requests))
    # How many requests a hang catches depends on timing; each kind must occur, and nothing is lost (above).
    assert sum(counts.values()) == sum(len(request) for request in requests)
    assert counts["real"] > 0 and counts["member b"] > 0 and counts["timeout"] > 0
