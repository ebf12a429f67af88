"""Cached hits stay byte-identical where they should, whatever the hit path
does to be fast (issue 11, item 1): the stored document (everything before
the per-reply "cache"/"timings_ms" members) and the ETag are the same bytes
on every hit and as on the miss that stored them; the per-reply part keeps
printf's number format; every request keeps its JSON log line. The real
binary over HTTP, real PostgreSQL, the fake upstream as a process.
"""

import json
import re

TYPE = "relationship_health"
PATH = "/v1/contacts/7/analyses/%s" % TYPE

# The per-reply tail a hit ends with: %.0f for the ages, %.3f for the timings.
HIT_TAIL = re.compile(rb',"cache":\{"status":"hit","tier":"l1","age_ms":\d+,"ttl_ms":\d+\},'
                      rb'"timings_ms":\{"db":0\.000,"script":0\.000,"llm":0\.000,'
                      rb'"total":\d+\.\d{3}\}\}$')


def split_tail(body):
    """(stored document bytes, per-reply tail bytes)."""
    i = body.rindex(b',"cache":{')
    return body[:i], body[i:]


def test_two_hits_answer_the_same_bytes_and_etag_as_the_stored_miss(server, fake):
    miss = server.get(PATH)
    assert miss.status == 200 and miss.headers["X-Cache"] == "MISS", miss.body
    hits = [server.get(PATH) for _ in range(2)]
    for h in hits:
        assert h.status == 200 and h.headers["X-Cache"] == "HIT", h.body
        assert h.headers["ETag"] == miss.headers["ETag"]
        assert h.headers["Content-Length"] == str(len(h.body))
        assert h.headers["Content-Type"] == "application/json; charset=utf-8"
        assert re.fullmatch(r"private, max-age=\d+, stale-while-revalidate=\d+", h.headers["Cache-Control"])
        assert re.fullmatch(r"\d+", h.headers["Age"])
        assert re.fullmatch(r'cache;desc="hit", total;dur=\d+\.\d{3}', h.headers["Server-Timing"])
        json.loads(h.body)
    stored_miss, _ = split_tail(miss.body)
    stored = [split_tail(h.body) for h in hits]
    assert stored[0][0] == stored[1][0] == stored_miss, "the stored document changed between hits"
    for _, tail in stored:
        assert HIT_TAIL.match(tail), tail
    assert fake.stats()["chat_calls"] == 1


def test_revalidation_of_a_hit_is_a_304_with_the_same_etag(server, fake):
    first = server.get(PATH)
    etag = first.headers["ETag"]
    again = server.get(PATH, headers={"If-None-Match": etag})
    assert again.status == 304 and again.body == b""
    assert again.headers["ETag"] == etag


def test_every_hit_writes_its_request_log_line(server, fake):
    ids = []
    for i in range(5):
        r = server.get(PATH, headers={"X-Request-Id": "hit-line-%d" % i})
        assert r.status == 200
        ids.append(r.headers["X-Request-Id"])
    assert ids == ["hit-line-%d" % i for i in range(5)]
    lines = [l for l in server.log_lines() if l.get("msg") == "request"
             and l.get("req_id", "").startswith("hit-line-")]
    assert [l["req_id"] for l in lines] == ids, "one line per request, in order"
    for line in lines[1:]:
        assert line["cache"] == "hit" and line["status"] == 200
        assert line["path"] == PATH and line["method"] == "GET"
        assert isinstance(line["total_ms"], (int, float)) and line["total_ms"] >= 0
        # Fields that do not apply to a hit are absent, not -1 or null.
        assert "prompt_tokens" not in line and "error" not in line, line
