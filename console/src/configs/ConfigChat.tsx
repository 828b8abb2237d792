// The configuration assistant beside the editor: the seed's POST /api/v1/client-config/chat. The
// agent classifies the request, proposes the changes with their current and proposed values, type,
// confidence and risk, and previews them; "Apply these changes" answers it yes, and it writes the
// version through the usual versions and approvals.
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Link } from "react-router";
import { api, call } from "../api/client";
import type { ChatAnswer, ConfigView, DetectedChange } from "../api/types";
import { ErrorNotice, Field, RiskBadge } from "../ui/components";
import { keys, LIST_PATH, notePosition } from "./queries";

export const CHAT_PATH = "/api/v1/client-config/chat";
const YES = "Yes, apply these changes.";
const NO = "No, discard them.";

interface Turn {
  from: "you" | "assistant";
  text: string;
  answer?: ChatAnswer;
}

function shown(value: unknown): string {
  if (value === null || value === undefined) return "none";
  if (typeof value === "string") return value;
  if (Array.isArray(value)) return value.map(String).join(", ") || "none";
  return JSON.stringify(value);
}

function ProposedChange({ change }: { change: DetectedChange }) {
  const unsure = change.confidence < change.confidence_threshold;
  return (
    <li className="stack" style={{ gap: "0.25rem" }}>
      <div>
        <strong>{change.summary}</strong> <RiskBadge level={change.risk_level} />
      </div>
      <div className="muted small">
        {change.type} · confidence {Math.round(change.confidence * 100)} %{unsure && " (not sure: check it)"}
        {change.tool_status && ` · ${change.tool_status === "implemented" ? "implemented and ready" : "not implemented yet"}`}
      </div>
      <dl className="small" style={{ margin: 0 }}>
        <dt>Current</dt>
        <dd style={{ whiteSpace: "pre-wrap" }}>{shown(change.current_value)}</dd>
        <dt>Proposed</dt>
        <dd style={{ whiteSpace: "pre-wrap" }}>{shown(change.proposed_value)}</dd>
      </dl>
    </li>
  );
}

/** A console path from the API's preview URL (the console is served under /console). */
function consolePath(url: string): string {
  return url.startsWith("/console") ? url.slice("/console".length) || "/" : url;
}

export function ConfigChat({ config }: { config: ConfigView }) {
  const client = useQueryClient();
  const [turns, setTurns] = useState<Turn[]>([]);
  const [text, setText] = useState("");
  const [conversationId, setConversationId] = useState<string | null>(null);
  const chat = useMutation({
    mutationFn: (message: string) =>
      call<ChatAnswer>(
        api.POST("/api/v1/client-config/chat", {
          body: {
            config_id: config.config_id,
            message,
            product_type: config.product_type,
            ...(conversationId ? { conversation_id: conversationId } : {}),
          },
        }),
      ),
    onSuccess: async (answer) => {
      setConversationId(answer.conversation_id);
      setTurns((t) => [...t, { from: "assistant", text: answer.response, answer }]);
      if (answer.version) {
        notePosition(config.config_id, answer);
        await Promise.all([
          client.invalidateQueries({ queryKey: keys.versions(config.config_id) }),
          client.invalidateQueries({ queryKey: keys.config(config.config_id) }),
          client.invalidateQueries({ queryKey: [LIST_PATH] }),
        ]);
      }
    },
  });
  const send = (message: string) => {
    setTurns((t) => [...t, { from: "you", text: message }]);
    chat.mutate(message);
  };
  const last = turns.at(-1);
  const open = !chat.isPending && last?.from === "assistant" && last.answer?.status === "proposed";

  return (
    <aside className="panel stack" aria-labelledby="config-chat">
      <h2 id="config-chat" style={{ marginTop: 0 }}>
        Configuration assistant
      </h2>
      <p className="muted small" style={{ margin: 0 }}>
        Ask for a change in your own words (“make the bot more formal and add the refund tool”): it proposes the changes with their risk, and applies them through the usual
        versions and approvals.
      </p>
      <div className="chat" role="log" aria-live="polite" aria-label="Assistant conversation">
        {turns.map((t, i) => (
          <div key={i} className={`bubble ${t.from === "you" ? "user" : "assistant"}`}>
            <div className="meta">{t.from}</div>
            {t.answer && t.answer.detected_changes.length > 0 && t.answer.status === "proposed" ? (
              <>
                <div>
                  {t.answer.detected_changes.length === 1 ? "One change" : `${t.answer.detected_changes.length} changes`} proposed
                  {t.answer.preview && (
                    <>
                      {" "}
                      · overall <RiskBadge level={t.answer.preview.risk_assessment.risk_level} />
                    </>
                  )}
                </div>
                <ol aria-label="Proposed changes">
                  {t.answer.detected_changes.map((c, k) => (
                    <ProposedChange key={k} change={c} />
                  ))}
                </ol>
                <div className="small">{t.answer.requires_approval ? "Once applied, an approver must accept it before it goes live." : "It goes live as soon as it is applied."}</div>
              </>
            ) : (
              <div style={{ whiteSpace: "pre-wrap" }} role={t.answer?.version ? "status" : undefined}>
                {t.text}
              </div>
            )}
            {t.answer?.preview_url && (
              <div className="small">
                <Link to={consolePath(t.answer.preview_url)}>See the changes</Link>
              </div>
            )}
          </div>
        ))}
      </div>
      {open && (
        <div className="row">
          <button type="button" onClick={() => send(YES)}>
            Apply these changes
          </button>
          <button type="button" className="secondary" onClick={() => send(NO)}>
            Discard
          </button>
        </div>
      )}
      <ErrorNotice error={chat.error} />
      <form
        className="stack"
        onSubmit={(e) => {
          e.preventDefault();
          if (!text.trim()) return;
          send(text.trim());
          setText("");
        }}
      >
        <Field label="Message to the assistant">{(p) => <textarea {...p} rows={3} maxLength={10000} value={text} onChange={(e) => setText(e.target.value)} />}</Field>
        <div>
          <button type="submit" disabled={!text.trim() || chat.isPending}>
            Send
          </button>
        </div>
      </form>
    </aside>
  );
}
