// The configuration assistant beside the editor: the seed's POST /api/v1/client-config/chat (the
// lead is adding it). It answers with the changes it detected, their type, confidence and risk; it
// applies them through the normal versioning path. Until the endpoint exists, the panel says so.
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { ApiError, ORIGIN } from "../api/client";
import { getSession } from "../api/session";
import type { ConfigView, RiskLevel } from "../api/types";
import { ErrorNotice, Field, RiskBadge } from "../ui/components";
import { keys } from "./queries";

export const CHAT_PATH = "/api/v1/client-config/chat";

interface DetectedChange {
  type: string;
  parameter?: string;
  tool_name?: string;
  action?: string;
  current_value?: unknown;
  proposed_value?: unknown;
  confidence?: number;
  risk_level?: RiskLevel;
}

interface ChatAnswer {
  response: string;
  detected_changes: DetectedChange[];
  requires_approval?: boolean;
  conversation_id: string;
}

interface Turn {
  from: "you" | "assistant";
  text: string;
  changes?: DetectedChange[];
}

async function send(body: Record<string, unknown>): Promise<ChatAnswer> {
  const session = getSession();
  const response = await fetch(`${ORIGIN}${CHAT_PATH}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...(session ? { Authorization: `Bearer ${session.token}` } : {}) },
    body: JSON.stringify(body),
  });
  const answer: unknown = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, (answer ?? {}) as Record<string, unknown>);
  return answer as ChatAnswer;
}

export function ConfigChat({ config }: { config: ConfigView }) {
  const client = useQueryClient();
  const [turns, setTurns] = useState<Turn[]>([]);
  const [text, setText] = useState("");
  const [conversationId, setConversationId] = useState<string | null>(null);
  const chat = useMutation({
    mutationFn: (message: string) =>
      send({ config_id: config.config_id, message, product_type: config.product_type, ...(conversationId ? { conversation_id: conversationId } : {}) }),
    onSuccess: async (answer) => {
      setConversationId(answer.conversation_id);
      setTurns((t) => [...t, { from: "assistant", text: answer.response, changes: answer.detected_changes }]);
      await client.invalidateQueries({ queryKey: keys.versions(config.config_id) });
    },
  });
  const missing = chat.error instanceof ApiError && [404, 405].includes(chat.error.status);
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
            <div style={{ whiteSpace: "pre-wrap" }}>{t.text}</div>
            {t.changes && t.changes.length > 0 && (
              <ul aria-label="Proposed changes">
                {t.changes.map((c, k) => (
                  <li key={k}>
                    {c.type}: {c.parameter ?? c.tool_name ?? ""} {c.action ?? ""}
                    {c.proposed_value !== undefined && ` → ${JSON.stringify(c.proposed_value)}`}
                    {c.confidence !== undefined && ` (confidence ${Math.round(c.confidence * 100)} %)`} {c.risk_level && <RiskBadge level={c.risk_level} />}
                  </li>
                ))}
              </ul>
            )}
          </div>
        ))}
      </div>
      {missing ? (
        <div className="notice">The configuration assistant is not available on this API yet.</div>
      ) : (
        <ErrorNotice error={chat.error} />
      )}
      <form
        className="stack"
        onSubmit={(e) => {
          e.preventDefault();
          if (!text.trim()) return;
          setTurns((t) => [...t, { from: "you", text }]);
          chat.mutate(text);
          setText("");
        }}
      >
        <Field label="Message to the assistant">{(p) => <textarea {...p} rows={3} value={text} onChange={(e) => setText(e.target.value)} />}</Field>
        <div>
          <button type="submit" disabled={!text.trim() || chat.isPending}>
            Send
          </button>
        </div>
      </form>
    </aside>
  );
}
