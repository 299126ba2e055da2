// The Event Debugger in a real browser (Debian's chromium, driven by playwright-core), for
// tests/test_debugger.py. Usage: node debugger_check.mjs '<json>' with
//   url          the page (http://127.0.0.1:PORT/)
//   screenshots  a folder for the screenshots
//   valid        a Signal event the mapping takes (JSON text)
//   invalid      one it refuses (JSON text)
//   chromium     the browser (default /usr/bin/chromium)
// Prints one JSON object: what the page showed at each step. Exits 1 (with the error) on failure.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const opts = JSON.parse(process.argv[2]);
const STEP_MS = 20000; // each wait; the page refreshes every 2 s
mkdirSync(opts.screenshots, { recursive: true });

const result = { screenshots: [], console_errors: [], foreign_requests: [] };
const browser = await chromium.launch({
  executablePath: opts.chromium || "/usr/bin/chromium",
  args: ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const origin = new URL(opts.url).origin;
  page.on("request", (r) => { if (!r.url().startsWith(origin)) result.foreign_requests.push(r.url()); });
  page.on("console", (m) => { if (m.type() === "error") result.console_errors.push(m.text()); });
  page.on("pageerror", (e) => result.console_errors.push(String(e)));
  const shot = async (name) => {
    const path = join(opts.screenshots, name);
    await page.evaluate(() => window.scrollTo(0, 0)); // the sticky header then stays at the top
    await page.screenshot({ path, fullPage: true });
    result.screenshots.push(path);
  };

  await page.goto(opts.url);
  result.title = await page.title();

  // 1. The outputs and the request rows appear by themselves (the page polls).
  await page.waitForSelector("tr.request", { timeout: STEP_MS });
  await page.waitForSelector("section.output tr.dead-letter", { timeout: STEP_MS });
  result.live = await page.textContent("#live");
  result.outputs = await page.$$eval("section.output", (cards) => cards.map((c) => ({
    id: c.dataset.output,
    state: c.querySelector("[data-testid=state]").textContent,
    pending: c.querySelector("[data-testid=pending]").textContent,
    dead_letters: c.querySelector("[data-testid=dead-count]").textContent,
    dead_letter_reasons: [...c.querySelectorAll("tr.dead-letter td.wrap")].map((td) => td.textContent),
    replay: c.querySelector("[data-testid=replay]")?.textContent ?? null,
    text: c.textContent,
  })));
  result.requests = await page.$$eval("tr.request", (rows) => rows.map((r) => ({
    payload_id: r.dataset.payloadId,
    cells: [...r.cells].map((td) => td.textContent),
  })));
  await shot("1-overview.png");

  // 2. A click on the newest request shows its first events.
  await page.click("tr.request");
  await page.waitForSelector("#first-events .first-event pre", { timeout: STEP_MS });
  result.clicked = {
    payload_id: await page.getAttribute("tr.request.selected", "data-payload-id"),
    header: await page.textContent("#request-events p"),
    first_events: (await page.$$eval("#first-events pre", (pres) => pres.map((p) => p.textContent))).map((t) => JSON.parse(t)),
  };
  await shot("2-request-events.png");

  // The selection survives the next refresh.
  await page.waitForTimeout(2500);
  result.clicked.still_selected = (await page.$$("tr.request.selected")).length === 1;

  // 3. The mapping box: an event it takes, then one it refuses.
  await page.fill("#map-input", opts.valid);
  await page.click("#map-button");
  await page.waitForSelector("#map-result [data-outcome]", { timeout: STEP_MS });
  result.map_valid = {
    outcome: await page.getAttribute("#map-result [data-outcome]", "data-outcome"),
    event: JSON.parse((await page.textContent("#map-event")) || "null"),
    text: await page.textContent("#map-result"),
  };
  await shot("3-mapping-mapped.png");

  await page.fill("#map-input", opts.invalid);
  await page.click("#map-button");
  await page.waitForSelector("#map-result [data-outcome=refused]", { timeout: STEP_MS });
  result.map_invalid = {
    outcome: "refused",
    badge: await page.textContent("#map-result .badge"),
    reason: await page.textContent("#map-reason"),
  };
  await shot("4-mapping-refused.png");

  result.html = await page.content();
} catch (e) {
  result.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(result.error ? 1 : 0);
