"""What the tests of the model-call gate share (test_model_gate,
test_stream_status, test_upstream_resilience, test_http2): a gauge read
from /metrics, a wait for a condition, and a server whose breaker a
failing fake can open with a script that has no fallback, so an open
breaker shows as 503 rather than as the fallback's 200."""

import re
import time

# A pipeline script without fallback(): an open breaker is a 503.
NO_FALLBACK = r'''
return {
  description = "no fallback",
  queries = { "contact" },
  prompt = function(ctx)
    return { { role = "user", content = "hello " .. ctx.contact.first_name } }
  end,
}
'''


def metric(srv, name):
    """The integer value of an unlabelled sample in srv's /metrics."""
    m = re.search(r"^%s (\d+)$" % re.escape(name), srv.get("/metrics").text, re.M)
    assert m, "no sample %s in /metrics" % name
    return int(m.group(1))


def wait_until(cond, what, timeout=10.0):
    """Polls cond() until it is true; AssertionError after timeout s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def breaker_server(make_server, scripts_copy, failures, open_ms, **env):
    """A server with bare.lua (NO_FALLBACK) among the scripts, a breaker that
    opens after `failures` failed calls for `open_ms`, and no retries, so
    each fake.fail() entry is one verdict."""
    (scripts_copy.scripts / "bare.lua").write_text(NO_FALLBACK)
    return make_server(RAPPORT_BREAKER_FAILURES=failures, RAPPORT_BREAKER_OPEN_MS=open_ms,
                       RAPPORT_LLM_RETRIES=0, **scripts_copy.env, **env)
