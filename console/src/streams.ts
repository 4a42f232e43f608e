// The Streams panel: pick a kind, browse its streams (ListStreams, by key prefix, a page at a
// time), open one, page through its stored history, and tail it live. It only reads: it never
// publishes, acknowledges or posts anything.

import { api, ErrorBox, isAbort } from "./api";
import { field, formatTime, h, replace, stickToBottom } from "./dom";
import { KINDS, date, openStream, readPage, type Kind, type Row } from "./records";

const LIST_LIMIT = 50;
const PAGE_SIZE = 25;
const TAIL_ROWS = 500;

interface Opened {
  kind: Kind;
  key: string;
  /** The last stored sequence when the stream was opened; undefined when it is not known. */
  head: number | undefined;
  /** The page shown holds the records after this sequence. */
  after: number;
}

export class StreamsPanel {
  readonly el: HTMLElement;
  private readonly me: () => string;
  private readonly errors = new ErrorBox("streams-error");
  private readonly kindSelect: HTMLSelectElement;
  private readonly prefixInput: HTMLInputElement;
  private readonly listBody: HTMLTableSectionElement;
  private readonly moreButton: HTMLButtonElement;
  private readonly openKeyInput: HTMLInputElement;
  private readonly detail: HTMLElement;
  private nextPageToken = "";
  private listGeneration = 0;
  private opened: Opened | undefined;
  private tail: AbortController | undefined;

  constructor(me: () => string) {
    this.me = me;
    this.kindSelect = h(
      "select",
      { testid: "stream-kind", onchange: () => void this.list(false) },
      ...KINDS.map((k) => h("option", { value: k.kind }, k.label)),
    );
    this.prefixInput = h("input", { type: "search", placeholder: "key prefix", testid: "stream-prefix" });
    this.prefixInput.addEventListener("keydown", (e) => {
      if (e.key === "Enter") void this.list(false);
    });
    this.listBody = h("tbody", { testid: "stream-list" });
    this.moreButton = h("button", { type: "button", testid: "stream-more", hidden: true, onclick: () => void this.list(true) }, "More streams");
    this.openKeyInput = h("input", { type: "text", placeholder: "key", testid: "stream-open-key" });
    this.openKeyInput.addEventListener("keydown", (e) => {
      if (e.key === "Enter") void this.openTyped();
    });
    this.detail = h("section", { class: "detail", testid: "stream-detail", hidden: true });

    this.el = h(
      "section",
      { class: "panel", testid: "panel-streams" },
      h("h2", {}, "Streams"),
      h(
        "div",
        { class: "toolbar" },
        field("Kind", this.kindSelect),
        field("Prefix", this.prefixInput),
        h("button", { type: "button", testid: "stream-list-button", onclick: () => void this.list(false) }, "List"),
        h("span", { class: "spacer" }),
        field("Open by key", this.openKeyInput),
        h("button", { type: "button", testid: "stream-open-button", onclick: () => void this.openTyped() }, "Open"),
      ),
      this.errors.el,
      h(
        "div",
        { class: "split" },
        h(
          "div",
          { class: "list" },
          h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Key"), h("th", { class: "num" }, "Head"), h("th", {}, "Last record"))), this.listBody),
          this.moreButton,
        ),
        this.detail,
      ),
    );
  }

  private get kind(): Kind {
    return this.kindSelect.value as Kind;
  }

  /** Lists the kind's streams from the start (or the next page, with `more`). */
  async list(more: boolean): Promise<void> {
    this.errors.clear();
    const kind = KINDS.find((k) => k.kind === this.kind) ?? KINDS[0]!;
    // Only the answer to the latest request is shown (a kind change and a click can overlap).
    const generation = ++this.listGeneration;
    try {
      const page = await api.listStreams({
        kind: kind.wire,
        keyPrefix: this.prefixInput.value,
        pageToken: more ? this.nextPageToken : "",
        limit: LIST_LIMIT,
      });
      if (generation !== this.listGeneration) return;
      if (!more) replace(this.listBody);
      for (const s of page.streams) {
        const head = Number(s.head);
        const row = h(
          "tr",
          { class: "clickable", testid: "stream-row", "data-key": s.key, tabindex: 0 },
          h("td", { class: "key" }, s.key),
          h("td", { class: "num" }, head),
          h("td", {}, formatTime(date(s.lastTimestamp))),
        );
        const open = () => void this.open(kind.kind, s.key, head);
        row.addEventListener("click", open);
        row.addEventListener("keydown", (e) => {
          if (e.key === "Enter") open();
        });
        this.listBody.appendChild(row);
      }
      if (this.listBody.childElementCount === 0) {
        this.listBody.appendChild(h("tr", {}, h("td", { colspan: 3, class: "empty" }, "No streams with records.")));
      }
      this.nextPageToken = page.nextPageToken;
      this.moreButton.hidden = page.nextPageToken === "";
    } catch (err) {
      if (generation !== this.listGeneration) return;
      if (!more) replace(this.listBody);
      this.moreButton.hidden = true;
      this.errors.show("ListStreams", err);
    }
  }

