"""The panel in a real browser: Debian's headless chromium (tests/helpers/
browser.py) against the real rapport, real PostgreSQL and the fake upstream.
Search finds a contact; each insight streams its text before its result and
then renders it the way its type calls for; a second click shows it cached;
error states (the model failing, paused with a retry hint, a fallback marked
as an estimate, the database down) render as such; with API keys the panel
asks for one and streams with tokens, and no key reaches the log; a page on
another origin listed in RAPPORT_CORS_ORIGINS streams, one not listed is
refused; a thumbs up or down clicked under an insight lands in PostgreSQL
(rapport.feedback) and in /v1/analysis-types. Screenshots land in
build/screenshots/ for people to look at.

No chromium is a failure, not a skip (tools/deps.sh installs it)."""

import http.server
import json
import threading
import time

import pytest

from helpers.browser import Browser, missing
from helpers.pg import free_port
from helpers.state import state_sql, state_up
from helpers.upstream import wait_until

KEY = "browser-key-0123456789"
THREE = ("smart_tips", "relationship_health", "contextual_research")


@pytest.fixture
def browser():
    why = missing()
    if why:
        pytest.fail(why)
    b = Browser()
    try:
        yield b
    finally:
        try:
            errors = b.logs()
        finally:
            b.close()
            b.kill()
        # A broken module or a refused script shows here first.
        bad = [e for e in errors if "pageerror" in e]
        assert not bad, bad


def insight(t):
    return ".insight[data-type=%s]" % t


def js_str(s):
    return json.dumps(s)


def wait_ready(b):
    b.wait("document.body.dataset.ready === '1'")


def contact(pg, cid):
    return pg.sql("SELECT first_name, last_name, email, company FROM contacts WHERE id = %d" % cid)[0]


def run_insight(b, t, timeout=30, button=".run"):
    """Clicks the insight's button and waits for it to end (done or error);
    returns (state, saw text streaming before the result)."""
    sel = insight(t)
    b.eval("""(() => {
        const n = document.querySelector(%s);
        window.__seen = window.__seen || {};
        window.__seen[%s] = {streamed: false};
        const seen = window.__seen[%s];
        new MutationObserver(() => {
            const live = n.querySelector('.live');
            if (live.textContent.length > 0 && !n.querySelector('.result')) seen.streamed = true;
        }).observe(n, {subtree: true, childList: true, characterData: true});
        return true; })()""" % (js_str(sel), js_str(t), js_str(t)))
    b.click(sel + " " + button)
    state = b.wait("(() => { const s = document.querySelector(%s).dataset.state; "
                   "return (s === 'done' || s === 'error') && s; })()" % js_str(sel), timeout=timeout)
    return state, b.eval("window.__seen[%s].streamed" % js_str(t))


def text(b, sel):
    return b.eval("(document.querySelector(%s) || {}).textContent || ''" % js_str(sel))


@pytest.mark.timeout(240)
def test_search_a_contact_stream_each_insight_then_see_it_cached(make_server, fake, pg, browser):
    srv = make_server()
    first, last, email, company = contact(pg, 11)
    # Slow chunks: the text is visibly written before the result.
    fake.config(latency_ms=50, chunk_delay_ms=150, chunks=6)
    b = browser
    b.goto(srv.base_url + "/")
    wait_ready(b)
    assert b.eval("document.querySelectorAll('.result-item').length") > 0, "a first list"
    # search by keyboard: type, arrow down to the results, Enter
    b.click("#search-input")
    b.fill("#search-input", email)
    b.wait("(() => { const r = document.querySelector('.result-item'); "
           "return r && r.dataset.contact === '11'; })()")
    b.press("ArrowDown")
    assert b.eval("document.activeElement.dataset.contact") == "11"
    b.press("Enter")
    b.wait("location.hash === '#contact=11' && !document.getElementById('contact').hidden")
    assert text(b, "#contact-name") == "%s %s" % (first, last)
    assert company in text(b, "#contact-role")
    titles = b.eval("[...document.querySelectorAll('.insight-title')].map(e => e.textContent)")
    assert titles[:3] == ["Smart Engagement Tips", "Relationship Health", "Contextual Research"]

    for t in THREE:
        state, streamed = run_insight(b, t)
        assert state == "done", (t, text(b, insight(t)))
        assert streamed, "%s: text appeared before the result" % t
        assert b.eval("document.querySelector(%s).dataset.renderer" % js_str(insight(t) + " .result")) == t
        assert text(b, insight(t) + " .cache").startswith("generated")
        phases = text(b, insight(t) + " .phases")
        assert "model" in phases and "database" in phases and "ms" in phases, phases
        b.screenshot("panel-%s.png" % t)

    # the structured renderings
    assert b.eval("document.querySelector('.gauge[role=img]').getAttribute('aria-label')").startswith(
        "Health score ")
    assert text(b, insight("relationship_health") + " .trend")
    assert b.eval("document.querySelectorAll(%s).length" % js_str(insight("relationship_health") + " .reasons li")) >= 1
    assert b.eval("document.querySelectorAll('.tips .tip').length") >= 1
    assert b.eval("document.querySelector('.tip .tip-action').textContent.length") > 0
    sections = b.eval("[...document.querySelectorAll('.research-section h4')].map(e => e.textContent)")
    assert "Company" in sections and "Talking points" in sections, sections

    calls = fake.stats()["chat_calls"]
    # a second click: from the cache, no new model call
    for t in THREE:
        state, streamed = run_insight(b, t)
        assert state == "done"
        assert not streamed, "a hit has no deltas"
        assert text(b, insight(t) + " .cache").startswith("cached"), text(b, insight(t) + " .cache")
    assert fake.stats()["chat_calls"] == calls
    b.screenshot("panel.png", full=True)

    # phone width: one column, nothing wider than the screen
    b.viewport(390, 844)
    b.wait("document.documentElement.scrollWidth <= 390 + 1")
    b.screenshot("panel-phone.png", full=True)


