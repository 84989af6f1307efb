"""
An HTTP server of a model: `python -m pyllmc.serve out/model_00000300.bin`.

OpenAI-style `POST /v1/completions` (prompt, max_tokens, temperature,
top_p, top_k, seed, logprobs, stream as server-sent events) and
`GET /v1/models`, on the standard library's ThreadingHTTPServer: one thread
per connection parses and answers; one worker thread owns the model's
Generator and runs every live request in one batch, starting new requests
between steps (continuous batching), so concurrent requests share each
forward pass. Malformed or oversized requests get a 4xx with a JSON error
and the server goes on. Binds 127.0.0.1 unless told otherwise.
"""
import argparse
import codecs
import http.server
import json
import queue
import secrets
import threading
import time

from .generate import FINISH_REASONS, Generator
from .tokenizer import EOT, decode_bytes, encode
from .cli import one_line_errors

MAX_BODY_BYTES = 1 << 20
SOCKET_TIMEOUT_S = 30


class RequestError(ValueError):
    """A request the server refuses: an HTTP status and a message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Job:
    """One completion: what the worker needs, and a queue of what it yields
    (event tuples, then None at the end, or an exception)."""

    def __init__(self, tokens, sampling):
        self.tokens, self.sampling = tokens, sampling
        self.events = queue.Queue()
        self.cancelled = False


class Batcher:
    """The worker thread: starts waiting jobs into free slots, runs a step,
    hands each job its tokens."""

    def __init__(self, model, max_batch):
        self.model = model
        self.generator = Generator(model, max_batch)
        self.incoming = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="llmc-batcher", daemon=True)
        self.thread.start()

    def submit(self, job):
        self.incoming.put(job)

    def _start_waiting(self, owner, block):
        """Starts queued jobs into the free slots; waits for one if asked and idle."""
        jobs = []
        while len(jobs) < self.generator.max_sequences - len(owner):
            try:
                job = self.incoming.get(block=block and not owner and not jobs)
            except queue.Empty:
                break
            if not job.cancelled:
                jobs.append(job)
        if jobs:
            self._start(owner, jobs)

    def _start(self, owner, jobs):
        """One prefill for all; if that fails (it then starts none), each
        alone, so that only a failing job fails."""
        try:
            ids = self.generator.start([j.tokens for j in jobs], [j.sampling for j in jobs])
            owner.update(zip(ids, jobs))
        except Exception as e:
            if len(jobs) == 1:
                jobs[0].events.put(e)
            else:
                for job in jobs:
                    self._start(owner, [job])

    def _loop(self):
        owner = {}  # live sequence id -> Job
        while True:
            self._start_waiting(owner, block=True)
            for seq, job in list(owner.items()):
                if job.cancelled:
                    self.generator.cancel(seq)
                    del owner[seq]
            if not owner:
                continue
            try:
                events = self.generator.run(1)
            except Exception as e:
                for seq, job in owner.items():
                    self.generator.cancel(seq)
                    job.events.put(e)
                owner.clear()
                continue
            for event in events:
                job = owner[event[0]]
                job.events.put(event)
                if event[3]:
                    del owner[event[0]]
                    job.events.put(None)


def _number(body, name, default, low, high, kind=float, low_open=False):
    value = body.get(name, default)
    if value is None:
        value = default
    ok_type = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    if not ok_type or isinstance(value, bool):
        raise RequestError(400, f"{name} must be a{'n integer' if kind is int else ' number'}")
    if not (low < value if low_open else low <= value) or not value <= high:
        raise RequestError(400, f"{name} = {value}: expected {low}{' <' if low_open else ' <='} "
                                f"{name} <= {high}")
    return kind(value)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # listen backlog: a burst of clients is queued, not reset

    def __init__(self, address, model, model_name, max_batch):
        super().__init__(address, Handler)
        self.model, self.model_name = model, model_name
        self.batcher = Batcher(model, max_batch)

    def parse_completion(self, body):
        """(prompt tokens, sampling, stream, logprobs) of a request body, or RequestError."""
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        context = self.model.config.max_seq_len
        vocab = self.model.config.vocab_size
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # OpenAI's list of one prompt
        if isinstance(prompt, str):
            if len(prompt) > MAX_BODY_BYTES:
                raise RequestError(413, "prompt too long")
            tokens = encode(prompt) if prompt else [EOT]
        elif isinstance(prompt, list) and prompt and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            tokens = prompt
        else:
            raise RequestError(400, "prompt must be a string or a non-empty list of token ids")
        if any(not 0 <= t < vocab for t in tokens):
            raise RequestError(400, f"prompt token ids must be in 0..{vocab - 1}")
        if len(tokens) >= context:
            raise RequestError(400, f"the prompt is {len(tokens)} tokens: the model's context is "
                                    f"{context}, so at most {context - 1}")
        max_tokens = _number(body, "max_tokens", 16, 1, context - len(tokens), int)
        temperature = _number(body, "temperature", 1.0, 0.0, 100.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
        top_k = _number(body, "top_k", 0, 0, vocab, int)
        seed = _number(body, "seed", secrets.randbits(63), 0, 2**64 - 1, int)
        logprobs = body.get("logprobs")
        if logprobs not in (None, 0, 1):
            raise RequestError(400, "logprobs must be null, 0 or 1 (the sampled token's only)")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(400, "stream must be true or false")
        sampling = self.batcher.generator.sampling(max_tokens, temperature, top_k, top_p, seed,
                                                   "eot")
        return tokens, sampling, stream, bool(logprobs)


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "llmc"
    timeout = SOCKET_TIMEOUT_S

    def log_message(self, format, *args):  # quiet: one line per error only
        pass

    def send_json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, status, message):
        kind = "invalid_request_error" if status < 500 else "server_error"
        self.send_json(status, {"error": {"message": message, "type": kind}})

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            self.send_json(200, {"object": "list", "data": [
                {"id": self.server.model_name, "object": "model", "owned_by": "llmc"}]})
        else:
            self.send_error_json(404, f"no such endpoint: GET {self.path[:200]}")

    def read_body(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(411, "a Content-Length header is required")
        if int(length) > MAX_BODY_BYTES:
            raise RequestError(413, f"the body is {length} bytes, at most {MAX_BODY_BYTES}")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise RequestError(400, "the body is not valid JSON") from None

    def do_POST(self):
        if self.path.rstrip("/") != "/v1/completions":
            self.send_error_json(404, f"no such endpoint: POST {self.path[:200]}")
            return
        try:
            tokens, sampling, stream, logprobs = self.server.parse_completion(self.read_body())
        except RequestError as e:
            self.send_error_json(e.status, str(e))
            return
        job = Job(tokens, sampling)
        self.server.batcher.submit(job)
        try:
            (self.stream if stream else self.complete)(job, len(tokens), logprobs)
        except OSError:  # the client went away
            job.cancelled = True

    def results(self, job):
        """(text pieces, finish reason) as the tokens come; raises the worker's error."""
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            item = job.events.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            _, token, logprob, finish = item
            text = utf8.decode(decode_bytes([token]), bool(finish))
            yield token, text, logprob, FINISH_REASONS.get(finish)

    def header(self):
        return {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion",
                "created": int(time.time()), "model": self.server.model_name}

    def complete(self, job, prompt_len, logprobs):
        texts, probs, tokens, finish = [], [], [], None
        try:
            for token, text, logprob, finish in self.results(job):
                texts.append(text)
                probs.append(logprob)
                tokens.append(token)
        except Exception as e:
            self.send_error_json(500, f"generation failed: {e}")
            return
        choice = {"text": "".join(texts), "index": 0, "finish_reason": finish,
                  "logprobs": {"tokens": tokens, "token_logprobs": probs} if logprobs else None}
        self.send_json(200, {**self.header(), "choices": [choice],
                             "usage": {"prompt_tokens": prompt_len, "completion_tokens": len(tokens),
                                       "total_tokens": prompt_len + len(tokens)}})

    def stream(self, job, prompt_len, logprobs):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        head = self.header()
        try:
            for token, text, logprob, finish in self.results(job):
                choice = {"text": text, "index": 0, "finish_reason": finish,
                          "logprobs": {"tokens": [token], "token_logprobs": [logprob]}
                          if logprobs else None}
                self.wfile.write(f"data: {json.dumps({**head, 'choices': [choice]})}\n\n".encode())
                self.wfile.flush()
        except Exception as e:
            if isinstance(e, OSError):  # the client went away
                raise
            error = {"error": {"message": f"generation failed: {e}", "type": "server_error"}}
            self.wfile.write(f"data: {json.dumps(error)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m pyllmc.serve",
                                description="Serve a model file over HTTP (OpenAI-style "
                                            "/v1/completions).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="model file, e.g. out/model_00000300.bin")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every "
                   "interface; there is no authentication)")
    p.add_argument("--port", type=int, default=8000, help="0: any free port")
    p.add_argument("--max-batch", type=int, default=32, help="requests generated at once")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    if args.max_batch < 1:
        p.error("--max-batch must be >= 1")

    import pyllmc
    with one_line_errors(pyllmc.LlmcError, pyllmc.LibraryError, ValueError):
        model = pyllmc.Model.load(args.checkpoint, device=args.device, max_batch_size=1)
        server = Server((args.host, args.port), model, args.checkpoint, args.max_batch)
    host, port = server.server_address[:2]
    print(f"serving {args.checkpoint} on http://{host}:{port}/v1/completions", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
