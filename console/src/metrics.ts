// The Metrics panel: pick a stored series (ListMetricSeries, by name prefix), see it as a chart
// over a time range (QueryMetrics), optionally refreshed every few seconds; and the server's
// own figures from GET /metrics (the Prometheus text), filtered by name.

import type { MetricSeries } from "./gen/streaming/v1/streaming_pb";
import { timestampDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { api, ErrorBox } from "./api";
import { drawChart, type Point } from "./chart";
import { field, h, replace } from "./dom";

const RANGES: { label: string; seconds: number }[] = [
  { label: "5 minutes", seconds: 5 * 60 },
  { label: "15 minutes", seconds: 15 * 60 },
  { label: "1 hour", seconds: 3600 },
  { label: "6 hours", seconds: 6 * 3600 },
  { label: "24 hours", seconds: 24 * 3600 },
  { label: "7 days", seconds: 7 * 24 * 3600 },
];
/** Buckets a chart aims for: enough for a shape, few enough to read. */
const BUCKETS = 120;
const REFRESH_MS = 5000;
const SERIES_LIMIT = 200;

type Labels = Record<string, string>;

/** `name{a="1",b="2"}`, labels sorted, as Prometheus writes a series. */
export function seriesName(name: string, labels: Labels): string {
  const parts = Object.keys(labels)
    .sort()
    .map((k) => `${k}=${JSON.stringify(labels[k])}`);
  return parts.length ? `${name}{${parts.join(",")}}` : name;
}

function sameLabels(a: Labels, b: Labels): boolean {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
}

export class MetricsPanel {
  readonly el: HTMLElement;
  private readonly errors = new ErrorBox("metrics-error");
  private readonly prefixInput = h("input", { type: "search", placeholder: "name prefix", testid: "metrics-prefix" });
  private readonly seriesList = h("ul", { class: "series", testid: "metrics-series-list" });
  private readonly rangeSelect = h(
    "select",
    { testid: "metrics-range" },
    ...RANGES.map((r, i) => h("option", { value: r.seconds, selected: i === 1 }, r.label)),
  );
  private readonly live = h("input", { type: "checkbox", testid: "metrics-live" });
  private readonly chartTitle = h("h3", { testid: "metrics-chart-title" }, "Pick a series");
  private readonly chart = h("div", { class: "chart-box", testid: "metrics-chart" });
  private readonly promFilter = h("input", { type: "search", placeholder: "filter, e.g. rpc", testid: "prom-filter" });
  private readonly promBody = h("tbody", { testid: "prom-table" });
  private readonly promInfo = h("span", { class: "muted", testid: "prom-info" });
  private selected: { name: string; labels: Labels } | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;
  private promText = "";
  private listGeneration = 0;

  constructor() {
    this.prefixInput.addEventListener("keydown", (e) => {
      if (e.key === "Enter") void this.listSeries();
    });
    this.rangeSelect.addEventListener("change", () => void this.query());
    this.live.addEventListener("change", () => this.setLive(this.live.checked));
    this.promFilter.addEventListener("input", () => this.renderProm());
    this.el = h(
      "section",
      { class: "panel", testid: "panel-metrics" },
      h("h2", {}, "Metrics"),
      h(
        "div",
        { class: "toolbar" },
        field("Series", this.prefixInput),
        h("button", { type: "button", testid: "metrics-list", onclick: () => void this.listSeries() }, "List series"),
        h("span", { class: "spacer" }),
        field("Range", this.rangeSelect),
        h("label", { class: "check" }, this.live, "refresh every 5 s"),
        h("button", { type: "button", testid: "metrics-query", onclick: () => void this.query() }, "Query"),
      ),
      this.errors.el,
      h("div", { class: "split" }, h("div", { class: "list" }, this.seriesList), h("div", { class: "detail" }, this.chartTitle, this.chart)),
      h(
        "h3",
        {},
        "Server figures (",
        h("a", { href: "/metrics", target: "_blank", rel: "noopener" }, "/metrics"),
        ") ",
        h("button", { type: "button", testid: "prom-refresh", onclick: () => void this.loadProm() }, "Refresh"),
      ),
      h("div", { class: "toolbar" }, this.promFilter, this.promInfo),
      h(
        "div",
        { class: "scroll prom" },
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Metric"), h("th", {}, "Labels"), h("th", { class: "num" }, "Value"))), this.promBody),
      ),
    );
  }

  /** Stops the refresh timer when the panel is not shown. */
  setVisible(visible: boolean): void {
    if (!visible) this.setLive(false);
    else if (this.live.checked) this.setLive(true);
  }

  private setLive(on: boolean): void {
    clearInterval(this.timer);
    this.timer = on ? setInterval(() => void this.query(), REFRESH_MS) : undefined;
  }

  async listSeries(): Promise<void> {
    this.errors.clear();
    const generation = ++this.listGeneration;
    try {
      const page = await api.listMetricSeries({ namePrefix: this.prefixInput.value, limit: SERIES_LIMIT });
      if (generation !== this.listGeneration) return;
      replace(this.seriesList, ...page.series.map((s) => this.seriesItem(s)));
      if (page.series.length === 0) this.seriesList.appendChild(h("li", { class: "empty" }, "No series."));
    } catch (err) {
      this.errors.show("ListMetricSeries", err);
    }
  }

  private seriesItem(s: MetricSeries): HTMLLIElement {
    const labels: Labels = { ...s.labels };
    const text = seriesName(s.name, labels);
    const button = h("button", { type: "button", class: "link", testid: "metrics-series", "data-name": s.name, "data-series": text }, text);
    button.addEventListener("click", () => {
      this.selected = { name: s.name, labels };
      for (const b of this.seriesList.querySelectorAll("button")) b.classList.toggle("selected", b === button);
      void this.query();
    });
    return h("li", {}, button);
  }

  async query(): Promise<void> {
    const selected = this.selected;
    if (!selected) return;
    const seconds = Number(this.rangeSelect.value);
    const step = Math.max(1, Math.ceil(seconds / BUCKETS));
    // Aligned to the step, so that a refresh keeps the buckets where they were.
    const end = (Math.floor(Date.now() / 1000 / step) + 1) * step * 1000;
    const start = end - seconds * 1000;
    try {
      const answer = await api.queryMetrics({
        name: selected.name,
        labels: selected.labels,
        start: timestampFromMs(start),
        end: timestampFromMs(end),
        stepSeconds: step,
      });
      if (this.selected !== selected) return;
      // The matchers select series that have these labels, maybe with more: show this one.
      const series = answer.series.find((s) => sameLabels({ ...s.labels }, selected.labels));
      const points: Point[] = (series?.buckets ?? []).map((b) => ({
        t: b.start ? timestampDate(b.start).getTime() : start,
        mean: Number(b.count) > 0 ? b.sum / Number(b.count) : 0,
        min: b.min,
        max: b.max,
        count: Number(b.count),
      }));
      const title = seriesName(selected.name, selected.labels);
      const total = points.reduce((n, p) => n + p.count, 0);
      replace(this.chartTitle, title, h("span", { class: "muted" }, ` · ${total} points in ${points.length} buckets of ${step} s`));
      replace(this.chart, drawChart(points, start, end, title));
      this.chart.setAttribute("data-series", title);
      this.chart.setAttribute("data-points", String(total));
      this.errors.clear();
    } catch (err) {
      this.errors.show("QueryMetrics", err);
    }
  }

  /** GET /metrics, the server's own Prometheus text (open without a token). */
  async loadProm(): Promise<void> {
    try {
      const response = await fetch("/metrics", { headers: { accept: "text/plain" } });
      if (!response.ok) throw new Error(`GET /metrics: HTTP ${response.status}`);
      this.promText = await response.text();
      this.renderProm();
    } catch (err) {
      this.errors.show("/metrics", err instanceof Error ? err.message : String(err));
    }
  }

  private renderProm(): void {
    const filter = this.promFilter.value.trim().toLowerCase();
    const samples = parseProm(this.promText);
    const shown = samples.filter((s) => !filter || s.name.toLowerCase().includes(filter) || s.labels.toLowerCase().includes(filter));
    replace(
      this.promBody,
      ...shown.map((s) =>
        h(
          "tr",
          { testid: "prom-row", "data-name": s.name, title: s.help },
          h("td", { class: "key" }, s.name),
          h("td", { class: "labels" }, s.labels),
          h("td", { class: "num" }, s.value),
        ),
      ),
    );
    this.promInfo.textContent = `${shown.length} of ${samples.length} samples`;
  }
}

export interface Sample {
  name: string;
  labels: string;
  value: string;
  help: string;
}

/** The samples of a Prometheus text exposition, each with its family's HELP text. */
export function parseProm(text: string): Sample[] {
  const help = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    const helpLine = /^# HELP (\S+) (.*)$/.exec(line);
    if (helpLine) {
      help.set(helpLine[1]!, helpLine[2]!);
      continue;
    }
    if (line.startsWith("#") || line.trim() === "") continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)/.exec(line);
    if (!sample) continue;
    const name = sample[1]!;
    const family = help.get(name) ?? help.get(name.replace(/_(bucket|sum|count|total)$/, "")) ?? "";
    samples.push({ name, labels: sample[2] ?? "", value: sample[3]!, help: family });
  }
  return samples;
}
