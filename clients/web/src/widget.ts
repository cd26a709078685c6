// The embeddable chat widget: <script src="/widget.js" data-talkwire></script>.
//
// No framework at run time: plain DOM, bundled with the generated types and client by esbuild.
// Attributes of the script tag: data-url (default: this origin's /ws), data-token (or
// #token=... in the page's fragment, never sent to any server), data-title.

import { TalkwireClient, type ConnectionState, type ConverseResponse } from "./client";

/** One line of the conversation, as kept in sessionStorage across reloads. */
export interface Line {
  who: "user" | "bot" | "update" | "error";
  text: string;
  seq?: string;
  buttons?: { label: string; intent: string; parameters: Record<string, unknown> }[];
}

const CSS = `
.tw-chat{font:15px/1.4 system-ui,sans-serif;color:#1c1e21;display:flex;flex-direction:column;
  width:min(420px,100%);height:min(640px,100vh);border:1px solid #d0d4da;border-radius:12px;
  overflow:hidden;background:#fff;box-shadow:0 4px 18px rgba(0,0,0,.08)}
.tw-head{display:flex;align-items:center;justify-content:space-between;padding:12px 14px;
  background:#1f4e79;color:#fff}
.tw-head h2{font-size:16px;margin:0}
.tw-state{font-size:12px;display:flex;align-items:center;gap:6px}
.tw-dot{width:9px;height:9px;border-radius:50%;background:#f0ad4e}
.tw-state[data-state=online] .tw-dot{background:#5cd65c}
.tw-state[data-state=failed] .tw-dot{background:#e74c3c}
.tw-log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:8px;
  background:#f5f7fa;margin:0;list-style:none}
.tw-line{max-width:85%;padding:8px 12px;border-radius:14px;white-space:pre-wrap;word-wrap:break-word}
.tw-user{align-self:flex-end;background:#1f4e79;color:#fff;border-bottom-right-radius:4px}
.tw-bot{align-self:flex-start;background:#fff;border:1px solid #e1e4e8;border-bottom-left-radius:4px}
.tw-update{align-self:stretch;max-width:none;background:#fff8e1;border:1px solid #f3d67a;font-size:14px}
.tw-update::before{content:"Update: ";font-weight:600}
.tw-error{align-self:stretch;max-width:none;background:#fdecea;border:1px solid #f5c2c0;color:#8a1f17}
.tw-buttons{display:flex;flex-wrap:wrap;gap:6px;margin-top:6px}
.tw-buttons button{font:inherit;font-size:13px;padding:4px 10px;border-radius:14px;cursor:pointer;
  border:1px solid #1f4e79;background:#fff;color:#1f4e79}
.tw-buttons button:focus-visible,.tw-form button:focus-visible,.tw-form input:focus-visible{
  outline:3px solid #ffbf47;outline-offset:1px}
.tw-notice{padding:8px 12px;font-size:13px;background:#fdecea;color:#8a1f17;border-top:1px solid #f5c2c0}
.tw-notice[hidden]{display:none}
.tw-form{display:flex;gap:8px;padding:10px;border-top:1px solid #e1e4e8}
.tw-form input{flex:1;font:inherit;padding:9px 12px;border:1px solid #c4c9d0;border-radius:18px;min-width:0}
.tw-form button{font:inherit;padding:8px 16px;border:0;border-radius:18px;background:#1f4e79;color:#fff;cursor:pointer}
.tw-form button:disabled{background:#9aa5b1;cursor:default}
.tw-sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
`;

const STATE_TEXT: Record<ConnectionState, string> = {
  connecting: "Connecting…",
  online: "Online",
  reconnecting: "Reconnecting…",
  failed: "Offline",
};

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K, attrs: Record<string, string> = {}, text = "",
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

export interface WidgetOptions {
  url: string;
  token?: string;
  title?: string;
}

