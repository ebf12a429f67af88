"""Every line rapport writes to stderr is one JSON object, whatever a client
puts in a path: bytes that are not UTF-8, control bytes, quotes, and paths
longer than a log line (cut, the line still closed). The real binary over
raw sockets; every stderr line is decoded as strict UTF-8 and json.loads'd."""

import json
import socket


def send(server, raw_path):
    s = socket.create_connection((server.host, server.port), timeout=10)
    s.sendall(b"GET " + raw_path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return int(data.split(b" ", 2)[1])


HOSTILE = [
    b"/v1/contacts/1/analyses/\xff\xfe",                  # not UTF-8
    b"/v1/contacts/\xc3(/analyses/x",                      # a broken sequence
    b"/v1/contacts/1/analyses/\xed\xa0\x80",               # a surrogate
    b"/v1/\"quoted\"/\\back\\slash",
    b"/v1/contacts/1/analyses/relationship_health%00",
    b"/v1/analysis-types%0a%0d",
    b"/" + b"\xe9" * 6000,                                 # long, and Latin-1
    b"/v1/" + "é".encode() * 5000 + b"/x",                 # long UTF-8
]


def test_every_log_line_is_json_whatever_the_path(server):
    statuses = [send(server, p) for p in HOSTILE]
    assert all(400 <= st < 500 for st in statuses), statuses
    server.get("/healthz")
    raw = server.stderr_path.read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b"", "the last line is closed"
    objs = []
    for line in lines[:-1]:
        text = line.decode("utf-8")          # strict: raises on invalid UTF-8
        obj = json.loads(text)
        assert isinstance(obj, dict), text[:200]
        assert len(line) <= 8192, len(line)
        objs.append(obj)
    reqs = [o for o in objs if o.get("msg") == "request" and o.get("status", 0) >= 400]
    assert len(reqs) >= len(HOSTILE), [o.get("path", "")[:40] for o in reqs]
    assert any("\ufffd" in o.get("path", "") for o in reqs), "bad bytes shown as U+FFFD"
    long = [o for o in reqs if o.get("truncated")]
    assert long, "the long paths were cut and flagged"
    assert all("status" in o for o in long), "fields after a cut value are kept"
