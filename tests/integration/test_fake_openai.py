"""The fake OpenAI upstream (build/fake_openai) over real sockets.

rapport's integration tests, benchmarks and no-key demo trust this program to
speak OpenAI's chat completions protocol; these tests pin that down: reply and
chunk shapes, usage, the SSE framing, schema-shaped content, the scripted
failures, the counters, the rate-limit mode (x-ratelimit-* headers, OpenAI's
429), and that it frees what a vanished client leaves behind.
"""

import http.client
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from helpers.fake import FakeOpenAI  # noqa: E402

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:")


def fake_binary():
    b = Path(os.environ.get("FAKE_BIN") or "build/fake_openai")
    return str(b if b.is_absolute() else REPO / b)


def assert_clean_exit(f):
    code = f.stop()
    log = f.log()
    assert not any(m in log for m in SANITIZER_MARKS), log
    assert code == 0, log


@pytest.fixture(scope="module")
def fake_proc():
    if not os.path.exists(fake_binary()):
        pytest.fail("%s is not built — run `make build/fake_openai`"
                    % fake_binary())
    f = FakeOpenAI(binary=fake_binary(), latency_ms=2, chunk_delay_ms=1)
    f.start()
    try:
        yield f
    finally:
        assert_clean_exit(f)


@pytest.fixture(autouse=True)
def _fresh(fake_proc):
    fake_proc.reset()


# ---- a tiny client ----------------------------------------------------------

def chat_body(content="Summarise contact 42.", **kw):
    body = {"model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "You are terse."},
                         {"role": "user", "content": content}]}
    body.update(kw)
    return body