SCRIPT_NO_FALLBACK = """
return {
  description = "Deal pulse: a headline and the next steps",
  ttl = 300,
  queries = { "contact" },
  schema = {
    type = "object", additionalProperties = false,
    required = { "headline", "next_steps" },
    properties = {
      headline = { type = "string" },
      next_steps = { type = "array", items = { type = "string" } },
    },
  },
  prompt = function(ctx)
    return { { role = "user", content = "Deal pulse for " .. ctx.contact.full_name } }
  end,
}
"""


@pytest.mark.timeout(240)
def test_errors_render_as_such_and_a_new_type_renders_generically(make_server, scripts_copy, fake,
                                                                  pg, browser):
    (scripts_copy.scripts / "deal_pulse.lua").write_text(SCRIPT_NO_FALLBACK)
    srv = make_server(RAPPORT_LLM_RETRIES="0", RAPPORT_BREAKER_FAILURES="1",
                      RAPPORT_BREAKER_OPEN_MS="60000", **scripts_copy.env)
    b = browser
    b.goto(srv.base_url + "/#contact=21")
    wait_ready(b)
    b.wait("!document.getElementById('contact').hidden")
    # a type the page does not know: shown, rendered generically
    assert text(b, insight("deal_pulse") + " .insight-title") == "Deal pulse"
    state, _ = run_insight(b, "deal_pulse")
    assert state == "done"
    assert b.eval("document.querySelector(%s).dataset.renderer" % js_str(insight("deal_pulse") + " .result")) == "generic"
    dts = b.eval("[...document.querySelectorAll(%s)].map(e => e.textContent)" % js_str(insight("deal_pulse") + " dt"))
    assert dts == ["Headline", "Next steps"], dts

    # the model fails: a model error, in words (deal_pulse has no fallback)
    fake.fail({"status": 500})
    state, _ = run_insight(b, "deal_pulse", button=".refresh")
    assert state == "error"
    box = insight("deal_pulse") + " .error-box"
    assert b.eval("document.querySelector(%s).dataset.error" % js_str(box)) == "upstream_error"
    assert "AI model" in text(b, box + " .error-title")

    # the breaker is open now: a type with a fallback shows an estimate …
    state, _ = run_insight(b, "smart_tips")
    assert state == "done", text(b, insight("smart_tips"))
    assert "Estimate" in text(b, insight("smart_tips") + " .estimate")
    assert b.eval("document.querySelector(%s).dataset.cache" % js_str(insight("smart_tips") + " .cache")) == "fallback"
    b.screenshot("panel-estimate.png")
    # … one without says the model is paused, and when to try again
    state, _ = run_insight(b, "deal_pulse")     # "Try again": the refresh again
    assert state == "error"
    assert b.eval("document.querySelector(%s).dataset.error" % js_str(box)) == "upstream_unavailable"
    assert "Try again in" in text(b, box)
    assert b.eval("document.querySelector(%s).disabled" % js_str(insight("deal_pulse") + " .run"))
    b.screenshot("panel-model-unavailable.png")

    # the database stops: the insight, the card and the search say so
    pg.stop()
    try:
        state, _ = run_insight(b, "contextual_research")
        assert state == "error"
        assert b.eval("document.querySelector(%s).dataset.error" % js_str(insight("contextual_research") + " .error-box")) == "database_unavailable"
        assert "database" in text(b, insight("contextual_research") + " .error-title")
        b.screenshot("panel-database-down.png")
        b.eval("location.hash = 'contact=22'")
        b.wait("!!document.querySelector('#card-empty [data-error=database_unavailable]')")
        assert "database" in text(b, "#card-empty")
        b.fill("#search-input", "zzz")
        b.wait("!!document.querySelector('#results [data-error=database_unavailable]')")
    finally:
        pg.start()


