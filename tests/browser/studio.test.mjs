// TenPak Studio in headless Chromium: `tenpak serve` on 127.0.0.1:0 with the real model, its
// embedded page driven like a user would (token, preset, evaluation text, Start), then the job's
// row, progress bar, figures and chart point checked. Run by scripts/test.sh after
// scripts/install-browser.sh; on its own: `node tests/browser/studio.test.mjs`.
//
// Environment: TENPAK_BIN (default target/release/tenpak, built if missing), CHROMIUM (default
// /usr/bin/chromium), STUDIO_JOB_TIMEOUT (seconds the job may take, default 900).
// The last line printed is `N passed, N failed`; the exit code is non-zero on any failure.

import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.TENPAK_BIN || path.join(ROOT, "target/release/tenpak");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TOKEN = "studio-browser-test-token";
const JOB_TIMEOUT_MS = Number(process.env.STUDIO_JOB_TIMEOUT || 900) * 1000;
const SCREENSHOT = path.join(ROOT, "out/browser/studio.png");

let passed = 0;
let failed = 0;
function check(ok, what, detail = "") {
  if (ok) {
    passed++;
    console.log(`ok   ${what}`);
  } else {
    failed++;
    console.log(`FAIL ${what}${detail ? ": " + detail : ""}`);
  }
  return ok;
}
/** A failure that stops the test (what follows depends on it). */
class Fatal extends Error {}
function require_(ok, what, detail) {
  if (!check(ok, what, detail)) throw new Fatal(what);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let server = null;
let browser = null;
let tmp = null;

/** SIGTERM, then SIGKILL if it has not exited within 5 s. */
async function stopServer() {
  if (!server || server.exitCode !== null || server.signalCode !== null) return;
  const exited = once(server, "exit");
  server.kill("SIGTERM");
  const timer = setTimeout(() => server.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(timer);
}

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    if (server && server.exitCode === null) server.kill("SIGKILL");
    console.log(`interrupted by ${signal}`);
    console.log(`${passed} passed, ${failed + 1} failed`);
    process.exit(1);
  });
}

/** Start `tenpak serve` on a fresh data directory; resolves to the base URL it prints. */
async function startServer() {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tenpak-studio-browser-"));
  const config = path.join(tmp, "studio.toml");
  // JSON string escapes are valid TOML basic-string escapes.
  fs.writeFileSync(
    config,
    `data_dir = ${JSON.stringify(path.join(tmp, "data"))}\n` +
      `token = ${JSON.stringify(TOKEN)}\n` +
      `\n[model_roots]\nassets = ${JSON.stringify(path.join(ROOT, "assets"))}\n`,
  );
  const log = fs.openSync(path.join(tmp, "serve.log"), "a");
  server = spawn(BIN, ["serve", "--config", config, "--listen", "127.0.0.1:0"], {
    cwd: tmp,
    stdio: ["ignore", "pipe", log],
  });
  fs.closeSync(log);
  const lines = readline.createInterface({ input: server.stdout });
  const first = new Promise((resolve, reject) => {
    lines.once("line", resolve);
    server.once("exit", (code, signal) => reject(new Error(`tenpak serve exited (${signal || code}) before it listened`)));
    setTimeout(() => reject(new Error("tenpak serve did not print `listening on` within 60 s")), 60000).unref();
  });
  let line;
  try {
    line = await first;
  } catch (e) {
    require_(false, "tenpak serve starts", `${e.message}\n${serverLog()}`);
  }
  lines.on("line", () => {}); // keep draining stdout
  const match = /^listening on (http:\/\/127\.0\.0\.1:\d+)\s*$/.exec(line);
  require_(match !== null, "tenpak serve listens on loopback", `first line: ${JSON.stringify(line)}\n${serverLog()}`);
  return match[1];
}

function serverLog() {
  try {
    const text = fs.readFileSync(path.join(tmp, "serve.log"), "utf8");
    return text ? "--- serve.log (last 40 lines) ---\n" + text.split("\n").slice(-40).join("\n") : "(serve.log is empty)";
  } catch {
    return "(no serve.log)";
  }
}

