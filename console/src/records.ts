// What each kind of stream is to the console: how to list its streams, read one page of a
// stream's history, and tail it live, with every record turned into one display row. The
// server decides what a record is; this module only reads and shows.

import { anyUnpack, timestampDate, ValueSchema, StructSchema, type Any, type Timestamp } from "@bufbuild/protobuf/wkt";
import { toJsonString } from "@bufbuild/protobuf";
import {
  ChatMessageType,
  CollaborationEventType,
  StreamKind,
  UserEventType,
  type ChatMessage,
  type CollaborationEvent,
  type Notification,
  type UserEvent,
} from "./gen/streaming/v1/streaming_pb";
import { api, isAbort } from "./api";

export type Kind = "events" | "notifications" | "chat" | "collaboration";

export const KINDS: { kind: Kind; label: string; wire: StreamKind; keyLabel: string }[] = [
  { kind: "events", label: "User events", wire: StreamKind.EVENTS, keyLabel: "user" },
  { kind: "notifications", label: "Notifications", wire: StreamKind.NOTIFICATIONS, keyLabel: "user" },
  { kind: "chat", label: "Chat rooms", wire: StreamKind.CHAT, keyLabel: "room" },
  { kind: "collaboration", label: "Collaboration documents", wire: StreamKind.COLLABORATION, keyLabel: "document" },
];

/** One record as a row of the history or tail table. */
export interface Row {
  /** The stream sequence; 0 for what is relayed and never stored (typing, cursors, presence). */
  seq: number;
  time?: Date;
  id: string;
  who: string;
  what: string;
  detail: string;
}

export function date(ts: Timestamp | undefined): Date | undefined {
  return ts ? timestampDate(ts) : undefined;
}

/** `LOGIN` from `UserEventType.LOGIN`'s number. */
function enumName(e: Record<number, string>, value: number): string {
  return e[value] ?? String(value);
}

/** Event data for people: the JSON of a google.protobuf.Value or Struct, else its type and size. */
export function describeAny(any: Any | undefined): string {
  if (!any || (any.typeUrl === "" && any.value.length === 0)) return "";
  try {
    const value = anyUnpack(any, ValueSchema);
    if (value) return toJsonString(ValueSchema, value);
    const struct = anyUnpack(any, StructSchema);
    if (struct) return toJsonString(StructSchema, struct);
  } catch {
    // Not what its type URL says: shown by type and size below.
  }
  return `${any.typeUrl} (${any.value.length} bytes)`;
}

/** A payload as text when it is UTF-8, else as hex. */
export function describeBytes(bytes: Uint8Array): string {
  if (bytes.length === 0) return "";
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    const hex = Array.from(bytes.slice(0, 64), (b) => b.toString(16).padStart(2, "0")).join("");
    return `0x${hex}${bytes.length > 64 ? "…" : ""} (${bytes.length} bytes)`;
  }
}

export function eventRow(e: UserEvent): Row {
  return {
    seq: Number(e.sequence),
    time: date(e.timestamp),
    id: e.id,
    who: e.userId,
    what: enumName(UserEventType, e.type),
    detail: describeAny(e.data),
  };
}

export function notificationRow(n: Notification): Row {
  const data = describeAny(n.data);
  return {
    seq: Number(n.sequence),
    time: date(n.timestamp),
    id: n.id,
    who: n.userId,
    what: n.topic,
    detail: [n.title, n.body, data].filter((s) => s !== "").join(" · "),
  };
}

export function chatRow(m: ChatMessage): Row {
  return {
    seq: Number(m.sequence),
    time: date(m.timestamp),
    id: m.id,
    who: m.userId,
    what: enumName(ChatMessageType, m.type),
    detail: m.content,
  };
}

export function collabRow(c: CollaborationEvent): Row {
  const base = c.baseSequence === undefined ? "" : ` (base ${c.baseSequence})`;
  return {
    seq: Number(c.sequence),
    time: date(c.timestamp),
    id: c.id,
    who: c.userId,
    what: enumName(CollaborationEventType, c.type) + base,
    detail: describeBytes(c.payload),
  };
}

/** Who the console is in rooms and documents it opens: the token's subject, or `console`. */
export type Identity = () => string;

/** Opens the live server stream of a kind after `after`. */
export function openStream(
  kind: Kind,
  key: string,
  after: number,
  me: string,
  signal: AbortSignal,
  onHeader?: () => void,
): AsyncIterable<Row> {
  const options = { signal, onHeader };
  const afterSequence = BigInt(after);
  switch (kind) {
    case "events":
      return map(api.streamUserEvents({ userId: key, afterSequence }, options), eventRow);
    case "notifications":
      return map(api.subscribeToNotifications({ userId: key, afterSequence }, options), notificationRow);
    case "chat":
      return map(api.joinRoom({ roomId: key, userId: me, afterSequence }, options), chatRow);
    case "collaboration":
      return map(api.openDocument({ documentId: key, userId: me, afterSequence }, options), collabRow);
  }
}

async function* map<T>(source: AsyncIterable<T>, f: (t: T) => Row): AsyncIterable<Row> {
  for await (const item of source) yield f(item);
}

/** How long a history read waits for the next stored record before it calls the page complete. */
const IDLE_MS = 1500;

/**
 * One page of stored records after `after`: at most `size`, none past `head` (when known).
 *
 * Chat reads GetChatHistory. Events replay with `history_only`, which ends by itself. The other
 * kinds have no history-only read, so the page is read from the live stream and the stream is
 * cancelled at the page's end, at `head`, or after a pause with nothing stored arriving
 * (notifications already acknowledged are not replayed, so a page may end early).
 */
export async function readPage(
  kind: Kind,
  key: string,
  after: number,
  size: number,
  head: number | undefined,
  me: string,
): Promise<Row[]> {
  if (kind === "chat") {
    const before = head === undefined ? after + size + 1 : Math.min(after + size, head) + 1;
    const page = await api.getChatHistory({ roomId: key, beforeSequence: BigInt(before), limit: size });
    return page.messages.map(chatRow).filter((r) => r.seq > after);
  }
  const controller = new AbortController();
  const rows: Row[] = [];
  let idle: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    clearTimeout(idle);
    idle = setTimeout(() => controller.abort(), IDLE_MS);
  };
  try {
    const source =
      kind === "events"
        ? map(
            api.streamUserEvents(
              { userId: key, afterSequence: BigInt(after), historyOnly: true },
              { signal: controller.signal },
            ),
            eventRow,
          )
        : openStream(kind, key, after, me, controller.signal);
    if (kind !== "events") arm();
    for await (const row of source) {
      if (row.seq === 0) continue; // presence or cursors: not history
      rows.push(row);
      if (rows.length >= size || (head !== undefined && row.seq >= head)) break;
      if (kind !== "events") arm();
    }
  } catch (err) {
    if (!(isAbort(err) && controller.signal.aborted)) throw err;
  } finally {
    clearTimeout(idle);
    controller.abort();
  }
  return rows;
}
