// The Files panel: upload a file with tus (tus-js-client against /files/, resumable: pause and
// resume, and a later visit picks an interrupted upload up where it stopped), list the caller's
// own files (ListFiles, newest first), and download one through a fresh signed URL
// (GetFileInfo). The bearer token goes on every tus request; it is never put in a URL.

import * as tus from "tus-js-client";
import { api, authorization, ErrorBox } from "./api";
import { formatBytes, formatTime, h, replace } from "./dom";
import { date } from "./records";
import type { FileMetadata } from "./gen/streaming/v1/streaming_pb";

/** Bytes per PATCH: small enough that pausing loses little, large enough to be quick. */
const CHUNK_BYTES = 4 * 1024 * 1024;
/** Larger files are sent without a whole-file checksum: hashing them would hold them in memory. */
const CHECKSUM_MAX_BYTES = 256 * 1024 * 1024;
const LIST_LIMIT = 20;

export class FilesPanel {
  readonly el: HTMLElement;
  private readonly errors = new ErrorBox("files-error");
  private readonly fileInput = h("input", { type: "file", testid: "files-input" });
  private readonly uploadButton = h("button", { type: "button", testid: "files-upload" }, "Upload");
  private readonly pauseButton = h("button", { type: "button", testid: "files-pause", disabled: true }, "Pause");
  private readonly resumeButton = h("button", { type: "button", testid: "files-resume", disabled: true }, "Resume");
  private readonly progress = h("progress", { max: 1, value: 0, testid: "files-progress" });
  private readonly progressText = h("span", { testid: "files-progress-text" }, "");
  private readonly state = h("span", { class: "status", testid: "files-state", "data-state": "idle" }, "idle");
  private readonly result = h("div", { class: "result", testid: "files-result", hidden: true });
  private readonly listBody = h("tbody", { testid: "files-list" });
  private readonly moreButton = h("button", { type: "button", testid: "files-more", hidden: true }, "More files");
  private upload: tus.Upload | undefined;
  private nextPageToken = "";
  private listGeneration = 0;

  constructor() {
    this.uploadButton.addEventListener("click", () => void this.start());
    this.pauseButton.addEventListener("click", () => void this.pause());
    this.resumeButton.addEventListener("click", () => this.resume());
    this.moreButton.addEventListener("click", () => void this.list(true));
    this.el = h(
      "section",
      { class: "panel", testid: "panel-files" },
      h("h2", {}, "Files"),
      h("h3", {}, "Upload"),
      h("div", { class: "toolbar" }, this.fileInput, this.uploadButton, this.pauseButton, this.resumeButton, this.state),
      h("div", { class: "progress" }, this.progress, this.progressText),
      this.errors.el,
      this.result,
      h("h3", {}, "Your files ", h("button", { type: "button", testid: "files-refresh", onclick: () => void this.list(false) }, "Refresh")),
      h(
        "table",
        {},
        h(
          "thead",
          {},
          h("tr", {}, h("th", {}, "Name"), h("th", { class: "num" }, "Size"), h("th", {}, "Type"), h("th", {}, "Uploaded"), h("th", {}, "SHA-256"), h("th", {}, "")),
        ),
        this.listBody,
      ),
      this.moreButton,
    );
  }

  private setState(state: "idle" | "hashing" | "uploading" | "paused" | "done" | "failed", text: string = state): void {
    this.state.textContent = text;
    this.state.setAttribute("data-state", state);
  }

  private async start(): Promise<void> {
    const file = this.fileInput.files?.[0];
    if (!file) {
      this.errors.show("Upload", "choose a file first");
      return;
    }
    if (this.upload) await this.upload.abort();
    this.errors.clear();
    this.result.hidden = true;
    this.uploadButton.disabled = true;
    const metadata: Record<string, string> = {
      filename: file.name,
      filetype: file.type || "application/octet-stream",
    };
    const checksum = await this.checksum(file);
    if (checksum) metadata.checksum = checksum;
    const upload = new tus.Upload(file, {
      endpoint: `${window.location.origin}/files/`,
      chunkSize: CHUNK_BYTES,
      retryDelays: [0, 1000, 3000, 5000],
      metadata,
      storeFingerprintForResuming: true,
      removeFingerprintOnSuccess: true,
      // The token is read at each request, so a token pasted mid-upload is used from then on.
      onBeforeRequest: (req) => {
        const value = authorization();
        if (value) req.setHeader("Authorization", value);
      },
      onProgress: (sent, total) => this.showProgress(sent, total),
      onSuccess: () => void this.done(upload),
      onError: (err) => this.failed(err),
      onShouldRetry: (err) => {
        // Refusals (auth, quota, checksum) do not change on a retry; network trouble might.
        const status = err.originalResponse?.getStatus() ?? 0;
        return status === 0 || status === 423 || status >= 500;
      },
    });
    this.upload = upload;
    const previous = await upload.findPreviousUploads();
    const resumable = previous.find((p) => p.uploadUrl && p.size === file.size);
    if (resumable) upload.resumeFromPreviousUpload(resumable);
    this.setState("uploading", resumable ? "resuming" : "uploading");
    this.pauseButton.disabled = false;
    this.resumeButton.disabled = true;
    this.showProgress(0, file.size);
    upload.start();
  }