/** Mount a chat into `host`; returns its client. */
export function mount(host: HTMLElement, options: WidgetOptions): TalkwireClient<Line> {
  if (!document.getElementById("tw-style")) {
    document.head.append(el("style", { id: "tw-style" }, CSS));
  }
  const root = el("section", { class: "tw-chat", "aria-label": options.title ?? "Chat" });
  const head = el("header", { class: "tw-head" });
  const state = el("div", { class: "tw-state", role: "status", "data-state": "connecting" });
  const stateText = el("span", { class: "tw-state-text" }, STATE_TEXT.connecting);
  state.append(el("span", { class: "tw-dot", "aria-hidden": "true" }), stateText);
  head.append(el("h2", {}, options.title ?? "Chat"), state);
  const log = el("ol", { class: "tw-log", "aria-live": "polite", "aria-label": "Conversation" });
  const notice = el("div", { class: "tw-notice", role: "alert", hidden: "" });
  const form = el("form", { class: "tw-form" });
  const label = el("label", { for: "tw-input", class: "tw-sr" }, "Your message");
  const input = el("input", {
    id: "tw-input", type: "text", autocomplete: "off", maxlength: "4000",
    placeholder: "Type a message…", enterkeyhint: "send",
  });
  const send = el("button", { type: "submit" }, "Send");
  form.append(label, input, send);
  root.append(head, log, notice, form);
  host.append(root);

  const render = (line: Line): void => {
    const item = el("li", { class: `tw-line tw-${line.who}` }, line.text);
    if (line.seq) item.dataset.seq = line.seq;
    if (line.buttons?.length) {
      const row = el("div", { class: "tw-buttons", role: "group", "aria-label": "Suggestions" });
      for (const b of line.buttons) {
        const button = el("button", { type: "button" }, b.label);
        button.addEventListener("click", () => {
          if (!client.online) return;
          client.act(b.intent, b.parameters as never, b.label);
          user(b.label);
        });
        row.append(button);
      }
      item.append(row);
    }
    log.append(item);
    log.scrollTop = log.scrollHeight;
  };

  const linesOf = (frame: ConverseResponse): Line[] => {
    const seq = frame.seq > 0n ? frame.seq.toString() : undefined;
    const f = frame.frame;
    const buttons = (qrs: { label: string; intent: string; parameters?: unknown }[]) =>
      qrs.map((q) => ({
        label: q.label, intent: q.intent,
        parameters: (q.parameters ?? {}) as Record<string, unknown>,
      }));
    switch (f.case) {
      case "reply":
        return [{ who: "bot", text: f.value.text, seq, buttons: buttons(f.value.quickReplies) }];
      case "prompt":
        return [{ who: "bot", text: f.value.text, seq, buttons: buttons(f.value.quickReplies) }];
      case "update":
        return [{ who: "update", text: f.value.text || `${f.value.type} ${f.value.key}`, seq }];
      case "error":
        return [{ who: "error", text: f.value.message, seq }];
      default:
        return []; // subscription confirmations and pongs are not shown
    }
  };

  const client = new TalkwireClient<Line>({
    url: options.url,
    token: options.token,
    onFrame: (frame) => {
      const lines = linesOf(frame);
      lines.forEach(render);
      return lines;
    },
    onState: (s, detail) => {
      state.dataset.state = s;
      stateText.textContent = STATE_TEXT[s];
      const blocked = s !== "online";
      send.disabled = blocked;
      if (s === "failed" || (s === "reconnecting" && detail)) {
        notice.textContent = s === "failed" ? detail : `Connection lost (${detail}); reconnecting…`;
        notice.hidden = false;
      } else if (s === "online") {
        notice.hidden = true;
      }
    },
  });

  const user = (text: string): void => {
    const line: Line = { who: "user", text };
    render(line);
    client.remember(line);
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || !client.online) return;
    client.say(text);
    user(text);
    input.value = "";
    input.focus();
  });

  client.transcript.forEach(render);
  client.connect();
  return client;
}

function autostart(): void {
  const script = document.querySelector<HTMLScriptElement>("script[data-talkwire]");
  if (!script) return;
  const here = new URL(script.src, location.href);
  const wsUrl = script.dataset.url
    ?? `${here.protocol === "https:" ? "wss" : "ws"}://${here.host}/ws`;
  const fragment = new URLSearchParams(location.hash.slice(1));
  const host = document.getElementById(script.dataset.target ?? "talkwire") ?? document.body;
  mount(host, {
    url: wsUrl,
    token: script.dataset.token ?? fragment.get("token") ?? undefined,
    title: script.dataset.title,
  });
}

(window as unknown as { talkwire: unknown }).talkwire = { mount };
if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", autostart);
} else {
  autostart();
}