  /** Opens the key typed in the box; its head comes from ListStreams when that is allowed. */
  private async openTyped(): Promise<void> {
    const key = this.openKeyInput.value.trim();
    if (!key) return;
    let head: number | undefined;
    try {
      const wire = KINDS.find((k) => k.kind === this.kind)!.wire;
      const page = await api.listStreams({ kind: wire, keyPrefix: key, limit: 1 });
      const found = page.streams.find((s) => s.key === key);
      head = found ? Number(found.head) : 0;
    } catch {
      // A user token may not list streams: the stream opens at its start instead.
      head = undefined;
    }
    await this.open(this.kind, key, head);
  }

  async open(kind: Kind, key: string, head: number | undefined): Promise<void> {
    this.stopTail();
    this.errors.clear();
    // Pages are aligned to PAGE_SIZE from the start (#1–#25, #26–#50, …): the newest first.
    const after = head === undefined || head === 0 ? 0 : Math.floor((head - 1) / PAGE_SIZE) * PAGE_SIZE;
    this.opened = { kind, key, head, after };
    for (const row of this.listBody.querySelectorAll("tr")) {
      row.classList.toggle("selected", row.getAttribute("data-key") === key);
    }
    this.renderDetail();
    await this.loadPage();
  }

  private historyBody = h("tbody", { testid: "history" });
  private historyInfo = h("span", { testid: "history-range" });
  private olderButton = h("button", { type: "button", testid: "history-older", onclick: () => void this.page(-1) }, "◀ Older");
  private newerButton = h("button", { type: "button", testid: "history-newer", onclick: () => void this.page(1) }, "Newer ▶");
  private tailButton = h("button", { type: "button", testid: "tail-toggle", onclick: () => this.toggleTail() }, "Tail live");
  private tailStatus = h("span", { class: "status", testid: "tail-status" }, "stopped");
  private tailBody = h("tbody", { testid: "tail" });
  private tailScroll = h("div", { class: "scroll" });

  private headLabel = h("span", { class: "muted", testid: "stream-head" });

  private showHead(): void {
    const head = this.opened?.head;
    this.headLabel.textContent = head === undefined ? "head unknown" : `head ${head}`;
  }

  private renderDetail(): void {
    const o = this.opened;
    if (!o) return;
    const label = KINDS.find((k) => k.kind === o.kind)!;
    this.tailScroll = h("div", { class: "scroll tail" }, table(this.tailBody));
    this.showHead();
    replace(this.tailBody);
    replace(
      this.detail,
      h(
        "header",
        {},
        h("h3", { testid: "stream-title" }, `${label.keyLabel} `, h("code", {}, o.key)),
        this.headLabel,
      ),
      o.kind === "chat" || o.kind === "collaboration"
        ? h("p", { class: "muted small" }, `Tailing joins as “${this.me()}”: others see you present while it runs.`)
        : null,
      h("h4", {}, "History"),
      h("div", { class: "toolbar" }, this.olderButton, this.historyInfo, this.newerButton),
      h("div", { class: "scroll" }, table(this.historyBody)),
      h("h4", {}, "Live"),
      h("div", { class: "toolbar" }, this.tailButton, this.tailStatus),
      this.tailScroll,
    );
    this.detail.hidden = false;
    this.tailButton.textContent = "Tail live";
  }

  private async page(direction: -1 | 1): Promise<void> {
    const o = this.opened;
    if (!o) return;
    const next = o.after + direction * PAGE_SIZE;
    if (next < 0 || (o.head !== undefined && next >= o.head)) return;
    o.after = next;
    await this.loadPage();
  }

