// The console's shell: the header with the token box, the tabs (Streams, Chat, Files,
// Metrics; the URL's #fragment names the one shown), and the check of whether this server
// wants a token. Everything it shows comes from the server's own API on this origin.

import { Code, ConnectError } from "@connectrpc/connect";
import { api, codeName, getToken, setToken, tokenClaims } from "./api";
import { ChatPanel } from "./chat";
import { h, replace } from "./dom";
import { FilesPanel } from "./files";
import { MetricsPanel } from "./metrics";
import { StreamsPanel } from "./streams";

type Tab = "streams" | "chat" | "files" | "metrics";
const TABS: { tab: Tab; label: string }[] = [
  { tab: "streams", label: "Streams" },
  { tab: "chat", label: "Chat" },
  { tab: "files", label: "Files" },
  { tab: "metrics", label: "Metrics" },
];

/** Who the console is in rooms and documents: the token's subject, or `console` without one. */
function me(): string {
  return tokenClaims()?.sub || "console";
}

class AuthBar {
  readonly el: HTMLElement;
  private readonly status = h("span", { class: "auth-status", testid: "auth-status", "data-state": "checking" }, "checking…");
  private readonly input = h("input", {
    type: "password",
    placeholder: "bearer token (JWT)",
    autocomplete: "off",
    spellcheck: "false",
    testid: "token-input",
  });
  private readonly box: HTMLElement;
  private readonly showButton = h("button", { type: "button", class: "link", testid: "token-show", hidden: true }, "use a token");
  onChange: () => void = () => {};

  constructor() {
    const form = h(
      "form",
      { class: "token", testid: "token-form" },
      this.input,
      h("button", { type: "submit", testid: "token-save" }, "Use token"),
      h("button", { type: "button", testid: "token-clear", onclick: () => this.save("") }, "Forget"),
    );
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.save(this.input.value);
    });
    this.box = form;
    this.showButton.addEventListener("click", () => {
      this.box.hidden = false;
      this.showButton.hidden = true;
      this.input.focus();
    });
    this.el = h("div", { class: "auth" }, this.status, this.showButton, this.box);
  }

  private save(token: string): void {
    setToken(token);
    this.input.value = "";
    void this.probe();
    this.onChange();
  }

  private setStatus(state: string, text: string): void {
    this.status.textContent = text;
    this.status.setAttribute("data-state", state);
  }

  /**
   * Asks the server whether it wants a token with a call that changes nothing
   * (ListMetricSeries, limit 1): UNAUTHENTICATED means auth is on and this token (or none) is
   * refused; any other answer means the token was accepted, or that none is needed.
   */
  async probe(): Promise<void> {
    const token = getToken();
    const claims = tokenClaims(token);
    let code: Code | undefined;
    let message = "";
    try {
      await api.listMetricSeries({ limit: 1 });
    } catch (err) {
      const e = ConnectError.from(err);
      code = e.code;
      message = e.rawMessage;
    }
    const who = claims?.sub ? `${claims.sub}${claims.role ? ` (${claims.role})` : ""}` : "token";
    if (code === Code.Unauthenticated) {
      this.setStatus(token ? "refused" : "required", token ? `token refused: ${message}` : "auth is on: paste a token");
      this.box.hidden = false;
      this.showButton.hidden = true;
    } else if (code === Code.Unavailable || code === Code.Unknown) {
      this.setStatus("unreachable", `server unreachable: ${codeName(code)}: ${message}`);
    } else if (token) {
      this.setStatus("accepted", `signed in as ${who}`);
      this.box.hidden = false;
      this.showButton.hidden = true;
    } else {
      this.setStatus("off", "auth is off");
      this.box.hidden = true;
      this.showButton.hidden = false;
    }
  }
}

function main(): void {
  const root = document.getElementById("app");
  if (!root) return;
  const auth = new AuthBar();
  const streams = new StreamsPanel(me);
  const chat = new ChatPanel(me);
  const files = new FilesPanel();
  const metrics = new MetricsPanel();
  const panels: Record<Tab, HTMLElement> = {
    streams: streams.el,
    chat: chat.el,
    files: files.el,
    metrics: metrics.el,
  };
  const loaded = new Set<Tab>();
  const nav = h(
    "nav",
    { class: "tabs", role: "tablist" },
    ...TABS.map(({ tab, label }) => h("a", { href: `#${tab}`, role: "tab", testid: `tab-${tab}`, "data-tab": tab }, label)),
  );

  /** Shows the tab the fragment names; each tab's first showing loads its list. */
  const show = () => {
    const wanted = window.location.hash.slice(1);
    const tab: Tab = TABS.some((t) => t.tab === wanted) ? (wanted as Tab) : "streams";
    for (const t of TABS) {
      panels[t.tab].hidden = t.tab !== tab;
      nav.querySelector(`[data-tab="${t.tab}"]`)?.setAttribute("aria-selected", String(t.tab === tab));
    }
    metrics.setVisible(tab === "metrics");
    if (tab === "chat") chat.refreshIdentity();
    if (!loaded.has(tab)) {
      loaded.add(tab);
      if (tab === "streams") void streams.list(false);
      if (tab === "files") void files.list(false);
      if (tab === "metrics") {
        void metrics.listSeries();
        void metrics.loadProm();
      }
    }
  };
  auth.onChange = () => {
    chat.refreshIdentity();
    loaded.clear();
    show();
  };

  replace(
    root,
    h(
      "header",
      {},
      h("h1", {}, h("a", { href: "#streams" }, "streamhub"), h("span", { class: "muted" }, " console")),
      nav,
      auth.el,
    ),
    h("main", {}, ...TABS.map((t) => panels[t.tab])),
  );
  window.addEventListener("hashchange", show);
  void auth.probe().then(show);
}

main();
