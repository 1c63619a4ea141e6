// Opens a generated Allure report in headless Chromium (playwright-core, the system chromium)
// and prints, as JSON, the visible text of each page ci/allure_check.py asks for; saves screenshots.
//
//   node ci/allure_browser.js SPEC.json
//
// SPEC: {"playwright": "<node_modules/playwright-core>", "chromium": "/usr/bin/chromium",
//        "base": "http://127.0.0.1:PORT/index.html",
//        "pages": [{"name": "overview", "hash": "", "click": ["text", ...], "screenshot": "PATH", "height": 1000,
//                   "ready": "CSS selector (default: Allure 2's .app__content)",
//                   "storage": {"key": "JSON value"}}, ...]}
// "storage" is put into the page's localStorage before it loads (Allure 3 keeps the chosen
// environment there: {"currentEnvironment": "\"<id>\""}).
// Output: {"<name>": "<document.body.innerText after the clicks>", ...}
"use strict";

const fs = require("fs");

async function main() {
  const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const { chromium } = require(spec.playwright);
  const browser = await chromium.launch({
    executablePath: spec.chromium,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run",
    ],
  });
  const out = {};
  try {
    // A fresh context per run is a fresh profile: nothing from an earlier report leaks in.
    const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
    const page = await context.newPage();
    for (const p of spec.pages) {
      await page.setViewportSize({ width: 1440, height: p.height || 1000 });
      if (p.storage) {  // the report's origin first: localStorage belongs to it
        await page.goto(spec.base);
        await page.evaluate((items) => Object.entries(items).forEach(([k, v]) => localStorage.setItem(k, v)), p.storage);
      }
      await page.goto(spec.base + (p.hash ? "#" + p.hash : ""));
      await page.waitForLoadState("networkidle");
      await page.waitForSelector(p.ready || ".app__content", { timeout: 20000 });
      for (const text of p.click || []) {
        await page.getByText(text, { exact: true }).first().click();
        await page.waitForLoadState("networkidle");
      }
      await page.waitForTimeout(300);  // the report animates its trees open
      // A click scrolls the content pane; the screenshot starts at the test's header again.
      await page.evaluate(() => document.querySelectorAll(".app__content, .side-by-side__right").forEach((e) => e.scrollTo(0, 0)));
      out[p.name] = await page.innerText("body");
      if (p.screenshot) {
        await page.screenshot({ path: p.screenshot, fullPage: true });
      }
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