@pytest.mark.timeout(240)
def test_with_keys_the_panel_asks_for_one_and_streams_without_it_in_a_url(make_server, fake, browser):
    srv = make_server(RAPPORT_API_KEYS="other-key-abcdefgh," + KEY)
    b = browser
    b.goto(srv.base_url + "/#contact=31")
    b.wait("document.getElementById('key-dialog').open")
    # refused without a key: cancelling leaves an auth error, no data
    b.click("#key-cancel")
    b.wait("!!document.querySelector('#results [data-error=unauthorized]')")
    assert b.eval("document.getElementById('contact').hidden")
    # a wrong key is refused, the right one works
    b.click("#key-button")
    b.wait("document.getElementById('key-dialog').open")
    b.fill("#key-input", "wrong-key-000000")
    b.click("#key-form button[type=submit]")
    b.wait("document.getElementById('key-error').textContent.includes('refused')")
    b.fill("#key-input", KEY)
    b.click("#key-form button[type=submit]")
    wait_ready(b)
    b.wait("!document.getElementById('contact').hidden")
    state, _ = run_insight(b, "relationship_health")
    assert state == "done", text(b, insight("relationship_health"))
    # the stream went out with a token, the key stayed in a header
    urls = b.eval("performance.getEntriesByType('resource').map(e => e.name)")
    assert any("token=" in u and "stream=1" in u for u in urls), urls
    assert not any(KEY in u for u in urls)
    assert b.eval("sessionStorage.getItem('rapport.apiKey')") == KEY, "kept for the tab"
    srv.wait_for_log(lambda e: e.get("msg") == "request" and e.get("stream") == 1
                     and e.get("status") == 200)
    assert KEY not in srv.stderr_text()
    assert "token=" not in srv.stderr_text(), "the stream URL is logged without its query"


