// The web console in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core
// from console/node_modules; no browser is ever downloaded), against a running server with
// auth on, and the streamhub CLI on the other side of every check:
//
// - /console opens with no console error and no page error (any one fails the run, checked
//   at the end and after every step);
// - the token box: no token and a bad token are refused, a user token may not list streams
//   (PERMISSION_DENIED shown), a service token is accepted;
// - an event published by the CLI appears in the live tail;
// - streams list a page at a time (51 over two pages, in key order), a stream's history pages
//   both ways, and an inbox and a collaboration document are read and tailed too;
// - a chat message typed in the browser reaches a `streamhub chat` member, its typing and its
//   reply come back, and its join and leave notices show;
// - a 20 MiB upload through tus shows its progress, is paused and resumed from the server's
//   offset, and its SHA-256 (computed here) is what GetFileInfo reports through the CLI and
//   what the download URL serves;
// - a metrics chart renders the points pushed by the CLI, and the /metrics figures show;
// - Forget drops the token.
//
// Screenshots go to --screenshots (target/browser-screenshots/ by default). Every wait has a
// deadline. Usage (tests/browser.rs runs it):
//   STREAMHUB_AUTH_HS256_SECRET=… node tests/browser/console.mjs --url http://127.0.0.1:PORT \
//     --cli target/debug/streamhub [--screenshots DIR]

import { spawn, execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const require = createRequire(join(root, "console/package.json"));
const { chromium } = require("playwright-core");

/** The deadline of every wait: generous, since CI shares two cores; latency belongs in bench. */
const DEADLINE_MS = 30_000;
const UPLOAD_BYTES = 20 * 1024 * 1024;
/** tus-js-client's chunk in the console (console/src/files.ts). */
const CHUNK_BYTES = 4 * 1024 * 1024;

function parseArgs(argv) {
  const args = { screenshots: join(root, "target/browser-screenshots") };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    if (flag === "--url") args.url = value.replace(/\/$/, "");
    else if (flag === "--cli") args.cli = value;
    else if (flag === "--screenshots") args.screenshots = value;
    else throw new Error(`unknown flag ${flag}`);
  }
  if (!args.url || !args.cli) throw new Error("usage: console.mjs --url URL --cli PATH [--screenshots DIR]");
  return args;
}

const args = parseArgs(process.argv.slice(2));
const run = randomBytes(4).toString("hex");
const children = new Set();

function log(text) {
  console.log(`[console.mjs] ${text}`);
}

/** Runs the CLI to its end (with a deadline) and returns stdout; a non-zero exit throws. */
async function cli(argv, { token, input } = {}) {
  const env = { ...process.env, STREAMHUB_SERVER: args.url, NO_COLOR: "1" };
  if (token) env.STREAMHUB_TOKEN = token;
  else delete env.STREAMHUB_TOKEN;
  return new Promise((resolvePromise, reject) => {
    const child = execFile(args.cli, argv, { env, timeout: DEADLINE_MS, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`streamhub ${argv.join(" ")} failed: ${err.message}\n${stderr}`));
      else resolvePromise(stdout);
    });
    if (input !== undefined) child.stdin.end(input);
  });
}

const mint = async (sub, extra = []) =>
  (await cli(["token", "--sub", sub, "--ttl", "1h", ...extra])).trim();

/**
 * A long-running CLI child whose stdout and stderr lines are collected; `waitLine` waits for one
 * matching line with a deadline.
 */
