// A time-series chart as plain SVG: the mean of each bucket as a line with a dot per bucket,
// the min–max spread as a band, and labelled axes. No library, no canvas, no inline styles
// (the page's Content-Security-Policy allows none): classes only, styled by app.css.

import { svg } from "./dom";

export interface Point {
  /** The bucket's start. */
  t: number;
  mean: number;
  min: number;
  max: number;
  count: number;
}

const W = 760;
const H = 260;
const M = { left: 64, right: 16, top: 12, bottom: 30 };

/** About `count` round tick values covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) {
    const pad = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? raw;
  const ticks: number[] = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1]! < hi) ticks.push(Number((ticks[ticks.length - 1]! + step).toPrecision(12)));
  return ticks;
}

function formatValue(v: number): string {
  const abs = Math.abs(v);
  if (abs !== 0 && (abs >= 1e6 || abs < 1e-3)) return v.toExponential(2);
  return Number(v.toPrecision(6)).toString();
}

function formatClock(ms: number, withDate: boolean): string {
  const d = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, "0");
  const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return withDate ? `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock}` : clock;
}

/** Draws `points` over the time range [start, end) (milliseconds). */
export function drawChart(points: Point[], start: number, end: number, title: string): SVGSVGElement {
  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: "chart",
    role: "img",
    "aria-label": title,
    testid: "metrics-chart-svg",
    "data-points": points.length,
  });
  const x = (t: number) => M.left + ((t - start) / Math.max(end - start, 1)) * (W - M.left - M.right);
  const values = points.flatMap((p) => [p.min, p.max]);
  const ticks = niceTicks(values.length ? Math.min(...values) : 0, values.length ? Math.max(...values) : 1);
  const lo = ticks[0]!;
  const hi = ticks[ticks.length - 1]!;
  const y = (v: number) => M.top + (1 - (v - lo) / Math.max(hi - lo, Number.MIN_VALUE)) * (H - M.top - M.bottom);

  const grid = svg("g", { class: "grid" });
  for (const v of ticks) {
    grid.appendChild(svg("line", { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v) }));
    grid.appendChild(svg("text", { x: M.left - 6, y: y(v) + 4, "text-anchor": "end" }, formatValue(v)));
  }
  const withDate = end - start > 24 * 3600 * 1000;
  for (let i = 0; i <= 5; i++) {
    const t = start + ((end - start) * i) / 5;
    grid.appendChild(svg("line", { x1: x(t), x2: x(t), y1: M.top, y2: H - M.bottom, class: "v" }));
    const anchor = i === 0 ? "start" : i === 5 ? "end" : "middle";
    grid.appendChild(svg("text", { x: x(t), y: H - 10, "text-anchor": anchor }, formatClock(t, withDate)));
  }
  root.appendChild(grid);

  if (points.length === 0) {
    root.appendChild(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty", testid: "metrics-chart-empty" }, "No points in this range"));
    return root;
  }
  const sorted = [...points].sort((a, b) => a.t - b.t);
  const upper = sorted.map((p) => `${x(p.t).toFixed(1)},${y(p.max).toFixed(1)}`);
  const lower = sorted.map((p) => `${x(p.t).toFixed(1)},${y(p.min).toFixed(1)}`).reverse();
  root.appendChild(svg("polygon", { class: "band", points: [...upper, ...lower].join(" ") }));
  root.appendChild(
    svg("polyline", {
      class: "line",
      testid: "metrics-line",
      points: sorted.map((p) => `${x(p.t).toFixed(1)},${y(p.mean).toFixed(1)}`).join(" "),
    }),
  );
  const dots = svg("g", { class: "dots" });
  for (const p of sorted) {
    dots.appendChild(
      svg(
        "circle",
        { cx: x(p.t).toFixed(1), cy: y(p.mean).toFixed(1), r: 3, testid: "metrics-point" },
        svg("title", {}, `${new Date(p.t).toLocaleString()}: mean ${formatValue(p.mean)}, min ${formatValue(p.min)}, max ${formatValue(p.max)}, ${p.count} points`),
      ),
    );
  }
  root.appendChild(dots);
  return root;
}
