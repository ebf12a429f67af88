// driver.mjs — a headless Debian chromium for the browser tests, driven by
// tests/helpers/browser.py over JSON lines: one command per stdin line,
// one answer per stdout line ({"ok":true,"value":…} or {"ok":false,"error":…}).
// Uses playwright-core (npm, installed by tools/deps.sh) with the system's
// /usr/bin/chromium: no browser is ever downloaded.
//
//   {"op":"goto","url":…}                 {"op":"click","sel":…}
//   {"op":"fill","sel":…,"text":…}        {"op":"press","key":…}
//   {"op":"wait","js":"<expression>"}     {"op":"eval","js":"<expression>"}
//   {"op":"screenshot","path":…}          {"op":"viewport","width":…,"height":…}
//   {"op":"logs"}  (console errors, page errors, failed requests so far)
//   {"op":"close"}
import { createInterface } from "node:readline";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const profile = mkdtempSync(join(tmpdir(), "rapport-chromium-"));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage"],
});
const page = ctx.pages()[0] || (await ctx.newPage());
const logs = [];
page.on("console", (m) => {
  if (m.type() === "error") logs.push("console: " + m.text());
});
page.on("pageerror", (e) => logs.push("pageerror: " + e.message));
page.on("requestfailed", (r) => logs.push("requestfailed: " + r.url() + " " + (r.failure() || {}).errorText));

const reply = (o) => process.stdout.write(JSON.stringify(o) + "\n");
reply({ ok: true, value: { pid: process.pid, browser: ctx.browser() ? ctx.browser().version() : "persistent" } });

async function run(c) {
  const timeout = c.timeout || 15000;
  switch (c.op) {
    case "goto":
      await page.goto(c.url, { waitUntil: "load", timeout });
      return null;
    case "click":
      await page.click(c.sel, { timeout });
      return null;
    case "fill":
      await page.fill(c.sel, c.text, { timeout });
      return null;
    case "press":
      await page.keyboard.press(c.key);
      return null;
    case "wait": {
      // Polled with evaluate (the DevTools protocol), not waitForFunction,
      // whose string form is an eval that the panel's CSP rightly refuses.
      const until = Date.now() + timeout;
      let last;
      for (;;) {
        try {
          last = await page.evaluate(c.js);
        } catch (e) {
          last = undefined; // a navigation in between: try again
        }
        if (last) return last;
        if (Date.now() > until) throw new Error("timed out waiting for: " + c.js);
        await new Promise((r) => setTimeout(r, c.polling || 25));
      }
    }
    case "eval":
      return await page.evaluate(c.js);
    case "screenshot":
      await page.screenshot({ path: c.path, fullPage: !!c.full });
      return c.path;
    case "viewport":
      await page.setViewportSize({ width: c.width, height: c.height });
      return null;
    case "logs":
      return logs.splice(0);
    default:
      throw new Error("unknown op " + c.op);
  }
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  const c = JSON.parse(line);
  if (c.op === "close") break;
  try {
    reply({ ok: true, value: (await run(c)) ?? null });
  } catch (e) {
    reply({ ok: false, error: String(e && e.message ? e.message : e) });
  }
}
await ctx.close();
rmSync(profile, { recursive: true, force: true });
reply({ ok: true, value: "closed" });