  /** The hex SHA-256 of the whole file, for `Upload-Metadata: checksum`; the server verifies it. */
  private async checksum(file: File): Promise<string | undefined> {
    if (!crypto.subtle || file.size > CHECKSUM_MAX_BYTES) return undefined;
    this.setState("hashing");
    const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  private async pause(): Promise<void> {
    if (!this.upload) return;
    this.pauseButton.disabled = true;
    await this.upload.abort();
    this.setState("paused");
    this.resumeButton.disabled = false;
  }

  private resume(): void {
    if (!this.upload) return;
    this.resumeButton.disabled = true;
    this.pauseButton.disabled = false;
    this.setState("uploading", "resuming");
    this.upload.start();
  }

  private showProgress(sent: number, total: number): void {
    this.progress.max = Math.max(total, 1);
    this.progress.value = sent;
    const percent = total > 0 ? Math.floor((sent / total) * 100) : 0;
    this.progressText.textContent = `${formatBytes(sent)} of ${formatBytes(total)} (${percent}%)`;
    this.progress.setAttribute("data-sent", String(sent));
    this.progress.setAttribute("data-total", String(total));
  }

  private async done(upload: tus.Upload): Promise<void> {
    this.upload = undefined;
    this.uploadButton.disabled = false;
    this.pauseButton.disabled = this.resumeButton.disabled = true;
    const id = upload.url?.split("/").pop() ?? "";
    try {
      const info = await api.getFileInfo({ fileId: id });
      replace(
        this.result,
        h("div", {}, "Stored as ", h("code", { testid: "files-result-id" }, info.fileId), ` (${formatBytes(Number(info.totalSize))})`),
        h("div", {}, "SHA-256 ", h("code", { testid: "files-result-sha256" }, info.checksum)),
        downloadLink(info),
      );
      this.result.setAttribute("data-file-id", info.fileId);
      this.result.hidden = false;
    } catch (err) {
      this.errors.show("GetFileInfo", err);
    }
    await this.list(false);
    // Last, so that "done" means the result and the list show the new file.
    this.setState("done");
  }

  private failed(err: Error | tus.DetailedError): void {
    this.uploadButton.disabled = false;
    this.pauseButton.disabled = true;
    this.resumeButton.disabled = this.upload === undefined;
    this.setState("failed");
    const response = "originalResponse" in err ? err.originalResponse : null;
    const text = response
      ? `HTTP ${response.getStatus()}${response.getBody() ? `: ${response.getBody().trim()}` : ""}`
      : err.message;
    this.errors.show("Upload", text);
  }

  async list(more: boolean): Promise<void> {
    // Only the answer to the latest request is shown (a refresh and an upload's end can overlap).
    const generation = ++this.listGeneration;
    try {
      const page = await api.listFiles({ pageToken: more ? this.nextPageToken : "", limit: LIST_LIMIT });
      if (generation !== this.listGeneration) return;
      if (!more) replace(this.listBody);
      for (const f of page.files) this.listBody.appendChild(fileRow(f, this.downloadButton(f.fileId)));
      if (this.listBody.childElementCount === 0) {
        this.listBody.appendChild(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No files yet.")));
      }
      this.nextPageToken = page.nextPageToken;
      this.moreButton.hidden = page.nextPageToken === "";
    } catch (err) {
      if (generation !== this.listGeneration) return;
      this.errors.show("ListFiles", err);
    }
  }

  /** Asks GetFileInfo for a fresh signed URL at the click (a listed one may have expired), then follows it. */
  private downloadButton(fileId: string): HTMLButtonElement {
    const button = h("button", { type: "button", testid: "files-download" }, "Download");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const link = downloadLink(await api.getFileInfo({ fileId }));
        if (link instanceof HTMLAnchorElement) link.click();
      } catch (err) {
        this.errors.show("GetFileInfo", err);
      } finally {
        button.disabled = false;
      }
    });
    return button;
  }
}

function fileRow(f: FileMetadata, download: HTMLElement): HTMLTableRowElement {
  return h(
    "tr",
    { testid: "files-row", "data-file-id": f.fileId },
    h("td", { class: "key" }, f.filename),
    h("td", { class: "num" }, formatBytes(Number(f.totalSize))),
    h("td", {}, f.contentType),
    h("td", { class: "time" }, formatTime(date(f.createdAt))),
    h("td", {}, h("code", { title: f.checksum }, f.checksum.slice(0, 12))),
    h("td", {}, download),
  );
}

/** A link to the signed URL that GetFileInfo returned. */
function downloadLink(info: FileMetadata): HTMLElement {
  if (!info.downloadUrl) return h("span", { class: "muted" }, "no download URL");
  const href = new URL(info.downloadUrl, window.location.origin).toString();
  return h("a", { href, download: info.filename, testid: "files-result-download" }, "Download");
}

