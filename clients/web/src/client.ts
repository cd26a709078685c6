// A small typed talkwire client for browsers: one session over the web gateway's WebSocket.
//
// Frames are the generated ConverseRequest / ConverseResponse types (./gen, from the protos)
// in the proto3 JSON mapping. The client keeps session_id, resume_token and last_seq in a
// StateStore (sessionStorage by default), resumes after a drop or a page reload, delivers each
// durable frame once (deduplicated by seq) and acks it after the caller has rendered it.

import { create, fromJsonString, toJsonString, type JsonObject } from "@bufbuild/protobuf";
import {
  ConverseRequestSchema,
  ConverseResponseSchema,
  OpenSchema,
  UserActionSchema,
  UserMessageSchema,
  AckSchema,
  type ConverseRequest,
  type ConverseResponse,
} from "./gen/talkwire/v1/chat_pb";

export type { ConverseRequest, ConverseResponse };

/** What survives a reload: the session, the last rendered seq, and what the page showed. */
export interface SavedSession<T> {
  sessionId: string;
  resumeToken: string;
  lastSeq: string; // a uint64 as text (sessionStorage holds strings)
  transcript: T[];
}

export interface StateStore<T> {
  load(): SavedSession<T> | null;
  save(state: SavedSession<T>): void;
  clear(): void;
}

/** Keeps the session in window.sessionStorage (one tab, survives reloads). */
export class SessionStorageStore<T> implements StateStore<T> {
  constructor(private readonly key: string = "talkwire.session") {}
  load(): SavedSession<T> | null {
    const raw = window.sessionStorage.getItem(this.key);
    if (!raw) return null;
    try {
      return JSON.parse(raw) as SavedSession<T>;
    } catch {
      return null;
    }
  }
  save(state: SavedSession<T>): void {
    window.sessionStorage.setItem(this.key, JSON.stringify(state));
  }
  clear(): void {
    window.sessionStorage.removeItem(this.key);
  }
}

export type ConnectionState = "connecting" | "online" | "reconnecting" | "failed";

/** The gRPC status a close code stands for: 4000 + code, or 4100 + code when retriable. */
export interface CloseStatus {
  code: number;
  name: string;
  retriable: boolean;
  message: string;
}

const STATUS_NAMES = [
  "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
  "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
  "UNAUTHENTICATED",
];

export function closeStatus(code: number, reason: string): CloseStatus {
  if (code >= 4100 && code <= 4116) {
    return { code: code - 4100, name: STATUS_NAMES[code - 4100], retriable: true, message: reason };
  }
  if (code >= 4000 && code <= 4016) {
    return { code: code - 4000, name: STATUS_NAMES[code - 4000], retriable: false, message: reason };
  }
  // 1000 normal, 1001 going away, 1006 dropped, 1011/1012/1013 server trouble: try again.
  return { code: -1, name: `WS_${code}`, retriable: code !== 1000, message: reason };
}

export interface ClientOptions<T> {
  /** ws(s)://host/ws */
  url: string;
  /** Sent as the `bearer.<token>` subprotocol (never in the URL). */
  token?: string;
  channel?: string;
  locale?: string;
  store?: StateStore<T>;
  /** A durable or transient frame to show; return the transcript entries it adds. */
  onFrame: (frame: ConverseResponse) => T[];
  onState?: (state: ConnectionState, detail: string) => void;
  /** The first retry waits this long (ms); then doubling up to maxBackoff. */
  backoff?: number;
  maxBackoff?: number;
}

const MAX_TRANSCRIPT = 500;
// RFC 7230 token characters: what a Sec-WebSocket-Protocol entry may hold.
const HEADER_TOKEN = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;