function spawnCli(argv, token) {
  const env = { ...process.env, STREAMHUB_SERVER: args.url, STREAMHUB_TOKEN: token, NO_COLOR: "1" };
  const child = spawn(args.cli, argv, { env, stdio: ["pipe", "pipe", "pipe"] });
  children.add(child);
  const lines = { stdout: [], stderr: [] };
  const waiters = [];
  for (const name of ["stdout", "stderr"]) {
    let buffered = "";
    child[name].setEncoding("utf8");
    child[name].on("data", (chunk) => {
      buffered += chunk;
      let at;
      while ((at = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, at);
        buffered = buffered.slice(at + 1);
        lines[name].push(line);
        if (process.env.TEST_LOG) log(`${argv[0]} ${name}: ${line}`);
        for (const w of [...waiters]) if (w.name === name && w.test(line)) w.done(line);
      }
    });
  }
  const exited = new Promise((resolveExit) => child.on("exit", (code, signal) => resolveExit({ code, signal })));
  exited.then(() => children.delete(child));
  return {
    child,
    lines,
    exited,
    write: (text) => child.stdin.write(text),
    waitLine(name, test, what) {
      const found = lines[name].find(test);
      if (found !== undefined) return Promise.resolve(found);
      return new Promise((resolveWait, reject) => {
        const waiter = {
          name,
          test,
          done: (line) => {
            clearTimeout(timer);
            waiters.splice(waiters.indexOf(waiter), 1);
            resolveWait(line);
          },
        };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(waiter), 1);
          reject(new Error(`no ${name} line ${what} within ${DEADLINE_MS} ms; ${name} was:\n${lines[name].join("\n")}`));
        }, DEADLINE_MS);
        waiters.push(waiter);
      });
    },
  };
}

function assertEqual(actual, expected, what) {
  if (actual !== expected) throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

// ---------------------------------------------------------------- a collaborator for the test
// The CLI has no collaboration command, so the test's own collaborator speaks gRPC-Web by hand:
// a CollaborationEvent encoded field by field, one length-prefixed frame, and the answer's
// frames read back. (The console itself uses the generated client, never this.)

function varint(n) {
  const out = [];
  let v = BigInt(n);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return Buffer.from(out);
}

const field = {
  bytes: (number, value) => {
    const data = Buffer.isBuffer(value) ? value : Buffer.from(value, "utf8");
    return Buffer.concat([varint((number << 3) | 2), varint(data.length), data]);
  },
  uint: (number, value) => Buffer.concat([varint(number << 3), varint(value)]),
};

/** The varint fields of a message, by number (enough to read a sequence back). */
function readVarints(message) {
  const fields = new Map();
  let at = 0;
  const next = () => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      const byte = message[at++];
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7n;
    }
  };
  while (at < message.length) {
    const key = Number(next());
    const [number, wire] = [key >> 3, key & 7];
    if (wire === 0) fields.set(number, next());
    else if (wire === 2) {
      const length = Number(next());
      at += length;
    }
    else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else throw new Error(`wire type ${wire}`);
  }
  return fields;
}

/** One unary gRPC-Web call; returns the answer's message bytes or throws with its status. */
async function grpcWebUnary(method, message, token) {
  const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, 0]), message]);
  frame.writeUInt32BE(message.length, 1);
  const response = await fetch(`${args.url}/streaming.v1.StreamingService/${method}`, {
    method: "POST",
    headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", authorization: `Bearer ${token}` },
    body: frame,
    signal: AbortSignal.timeout(DEADLINE_MS),
  });
  const body = Buffer.from(await response.arrayBuffer());
  let status = response.headers.get("grpc-status");
  let statusMessage = response.headers.get("grpc-message") ?? "";
  let data;
  for (let at = 0; at + 5 <= body.length; ) {
    const length = body.readUInt32BE(at + 1);
    const payload = body.subarray(at + 5, at + 5 + length);
    if (body[at] & 0x80) {
      for (const line of payload.toString("utf8").split("\r\n")) {
        const [name, ...rest] = line.split(":");
        if (name.toLowerCase() === "grpc-status") status = rest.join(":").trim();
        if (name.toLowerCase() === "grpc-message") statusMessage = decodeURIComponent(rest.join(":").trim());
      }
    } else data = payload;
    at += 5 + length;
  }
  if (status !== "0" || data === undefined) throw new Error(`${method}: grpc-status ${status}: ${statusMessage}`);
  return data;
}

