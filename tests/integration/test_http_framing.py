"""HTTP/1.1 framing as RFC 9112 says, checked in front of evhttp's lenient
parser (core/http_guard.c): raw sockets against the real binary, one test per
rule. Each asserts the status, the JSON error body, and, where the RFC asks
for it against request smuggling, that the server closed the connection
(recv returns b'' right after the response)."""

import json
import socket

TYPE = "relationship_health"


def exchange(server, raw, timeout=10.0):
    """Sends raw bytes, reads one response. Returns (status, headers dict
    with lower-case names, body bytes, sock) with the socket still open."""
    s = socket.create_connection((server.host, server.port), timeout=timeout)
    s.sendall(raw)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head, "no response at all to %r" % raw[:200]
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" not in headers:     # HTTP/1.0: the body ends at close
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest, s
    n = int(headers["content-length"])
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:n], s


def closed_by_server(sock, timeout=10.0):
    """True when the server closed the connection (EOF) after its reply."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.close()
    return data == b""


def json_error(body):
    doc = json.loads(body)
    assert "error" in doc and "code" in doc["error"], doc
    return doc["error"]["code"]


def get(path, *extra, host=True, version="HTTP/1.1"):
    lines = ["GET %s %s" % (path, version)]
    if host:
        lines.append("Host: x")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ---- header names ------------------------------------------------------------

def test_whitespace_before_the_colon_is_a_400_json(server):
    st, h, body, s = exchange(server, get("/healthz", "X-Foo : bar"))
    assert st == 400
    assert h["content-type"].startswith("application/json")
    assert json_error(body) == "bad_request"
    assert closed_by_server(s)


def test_an_empty_header_name_is_a_400_json(server):
    st, h, body, s = exchange(server, get("/healthz", ": bar"))
    assert st == 400 and json_error(body) == "bad_request"
    assert closed_by_server(s)


def test_a_header_name_with_a_non_token_byte_is_a_400(server):
    st, h, body, s = exchange(server, get("/healthz", "X(y): bar"))
    assert st == 400 and json_error(body) == "bad_request"
    s.close()


def test_an_obs_fold_in_host_is_a_400(server):
    # evhttp joins a folded line into the previous value with one space (RFC
    # 9112 §5.2 lets a server do that); where the fold breaks a framing
    # header's syntax it is refused.
    st, h, body, s = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n y\r\n\r\n")
    assert st == 400 and json_error(body) == "bad_request"
    assert closed_by_server(s)


def test_a_control_byte_in_a_header_value_is_a_400(server):
    st, h, body, s = exchange(server, get("/healthz", "X-Foo: a\x01b"))
    assert st == 400 and json_error(body) == "bad_request"
    assert closed_by_server(s)


# ---- Host ------------------------------------------------------------------------

def test_http11_without_host_is_a_400(server):
    st, h, body, s = exchange(server, get("/healthz", host=False))
    assert st == 400 and json_error(body) == "bad_request"
    assert b"Host" in body
    s.close()


def test_two_host_headers_are_a_400(server):
    st, h, body, s = exchange(server, get("/healthz", "Host: y"))
    assert st == 400 and json_error(body) == "bad_request"
    s.close()


def test_http10_without_host_is_served(server):
    st, h, body, s = exchange(server, get("/healthz", host=False, version="HTTP/1.0"))
    assert st == 200 and json.loads(body) == {"status": "ok"}
    s.close()


def test_a_well_formed_keep_alive_request_keeps_the_connection(server):
    st, h, body, s = exchange(server, get("/healthz"))
    assert st == 200
    s.sendall(get("/healthz"))
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    s.close()


# ---- body framing (request smuggling) -----------------------------------------------

def post(path, *headers, body=b""):
    lines = ["POST %s HTTP/1.1" % path, "Host: x"] + list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


SMUGGLED = b"GET /v1/analysis-types HTTP/1.1\r\nHost: x\r\n\r\n"


def test_two_different_content_lengths_are_a_400_and_close(server):
    st, h, body, s = exchange(server, post("/healthz", "Content-Length: 3",
                                            "Content-Length: 5", body=b"abcde"))
    assert st == 400 and json_error(body) == "bad_request"
    assert closed_by_server(s)


def test_content_length_with_transfer_encoding_is_a_400_json_and_close(server):
    # evhttp 2.1.12 refuses this one itself, through evhttp_send_error, which
    # http_guard.c replaces so that the answer is our JSON, not its HTML page.
    st, h, body, s = exchange(server, post(
        "/healthz", "Content-Length: 4", "Transfer-Encoding: chunked",
        body=b"0\r\n\r\n" + SMUGGLED))
    assert st == 400 and json_error(body) == "bad_request"
    assert h["content-type"].startswith("application/json")
    assert h.get("connection", "").lower() == "close"
    assert closed_by_server(s)


def test_a_transfer_coding_other_than_chunked_is_a_501_and_close(server):
    st, h, body, s = exchange(server, post(
        "/healthz", "Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"))
    assert st == 501 and json_error(body) == "not_implemented"
    assert closed_by_server(s)


def test_transfer_encoding_on_http10_is_a_400_and_close(server):
    raw = (b"POST /healthz HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    st, h, body, s = exchange(server, raw)
    assert st == 400 and json_error(body) == "bad_request"
    assert closed_by_server(s)


def test_a_content_length_with_a_sign_is_a_400_and_close(server):
    # strtoll (evhttp) takes "+0"; RFC 9112 says 1*DIGIT.
    st, h, body, s = exchange(server, get("/healthz", "Content-Length: +0"))
    assert st == 400 and json_error(body) == "bad_request"
    assert closed_by_server(s)


def test_a_get_with_a_body_is_answered_and_closed_so_the_body_is_no_request(server):
    # A proxy in front that does not read a GET body would take these bytes
    # for the next request: refused, connection closed (RFC 9110 §9.3.1).
    raw = get("/healthz", "Content-Length: %d" % len(SMUGGLED)) + SMUGGLED
    st, h, body, s = exchange(server, raw)
    assert st == 400 and json_error(body) == "body_not_allowed"
    assert closed_by_server(s)


def test_a_chunked_get_is_answered_and_closed(server):
    raw = get("/healthz", "Transfer-Encoding: chunked") + b"0\r\n\r\n" + SMUGGLED
    st, h, body, s = exchange(server, raw)
    assert st == 400 and json_error(body) == "body_not_allowed"
    assert closed_by_server(s)


def test_a_post_with_a_plain_body_gets_a_json_405_and_keeps_framing(server):
    st, h, body, s = exchange(server, post("/healthz", "Content-Length: 2", body=b"{}"))
    assert st == 405 and json_error(body) == "method_not_allowed"
    s.close()


# ---- methods ------------------------------------------------------------------------

def test_connect_is_answered_at_once_with_a_json_405(server):
    raw = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    st, h, body, s = exchange(server, raw)
    assert st == 405 and json_error(body) == "method_not_allowed"
    assert h["content-type"].startswith("application/json")
    assert int(h["content-length"]) == len(body)    # framed, not "until close"
    s.close()


def test_trace_is_answered_at_once_with_a_json_405(server):
    raw = b"TRACE /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    st, h, body, s = exchange(server, raw)
    assert st == 405 and json_error(body) == "method_not_allowed"
    assert h["allow"] == "GET, HEAD"
    assert b"TRACE" not in body.replace(b"method", b"")   # nothing echoed
    s.close()


def test_patch_and_put_get_a_json_405_on_known_paths(server):
    for m in ("PUT", "PATCH"):
        raw = ("%s /v1/analysis-types HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
               % m).encode()
        st, h, body, s = exchange(server, raw)
        assert st == 405 and json_error(body) == "method_not_allowed", m
        s.close()


def test_an_unknown_method_is_answered_at_once_and_closed(server):
    # evhttp 2.1.12 answers a method it does not know itself (501, its own
    # page): its method mask is 16 bits and unknown methods fall outside it.
    raw = b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    st, h, body, s = exchange(server, raw)
    assert st == 501 and json_error(body) == "not_implemented"
    assert closed_by_server(s)


# ---- what evhttp refuses itself: still the JSON error document ----------------


def refused_by_the_parser(server, raw):
    st, h, body, s = exchange(server, raw)
    assert h["content-type"].startswith("application/json"), (st, h, body)
    code = json_error(body)
    assert h.get("connection", "").lower() == "close"
    assert closed_by_server(s)
    return st, code


def test_a_header_line_without_a_colon_is_a_400_json_and_close(server):
    st, code = refused_by_the_parser(server, get("/healthz", "NoColonHere"))
    assert (st, code) == (400, "bad_request")


def test_a_garbage_request_line_is_a_400_json_and_close(server):
    st, code = refused_by_the_parser(server, b"GARBAGE\r\n\r\n")
    assert (st, code) == (400, "bad_request")


def test_headers_over_the_size_limit_are_refused_with_json_and_close(server):
    st, code = refused_by_the_parser(server, get("/healthz", "X-Big: " + "a" * 40000))
    assert st in (400, 413) and code in ("bad_request", "payload_too_large")


def test_a_broken_chunk_is_refused_with_json_and_close(server):
    st, code = refused_by_the_parser(server, post(
        "/healthz", "Transfer-Encoding: chunked", body=b"zz\r\nabc\r\n0\r\n\r\n"))
    assert st in (400, 413) and code in ("bad_request", "payload_too_large")


def test_a_request_the_parser_refuses_still_gets_a_log_line(server):
    exchange(server, b"GARBAGE\r\n\r\n")[3].close()
    server.wait_for_log(lambda e: e.get("msg") == "request refused by the HTTP parser"
                        and e.get("status") == 400)


# ---- paths -----------------------------------------------------------------------------

def test_an_encoded_slash_is_not_a_separator(server):
    st, h, body, s = exchange(server, get("/v1%2Fanalysis-types"))
    assert st == 404 and json_error(body) == "not_found"
    s.close()
    st, h, body, s = exchange(server, get("/v1/contacts/1%2Fanalyses/" + TYPE))
    assert st == 404, body
    s.close()


def test_an_encoded_nul_in_a_segment_is_a_400_not_a_truncated_type(server):
    st, h, body, s = exchange(server, get("/v1/contacts/1/analyses/%s%%00.json" % TYPE))
    assert st == 400 and json_error(body) == "bad_request"
    s.close()


def test_an_encoded_control_byte_in_a_segment_is_a_400(server):
    for bad in ("%0A", "%0d", "%7F", "%1b"):
        st, h, body, s = exchange(server, get("/v1/analysis-types" + bad))
        assert st == 400 and json_error(body) == "bad_request", bad
        s.close()


def test_a_path_is_decoded_once(server):
    # %2530 is "%30" after one decoding, "0" after two.
    st, h, body, s = exchange(server, get("/v1/contacts/1/analyses/relationship_healt%2568"))
    assert st == 404 and json_error(body) == "unknown_analysis_type"
    s.close()


def test_plain_encoded_letters_in_a_segment_still_match(server):
    st, h, body, s = exchange(server, get("/v1/analysis-%74ypes"))
    assert st == 200 and "types" in json.loads(body)
    s.close()
