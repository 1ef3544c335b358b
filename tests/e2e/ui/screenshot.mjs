// Drive the Prefect UI in headless Chromium as a person would, report what the page shows as JSON
// on stdout, and save screenshots. Used by tests/e2e/test_ui.py, which makes the assertions.
//
//   node screenshot.mjs '<json job>'
//
// job = {
//   "chromium": "/usr/bin/chromium",          // Debian's Chromium (playwright-core has no browser)
//   "outDir": "/tmp/shots",                   // where the PNGs go
//   "runUrl": "http://127.0.0.1:PORT/runs/flow-run/ID",       // (a) the flow run's artifacts
//   "imageArtifactKey": "gpt-image-0123456789abcdef",
//   "chainArtifactKey": "gpt-image-pipeline",
//   "formUrl": "http://127.0.0.1:PORT/deployments/deployment/ID/run",  // (b) the custom run form
//   "reviewUrl": "http://127.0.0.1:PORT/runs/flow-run/ID"     // (c) a run waiting for review: its Resume dialog
// }
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const job = JSON.parse(process.argv[2]);
const WAIT = 30_000;
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // The UI's analytics and fonts must never leave the machine: only loopback resolves.
  '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',
];

mkdirSync(job.outDir, { recursive: true });
const report = { artifacts: null, form: null, review: null, consoleErrors: [], failedRequests: [], seconds: {} };
const t0 = Date.now();
// A new, empty profile every time (launch() makes a temporary user-data-dir and removes it).
const browser = await chromium.launch({ executablePath: job.chromium, args: ARGS, timeout: WAIT });

function watch(page) {
  page.on('console', (m) => m.type() === 'error' && report.consoleErrors.push(m.text()));
  page.on('requestfailed', (r) => report.failedRequests.push(`${r.url().split('?')[0]} ${r.failure()?.errorText}`));
  return page;
}

/** Every <img> of the page once each has finished loading (or failed): src, size, natural size. */
async function images(page) {
  await page.waitForFunction(() => [...document.images].every((i) => i.complete), null, { timeout: WAIT });
  return page.evaluate(() =>
    [...document.images].map((i) => ({
      src: i.src.split('?')[0],
      presigned: i.src.includes('X-Amz-Signature='),
      naturalWidth: i.naturalWidth,
      naturalHeight: i.naturalHeight,
      shownWidth: Math.round(i.getBoundingClientRect().width),
    })),
  );
}

/** The card of artifact `key` on a flow run's Artifacts tab (a link to the artifact's page). */
function card(page, key) {
  return page.locator('a[href*="/artifacts/artifact/"] .artifact-card__title', { hasText: new RegExp(`^${key}$`) });
}

