"""pyllmc.serve: a real server process and real HTTP clients. 200 concurrent
and 1,000 sequential requests, a third of them malformed or oversized: every
well-formed one succeeds, every bad one gets a 4xx, and the server goes on."""
import http.client
import json
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from pyllmc import Config, Model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTEXT = 64


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "model.bin"
    config = Config(max_seq_len=CONTEXT, vocab_size=50304, num_layers=1, num_heads=2, channels=16)
    with Model.from_config(config, max_batch_size=1, num_threads=1) as model:
        model.save(path)
    proc = subprocess.Popen([sys.executable, "-m", "pyllmc.serve", str(path), "--port", "0",
                             "--max-batch", "16"], env=dict(os.environ, PYTHONPATH=REPO,
                                                            OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("serving"), line + proc.stderr.read()
    host_port = line.split("http://")[1].split("/")[0]
    yield host_port
    proc.kill()
    proc.wait()


def request(host_port, method, path, body=None, raw=None, headers=None):
    conn = http.client.HTTPConnection(host_port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, response.getheader("Content-Type"), payload


def completion(host_port, body):
    status, kind, payload = request(host_port, "POST", "/v1/completions", body)
    return status, kind, payload


def test_a_completion_and_a_stream(server):
    body = {"prompt": "Hello", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 3,
            "logprobs": 1}
    status, kind, payload = completion(server, body)
    assert status == 200 and kind == "application/json"
    reply = json.loads(payload)
    choice = reply["choices"][0]
    assert reply["usage"]["completion_tokens"] == len(choice["logprobs"]["tokens"]) <= 8
    assert choice["finish_reason"] in ("stop", "length")
    assert all(lp <= 0 for lp in choice["logprobs"]["token_logprobs"])
    status, kind, payload = completion(server, {**body, "stream": True})
    assert status == 200 and kind == "text/event-stream"
    events = [e[len("data: "):] for e in payload.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    # the same seed: the same tokens, streamed one at a time
    assert [c["logprobs"]["tokens"][0] for c in chunks] == choice["logprobs"]["tokens"]
    assert "".join(c["text"] for c in chunks) == choice["text"]
    assert chunks[-1]["finish_reason"] == choice["finish_reason"]
    status, _, payload = request(server, "GET", "/v1/models")
    assert status == 200 and json.loads(payload)["data"][0]["object"] == "model"


def random_request(rng):
    """(body bytes or a JSON value, expected status class: 2 or 4)."""
    good = {"prompt": rng.choice(["", "The", "a b c " * rng.randint(1, 8), [1, 2, 3]]),
            "max_tokens": rng.randint(1, 6), "temperature": rng.choice([0, 0.5, 1.0, 1.5]),
            "top_p": rng.choice([0.1, 0.9, 1.0]), "stream": rng.random() < 0.3}
    if rng.random() < 0.65:
        return good, 2
    bad = rng.choice([
        b"{not json", b"[]", b"null", b'"text"', b"\xff\xfe", b"[" * 100000,
        {**good, "max_tokens": 0}, {**good, "max_tokens": CONTEXT * 2},
        {**good, "max_tokens": "5"}, {**good, "temperature": -1}, {**good, "temperature": "hot"},
        {**good, "top_p": 0}, {**good, "top_p": 2}, {**good, "prompt": 5},
        {**good, "prompt": [60000]}, {**good, "prompt": []}, {**good, "prompt": [1.5]},
        {**good, "prompt": "word " * (CONTEXT * 2)}, {**good, "stream": "yes"},
        {**good, "seed": -1}, {**good, "logprobs": 5}, {**good, "top_k": -1},
    ])
    return bad, 4


def send(server, item):
    body, expected = item
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, kind, payload = request(server, "POST", "/v1/completions", raw=raw)
    assert status // 100 == expected, (body, status, payload[:300])
    if expected == 4:
        assert "message" in json.loads(payload)["error"]
    elif body.get("stream"):
        assert payload.endswith(b"data: [DONE]\n\n") and b'"error"' not in payload
    else:
        assert json.loads(payload)["choices"][0]["finish_reason"] in ("stop", "length")


def test_200_concurrent_requests(server):
    rng = random.Random(0)
    items = [random_request(rng) for _ in range(200)]
    with ThreadPoolExecutor(200) as pool:
        list(pool.map(lambda item: send(server, item), items))


def test_1000_sequential_requests_and_bad_http(server):
    rng = random.Random(1)
    for _ in range(1000):
        send(server, random_request(rng))
    assert request(server, "POST", "/v1/completions", raw=b"x" * 10,
                   headers={"Content-Length": str(10 << 20)})[0] == 413
    assert request(server, "POST", "/v1/nothing", {"prompt": "a"})[0] == 404
    assert request(server, "GET", "/")[0] == 404
    send(server, ({"prompt": "still serving", "max_tokens": 2}, 2))


def test_a_client_that_leaves_mid_stream_does_not_stop_the_server(server):
    conn = http.client.HTTPConnection(server, timeout=60)
    conn.request("POST", "/v1/completions",
                 body=json.dumps({"prompt": "a", "max_tokens": CONTEXT - 2, "stream": True}))
    response = conn.getresponse()
    response.read(10)
    conn.close()
    send(server, ({"prompt": "b", "max_tokens": 3}, 2))