export class TalkwireClient<T> {
  private ws: WebSocket | null = null;
  private readonly store: StateStore<T>;
  private saved: SavedSession<T> | null;
  private attempt = 0;
  private stopped = false;
  private nextId = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly options: ClientOptions<T>) {
    this.store = options.store ?? new SessionStorageStore<T>();
    this.saved = this.store.load();
  }

  /** What the page showed before a reload (render it before connect()). */
  get transcript(): T[] {
    return this.saved?.transcript ?? [];
  }

  get sessionId(): string {
    return this.saved?.sessionId ?? "";
  }

  connect(): void {
    this.stopped = false;
    this.state(this.attempt ? "reconnecting" : "connecting", "");
    const protocols = ["talkwire.v1.json"];
    if (this.tokenInHeader) protocols.push(`bearer.${this.options.token}`);
    const ws = new WebSocket(this.options.url, protocols);
    this.ws = ws;
    ws.onopen = () => this.sendOpen();
    ws.onmessage = (event) => this.receive(String(event.data));
    ws.onclose = (event) => this.closed(event.code, event.reason);
  }

  /** Send free text; returns the frame id (replies carry it as inReplyTo). */
  say(text: string): string {
    return this.send({ case: "message", value: create(UserMessageSchema, { text }) });
  }

  /** Press a quick reply: a structured action that skips the matcher. */
  act(intent: string, parameters: JsonObject = {}, label = ""): string {
    const value = create(UserActionSchema, { intent, label, parameters });
    return this.send({ case: "action", value });
  }

  /** Keep a line the page showed (e.g. the user's own message) across reloads. */
  remember(entry: T): void {
    if (!this.saved) return;
    this.saved.transcript.push(entry);
    this.persist();
  }

  get online(): boolean {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  close(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.ws?.close(1000);
  }

  /** A token that is a valid header token goes in Sec-WebSocket-Protocol, else in the open frame. */
  private get tokenInHeader(): boolean {
    return !!this.options.token && HEADER_TOKEN.test(this.options.token);
  }

  private send(frame: ConverseRequest["frame"], token?: string): string {
    const id = `f${Date.now().toString(36)}-${this.nextId++}`;
    const request = create(ConverseRequestSchema, { id, frame });
    let text = toJsonString(ConverseRequestSchema, request);
    if (token) text = JSON.stringify({ token, ...JSON.parse(text) });
    this.ws?.send(text);
    return id;
  }

  private sendOpen(): void {
    const s = this.saved;
    const open = create(OpenSchema, {
      sessionId: s?.sessionId ?? "",
      resumeToken: s?.resumeToken ?? "",
      lastSeq: BigInt(s?.lastSeq ?? "0"),
      channel: this.options.channel ?? "web",
      locale: this.options.locale ?? navigator.language,
    });
    this.send({ case: "open", value: open }, this.tokenInHeader ? undefined : this.options.token);
  }

  private state(state: ConnectionState, detail: string): void {
    this.options.onState?.(state, detail);
  }

  private receive(data: string): void {
    const frame = fromJsonString(ConverseResponseSchema, data, { ignoreUnknownFields: true });
    if (frame.frame.case === "opened") {
      const o = frame.frame.value;
      const keep = o.resumed && this.saved && this.saved.sessionId === o.sessionId;
      this.saved = {
        sessionId: o.sessionId,
        resumeToken: o.resumeToken,
        lastSeq: keep ? this.saved!.lastSeq : "0",
        transcript: keep ? this.saved!.transcript : [],
      };
      this.persist();
      this.attempt = 0;
      this.state("online", o.resumed ? `resumed, ${o.replayed} frame(s) replayed` : "new session");
      return;
    }
    if (frame.seq > 0n) {
      if (!this.saved || frame.seq <= BigInt(this.saved.lastSeq)) return; // already shown
      const entries = this.options.onFrame(frame);
      this.saved.transcript.push(...entries);
      this.saved.lastSeq = frame.seq.toString();
      this.persist();
      this.send({ case: "ack", value: create(AckSchema, { seq: frame.seq }) });
      return;
    }
    this.options.onFrame(frame);
  }

  private persist(): void {
    if (!this.saved) return;
    const t = this.saved.transcript;
    if (t.length > MAX_TRANSCRIPT) t.splice(0, t.length - MAX_TRANSCRIPT);
    this.store.save(this.saved);
  }

  private closed(code: number, reason: string): void {
    this.ws = null;
    if (this.stopped) return;
    const status = closeStatus(code, reason);
    if (["NOT_FOUND", "PERMISSION_DENIED", "OUT_OF_RANGE", "FAILED_PRECONDITION"].includes(status.name)
        && this.saved) {
      // The session cannot be resumed (expired, or beyond the retained window): say so, start anew.
      this.store.clear();
      this.saved = null;
      this.state("reconnecting", `${status.message || status.name}; starting a new conversation`);
      this.retry();
      return;
    }
    if (!status.retriable) {
      this.state("failed", describe(status));
      return;
    }
    this.state("reconnecting", describe(status));
    this.retry();
  }

  private retry(): void {
    const base = this.options.backoff ?? 250;
    const delay = Math.min(this.options.maxBackoff ?? 5000, base * 2 ** this.attempt);
    this.attempt += 1;
    this.timer = setTimeout(() => this.connect(), delay * (0.5 + Math.random() / 2));
  }
}

function describe(status: CloseStatus): string {
  if (status.name === "UNAUTHENTICATED") {
    return `Sign-in failed: ${status.message || "the server did not accept the token"}`;
  }
  if (status.name === "PERMISSION_DENIED") return `Not allowed: ${status.message}`;
  return status.message || (status.code < 0 ? "connection lost" : status.name);
}