CORS_PAGE = """<!doctype html><meta charset=utf-8><title>crm</title>
<pre id=out></pre>
<script>
const base = %(base)s, key = %(key)s;
const out = { events: [], search: null, error: null };
window.out = out;
(async () => {
  try {
    const r = await fetch(base + "/v1/contacts?q=&limit=2", { headers: { Authorization: "Bearer " + key } });
    out.search = { status: r.status, timing: r.headers.get("X-Request-Id") !== null };
    const t = await fetch(base + "/v1/stream-tokens", { method: "POST",
      headers: { Authorization: "Bearer " + key, "Content-Type": "application/json" },
      body: JSON.stringify({ contact_id: 41, type: "relationship_health" }) });
    const token = (await t.json()).token;
    const es = new EventSource(base + "/v1/contacts/41/analyses/relationship_health?stream=1&token=" + token);
    for (const name of ["meta", "delta", "result"])
      es.addEventListener(name, () => { out.events.push(name); if (name === "result") { es.close(); out.done = true; } });
    es.onerror = () => { es.close(); out.esError = true; out.done = true; };
  } catch (e) { out.error = String(e); out.done = true; }
})();
</script>"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@pytest.mark.timeout(240)
def test_a_listed_origin_streams_cross_origin_and_another_is_refused(make_server, fake, tmp_path,
                                                                     browser):
    port = free_port()
    listed = "http://127.0.0.1:%d" % port
    srv = make_server(RAPPORT_API_KEYS=KEY, RAPPORT_CORS_ORIGINS=listed)
    (tmp_path / "crm.html").write_text(CORS_PAGE % {"base": json.dumps(srv.base_url),
                                                    "key": json.dumps(KEY)})
    handler = lambda *a, **kw: _Quiet(*a, directory=str(tmp_path), **kw)  # noqa: E731
    site = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    th = threading.Thread(target=site.serve_forever, daemon=True)
    th.start()
    try:
        b = browser
        b.goto(listed + "/crm.html")
        b.wait("window.out && window.out.done", timeout=30)
        out = b.eval("window.out")
        assert out["error"] is None and out["search"]["status"] == 200, out
        assert out["search"]["timing"], "exposed headers are readable"
        assert out["events"][0] == "meta" and out["events"][-1] == "result", out
        # the same page from another origin (localhost is not 127.0.0.1)
        b.goto("http://localhost:%d/crm.html" % port)
        b.wait("window.out && window.out.done", timeout=30)
        out = b.eval("window.out")
        assert out["search"] is None and "TypeError" in out["error"], out
        assert out["events"] == []
    finally:
        site.shutdown()
        site.server_close()


def votes(pg, state_url):
    return state_sql(pg, state_url,
                     "select contact_id, type, script_version, verdict, coalesce(reason, '<null>'), "
                     "generated_at is not null from rapport.feedback order by id")


def type_feedback(srv, t):
    doc = srv.get("/v1/analysis-types").json()
    return next(x for x in doc["types"] if x["name"] == t)


@pytest.mark.timeout(240)
def test_feedback_clicked_in_the_page_lands_in_postgres_and_in_analysis_types(
        make_server, fake, pg, browser, state):
    srv = make_server(RAPPORT_STATE_URL=state)
    state_up(srv)
    b = browser
    b.goto(srv.base_url + "/#contact=51")
    wait_ready(b)
    b.wait("!document.getElementById('contact').hidden")
    tips = insight("smart_tips")
    assert b.eval("document.querySelector(%s).hidden" % js_str(tips + " .feedback")), \
        "no vote before a result"
    shown, _ = run_insight(b, "smart_tips")
    assert shown == "done"
    b.wait("!document.querySelector(%s).hidden" % js_str(tips + " .feedback"))
    # by keyboard: focus the thumbs up, Enter, type a reason, Ctrl+Enter sends
    b.eval("document.querySelector(%s).focus()" % js_str(tips + " .thumb[data-verdict=up]"))
    b.press("Enter")
    assert b.eval("document.querySelector(%s).getAttribute('aria-pressed')"
                  % js_str(tips + " .thumb[data-verdict=up]")) == "true"
    assert b.eval("document.activeElement.classList.contains('feedback-reason')"), \
        "the reason field has the focus"
    b.eval("(() => { const t = document.activeElement; t.value = 'Clear next step, as we do it'; "
           "t.dispatchEvent(new Event('input')); return true; })()")
    b.screenshot("panel-feedback-reason.png")
    b.press("Control+Enter")
    b.wait("document.querySelector(%s).dataset.feedbackState === 'sent'" % js_str(tips + " .feedback"))
    assert "Thanks" in text(b, tips + " .feedback-status")
    assert b.eval("document.querySelector(%s).disabled" % js_str(tips + " .thumb[data-verdict=down]")), \
        "one vote per result shown"
    b.screenshot("panel-feedback.png")
    version = type_feedback(srv, "smart_tips")["version"]
    assert votes(pg, state) == [["51", "smart_tips", version, "up",
                                    "Clear next step, as we do it", "t"]]
    fb = type_feedback(srv, "smart_tips")["feedback"]
    assert (fb["up"], fb["down"], fb["acceptance_rate"]) == (1, 0, 1.0), fb
    assert fb["versions"][0]["script_version"] == version and fb["versions"][0]["up"] == 1

    # by mouse, a thumbs down without a reason
    health = insight("relationship_health")
    shown, _ = run_insight(b, "relationship_health")
    assert shown == "done"
    b.click(health + " .thumb[data-verdict=down]")
    assert "wrong" in text(b, health + " .feedback-prompt")
    b.click(health + " .feedback-send")
    b.wait("document.querySelector(%s).dataset.feedbackState === 'sent'" % js_str(health + " .feedback"))
    assert votes(pg, state)[1][1:5] == ["relationship_health",
                                           type_feedback(srv, "relationship_health")["version"],
                                           "down", "<null>"]
    assert type_feedback(srv, "relationship_health")["feedback"]["down"] == 1
    # a refreshed result gets a fresh vote
    shown, _ = run_insight(b, "smart_tips", button=".refresh")
    assert shown == "done"
    assert b.eval("document.querySelector(%s).dataset.feedbackState" % js_str(tips + " .feedback")) == "idle"
    assert not b.eval("document.querySelector(%s).disabled" % js_str(tips + " .thumb[data-verdict=up]"))

    # the database stops before Send: an error state in words, nothing lost silently
    research = insight("contextual_research")
    shown, _ = run_insight(b, "contextual_research")
    assert shown == "done"
    b.click(research + " .thumb[data-verdict=up]")
    pg.stop()
    try:
        b.click(research + " .feedback-send")
        b.wait("document.querySelector(%s).dataset.feedbackState === 'error'"
               % js_str(research + " .feedback"), timeout=30)
        assert b.eval("document.querySelector(%s).dataset.error" % js_str(research + " .feedback")) in \
            ("state_unavailable", "database_unavailable")
        assert "unavailable" in text(b, research + " .feedback-status")
        assert not b.eval("document.querySelector(%s).disabled" % js_str(research + " .feedback-send")), \
            "Send works again"
        b.screenshot("panel-feedback-error.png")
    finally:
        pg.start()
    assert len(votes(pg, state)) == 2
