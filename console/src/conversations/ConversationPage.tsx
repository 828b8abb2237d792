// One conversation: its messages (live), the PII the role may see, and for auditors its timeline of
// events (tool calls with inputs and outputs, escalations, the config version of each turn), its
// state as of any event (time travel), and an export of its audit trail.
import { useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { useParams } from "react-router";
import { hasRole, useSession } from "../api/session";
import { useEventStream } from "../api/sse";
import type { AuditEvent, Turn } from "../api/types";
import { ErrorNotice, fmtTime, JsonBlock, Loading } from "../ui/components";
import { AUDIT_ROLES } from "../ui/nav";
import { Messages, PiiList } from "./Messages";
import { useAuditEvents, useConversation, useStateAt, useTurns } from "./queries";

export function ConversationPage() {
  const { conversationId = "" } = useParams();
  const session = useSession();
  const client = useQueryClient();
  const auditor = hasRole(session, ...AUDIT_ROLES);
  const conversation = useConversation(conversationId);
  const events = useAuditEvents(conversationId, auditor);
  const turns = useTurns(conversationId, auditor);
  const live = useEventStream(`/api/v1/orchestration/conversations/${encodeURIComponent(conversationId)}/events`, {
    onMessage: () => {
      void client.invalidateQueries({ queryKey: ["/api/v1/orchestration/conversations/{conversation_id}", conversationId] });
      if (auditor) {
        void client.invalidateQueries({ queryKey: ["/api/v1/audit/{aggregate_type}/{aggregate_id}/events", "conversation", conversationId] });
        void client.invalidateQueries({ queryKey: ["/api/v1/audit/conversations/{conversation_id}/turns", conversationId] });
      }
    },
  });
  const c = conversation.data;
  return (
    <div className="stack">
      <div className="row">
        <h1 style={{ margin: 0 }}>
          Conversation <span className="mono">{conversationId}</span>
        </h1>
        <span className={`live right ${live === "live" ? "on" : ""}`}>{live === "live" ? "Live" : live}</span>
      </div>
      {conversation.isPending && <Loading what="the conversation" />}
      <ErrorNotice error={conversation.error} />
      {c && (
        <p className="muted" style={{ margin: 0 }}>
          {c.status} · {c.channel} · customer {c.user_id} · config {c.config_id} v{c.config_version} · {c.turn_count} turns · started {fmtTime(c.created_at)}
        </p>
      )}
      <div className="split">
        <section className="panel stack" aria-labelledby="messages">
          <h2 id="messages" style={{ marginTop: 0 }}>
            Messages
          </h2>
          {c && <Messages messages={c.messages} />}
          <h3>Personal data collected</h3>
          {c && <PiiList pii={c.pii_collected} />}
        </section>
        {auditor ? (
          <section className="panel stack" aria-labelledby="timeline">
            <div className="row">
              <h2 id="timeline" style={{ margin: 0 }}>
                Timeline
              </h2>
              {events.data && <ExportButton conversationId={conversationId} events={events.data.events} />}
            </div>
            {events.isPending && <Loading what="the timeline" />}
            <ErrorNotice error={events.error ?? turns.error} />
            {events.data && <Timeline conversationId={conversationId} events={events.data.events} turns={turns.data?.turns ?? []} />}
          </section>
        ) : (
          <section className="panel" aria-label="Timeline">
            <p className="muted">The event timeline and time travel are for auditors (organization admins, analysts, platform engineers).</p>
          </section>
        )}
      </div>
    </div>
  );
}

function ExportButton({ conversationId, events }: { conversationId: string; events: AuditEvent[] }) {
  return (
    <button
      type="button"
      className="secondary right"
      onClick={() => {
        const lines = events.map((e) => JSON.stringify(e)).join("\n") + "\n";
        const url = URL.createObjectURL(new Blob([lines], { type: "application/x-ndjson" }));
        const a = document.createElement("a");
        a.href = url;
        a.download = `conversation-${conversationId}.jsonl`;
        a.click();
        URL.revokeObjectURL(url);
      }}
    >
      Export audit trail
    </button>
  );
}

function summary(e: AuditEvent, turn: Turn | undefined): string {
  const ev = e.event;
  const text = (k: string) => (ev[k] === null || ev[k] === undefined ? "" : String(ev[k]));
  switch (e.type) {
    case "ConversationStarted":
      return `started on ${text("channel")} with ${text("config_id")} v${text("config_version")}`;
    case "UserMessageReceived":
      return `customer: ${e.redacted?.includes("content") ? "(redacted)" : text("content")}${turn ? ` · governed by config v${turn.config_version}${turn.active_config_version && turn.active_config_version !== turn.config_version ? ` (active then: v${turn.active_config_version})` : ""}` : ""}`;
    case "AgentReplied":
      return `${text("author") === "ai" ? "AI" : text("author")}: ${e.redacted?.includes("content") ? "(redacted)" : text("content")}`;
    case "EscalationRequested":
      return `escalation requested (${text("trigger")}, ${text("urgency")}): ${text("reason")}`;
    case "EscalationAssigned":
      return `assigned to ${text("agent_name") || text("agent_id")}`;
    case "EscalationAgentUnavailable":
      return `no agent free: queued at ${text("queue_position")}`;
    case "EscalationResolved":
      return `escalation resolved: ${text("resolution")} by ${text("resolved_by")}`;
    case "ConversationClosed":
      return `closed (${text("reason")})`;
    default:
      return e.type;
  }
}

function Timeline({ conversationId, events, turns }: { conversationId: string; events: AuditEvent[]; turns: Turn[] }) {
  const [asOf, setAsOf] = useState<number | null>(null);
  const state = useStateAt(conversationId, asOf);
  const turnOf = new Map(turns.map((t) => [t.message_id, t]));
  return (
    <div className="stack">
      <ol className="timeline" aria-label="Events">
        {events.map((e) => {
          const toolCalls = Array.isArray(e.event.tool_calls) ? (e.event.tool_calls as { tool: string; input: unknown; output: unknown; error?: string | null }[]) : [];
          return (
            <li key={`${e.seq}-${e.version}`} className={asOf === e.version ? "current" : undefined}>
              <div className="row">
                <strong>{e.type}</strong>
                <span className="muted small">
                  v{e.version} · {fmtTime(e.recorded_at)} · {e.actor ?? "—"}
                </span>
                <button type="button" className="secondary right" aria-pressed={asOf === e.version} onClick={() => setAsOf(e.version)}>
                  State at v{e.version}
                </button>
              </div>
              <div>{summary(e, turnOf.get(String(e.event.message_id ?? "")))}</div>
              {toolCalls.map((t, i) => (
                <details key={i}>
                  <summary>
                    tool {t.tool}
                    {t.error ? ` failed: ${t.error}` : ""}
                  </summary>
                  <div className="small">Input</div>
                  <JsonBlock value={t.input} />
                  <div className="small">Output</div>
                  <JsonBlock value={t.output} />
                </details>
              ))}
            </li>
          );
        })}
      </ol>
      {asOf !== null && (
        <section className="panel" aria-labelledby="state-as-of">
          <h3 id="state-as-of" style={{ marginTop: 0 }}>
            State as of v{asOf}
          </h3>
          {state.isPending && <Loading what="the state" />}
          <ErrorNotice error={state.error} />
          {state.data && (
            <>
              <p className="muted small">
                {state.data.events_folded} events folded, recorded {fmtTime(state.data.recorded_at)}; the conversation is now at v{state.data.latest_version}.
              </p>
              <JsonBlock value={state.data.state} />
            </>
          )}
        </section>
      )}
    </div>
  );
}
