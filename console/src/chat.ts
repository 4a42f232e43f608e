// The Chat panel: join a room (JoinRoom, present while the stream is open), see its recent
// history and live messages with join and leave notices and who is typing, load older pages
// (GetChatHistory), and post (SendChatMessage, TEXT; TYPING while composing). Message text is
// shown as text, never as HTML.

import { Code, ConnectError } from "@connectrpc/connect";
import { ChatMessageType, type ChatMessage } from "./gen/streaming/v1/streaming_pb";
import { api, ErrorBox, isAbort } from "./api";
import { field, formatTime, h, replace, stickToBottom, uuid } from "./dom";
import { date } from "./records";

/** How long someone counts as typing after their last TYPING notice. */
const TYPING_SHOWN_MS = 4000;
/** At most one TYPING notice per this long while composing. */
const TYPING_EVERY_MS = 2000;
const OLDER_PAGE = 50;
/** Reconnection backoff after the stream fails for a reason a retry can fix. */
const RETRY_MS = [1000, 2000, 5000, 10000, 30000];

export class ChatPanel {
  readonly el: HTMLElement;
  private readonly me: () => string;
  private readonly errors = new ErrorBox("chat-error");
  private readonly roomInput = h("input", { type: "text", value: "lobby", testid: "chat-room" });
  private readonly userInput = h("input", { type: "text", testid: "chat-user" });
  private readonly joinButton = h("button", { type: "button", testid: "chat-join" }, "Join");
  private readonly leaveButton = h("button", { type: "button", testid: "chat-leave", disabled: true }, "Leave");
  private readonly olderButton = h("button", { type: "button", testid: "chat-older", hidden: true }, "Load older messages");
  private readonly status = h("span", { class: "status", testid: "chat-status", "data-state": "left" }, "not joined");
  private readonly messages = h("ol", { class: "messages", testid: "chat-messages" });
  private readonly typing = h("div", { class: "typing", testid: "chat-typing", "aria-live": "polite" });
  private readonly input = h("input", { type: "text", placeholder: "Message", testid: "chat-input", disabled: true, maxlength: 16384 });
  private readonly sendButton = h("button", { type: "submit", testid: "chat-send", disabled: true }, "Send");
  /** Shown messages by sequence, so that the stream and SendChatMessage's answer show one copy. */
  private readonly bySeq = new Map<number, HTMLElement>();
  private readonly typists = new Map<string, ReturnType<typeof setTimeout>>();
  private session: { room: string; user: string; controller: AbortController; last: number } | undefined;
  private lastTypingSent = 0;