  private async loadPage(): Promise<void> {
    const o = this.opened;
    if (!o) return;
    const opened = o;
    this.olderButton.disabled = true;
    this.newerButton.disabled = true;
    replace(this.historyBody, h("tr", {}, h("td", { colspan: 5, class: "empty" }, "Loading…")));
    try {
      const rows = await readPage(o.kind, o.key, o.after, PAGE_SIZE, o.head, this.me());
      if (this.opened !== opened) return;
      replace(this.historyBody, ...rows.map((r) => rowElement(r, "history-record")));
      if (rows.length === 0) {
        this.historyBody.appendChild(h("tr", {}, h("td", { colspan: 5, class: "empty" }, "No stored records here.")));
      }
      const last = rows.length ? rows[rows.length - 1]!.seq : o.after;
      this.historyInfo.textContent = rows.length ? `#${rows[0]!.seq} – #${last}` : `after #${o.after}`;
      this.olderButton.disabled = o.after === 0;
      this.newerButton.disabled = o.head !== undefined ? o.after + PAGE_SIZE >= o.head : rows.length < PAGE_SIZE;
    } catch (err) {
      replace(this.historyBody);
      this.errors.show("History", err);
      this.olderButton.disabled = o.after === 0;
      this.newerButton.disabled = false;
    }
  }

  private toggleTail(): void {
    if (this.tail) this.stopTail();
    else void this.startTail();
  }

  private stopTail(): void {
    this.tail?.abort();
    this.tail = undefined;
    this.tailButton.textContent = "Tail live";
    this.setTailStatus("stopped");
  }

  private setTailStatus(status: "connecting" | "live" | "stopped" | "failed"): void {
    this.tailStatus.textContent = status;
    this.tailStatus.setAttribute("data-state", status);
  }

  /** Follows the stream from its head as opened: nothing after it is missed, nothing before it shown. */
  private async startTail(): Promise<void> {
    const o = this.opened;
    if (!o) return;
    const controller = new AbortController();
    this.tail = controller;
    this.tailButton.textContent = "Stop";
    this.setTailStatus("connecting");
    let after = o.head ?? 0;
    try {
      const stream = openStream(o.kind, o.key, after, this.me(), controller.signal, () => {
        if (!controller.signal.aborted) this.setTailStatus("live");
      });
      for await (const row of stream) {
        this.setTailStatus("live");
        if (row.seq > after) {
          after = row.seq;
          // The stream grew: its newer pages can be read now.
          if (this.opened === o && o.head !== undefined && row.seq > o.head) {
            o.head = row.seq;
            this.showHead();
            this.newerButton.disabled = o.after + PAGE_SIZE >= o.head;
          }
        }
        stickToBottom(this.tailScroll, () => {
          this.tailBody.appendChild(rowElement(row, "tail-record"));
          while (this.tailBody.childElementCount > TAIL_ROWS) this.tailBody.firstElementChild?.remove();
        });
      }
      if (this.tail === controller) {
        this.tail = undefined;
        this.tailButton.textContent = "Tail live";
        this.setTailStatus("stopped");
      }
    } catch (err) {
      if (isAbort(err) && controller.signal.aborted) return;
      if (this.tail === controller) {
        this.tail = undefined;
        this.tailButton.textContent = "Tail live";
        this.setTailStatus("failed");
        this.errors.show("Live tail", err);
      }
    }
  }
}

function table(body: HTMLTableSectionElement): HTMLTableElement {
  return h(
    "table",
    { class: "records" },
    h("thead", {}, h("tr", {}, h("th", { class: "num" }, "Seq"), h("th", {}, "Time"), h("th", {}, "Who"), h("th", {}, "What"), h("th", {}, "Detail"))),
    body,
  );
}

function rowElement(r: Row, testid: string): HTMLTableRowElement {
  return h(
    "tr",
    { testid, "data-seq": r.seq, "data-id": r.id, title: r.id ? `id ${r.id}` : undefined },
    h("td", { class: "num" }, r.seq > 0 ? r.seq : "·"),
    h("td", { class: "time" }, formatTime(r.time)),
    h("td", {}, r.who),
    h("td", {}, r.what),
    h("td", { class: "detail-cell" }, r.detail),
  );
}
