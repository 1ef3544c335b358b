// Time how long Prefect UI pages take to show, in headless Chromium, while a batch runs.
// Used by bench/scale.py (the same playwright-core and Chromium setup as tests/e2e/ui):
//
//   NODE_PATH=tests/e2e/ui/node_modules node bench/ui_load.cjs '<json job>'
//
// job = {"chromium": "/usr/bin/chromium", "pages": [{"name": "...", "url": "...", "text": "...", "images": 100}]}
// Each page counts as loaded once `text` is visible and, with `images`, once at least that many
// <img> elements have loaded (complete, with a width: a broken image never counts); prints
// {"name": seconds, ...} as JSON (and "<name> images": how many had loaded).
const { chromium } = require('playwright-core');

const job = JSON.parse(process.argv[2]);
const WAIT = 60_000;
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',
];

(async () => {
  const browser = await chromium.launch({ executablePath: job.chromium, args: ARGS, timeout: WAIT });
  const seconds = {};
  try {
    for (const want of job.pages) {
      const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
      const started = Date.now();
      try {
        await page.goto(want.url, { timeout: WAIT });
        await page.getByText(want.text, { exact: false }).first().waitFor({ timeout: WAIT });
        if (want.images) {
          // Every image, not only those in the viewport: lazy ones are made eager (a person
          // scrolling the page would load them; this asks for them all at once).
          await page.waitForFunction(
            (n) => {
              for (const i of document.images) if (i.loading === 'lazy') i.loading = 'eager';
              return Array.from(document.images).filter((i) => i.complete && i.naturalWidth > 0).length >= n;
            },
            want.images,
            { timeout: WAIT, polling: 100 },
          );
        }
        seconds[want.name] = (Date.now() - started) / 1000;
        if (want.images) {
          seconds[`${want.name} images`] = await page.evaluate(
            () => Array.from(document.images).filter((i) => i.complete && i.naturalWidth > 0).length,
          );
        }
      } catch (error) {
        seconds[want.name] = null;
        seconds[`${want.name} error`] = String(error).slice(0, 300);
        if (want.images) {
          seconds[`${want.name} images`] = await page.evaluate(() => [
            document.images.length,
            Array.from(document.images).filter((i) => i.complete && i.naturalWidth > 0).length,
          ]);
        }
      }
      await page.close();
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(seconds) + '\n');
})();
