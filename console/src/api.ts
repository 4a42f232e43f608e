// The one client of the streamhub API: gRPC-Web on the page's own origin, through
// @connectrpc/connect-web, with the bearer token (if any) added by an interceptor. The token
// lives in sessionStorage only: it is gone when the tab closes, and is never written to
// localStorage, a cookie or the URL.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { StreamingService } from "./gen/streaming/v1/streaming_pb";
import { h, replace } from "./dom";

const TOKEN_KEY = "streamhub.console.token";

/** The token as sent, without a pasted `Bearer ` prefix; empty when none is set. */
export function getToken(): string {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? "";
  } catch {
    return "";
  }
}

export function setToken(token: string): void {
  const bare = token.trim().replace(/^bearer\s+/i, "").trim();
  try {
    if (bare) sessionStorage.setItem(TOKEN_KEY, bare);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: the token cannot be kept, and calls go without it.
  }
}

/** The `authorization` header for the current token, or undefined. */
export function authorization(): string | undefined {
  const token = getToken();
  return token ? `Bearer ${token}` : undefined;
}

const bearer: Interceptor = (next) => async (req) => {
  const value = authorization();
  if (value) req.header.set("authorization", value);
  return next(req);
};

export const api = createClient(
  StreamingService,
  createGrpcWebTransport({ baseUrl: window.location.origin, interceptors: [bearer] }),
);

/** The claims of a JWT that the console shows (unverified: the server is the judge). */
export interface Claims {
  sub?: string;
  role?: string;
  exp?: number;
}

export function tokenClaims(token = getToken()): Claims | undefined {
  const payload = token.split(".")[1];
  if (!payload) return undefined;
  try {
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
    const claims: unknown = JSON.parse(json);
    return typeof claims === "object" && claims !== null ? (claims as Claims) : undefined;
  } catch {
    return undefined;
  }
}

/** `PERMISSION_DENIED`: the gRPC name of a status code. */
export function codeName(code: Code): string {
  return (Code[code] ?? String(code)).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** An error as people should read it: the gRPC status name and number, then the server's message. */
export function describeError(err: unknown): string {
  const e = ConnectError.from(err);
  return `${codeName(e.code)} (grpc-status ${e.code}): ${e.rawMessage}`;
}

export function isAbort(err: unknown): boolean {
  return ConnectError.from(err).code === Code.Canceled;
}

/** A box that shows the last error of one panel, or nothing. */
export class ErrorBox {
  readonly el: HTMLElement;
  constructor(testid: string) {
    this.el = h("div", { class: "error", role: "alert", testid, hidden: true });
  }
  show(context: string, err: unknown): void {
    const text = typeof err === "string" ? err : describeError(err);
    replace(this.el, h("strong", {}, `${context}: `), text);
    this.el.hidden = false;
    this.el.setAttribute("data-code", err instanceof ConnectError ? codeName(err.code) : "");
  }
  clear(): void {
    replace(this.el);
    this.el.hidden = true;
  }
}