/** Submits an OPERATION on `base` and returns its stored sequence. */
async function submitOperation(documentId, base, text, token) {
  const event = Buffer.concat([
    field.bytes(2, documentId),
    field.bytes(3, "writer"),
    field.uint(4, 3), // COLLABORATION_EVENT_TYPE_OPERATION
    field.bytes(5, text),
    field.uint(7, base),
  ]);
  const stored = readVarints(await grpcWebUnary("SubmitCollaborationEvent", event, token));
  assertEqual(stored.get(4), 3n, "the stored event is an OPERATION");
  return Number(stored.get(6));
}

/** Waits, with the deadline, until `predicate` (run in the page) holds. */
async function waitForPage(page, predicate, arg, what) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: DEADLINE_MS, polling: 100 });
  } catch (err) {
    throw new Error(`${what}: not within ${DEADLINE_MS} ms (${err.message.split("\n")[0]})`);
  }
}

async function main() {
  mkdirSync(args.screenshots, { recursive: true });
  const serviceToken = await mint(`console-admin-${run}`, ["--role", "service"]);
  const userToken = await mint(`alice-${run}`);
  const room = `lobby-${run}`;
  const bobToken = await mint(`bob-${run}`, ["--rooms", room]);

  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const problems = [];
  let page;
  try {
    const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, acceptDownloads: true });
    page = await context.newPage();
    page.setDefaultTimeout(DEADLINE_MS);
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(`console error: ${message.text()} (${message.location().url})`);
    });
    page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    const clean = (step) => {
      if (problems.length) throw new Error(`${step}:\n${problems.join("\n")}`);
      log(`ok: ${step}`);
    };
    const shot = (name) => page.screenshot({ path: join(args.screenshots, name), fullPage: true });
    const authState = (state) =>
      waitForPage(page, (s) => document.querySelector('[data-testid="auth-status"]')?.dataset.state === s, state, `auth status ${state}`);

    // ---------------------------------------------------------------- the page and the token
    const response = await page.goto(`${args.url}/console`, { waitUntil: "load" });
    assertEqual(response.status(), 200, "GET /console");
    await authState("required");
    await page.getByTestId("streams-error").waitFor({ state: "visible" });
    assertEqual(await page.getByTestId("streams-error").getAttribute("data-code"), "UNAUTHENTICATED", "ListStreams without a token");
    await shot("01-token-required.png");

    await page.getByTestId("token-input").fill("not-a-jwt");
    await page.getByTestId("token-save").click();
    await authState("refused");

    // A user token is accepted, and listing streams (services only) is refused, visibly.
    await page.getByTestId("token-input").fill(`Bearer ${userToken}`);
    await page.getByTestId("token-save").click();
    await authState("accepted");
    await waitForPage(
      page,
      () => document.querySelector('[data-testid="streams-error"]')?.dataset.code === "PERMISSION_DENIED",
      undefined,
      "ListStreams refused to a user token",
    );
    const stored = await page.evaluate(() => ({ session: Object.keys(sessionStorage), local: Object.keys(localStorage) }));
    assertEqual(stored.local.length, 0, "nothing in localStorage");
    assertEqual(stored.session.length, 1, "the token in sessionStorage");

    await page.getByTestId("token-input").fill(serviceToken);
    await page.getByTestId("token-save").click();
    await authState("accepted");
    clean("the token box: none and a bad token refused, a user token denied ListStreams, a service token accepted");

    // ---------------------------------------------------------------- streams: the live tail
    const user = `tail-${run}`;
    const first = JSON.parse(await cli(["events", "publish", user, "--type", "login", "--data", '{"step":1}', "--json"], { token: serviceToken }));
    await page.getByTestId("stream-kind").selectOption("events");
    await page.getByTestId("stream-prefix").fill(user);
    await page.getByTestId("stream-list-button").click();
    const row = page.locator(`[data-testid="stream-row"][data-key="${user}"]`);
    await row.waitFor();
    assertEqual((await row.locator("td").nth(1).textContent()).trim(), "1", "the stream's head");
    await row.click();
    await page.locator(`[data-testid="history-record"][data-id="${first.id}"]`).waitFor();
    await page.getByTestId("tail-toggle").click();
    await waitForPage(page, () => document.querySelector('[data-testid="tail-status"]')?.dataset.state === "live", undefined, "the tail is live");
    const second = JSON.parse(
      await cli(["events", "publish", user, "--type", "profile_update", "--data", `{"run":"${run}"}`, "--json"], { token: serviceToken }),
    );
    const tailed = page.locator(`[data-testid="tail-record"][data-id="${second.id}"]`);
    await tailed.waitFor({ timeout: DEADLINE_MS });
    assertEqual(await tailed.getAttribute("data-seq"), "2", "the tailed event's sequence");
    const tailText = await tailed.textContent();
    if (!tailText.includes("PROFILE_UPDATE") || !tailText.includes(run)) throw new Error(`tail row: ${tailText}`);
    await shot("02-streams-tail.png");
    await page.getByTestId("tail-toggle").click();
    clean("an event published by the CLI appears in the live tail");

    // ---------------------------------------------------------------- streams: pages and kinds
    // 51 users with one event each (a page of 50 streams, then one more), and one user with 30
    // events (history pages #1–#25 and #26–#30), in one import.
    const paged = `paged-${run}`;
    const jsonl = [];
    for (let i = 0; i < 51; i++) jsonl.push(JSON.stringify({ user_id: `many-${run}-${String(i).padStart(2, "0")}`, type: "login" }));
    for (let i = 1; i <= 30; i++) jsonl.push(JSON.stringify({ user_id: paged, type: "logout", data: { i } }));
    const importDir = mkdtempSync(join(tmpdir(), "streamhub-browser-"));
    writeFileSync(join(importDir, "events.jsonl"), `${jsonl.join("\n")}\n`);
    await cli(["events", "import", join(importDir, "events.jsonl"), "--quiet"], { token: serviceToken });
    rmSync(importDir, { recursive: true, force: true });
    const rows = page.locator('[data-testid="stream-row"]');
    await page.getByTestId("stream-prefix").fill(`many-${run}-`);
    await page.getByTestId("stream-list-button").click();
    await waitForPage(page, () => document.querySelectorAll('[data-testid="stream-row"]').length === 50, undefined, "a first page of 50 streams");
    await page.getByTestId("stream-more").click();
    await waitForPage(page, () => document.querySelectorAll('[data-testid="stream-row"]').length === 51, undefined, "51 streams after More");
    await page.getByTestId("stream-more").waitFor({ state: "hidden" });
    const keys = await rows.evaluateAll((els) => els.map((e) => e.dataset.key));
    assertEqual(JSON.stringify(keys), JSON.stringify([...keys].sort()), "streams in key order");
    assertEqual(keys[50], `many-${run}-50`, "the last stream");

    const range = (text) =>
      waitForPage(page, (t) => document.querySelector('[data-testid="history-range"]')?.textContent === t, text, `history ${text}`);
    const historyCount = () => page.locator('[data-testid="history-record"]').count();
    await page.getByTestId("stream-open-key").fill(paged);
    await page.getByTestId("stream-open-button").click();
    await range("#26 – #30");
    assertEqual(await historyCount(), 5, "records on the newest page");
    assertEqual(await page.getByTestId("stream-head").textContent(), "head 30", "the opened stream's head");
    await page.getByTestId("history-older").click();
    await range("#1 – #25");
    assertEqual(await historyCount(), 25, "records on the first page");
    if (!(await page.getByTestId("history-older").isDisabled())) throw new Error("Older is enabled on the first page");
    await page.getByTestId("history-newer").click();
    await range("#26 – #30");
    if (!(await page.getByTestId("history-newer").isDisabled())) throw new Error("Newer is enabled on the last page");

    // Notifications: an inbox's history, then its live tail.
    const inbox = `inbox-${run}`;
    const sendNote = async (title) =>
      JSON.parse(await cli(["notify", "send", inbox, "--topic", "builds", "--title", title, "--body", run, "--json"], { token: serviceToken }));
    const note1 = await sendNote("first");
    await page.getByTestId("stream-kind").selectOption("notifications");
    await page.getByTestId("stream-prefix").fill(inbox);
    await page.getByTestId("stream-list-button").click();
    await page.locator(`[data-testid="stream-row"][data-key="${inbox}"]`).click();
    await page.locator(`[data-testid="history-record"][data-id="${note1.id}"]`).waitFor();
    await page.getByTestId("tail-toggle").click();
    await waitForPage(page, () => document.querySelector('[data-testid="tail-status"]')?.dataset.state === "live", undefined, "the inbox tail is live");
    const note2 = await sendNote("second");
    await page.locator(`[data-testid="tail-record"][data-id="${note2.id}"]`, { hasText: "second" }).waitFor();
    await page.getByTestId("tail-toggle").click();

    // Collaboration: a document's operations, then its live tail.
    const doc = `doc-${run}`;
    assertEqual(await submitOperation(doc, 0, "hello", serviceToken), 1, "the first operation's sequence");
    assertEqual(await submitOperation(doc, 1, " world", serviceToken), 2, "the second operation's sequence");
    await page.getByTestId("stream-kind").selectOption("collaboration");
    await page.getByTestId("stream-prefix").fill(doc);
    await page.getByTestId("stream-list-button").click();
    await page.locator(`[data-testid="stream-row"][data-key="${doc}"]`).click();
    await range("#1 – #2");
    assertEqual(
      JSON.stringify(await page.locator('[data-testid="history-record"] td.detail-cell').allTextContents()),
      JSON.stringify(["hello", " world"]),
      "the document's operations",
    );
    await page.getByTestId("tail-toggle").click();
    await waitForPage(page, () => document.querySelector('[data-testid="tail-status"]')?.dataset.state === "live", undefined, "the document tail is live");
    assertEqual(await submitOperation(doc, 2, "!", serviceToken), 3, "the third operation's sequence");
    await page.locator('[data-testid="tail-record"][data-seq="3"]', { hasText: "!" }).waitFor();
    await page.getByTestId("tail-toggle").click();
    clean("streams: 51 listed over two pages, history paged both ways, notifications and a document read and tailed");

    // ---------------------------------------------------------------- chat with a CLI member
    const bob = spawnCli(["chat", "--room", room, "--user", `bob-${run}`], bobToken);
    await bob.waitLine("stdout", (l) => l.includes(`User bob-${run} joined the chat`), "with bob's own join notice");
    await page.getByTestId("tab-chat").click();
    await page.getByTestId("chat-room").fill(room);
    assertEqual(await page.getByTestId("chat-user").inputValue(), `console-admin-${run}`, "the chat user is the token's subject");
    await page.getByTestId("chat-join").click();
    await waitForPage(page, () => document.querySelector('[data-testid="chat-status"]')?.dataset.state === "joined", undefined, "joined the room");
    await page.locator('[data-testid="chat-notice"]', { hasText: `User bob-${run} joined the chat` }).waitFor();
    await bob.waitLine("stdout", (l) => l.includes(`User console-admin-${run} joined the chat`), "with the browser's join notice");

    const hello = `hello from the browser ${run}`;
    await page.getByTestId("chat-input").pressSequentially(hello.slice(0, 6));
    await bob.waitLine("stderr", (l) => l.includes(`console-admin-${run} is typing`), "with the browser's typing notice");
    await page.getByTestId("chat-input").fill(hello);
    await page.getByTestId("chat-send").click();
    await bob.waitLine("stdout", (l) => l.endsWith(`console-admin-${run}: ${hello}`), "with the browser's message");

    bob.write("/typing\n");
    await waitForPage(page, (u) => document.querySelector('[data-testid="chat-typing"]')?.dataset.users === u, `bob-${run}`, "bob shown typing");
    const reply = `hello back from the CLI ${run}`;
    bob.write(`${reply}\n`);
    const replied = page.locator(`[data-testid="chat-message"][data-user="bob-${run}"]`, { hasText: reply });
    await replied.waitFor();
    await waitForPage(page, () => document.querySelector('[data-testid="chat-typing"]')?.dataset.users === "", undefined, "bob's typing cleared by his message");
    // One order for both: the browser's message comes before the reply, in sequence.
    const mine = page.locator('[data-testid="chat-message"]', { hasText: hello });
    const [mineSeq, replySeq] = [Number(await mine.getAttribute("data-seq")), Number(await replied.getAttribute("data-seq"))];
    if (!(mineSeq > 0 && replySeq > mineSeq)) throw new Error(`sequences: mine ${mineSeq}, reply ${replySeq}`);
    await shot("03-chat.png");
    bob.write("/quit\n");
    await page.locator('[data-testid="chat-notice"]', { hasText: `User bob-${run} left the chat` }).waitFor();
    const bobExit = await bob.exited;
    assertEqual(bobExit.code, 0, "streamhub chat's exit status");
    await page.getByTestId("chat-leave").click();
    clean("a browser chat message reaches a streamhub chat member, and its typing, reply and notices come back");

    // The room in the Streams tab: its stored history, through GetChatHistory.
    await page.getByTestId("tab-streams").click();
    await page.getByTestId("stream-kind").selectOption("chat");
    await page.getByTestId("stream-prefix").fill(room);
    await page.getByTestId("stream-list-button").click();
    await page.locator(`[data-testid="stream-row"][data-key="${room}"]`).click();
    await page.locator('[data-testid="history-record"]', { hasText: reply }).waitFor();
    const roomHistory = await page.locator('[data-testid="history-record"]').evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
    assertEqual(JSON.stringify(roomHistory), JSON.stringify(roomHistory.map((_, i) => i + 1)), "the room's history from #1, in order");
    clean("the room's history in the Streams tab");

    // ---------------------------------------------------------------- files: tus upload
    const bytes = randomBytes(UPLOAD_BYTES);
    const sha256 = createHash("sha256").update(bytes).digest("hex");
    const scratch = mkdtempSync(join(tmpdir(), "streamhub-browser-"));
    const path = join(scratch, `upload-${run}.bin`);
    writeFileSync(path, bytes);
    await page.getByTestId("tab-files").click();

    // The second PATCH is held until the upload is paused, so the pause lands at a known
    // offset: one chunk stored. After the resume, tus asks the server where it stands (HEAD)
    // and continues from there.
    const requests = [];
    page.on("request", (request) => {
      if (new URL(request.url()).pathname.startsWith("/files/")) {
        requests.push({ method: request.method(), offset: request.headers()["upload-offset"] });
      }
    });
    let patches = 0;
    let releaseHeld;
    const held = new Promise((resolveHeld) => (releaseHeld = resolveHeld));
    let heldSeen;
    const holding = new Promise((resolveSeen) => (heldSeen = resolveSeen));
    await page.route("**/files/**", async (route) => {
      if (route.request().method() === "PATCH" && ++patches === 2) {
        heldSeen();
        await held;
        await route.abort("aborted").catch(() => {});
        return;
      }
      await route.continue();
    });
    await page.getByTestId("files-input").setInputFiles(path);
    await page.getByTestId("files-upload").click();
    await Promise.race([holding, page.waitForTimeout(DEADLINE_MS).then(() => Promise.reject(new Error("the second PATCH never came")))]);
    await waitForPage(
      page,
      (n) => Number(document.querySelector('[data-testid="files-progress"]')?.dataset.sent) >= n,
      CHUNK_BYTES,
      "progress after the first chunk",
    );
    await page.getByTestId("files-pause").click();
    await waitForPage(page, () => document.querySelector('[data-testid="files-state"]')?.dataset.state === "paused", undefined, "paused");
    releaseHeld();
    const progressText = await page.getByTestId("files-progress-text").textContent();
    assertEqual(progressText, "4.0 MiB of 20.0 MiB (20%)", "the progress shown at the pause");
    await shot("04-files-paused.png");
    await page.unroute("**/files/**");
    const beforeResume = requests.length;
    await page.getByTestId("files-resume").click();
    await waitForPage(page, () => document.querySelector('[data-testid="files-state"]')?.dataset.state === "done", undefined, "the upload is done");
    const resumed = requests.slice(beforeResume);
    assertEqual(resumed[0]?.method, "HEAD", "the resume asks for the offset first");
    assertEqual(resumed[1]?.method, "PATCH", "then sends the rest");
    assertEqual(resumed[1]?.offset, String(CHUNK_BYTES), "from the offset the server had");
    const fileId = await page.getByTestId("files-result").getAttribute("data-file-id");
    assertEqual(await page.getByTestId("files-result-sha256").textContent(), sha256, "the SHA-256 shown");
    const info = JSON.parse(await cli(["files", "info", fileId, "--json"], { token: serviceToken }));
    assertEqual(info.checksum, sha256, "GetFileInfo's SHA-256");
    assertEqual(String(info.totalSize), String(UPLOAD_BYTES), "GetFileInfo's size");
    assertEqual(info.filename, `upload-${run}.bin`, "GetFileInfo's file name");
    await page.locator(`[data-testid="files-row"][data-file-id="${fileId}"]`).waitFor();
    const href = await page.getByTestId("files-result-download").getAttribute("href");
    const download = await fetch(href);
    assertEqual(download.status, 200, "GET of the download URL");
    assertEqual(createHash("sha256").update(Buffer.from(await download.arrayBuffer())).digest("hex"), sha256, "the downloaded bytes' SHA-256");
    await shot("05-files-done.png");
    rmSync(scratch, { recursive: true, force: true });
    clean("a 20 MiB tus upload shows progress, pauses, resumes from the server's offset, and matches its SHA-256");

    // ---------------------------------------------------------------- metrics
    const name = `console_test_${run}`;
    const now = Date.now();
    const lines = [];
    for (let i = 0; i < 10; i++) lines.push(`${name}{room="${room}"} ${i * i} ${now - (9 - i) * 60_000}`);
    await cli(["metrics", "push", "--quiet"], { token: serviceToken, input: `${lines.join("\n")}\n` });
    await page.getByTestId("tab-metrics").click();
    await page.getByTestId("metrics-prefix").fill(name);
    await page.getByTestId("metrics-list").click();
    const series = page.locator(`[data-testid="metrics-series"][data-name="${name}"]`);
    await series.waitFor();
    await series.click();
    await waitForPage(
      page,
      () => document.querySelector('[data-testid="metrics-chart"]')?.dataset.points === "10",
      undefined,
      "the chart holds the 10 points pushed",
    );
    assertEqual(await page.locator('[data-testid="metrics-point"]').count(), 10, "dots on the chart (one bucket per minute)");
    const linePoints = await page.getByTestId("metrics-line").getAttribute("points");
    assertEqual(linePoints.split(" ").length, 10, "vertices of the line");
    await page.getByTestId("prom-filter").fill("streamhub_rpc_finished_total");
    await waitForPage(page, () => document.querySelectorAll('[data-testid="prom-row"]').length > 0, undefined, "the /metrics figures");
    await shot("06-metrics.png");
    clean("a metrics chart renders the points pushed by the CLI, and the /metrics figures show");

    // Forget: the token leaves sessionStorage, and the server asks for one again.
    await page.getByTestId("token-clear").click();
    await authState("required");
    assertEqual(await page.evaluate(() => sessionStorage.length), 0, "sessionStorage after Forget");
    clean("Forget drops the token");
  } catch (err) {
    if (page) await page.screenshot({ path: join(args.screenshots, "failure.png"), fullPage: true }).catch(() => {});
    if (problems.length) console.error(`console and page errors:\n${problems.join("\n")}`);
    throw err;
  } finally {
    await browser.close();
  }
}

try {
  await main();
  log("all checks passed");
} catch (err) {
  console.error(`[console.mjs] FAILED: ${err.stack ?? err}`);
  process.exitCode = 1;
} finally {
  for (const child of children) child.kill("SIGKILL");
}
