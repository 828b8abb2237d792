// A conversation's messages as the read model has them (tool calls with their inputs and outputs).
import type { MessageView } from "../api/types";
import { fmtTime, JsonBlock } from "../ui/components";

export function Messages({ messages }: { messages: MessageView[] }) {
  if (messages.length === 0) return <p className="muted">No messages yet.</p>;
  return (
    <ol className="chat" aria-label="Messages" style={{ listStyle: "none", margin: 0 }}>
      {messages.map((m) => (
        <li key={m.message_id} className={`bubble ${m.role}`}>
          <div className="meta">
            {m.role === "user" ? "Customer" : m.role === "agent" ? `Agent ${m.agent?.name ?? ""}` : "AI"} · {fmtTime(m.timestamp)}
          </div>
          <div style={{ whiteSpace: "pre-wrap" }}>{m.content ?? <em>(no text)</em>}</div>
          {(m.tool_calls ?? []).map((t, i) => (
            <details key={i}>
              <summary>
                Tool {t.tool}
                {t.error ? ` failed: ${t.error}` : ""}
                {t.execution_time_ms !== null && t.execution_time_ms !== undefined ? ` (${t.execution_time_ms} ms)` : ""}
              </summary>
              <div className="small">Input</div>
              <JsonBlock value={t.input} />
              <div className="small">Output</div>
              <JsonBlock value={t.output} />
            </details>
          ))}
        </li>
      ))}
    </ol>
  );
}

export function PiiList({ pii }: { pii: Record<string, string> }) {
  const entries = Object.entries(pii);
  if (entries.length === 0) return <p className="muted">None collected.</p>;
  return (
    <dl className="stack" style={{ margin: 0 }}>
      {entries.map(([kind, value]) => (
        <div key={kind} className="row">
          <dt style={{ fontWeight: 600 }}>{kind}</dt>
          <dd style={{ margin: 0 }} className="mono">
            {value}
          </dd>
        </div>
      ))}
    </dl>
  );
}