async function main() {
  for (const asset of ["SmolLM2-135M-Instruct.Q4_1.gguf", "eval.txt", "calib.txt"]) {
    require_(fs.existsSync(path.join(ROOT, "assets", asset)), `assets/${asset} is present`, "run `bash scripts/fetch-assets.sh`");
  }
  if (!fs.existsSync(BIN)) {
    require_(!process.env.TENPAK_BIN, `${BIN} exists`);
    console.log(`${BIN} is missing: cargo build --release -p tenpak --bin tenpak`);
    const build = spawnSync("cargo", ["build", "--release", "-p", "tenpak", "--bin", "tenpak"], { cwd: ROOT, stdio: "inherit" });
    require_(build.status === 0 && fs.existsSync(BIN), "tenpak builds", `cargo exited ${build.status}`);
  }
  require_(fs.existsSync(CHROMIUM), `${CHROMIUM} exists`, "run `bash scripts/install-browser.sh`");
  let chromium;
  try {
    ({ chromium } = await import("playwright-core"));
  } catch (e) {
    require_(false, "playwright-core loads", `${e.message} (run \`bash scripts/install-browser.sh\`)`);
  }

  const base = await startServer();
  console.log(`server: ${base} (data in ${tmp})`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--no-proxy-server"],
  });
  const page = await browser.newPage({ viewport: { width: 1200, height: 1100 } });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  // Refusals the page should not cause: anything >= 400 but the 401s of the requests made before
  // the token is typed, and the favicon the server does not have.
  page.on("response", (r) => {
    const url = new URL(r.url());
    if (r.status() >= 400 && r.status() !== 401 && url.pathname !== "/favicon.ico") {
      pageErrors.push(`${r.request().method()} ${url.pathname}${url.search} -> ${r.status()}`);
    }
  });
  page.setDefaultTimeout(30000);

  const response = await page.goto(base + "/");
  require_(response && response.ok(), "GET / serves the page", response ? String(response.status()) : "no response");
  check((await page.title()) === "TenPak Studio", "the page title is TenPak Studio", await page.title());

  await page.fill("#token", TOKEN);
  await page.dispatchEvent("#token", "change");
  // The presets come from /presets once the token is set.
  try {
    await page.waitForSelector('#preset option[value="fast"]', { state: "attached" });
    check(true, "the preset list is loaded with the token");
  } catch {
    require_(false, "the preset list is loaded with the token", `#auth says ${JSON.stringify(await page.textContent("#auth"))}`);
  }
  await page.selectOption("#preset", "fast");
  await page.fill("#eval", "assets/eval.txt");
  const form = await page.evaluate(() => ({
    model: document.getElementById("model").value,
    preset: document.getElementById("preset").value,
    calib: document.getElementById("calib").value,
    eval: document.getElementById("eval").value,
  }));
  console.log(`form: ${JSON.stringify(form)}`);

  const started = Date.now();
  await page.click("#start");
  await page.waitForFunction(() => document.getElementById("submitted").textContent !== "");
  const submitted = (await page.textContent("#submitted")).trim();
  const queued = /^queued (\S+)$/.exec(submitted);
  require_(queued !== null, "the job is accepted", JSON.stringify(submitted));
  const id = queued[1];
  console.log(`job ${id}`);

  const row = `#jobs tr[data-id="${id}"]`;
  try {
    await page.waitForSelector(row, { timeout: 10000 });
    check(true, "a row for the job appears in #jobs");
  } catch {
    require_(false, "a row for the job appears in #jobs", `#auth says ${JSON.stringify(await page.textContent("#auth"))}`);
  }

  // Sample the row as the page re-renders it (every second) until the job ends.
  const samples = []; // {t, state, value, stage}
  let state = null;
  while (Date.now() - started < JOB_TIMEOUT_MS) {
    const seen = await page.evaluate((selector) => {
      const tr = document.querySelector(selector);
      if (!tr) return null;
      const bar = tr.querySelector("progress");
      return { state: tr.dataset.state, value: bar ? bar.value : null, stage: tr.children[2] ? tr.children[2].textContent : "" };
    }, row);
    if (seen) {
      const last = samples[samples.length - 1];
      if (!last || last.state !== seen.state || last.value !== seen.value || last.stage !== seen.stage) {
        samples.push({ t: (Date.now() - started) / 1000, ...seen });
      }
      state = seen.state;
      if (["done", "failed", "cancelled"].includes(state)) break;
    }
    await sleep(200);
  }
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  console.log(`job ended as ${state} after ${seconds} s; ${samples.length} distinct samples of (state, stage, progress):`);
  for (const s of samples) console.log(`  ${s.t.toFixed(1).padStart(6)} s  ${s.state.padEnd(9)} ${String(s.value).padEnd(22)} ${s.stage}`);

  const running = samples.filter((s) => s.state === "running" && typeof s.value === "number");
  const below = new Set(running.map((s) => s.value).filter((v) => v < 1));
  const final = samples.length ? samples[samples.length - 1].value : null;
  check(
    below.size >= 2 || (below.size >= 1 && final === 1),
    "the progress bar moves while the job runs",
    `running values seen: ${JSON.stringify([...new Set(running.map((s) => s.value))])}, final ${final}`,
  );
  const figures = ((await page.textContent(`${row} td.figures`)) || "").trim();
  console.log(`figures: ${figures}`);
  const ended = ["done", "failed", "cancelled"].includes(state);
  require_(
    state === "done",
    "the job's row reaches state done",
    ended ? `state ${state}; figures ${JSON.stringify(figures)}` : `still ${state} after ${JOB_TIMEOUT_MS / 1000} s (STUDIO_JOB_TIMEOUT)`,
  );
  check(final === 1, "the progress bar is full when done", `value ${final}`);
  check(figures.includes("bits/weight"), "the figures show bits/weight", JSON.stringify(figures));
  check(/PPL/.test(figures), "the figures show PPL", JSON.stringify(figures));
  try {
    await page.waitForSelector("#chart circle.point", { state: "attached", timeout: 5000 });
  } catch {}
  const points = await page.locator("#chart circle.point").count();
  check(points >= 1, "the chart has a point for the job", `${points} circle.point in #chart`);

  fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  console.log(`screenshot: ${SCREENSHOT}`);
  check(pageErrors.length === 0, "no script errors or refused requests on the page", pageErrors.join("; "));
}

const t0 = Date.now();
let crashed = null;
try {
  await main();
} catch (e) {
  if (!(e instanceof Fatal)) crashed = e;
} finally {
  if (browser) await browser.close().catch(() => {});
  await stopServer().catch(() => {});
}
if (crashed) check(false, "the test runs to its end", crashed.stack || String(crashed));
if (failed && tmp) console.log(`${serverLog()}\n(server data kept in ${tmp})`);
else if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
console.log(`browser test took ${((Date.now() - t0) / 1000).toFixed(1)} s`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