async function artifacts() {
  const page = watch(await browser.newPage({ viewport: { width: 1400, height: 1100 } }));
  await page.goto(job.runUrl);
  await page.locator('li.p-tab', { hasText: /^Artifacts$/ }).click();
  await card(page, job.chainArtifactKey).waitFor({ timeout: WAIT });
  const imageCard = card(page, job.imageArtifactKey);
  await imageCard.waitFor({ timeout: WAIT });
  await page.waitForLoadState('networkidle');
  await page.screenshot({ path: join(job.outDir, 'flow-run-artifacts.png') });
  const cards = await page.locator('.artifact-card__title').allInnerTexts();

  // A person clicks the image artifact's card and sees the image.
  await imageCard.click();
  await page.waitForURL(/\/artifacts\/artifact\//, { timeout: WAIT });
  await page.locator('img').first().waitFor({ timeout: WAIT });
  const imagePage = { url: page.url(), images: await images(page) };
  await page.screenshot({ path: join(job.outDir, 'image-artifact.png') });

  // ... then the pipeline's markdown card, which shows every step's image.
  await page.goBack();
  await page.locator('li.p-tab', { hasText: /^Artifacts$/ }).click();
  await card(page, job.chainArtifactKey).click();
  await page.waitForURL(/\/artifacts\/artifact\//, { timeout: WAIT });
  await page.getByText('1. generate').waitFor({ timeout: WAIT });
  await page.locator('img').first().waitFor({ timeout: WAIT });
  const chainImages = await images(page);
  const headings = await page.evaluate(() => [...document.querySelectorAll('h2')].map((h) => h.innerText));
  // Tall, so the three steps fit in one picture (the page scrolls inside a panel, so a
  // full-page screenshot would not show more).
  await page.setViewportSize({ width: 1400, height: 3450 });
  await images(page);
  await page.waitForTimeout(300);
  await page.screenshot({ path: join(job.outDir, 'pipeline-artifact.png') });
  const chainPage = { url: page.url(), images: chainImages, headings };
  await page.close();
  return { cards, imagePage, chainPage };
}

/** What the `index`-th dropdown of the form shows, and the options a person sees on opening it. */
async function dropdown(page, label, index) {
  const button = page.locator('button.p-select-button__control').nth(index);
  const value = (await button.innerText()).trim();
  await button.focus();
  await page.keyboard.press('Space');
  const listbox = page.locator('[role=listbox]').last();
  await listbox.waitFor({ timeout: WAIT });
  // The list fills in as it opens: read it once its options are there.
  await listbox.locator('[role=option]').first().waitFor({ timeout: WAIT });
  const options = await listbox.locator('[role=option]').allInnerTexts();
  return { label, value, options: options.map((o) => o.trim()) };
}

async function form() {
  const page = watch(await browser.newPage({ viewport: { width: 1280, height: 2350 } }));
  await page.goto(job.formUrl);
  await page.getByText('What to draw first.').waitFor({ timeout: WAIT });
  // The optional nested models start as "None": a person picks the model to fill it in.
  for (const model of ['EditStep', 'BlendStep']) {
    await page.getByRole('button', { name: model, exact: true }).click();
  }
  await page.getByText('References', { exact: true }).waitFor({ timeout: WAIT });
  const labels = await page.evaluate(() =>
    [...new Set([...document.querySelectorAll('label')].map((l) => l.innerText.split('\n')[0].trim()))],
  );
  const prompt = await page.locator('textarea').first().inputValue();
  // The first dropdowns are the options' size and quality (Literal choices).
  const size = await dropdown(page, 'Size', 0);
  await page.keyboard.press('Escape');
  await page.locator('[role=listbox]').waitFor({ state: 'detached', timeout: WAIT });
  const quality = await dropdown(page, 'Quality', 1);
  await page.waitForTimeout(300);
  await page.screenshot({ path: join(job.outDir, 'pipeline-run-form.png') });
  await page.keyboard.press('Escape');
  await page.close();
  return { labels, prompt, dropdowns: [size, quality] };
}

/** A person opens the run waiting for review, clicks Resume and sees the contact sheet above the form. */
async function review() {
  const page = watch(await browser.newPage({ viewport: { width: 1400, height: 1500 } }));
  await page.goto(job.reviewUrl);
  await page.getByRole('button', { name: 'Resume', exact: true }).click();
  const dialog = page.locator('[role=dialog]').last();
  await dialog.locator('.schema-form-property__label', { hasText: 'Approve All' }).waitFor({ timeout: WAIT });
  await dialog.locator('img').first().waitFor({ timeout: WAIT });
  await page.waitForFunction(() => [...document.querySelectorAll('[role=dialog] img')].every((i) => i.complete), null, {
    timeout: WAIT,
  });
  const shown = await dialog.evaluate((d) => ({
    text: d.innerText,
    images: [...d.querySelectorAll('img')].map((i) => ({
      src: i.src.split('?')[0],
      presigned: i.src.includes('X-Amz-Signature='),
      naturalWidth: i.naturalWidth,
    })),
    labels: [...d.querySelectorAll('.schema-form-property__label')].map((l) => l.innerText.trim()),
  }));
  await page.waitForTimeout(300);
  await dialog.screenshot({ path: join(job.outDir, 'review-form.png') });
  await page.close();
  return shown;
}

async function timed(name, fn) {
  const started = Date.now();
  const result = await fn();
  report.seconds[name] = (Date.now() - started) / 1000;
  return result;
}

try {
  report.seconds.launch = (Date.now() - t0) / 1000;
  // Both pages at once, in two tabs of one browser.
  [report.artifacts, report.form, report.review] = await Promise.all([
    job.runUrl ? timed('artifacts', artifacts) : null,
    job.formUrl ? timed('form', form) : null,
    job.reviewUrl ? timed('review', review) : null,
  ]);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report));