def post(fake, body, headers=None, path="/v1/chat/completions", conn=None,
         timeout=10):
    """POST JSON; returns (status, headers dict lower-cased, raw body, ok)
    where ok is False when the body was cut short."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", fake.port,
                                          timeout=timeout)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    try:
        conn.request("POST", path, body=data, headers=h)
        resp = conn.getresponse()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        try:
            raw, complete = resp.read(), True
        except http.client.IncompleteRead as e:
            raw, complete = e.partial, False
        return resp.status, hdrs, raw, complete
    finally:
        if own:
            conn.close()


def chat(fake, body, **kw):
    status, hdrs, raw, complete = post(fake, body, **kw)
    assert complete
    return status, hdrs, json.loads(raw)


def sse_events(raw):
    """The data of each event, as the WHATWG parser sees it: lines end with
    LF, CRLF or CR; a blank line dispatches; comments and other fields are
    ignored; an unterminated last event is dropped."""
    text = raw.decode("utf-8")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    events, data = [], []
    for line in lines[:-1]:           # the last piece has no terminator
        if line == "":
            if data:
                events.append("\n".join(data))
            data = []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
    return events


def stream(fake, body, **kw):
    """Streams body; returns (status, headers, events, complete)."""
    body = dict(body, stream=True)
    status, hdrs, raw, complete = post(fake, body, **kw)
    return status, hdrs, sse_events(raw), complete


def content_of(events):
    out = []
    for e in events:
        if e == "[DONE]":
            continue
        chunk = json.loads(e)
        for ch in chunk.get("choices", []):
            out.append(ch["delta"].get("content") or "")
    return "".join(out)


def wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    return pred()


# ---- start-up and process ---------------------------------------------------

def test_start_prints_listening_line_and_sigterm_exits_zero(tmp_path):
    import subprocess
    port_file = tmp_path / "port"
    proc = subprocess.Popen([fake_binary(), "--port-file", str(port_file),
                             "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("fake_openai listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        assert wait_for(port_file.exists)
        assert port_file.read_text() == "%d\n" % port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        err = proc.stderr.read()
        assert not any(m in err for m in SANITIZER_MARKS), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- non-streaming ----------------------------------------------------------

def test_non_streaming_reply_has_the_openai_shape_and_usage(fake_proc):
    body = chat_body()
    status, hdrs, r = chat(fake_proc, body)
    assert status == 200
    assert hdrs["content-type"].startswith("application/json")
    assert hdrs["x-request-id"].startswith("req_")
    assert int(hdrs["openai-processing-ms"]) >= 0
    assert r["id"].startswith("chatcmpl-")
    assert r["object"] == "chat.completion"
    assert isinstance(r["created"], int) and r["created"] > 1_600_000_000
    assert r["model"] == "gpt-4o-mini"
    assert r["system_fingerprint"] == "fp_fake"
    [choice] = r["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    msg = choice["message"]
    assert msg["role"] == "assistant" and msg["refusal"] is None
    words = msg["content"].split()
    assert 40 <= len(words) <= 90, msg["content"]
    u = r["usage"]
    prompt_chars = sum(len(m["content"]) for m in body["messages"])
    assert u["prompt_tokens"] == max(1, -(-prompt_chars // 4))
    assert abs(u["completion_tokens"] - len(msg["content"]) / 4) <= 1
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["prompt_tokens_details"]["cached_tokens"] == 0
    assert u["completion_tokens_details"]["reasoning_tokens"] == 0


def test_same_prompt_same_reply_and_different_prompt_different_reply(
        fake_proc):
    a = chat(fake_proc, chat_body("contact 1"))[2]
    b = chat(fake_proc, chat_body("contact 1"))[2]
    c = chat(fake_proc, chat_body("contact 2"))[2]
    text = lambda r: r["choices"][0]["message"]["content"]  # noqa: E731
    assert text(a) == text(b)
    assert text(a) != text(c)
    assert a["id"] != b["id"]


def test_max_tokens_below_the_reply_cuts_it_with_finish_reason_length(
        fake_proc):
    full = chat(fake_proc, chat_body())[2]
    r = chat(fake_proc, chat_body(max_completion_tokens=5))[2]
    content = r["choices"][0]["message"]["content"]
    assert r["choices"][0]["finish_reason"] == "length"
    assert content == full["choices"][0]["message"]["content"][:20]
    assert r["usage"]["completion_tokens"] == 5
    r = chat(fake_proc, chat_body(max_tokens=3, response_format={
        "type": "json_object"}))[2]
    assert r["choices"][0]["finish_reason"] == "length"
    with pytest.raises(ValueError):
        json.loads(r["choices"][0]["message"]["content"])


def test_latency_is_honoured(fake_proc):
    fake_proc.config(latency_ms=300)
    t0 = time.monotonic()
    status, _, _ = chat(fake_proc, chat_body())
    assert status == 200
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    status, _, events, _ = stream(fake_proc, chat_body())
    assert status == 200 and events[-1] == "[DONE]"
    assert time.monotonic() - t0 >= 0.3


def test_slow_failure_entry_delays_only_that_call(fake_proc):
    fake_proc.fail({"mode": "slow", "latency_ms": 300})
    t0 = time.monotonic()
    chat(fake_proc, chat_body())
    assert time.monotonic() - t0 >= 0.3
    assert fake_proc.config()["fail"] == []


# ---- streaming --------------------------------------------------------------

def test_streamed_content_equals_the_non_streamed_content(fake_proc):
    body = chat_body("the same prompt, twice")
    whole = chat(fake_proc, body)[2]
    status, hdrs, events, complete = stream(
        fake_proc, dict(body, stream_options={"include_usage": True}))
    assert status == 200 and complete
    assert hdrs["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert content_of(events) == whole["choices"][0]["message"]["content"]
    # Same id/created/model throughout, and the right object type.
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    first = chunks[0]["choices"][0]
    assert first["delta"]["role"] == "assistant"
    assert first["delta"]["content"] == ""
    assert first["finish_reason"] is None
    # About --chunks (default 8) content pieces between role and finish.
    pieces = [c for c in chunks[1:-2] if c["choices"][0]["delta"].get(
        "content")]
    assert 6 <= len(pieces) <= 10
    finish = chunks[-2]
    assert finish["choices"][0]["delta"] == {}
    assert finish["choices"][0]["finish_reason"] == "stop"
    # include_usage: usage null everywhere, then choices [] with totals.
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"] == whole["usage"]


def test_stream_without_include_usage_carries_no_usage(fake_proc):
    status, _, events, complete = stream(fake_proc, chat_body())
    assert status == 200 and complete and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_never_splits_a_utf8_character(fake_proc):
    text = "héllo wörld — ünïcode ✓ 日本語のテキスト " * 3
    fake_proc.config(content=text, chunks=40)
    status, _, raw, complete = post(fake_proc, dict(chat_body(),
                                                    stream=True))
    assert status == 200 and complete
    raw.decode("utf-8")            # every byte sequence is whole
    events = sse_events(raw)
    assert content_of(events) == text
    assert len(events) > 20


def test_chunks_setting_controls_the_number_of_pieces(fake_proc):
    fake_proc.config(chunks=3)
    _, _, events, _ = stream(fake_proc, chat_body())
    pieces = [e for e in events[1:-2] if json.loads(e)["choices"][0]
              ["delta"].get("content")]
    assert 2 <= len(pieces) <= 4


# ---- content shapes ---------------------------------------------------------

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["score", "trend", "reasons", "healthy", "note", "owner",
                 "ratio", "next_step", "tags"],
    "properties": {
        "score": {"type": "integer", "minimum": 10, "maximum": 20},
        "trend": {"type": "string", "enum": ["warming", "stable",
                                             "cooling"]},
        "reasons": {"type": "array", "items": {"type": "string"},
                    "minItems": 3, "maxItems": 4},
        "healthy": {"type": "boolean"},
        "note": {"type": ["string", "null"]},
        "owner": {"$ref": "#/$defs/person"},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "next_step": {"anyOf": [{"type": "string", "maxLength": 30},
                                {"type": "null"}]},
        "tags": {"type": "array", "maxItems": 1,
                 "items": {"type": "string", "enum": ["vip", "churn"]}},
    },
    "$defs": {
        "person": {"type": "object", "additionalProperties": False,
                   "required": ["name", "age"],
                   "properties": {"name": {"type": "string"},
                                  "age": {"type": "integer", "minimum": 18,
                                          "maximum": 99}}},
    },
}


def check(value, schema, root):
    """Just enough JSON Schema for SCHEMA: types (nullable), enum, bounds,
    lengths, required, additionalProperties, $ref, anyOf."""
    if "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return check(value, node, root)
    if "anyOf" in schema:
        errors = [check(value, s, root) for s in schema["anyOf"]]
        return None if None in errors else "anyOf: %s" % errors
    if "enum" in schema and value not in schema["enum"]:
        return "%r not in %r" % (value, schema["enum"])
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    py = {"object": dict, "array": list, "string": str, "boolean": bool,
          "null": type(None)}
    if value is None:
        return None if "null" in types else "null not allowed"
    t = next((t for t in types if t in py and isinstance(value, py[t])
              or t == "integer" and type(value) is int
              or t == "number" and type(value) in (int, float)), None)
    if t is None:
        return "%r is not %s" % (value, types)
    if t in ("integer", "number"):
        if value < schema.get("minimum", value) or \
           value > schema.get("maximum", value):
            return "%r out of bounds" % value
    if t == "string" and len(value) > schema.get("maxLength", len(value)):
        return "string too long"
    if t == "array":
        if not schema.get("minItems", 0) <= len(value) <= \
                schema.get("maxItems", len(value)):
            return "bad array length %d" % len(value)
        for v in value:
            err = check(v, schema.get("items", {}), root)
            if err:
                return err
    if t == "object":
        for k in schema.get("required", []):
            if k not in value:
                return "missing %s" % k
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False and \
                set(value) - set(props):
            return "extra keys %s" % (set(value) - set(props))
        for k, v in value.items():
            err = check(v, props.get(k, {}), root)
            if err:
                return "%s: %s" % (k, err)
    return None


def schema_format(schema=SCHEMA, strict=True):
    return {"type": "json_schema", "json_schema": {
        "name": "relationship_health", "strict": strict, "schema": schema}}


def test_json_schema_content_validates_against_the_requested_schema(
        fake_proc):
    seen_scores = set()
    for i in range(6):
        r = chat(fake_proc, chat_body("contact %d" % i,
                                      response_format=schema_format()))[2]
        doc = json.loads(r["choices"][0]["message"]["content"])
        assert check(doc, SCHEMA, SCHEMA) is None, doc
        # Every property, not just the required ones; nullable gets a value.
        assert set(doc) == set(SCHEMA["properties"])
        assert isinstance(doc["note"], str) and doc["note"]
        assert len(doc["reasons"]) == 3            # max(minItems, 2)
        assert all(len(s.split()) >= 3 for s in doc["reasons"])
        seen_scores.add(doc["score"])
    assert len(seen_scores) > 1                   # depends on the prompt


def test_streamed_schema_content_is_the_same_document(fake_proc):
    body = chat_body(response_format=schema_format())
    whole = chat(fake_proc, body)[2]["choices"][0]["message"]["content"]
    _, _, events, _ = stream(fake_proc, body)
    assert content_of(events) == whole
    assert check(json.loads(whole), SCHEMA, SCHEMA) is None


def test_json_object_format_gives_a_text_object(fake_proc):
    r = chat(fake_proc, chat_body(response_format={"type":
                                                   "json_object"}))[2]
    doc = json.loads(r["choices"][0]["message"]["content"])
    assert list(doc) == ["text"] and len(doc["text"]) > 20


def test_strict_schema_that_the_api_would_refuse_gets_400(fake_proc):
    loose = {"type": "object", "properties": {"a": {"type": "string"}}}
    status, _, r = chat(fake_proc, chat_body(
        response_format=schema_format(loose)))
    assert status == 400
    assert "additionalProperties" in r["error"]["message"]
    assert r["error"]["param"] == "response_format"
    # Not strict: the same schema is accepted.
    status, _, _ = chat(fake_proc, chat_body(
        response_format=schema_format(loose, strict=False)))
    assert status == 200


def test_fixed_content_overrides_generation_until_reset(fake_proc):
    fake_proc.config(content="fixed text")
    r = chat(fake_proc, chat_body(response_format=schema_format()))[2]
    assert r["choices"][0]["message"]["content"] == "fixed text"
    fake_proc.reset()
    r = chat(fake_proc, chat_body())[2]
    assert r["choices"][0]["message"]["content"] != "fixed text"


# ---- request errors ---------------------------------------------------------

@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "gpt-4o-mini"}, "messages"),
    ({"model": "gpt-4o-mini", "messages": []}, "messages"),
    ({"model": "gpt-4o-mini", "messages": "hi"}, "messages"),
    ({"model": "gpt-4o-mini", "messages": [{"content": "x"}]},
     "messages[0].role"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "user",
                                            "content": "x"}],
      "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "user",
                                            "content": "x"}],
      "response_format": {"type": "json_schema", "json_schema": {
          "schema": {}}}}, "response_format.json_schema.name"),
], ids=["no-model", "no-messages", "empty-messages", "messages-not-array",
        "no-role", "stream-options-without-stream", "schema-without-name"])
def test_bad_body_gets_400_with_the_param_named(fake_proc, body, param):
    status, hdrs, r = chat(fake_proc, body)
    assert status == 400
    assert set(r["error"]) == {"message", "type", "param", "code"}
    assert r["error"]["type"] == "invalid_request_error"
    assert r["error"]["param"] == param
    assert hdrs["x-request-id"].startswith("req_")


def test_unparseable_body_gets_400_and_counts_as_a_call(fake_proc):
    status, _, raw, _ = post(fake_proc, b"{not json")
    assert status == 400
    err = json.loads(raw)["error"]
    assert err["param"] is None and err["code"] is None
    assert "parse the JSON body" in err["message"]
    st = fake_proc.stats()
    assert st["chat_calls"] == 1 and st["last_request"] is None


def test_wrong_method_gets_405_and_unknown_path_gets_404(fake_proc):
    conn = http.client.HTTPConnection("127.0.0.1", fake_proc.port,
                                      timeout=5)
    try:
        conn.request("GET", "/v1/chat/completions")
        resp = conn.getresponse()
        err = json.loads(resp.read())["error"]
        assert resp.status == 405
        assert set(err) == {"message", "type", "param", "code"}
        conn.request("POST", "/v1/embeddingz", body=b"{}")
        resp = conn.getresponse()
        err = json.loads(resp.read())["error"]
        assert resp.status == 404
        assert err["message"] == "Invalid URL (POST /v1/embeddingz)"
    finally:
        conn.close()
    assert fake_proc.stats()["chat_calls"] == 0


def test_short_path_without_v1_is_served_too(fake_proc):
    status, _, r = chat(fake_proc, chat_body(), path="/chat/completions")
    assert status == 200 and r["object"] == "chat.completion"


def test_require_key_rejects_a_wrong_key_showing_only_its_last_four():
    with FakeOpenAI(binary=fake_binary(), latency_ms=0,
                    extra_args=["--require-key", "sk-right-key-9876",
                                "--quiet"]) as f:
        status, _, r = chat(f, chat_body(), headers={
            "Authorization": "Bearer sk-wrong-secret-abcd"})
        assert status == 401
        assert r == {"error": {
            "message": "Incorrect API key provided: sk-...abcd. You can "
                       "find your API key at "
                       "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error", "param": None,
            "code": "invalid_api_key"}}
        assert "wrong-secret" not in json.dumps(r)
        status, _, r = chat(f, chat_body())
        assert status == 401 and "didn't provide an API key" in \
            r["error"]["message"]
        assert f.stats()["last_authorization_present"] is False
        status, _, r = chat(f, chat_body(), headers={
            "Authorization": "Bearer sk-right-key-9876"})
        assert status == 200
        st = f.stats()
        assert st["chat_calls"] == 3
        assert st["last_authorization_present"] is True
        assert_clean_exit(f)


# ---- scripted failures ------------------------------------------------------

def test_scripted_500_then_success(fake_proc):
    fake_proc.fail({"status": 500})
    status, hdrs, r = chat(fake_proc, chat_body())
    assert status == 500
    assert r == {"error": {
        "message": "The server had an error while processing your request. "
                   "Sorry about that!",
        "type": "server_error", "param": None, "code": None}}
    assert "retry-after" not in hdrs and "retry-after-ms" not in hdrs
    assert hdrs["x-request-id"].startswith("req_")
    status, _, r = chat(fake_proc, chat_body())
    assert status == 200 and r["object"] == "chat.completion"
    assert fake_proc.stats()["chat_calls"] == 2


def test_scripted_429_carries_retry_after_headers_then_success(fake_proc):
    fake_proc.fail({"status": 429, "retry_after": "2",
                    "retry_after_ms": "150"})
    status, hdrs, r = chat(fake_proc, dict(chat_body(), stream=True))
    assert status == 429
    assert hdrs["retry-after"] == "2" and hdrs["retry-after-ms"] == "150"
    assert r["error"]["type"] == "requests"
    assert r["error"]["code"] == "rate_limit_exceeded"
    assert r["error"]["param"] is None
    status, _, events, complete = stream(fake_proc, chat_body())
    assert status == 200 and complete and events[-1] == "[DONE]"


def test_failure_fields_override_defaults_and_count_repeats_an_entry(
        fake_proc):
    fake_proc.fail({"status": 429, "count": 2, "type": "insufficient_quota",
                    "code": "insufficient_quota", "message": "No money."},
                   {"status": 503, "code": None})
    got = [chat(fake_proc, chat_body()) for _ in range(4)]
    assert [g[0] for g in got] == [429, 429, 503, 200]
    assert got[0][2]["error"] == {"message": "No money.",
                                  "type": "insufficient_quota",
                                  "param": None,
                                  "code": "insufficient_quota"}
    assert got[2][2]["error"]["type"] == "server_error"


def test_cut_stream_stops_mid_way_without_done(fake_proc):
    fake_proc.fail({"mode": "cut", "after_chunks": 2})
    status, _, events, complete = stream(fake_proc, chat_body())
    assert status == 200
    assert not complete
    assert "[DONE]" not in events
    assert len(events) == 3              # the role chunk and two pieces
    assert wait_for(lambda: fake_proc.stats()["in_flight"] == 0)


def test_cut_non_streaming_reply_is_half_a_body(fake_proc):
    fake_proc.fail({"mode": "cut"})
    status, hdrs, raw, complete = post(fake_proc, chat_body())
    assert status == 200 and not complete
    assert 0 < len(raw) < int(hdrs["content-length"])
    with pytest.raises(ValueError):
        json.loads(raw)


def test_stream_error_arrives_inside_the_200_stream(fake_proc):
    fake_proc.fail({"mode": "stream_error", "after_chunks": 1})
    status, _, events, complete = stream(fake_proc, chat_body())
    assert status == 200 and complete
    assert len(events) == 3
    assert json.loads(events[1])["choices"][0]["delta"]["content"]
    assert json.loads(events[-1]) == {"error": {
        "message": "The server had an error while processing your request. "
                   "Sorry about that!",
        "type": "server_error", "param": None, "code": None}}
    assert "[DONE]" not in events


def test_invalid_json_content_and_garbage_modes(fake_proc):
    fake_proc.fail({"mode": "invalid_json"}, {"mode": "garbage"},
                   {"mode": "content", "content": "just this"})
    r = chat(fake_proc, chat_body(response_format=schema_format()))[2]
    assert r["choices"][0]["message"]["content"] == '{"oops": tru'
    assert r["choices"][0]["finish_reason"] == "stop"
    status, hdrs, raw, _ = post(fake_proc, chat_body())
    assert status == 200
    assert hdrs["content-type"].startswith("text/html")
    assert raw == b"<html>Bad gateway</html>"
    _, _, events, _ = stream(fake_proc, chat_body())
    assert content_of(events) == "just this"


def test_bad_failure_entry_is_refused_and_nothing_is_queued(fake_proc):
    with pytest.raises(AssertionError):
        fake_proc.fail({"status": 500}, {"mode": "explode"})
    assert fake_proc.config()["fail"] == []


# ---- counters and resources -------------------------------------------------

def test_two_requests_on_one_keepalive_connection_count_one_connection(
        fake_proc):
    conn = http.client.HTTPConnection("127.0.0.1", fake_proc.port,
                                      timeout=10)
    try:
        for _ in range(2):
            status, _, raw, complete = post(fake_proc, chat_body(),
                                            conn=conn)
            assert status == 200 and complete
        _, _, events, complete = stream(fake_proc, chat_body(), conn=conn)
        assert complete and events[-1] == "[DONE]"
        # Ask on the same connection: a new one would count itself.
        conn.request("GET", "/_fake/stats")
        st = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert st["connections"] == 1
    assert st["chat_calls"] == 3
    assert st["stream_calls"] == 1
    assert st["in_flight"] == 0 and st["max_in_flight"] == 1
    assert st["last_request"]["stream"] is True
    assert st["last_authorization_present"] is False


def test_reset_zeroes_counters_and_empties_the_failure_queue(fake_proc):
    fake_proc.fail({"status": 500})
    fake_proc.config(latency_ms=7)
    chat(fake_proc, chat_body())
    fake_proc.reset()
    st = fake_proc.stats()
    assert st["chat_calls"] == 0 and st["last_request"] is None
    cfg = fake_proc.config()
    assert cfg["fail"] == [] and cfg["latency_ms"] == 2


def raw_request(port, body):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % len(data) + data)
    return s


def test_stalled_request_is_freed_when_the_client_disconnects(fake_proc):
    fake_proc.fail({"mode": "stall"})
    s = raw_request(fake_proc.port, chat_body())
    try:
        assert wait_for(lambda: fake_proc.stats()["in_flight"] == 1)
        time.sleep(0.2)
        assert fake_proc.stats()["in_flight"] == 1     # still stalled
    finally:
        s.close()
    assert wait_for(lambda: fake_proc.stats()["in_flight"] == 0)
    # Still serving.
    assert chat(fake_proc, chat_body())[0] == 200


def test_client_leaving_mid_stream_frees_the_stream(fake_proc):
    fake_proc.config(chunk_delay_ms=100, chunks=30)
    s = raw_request(fake_proc.port, dict(chat_body(), stream=True))
    try:
        assert b"data: " in s.recv(4096)
        assert fake_proc.stats()["in_flight"] == 1
    finally:
        s.close()
    assert wait_for(lambda: fake_proc.stats()["in_flight"] == 0)


def test_client_leaving_during_the_latency_frees_the_request(fake_proc):
    fake_proc.config(latency_ms=5000)
    s = raw_request(fake_proc.port, chat_body())
    try:
        assert wait_for(lambda: fake_proc.stats()["in_flight"] == 1)
    finally:
        s.close()
    assert wait_for(lambda: fake_proc.stats()["in_flight"] == 0, 2.0)


def test_many_concurrent_streams_all_complete(fake_proc):
    import threading
    fake_proc.config(latency_ms=50, chunk_delay_ms=5)
    results = []

    def one(i):
        results.append(stream(fake_proc, chat_body("contact %d" % i)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 20
    assert all(r[0] == 200 and r[3] and r[2][-1] == "[DONE]"
               for r in results)
    st = fake_proc.stats()
    assert st["in_flight"] == 0 and st["max_in_flight"] > 1
    assert st["stream_calls"] == 20


# ---- rate-limit mode --------------------------------------------------------

RL_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
              "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
              "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")

GO_DURATION = r"^(\d+h)?(\d+m)?(\d+(\.\d+)?(ms|s))$|^0s$"


def test_every_reply_carries_the_six_rate_limit_headers(fake_proc):
    import re
    for mode in (None, {"requests": 100, "tokens": 100000, "window_ms": 60000}):
        fake_proc.config(rate_limit=mode)
        status, hdrs, _ = chat(fake_proc, chat_body())
        assert status == 200
        for h in RL_HEADERS:
            assert h in hdrs, (mode, h)
        for h in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
            assert re.match(GO_DURATION, hdrs[h]), hdrs[h]
        status, hdrs, _ = chat(fake_proc, {"model": "x"})   # a 400
        assert status == 400 and all(h in hdrs for h in RL_HEADERS)


def test_rate_limit_counts_requests_down_then_refuses_with_openai_429(
        fake_proc):
    fake_proc.config(rate_limit={"requests": 3, "window_ms": 60000})
    seen = []
    for _ in range(3):
        status, hdrs, _ = chat(fake_proc, chat_body())
        assert status == 200
        assert hdrs["x-ratelimit-limit-requests"] == "3"
        seen.append(int(hdrs["x-ratelimit-remaining-requests"]))
    assert seen == [2, 1, 0]
    status, hdrs, r = chat(fake_proc, chat_body())
    assert status == 429
    assert hdrs["x-ratelimit-remaining-requests"] == "0"
    assert 50 <= int(hdrs["retry-after"]) <= 60
    assert 0 < int(hdrs["retry-after-ms"]) <= 60000
    err = r["error"]
    assert err["type"] == "requests" and err["code"] == "rate_limit_exceeded"
    assert err["param"] is None
    assert ("on requests per min (RPM): Limit 3, Used 3, Requested 1. "
            "Please try again in ") in err["message"]
    st = fake_proc.stats()
    assert st["rate_limited"] == 1 and st["chat_calls"] == 4


def test_rate_limit_window_resets_and_the_reset_header_counts_down(fake_proc):
    fake_proc.config(rate_limit={"requests": 1, "window_ms": 400})
    status, hdrs, _ = chat(fake_proc, chat_body())
    assert status == 200
    assert hdrs["x-ratelimit-reset-requests"].endswith("ms")
    assert 0 < int(hdrs["x-ratelimit-reset-requests"][:-2]) <= 400
    status, hdrs, _ = chat(fake_proc, chat_body())
    assert status == 429
    time.sleep(int(hdrs["retry-after-ms"]) / 1000.0 + 0.05)
    status, hdrs, _ = chat(fake_proc, chat_body())
    assert status == 200, "a new window takes calls again"
    assert hdrs["x-ratelimit-remaining-requests"] == "0"


def test_rate_limit_on_tokens_refuses_with_type_tokens(fake_proc):
    fake_proc.config(rate_limit={"tokens": 150, "window_ms": 60000})
    status, hdrs, r = chat(fake_proc, chat_body())
    used = r["usage"]["total_tokens"]
    assert status == 200 and used < 150 <= 2 * used, used
    assert int(hdrs["x-ratelimit-remaining-tokens"]) == 150 - used
    assert hdrs["x-ratelimit-limit-tokens"] == "150"
    status, hdrs, r = chat(fake_proc, chat_body())
    assert status == 429
    assert r["error"]["type"] == "tokens"
    assert "on tokens per min (TPM): Limit 150, Used %d" % used \
        in r["error"]["message"]


def test_rate_limit_refusal_is_immediate_even_with_latency(fake_proc):
    fake_proc.config(latency_ms=1500, rate_limit={"requests": 1})
    status, _, _ = chat(fake_proc, chat_body(), timeout=10)
    assert status == 200
    t0 = time.monotonic()
    status, _, _ = chat(fake_proc, dict(chat_body(), stream=True))
    assert status == 429
    assert time.monotonic() - t0 < 1.0, "a 429 does not wait for the latency"


def test_rate_limit_setting_is_validated_and_reset_turns_it_off(fake_proc):
    for bad in ({"requests": -1}, {"window_ms": 0}, {"nope": 1}, 5):
        status, _, _, _ = post(fake_proc,
                               json.dumps({"rate_limit": bad}).encode(),
                               path="/_fake/config")
        assert status == 400, bad
    assert fake_proc.config()["rate_limit"] is None
    fake_proc.config(rate_limit={"requests": 1})
    assert fake_proc.config()["rate_limit"] == {"requests": 1, "tokens": 0,
                                                "window_ms": 60000}
    chat(fake_proc, chat_body())
    assert chat(fake_proc, chat_body())[0] == 429
    fake_proc.reset()
    assert fake_proc.config()["rate_limit"] is None
    assert chat(fake_proc, chat_body())[0] == 200


def test_rate_limit_from_the_command_line():
    f = FakeOpenAI(binary=fake_binary(), latency_ms=0,
                   extra_args=["--rate-limit-requests", "1",
                               "--rate-limit-window-ms", "60000"])
    f.start()
    try:
        assert chat(f, chat_body())[0] == 200
        assert chat(f, chat_body())[0] == 429
        f.reset()      # back to the command line's values, a new window
        assert chat(f, chat_body())[0] == 200
        assert chat(f, chat_body())[0] == 429
    finally:
        assert_clean_exit(f)