  constructor(me: () => string) {
    this.me = me;
    this.joinButton.addEventListener("click", () => this.join());
    this.leaveButton.addEventListener("click", () => this.leave());
    this.olderButton.addEventListener("click", () => void this.loadOlder());
    this.input.addEventListener("input", () => void this.sendTyping());
    const form = h("form", { class: "compose", testid: "chat-form" }, this.input, this.sendButton);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      void this.send();
    });
    for (const input of [this.roomInput, this.userInput]) {
      input.addEventListener("keydown", (e) => {
        if (e.key === "Enter") this.join();
      });
    }
    this.el = h(
      "section",
      { class: "panel", testid: "panel-chat" },
      h("h2", {}, "Chat"),
      h(
        "div",
        { class: "toolbar" },
        field("Room", this.roomInput),
        field("As user", this.userInput),
        this.joinButton,
        this.leaveButton,
        this.status,
      ),
      this.errors.el,
      h("div", { class: "chat" }, this.olderButton, this.messages, this.typing, form),
    );
  }

  /** Fills the user box with the token's subject when the person has not typed one. */
  refreshIdentity(): void {
    if (!this.session && (this.userInput.value === "" || this.userInput.dataset.auto === "1")) {
      this.userInput.value = this.me();
      this.userInput.dataset.auto = "1";
    }
  }

  private setStatus(state: "joining" | "joined" | "left" | "retrying" | "failed", text: string): void {
    this.status.textContent = text;
    this.status.setAttribute("data-state", state);
  }

  join(): void {
    const room = this.roomInput.value.trim();
    const user = this.userInput.value.trim();
    if (!room || !user) {
      this.errors.show("Join", "a room and a user are required");
      return;
    }
    this.leave();
    this.errors.clear();
    replace(this.messages);
    this.bySeq.clear();
    this.session = { room, user, controller: new AbortController(), last: 0 };
    this.roomInput.disabled = this.userInput.disabled = this.joinButton.disabled = true;
    this.leaveButton.disabled = false;
    this.olderButton.hidden = true;
    void this.follow(this.session, 0);
  }

  leave(): void {
    if (!this.session) return;
    this.session.controller.abort();
    this.session = undefined;
    this.roomInput.disabled = this.userInput.disabled = this.joinButton.disabled = false;
    this.leaveButton.disabled = true;
    this.input.disabled = this.sendButton.disabled = true;
    for (const timer of this.typists.values()) clearTimeout(timer);
    this.typists.clear();
    this.renderTyping();
    this.setStatus("left", "not joined");
  }

  /** Keeps one JoinRoom stream open, rejoining after the last sequence seen when it drops. */
  private async follow(session: NonNullable<ChatPanel["session"]>, attempt: number): Promise<void> {
    this.setStatus("joining", `joining ${session.room}…`);
    const signal = session.controller.signal;
    try {
      const stream = api.joinRoom(
        { roomId: session.room, userId: session.user, afterSequence: BigInt(session.last) },
        {
          signal,
          onHeader: () => {
            if (this.session === session) this.onJoined(session);
          },
        },
      );
      for await (const message of stream) {
        if (this.session !== session) return;
        this.onJoined(session);
        attempt = 0;
        this.receive(message);
      }
      if (this.session === session) {
        // The server ended the stream (it is shutting down): rejoin like after a failure.
        throw new ConnectError("the server ended the room's stream", Code.Unavailable);
      }
    } catch (err) {
      if (this.session !== session || (isAbort(err) && signal.aborted)) return;
      const code = ConnectError.from(err).code;
      const retryable = [Code.Unavailable, Code.Unknown, Code.Internal, Code.Aborted, Code.DeadlineExceeded].includes(code);
      this.errors.show("JoinRoom", err);
      if (!retryable) {
        this.leave();
        this.setStatus("failed", "not joined");
        return;
      }
      const wait = RETRY_MS[Math.min(attempt, RETRY_MS.length - 1)]!;
      this.setStatus("retrying", `reconnecting in ${wait / 1000} s`);
      this.input.disabled = this.sendButton.disabled = true;
      await new Promise((resolve) => setTimeout(resolve, wait));
      if (this.session === session) void this.follow(session, attempt + 1);
    }
  }

  private onJoined(session: NonNullable<ChatPanel["session"]>): void {
    if (this.status.getAttribute("data-state") === "joined") return;
    this.setStatus("joined", `in ${session.room} as ${session.user}`);
    this.errors.clear();
    this.input.disabled = this.sendButton.disabled = false;
  }

  private receive(message: ChatMessage): void {
    if (message.type === ChatMessageType.TYPING) {
      // An empty TYPING notice means "stopped typing", as `streamhub chat` reads it too.
      if (message.userId === this.session?.user) return;
      if (message.content === "") this.stopTyping(message.userId);
      else this.showTyping(message.userId);
      return;
    }
    this.stopTyping(message.userId);
    this.show(message);
  }

  /** Shows a stored message in sequence order, once. */
  private show(message: ChatMessage, stick = true): void {
    const seq = Number(message.sequence);
    if (this.session && seq > this.session.last) this.session.last = seq;
    if (seq > 0 && this.bySeq.has(seq)) return;
    const system = message.type === ChatMessageType.SYSTEM;
    const mine = message.userId === this.session?.user && !system;
    const el = h(
      "li",
      {
        class: system ? "notice" : mine ? "mine" : "",
        testid: system ? "chat-notice" : "chat-message",
        "data-seq": seq,
        "data-user": message.userId,
        "data-id": message.id,
      },
      h("span", { class: "seq" }, `#${seq}`),
      h("time", { title: formatTime(date(message.timestamp)) }, formatTime(date(message.timestamp)).slice(11)),
      system ? null : h("span", { class: "user" }, message.userId),
      system ? null : message.type === ChatMessageType.TEXT ? null : h("span", { class: "badge" }, ChatMessageType[message.type] ?? ""),
      h("span", { class: "content", testid: "chat-content" }, message.content),
    );
    if (seq > 0) this.bySeq.set(seq, el);
    const later = [...this.bySeq.entries()].filter(([s]) => s > seq).sort(([a], [b]) => a - b)[0];
    const insert = () => {
      if (later) this.messages.insertBefore(el, later[1]);
      else this.messages.appendChild(el);
    };
    if (stick) stickToBottom(this.messages, insert);
    else insert();
    const first = Math.min(...this.bySeq.keys());
    this.olderButton.hidden = !(first > 1);
  }

  private async loadOlder(): Promise<void> {
    const session = this.session;
    if (!session || this.bySeq.size === 0) return;
    const first = Math.min(...this.bySeq.keys());
    try {
      const page = await api.getChatHistory({ roomId: session.room, beforeSequence: BigInt(first), limit: OLDER_PAGE });
      if (this.session !== session) return;
      // Keep the messages in view where they are while older ones go in above them.
      const height = this.messages.scrollHeight;
      const top = this.messages.scrollTop;
      for (const message of page.messages) this.show(message, false);
      this.messages.scrollTop = top + this.messages.scrollHeight - height;
      this.olderButton.hidden = !page.hasMore;
    } catch (err) {
      this.errors.show("GetChatHistory", err);
    }
  }

  private async send(): Promise<void> {
    const session = this.session;
    const content = this.input.value;
    if (!session || content.trim() === "") return;
    this.sendButton.disabled = true;
    try {
      const stored = await api.sendChatMessage({
        id: uuid(),
        roomId: session.room,
        userId: session.user,
        content,
        type: ChatMessageType.TEXT,
      });
      if (this.session === session) {
        this.show(stored);
        this.input.value = "";
        this.errors.clear();
      }
    } catch (err) {
      this.errors.show("SendChatMessage", err);
    } finally {
      if (this.session === session) this.sendButton.disabled = false;
      this.input.focus();
    }
  }

  /** Tells the room that this user is typing, at most once per TYPING_EVERY_MS. */
  private async sendTyping(): Promise<void> {
    const session = this.session;
    const now = Date.now();
    if (!session || this.input.value === "" || now - this.lastTypingSent < TYPING_EVERY_MS) return;
    this.lastTypingSent = now;
    try {
      await api.sendChatMessage({ roomId: session.room, userId: session.user, type: ChatMessageType.TYPING, content: "typing" });
    } catch (err) {
      this.errors.show("SendChatMessage (typing)", err);
    }
  }

  private showTyping(user: string): void {
    clearTimeout(this.typists.get(user));
    this.typists.set(
      user,
      setTimeout(() => this.stopTyping(user), TYPING_SHOWN_MS),
    );
    this.renderTyping();
  }

  private stopTyping(user: string): void {
    if (!this.typists.has(user)) return;
    clearTimeout(this.typists.get(user));
    this.typists.delete(user);
    this.renderTyping();
  }

  private renderTyping(): void {
    const users = [...this.typists.keys()].sort();
    this.typing.textContent =
      users.length === 0 ? "" : users.length === 1 ? `${users[0]} is typing…` : `${users.join(", ")} are typing…`;
    this.typing.setAttribute("data-users", users.join(","));
  }
}
