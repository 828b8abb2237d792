// The support agent's inbox (after Chatwoot's): the escalation queue with wait times and skills, my
// conversations, and the open one with its handoff summary, the customer's messages arriving live,
// my reply, hand back to the AI, resolve; my availability and capacity.
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useEffect, useState } from "react";
import { Link, useNavigate, useParams } from "react-router";
import { api, call } from "../api/client";
import { useSession } from "../api/session";
import { useEventStream } from "../api/sse";
import type { EscalationSummary } from "../api/types";
import { isMissingEndpoint, useConversation } from "../conversations/queries";
import { Messages, PiiList } from "../conversations/Messages";
import { Badge, ErrorNotice, Field, fmtWait, Loading } from "../ui/components";
import { AGENTS, applyTenantEvent, ESCALATIONS, notePosition, TENANT_EVENTS, useAgents, useEscalations } from "./queries";

/** Seconds since a moment, ticking once a second (a clock, not a poll). */
function useNow(): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, []);
  return now;
}

export function InboxPage() {
  const { conversationId } = useParams();
  const session = useSession();
  const client = useQueryClient();
  const queue = useEscalations({ status: "queued" });
  const mine = useEscalations({ status: "assigned", agent_id: "me" });
  const live = useEventStream(TENANT_EVENTS, {
    onOpen: () => {
      void client.invalidateQueries({ queryKey: [ESCALATIONS] });
      void client.invalidateQueries({ queryKey: ["/api/v1/orchestration/conversations/{conversation_id}"] });
    },
    onMessage: (message) => void applyTenantEvent(client, message),
  });
  const all = [...(mine.data?.escalations ?? []), ...(queue.data?.escalations ?? [])];
  const selected = all.find((e) => e.conversation_id === conversationId);
  return (
    <div className="stack">
      <div className="row">
        <h1 style={{ margin: 0 }}>Inbox</h1>
        <span className={`live ${live === "live" ? "on" : ""}`} aria-live="polite">
          {live === "live" ? "Live" : live === "unavailable" ? "Live updates unavailable" : "Connecting…"}
        </span>
        <div className="right">{session && <Availability agentId={session.subject} />}</div>
      </div>
      <div className="split">
        <div className="stack">
          <section className="panel" aria-labelledby="mine">
            <h2 id="mine" style={{ marginTop: 0 }}>
              My conversations
            </h2>
            <EscalationTable list={mine} empty="Nothing assigned to you." selected={conversationId} kind="mine" />
          </section>
          <section className="panel" aria-labelledby="queue">
            <h2 id="queue" style={{ marginTop: 0 }}>
              Queue
            </h2>
            <EscalationTable list={queue} empty="Nobody is waiting." selected={conversationId} kind="queue" />
          </section>
        </div>
        <div>
          {conversationId ? (
            <OpenConversation key={conversationId} conversationId={conversationId} escalation={selected} />
          ) : (
            <p className="panel muted">Choose a conversation from your list, or take one from the queue.</p>
          )}
        </div>
      </div>
    </div>
  );
}

function EscalationTable({ list, empty, selected, kind }: { list: ReturnType<typeof useEscalations>; empty: string; selected?: string; kind: "mine" | "queue" }) {
  const navigate = useNavigate();
  const client = useQueryClient();
  const now = useNow();
  const claim = useMutation({
    mutationFn: (e: EscalationSummary) =>
      call(api.POST("/api/v1/orchestration/escalations/{escalation_id}/claim", { params: { path: { escalation_id: e.escalation_id } }, body: {} })),
    onSuccess: async (answer, e) => {
      notePosition(answer);
      await client.invalidateQueries({ queryKey: [ESCALATIONS] });
      await client.invalidateQueries({ queryKey: [AGENTS] });
      navigate(`/inbox/${e.conversation_id}`);
    },
  });
  if (list.isPending) return <Loading what="escalations" />;
  if (list.error) {
    return isMissingEndpoint(list.error) ? <p className="muted">The escalation list is not available on this API yet.</p> : <ErrorNotice error={list.error} />;
  }
  const rows = list.data.escalations;
  if (rows.length === 0) return <p className="muted">{empty}</p>;
  const fetched = list.dataUpdatedAt;
  return (
    <>
      <table aria-label={kind === "mine" ? "My conversations" : "Queue"}>
        <thead>
          <tr>
            <th scope="col">Customer</th>
            <th scope="col">Waiting</th>
            <th scope="col">Skill</th>
            <th scope="col">Urgency</th>
            <th scope="col">Reason</th>
            <th scope="col">
              <span className="sr-only">Action</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {rows.map((e) => (
            <tr key={e.escalation_id} className={selected === e.conversation_id ? "selected" : undefined}>
              <td>
                {e.user_id} <span className="muted small">{e.channel}</span>
              </td>
              <td>
                {fmtWait(e.wait_seconds + (kind === "queue" ? Math.max(0, (now - fetched) / 1000) : 0))}
                {e.queue_position ? <span className="muted small"> · #{e.queue_position}</span> : null}
              </td>
              <td>{e.skill ?? "any"}</td>
              <td>
                <Badge>{e.urgency}</Badge>
              </td>
              <td>{e.reason || e.trigger}</td>
              <td>
                {kind === "queue" ? (
                  <button type="button" onClick={() => claim.mutate(e)} disabled={claim.isPending}>
                    Take {e.user_id}
                  </button>
                ) : (
                  <Link to={`/inbox/${e.conversation_id}`} aria-current={selected === e.conversation_id ? "page" : undefined}>
                    Open {e.user_id}
                  </Link>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <ErrorNotice error={claim.error} />
    </>
  );
}

function Availability({ agentId }: { agentId: string }) {
  const agents = useAgents();
  const client = useQueryClient();
  const me = agents.data?.agents.find((a) => a.agent_id === agentId);
  const [name, setName] = useState(agentId);
  const [skills, setSkills] = useState("");
  const refresh = (answer: unknown) => {
    notePosition(answer);
    return client.invalidateQueries({ queryKey: [AGENTS] });
  };
  const set = useMutation({
    mutationFn: (available: boolean) =>
      call(api.POST("/api/v1/orchestration/agents/{agent_id}/availability", { params: { path: { agent_id: agentId } }, body: { available } })),
    onSuccess: async (answer) => {
      await refresh(answer);
      await client.invalidateQueries({ queryKey: [ESCALATIONS] });
    },
  });
  const register = useMutation({
    mutationFn: () =>
      call(
        api.POST("/api/v1/orchestration/agents", {
          body: { name, agent_id: agentId, role: "Support Agent", capacity: 3, skills: skills.split(",").map((s) => s.trim()).filter(Boolean) },
        }),
      ),
    onSuccess: refresh,
  });
  if (agents.isPending) return <Loading what="your availability" />;
  if (agents.error) return isMissingEndpoint(agents.error) ? null : <ErrorNotice error={agents.error} />;
  if (!me) {
    return (
      <form
        className="row"
        aria-label="Register as an agent"
        onSubmit={(e) => {
          e.preventDefault();
          register.mutate();
        }}
      >
        <Field label="Your name">{(p) => <input {...p} type="text" value={name} onChange={(e) => setName(e.target.value)} />}</Field>
        <Field label="Skills">{(p) => <input {...p} type="text" value={skills} placeholder="billing, refunds" onChange={(e) => setSkills(e.target.value)} />}</Field>
        <button type="submit" style={{ alignSelf: "end" }} disabled={register.isPending || !name.trim()}>
          Register as an agent
        </button>
        <ErrorNotice error={register.error} />
      </form>
    );
  }
  return (
    <div className="row" aria-label="My availability">
      <span>
        {me.name}: <strong>{me.available ? "available" : "away"}</strong> · {me.active_escalations} of {me.capacity} conversations
        {me.skills.length > 0 && <span className="muted small"> · skills {me.skills.join(", ")}</span>}
      </span>
      <button type="button" className={me.available ? "secondary" : undefined} onClick={() => set.mutate(!me.available)} disabled={set.isPending}>
        {me.available ? "Go away" : "Become available"}
      </button>
      <ErrorNotice error={set.error} />
    </div>
  );
}

function OpenConversation({ conversationId, escalation }: { conversationId: string; escalation?: EscalationSummary }) {
  const conversation = useConversation(conversationId);
  const client = useQueryClient();
  const navigate = useNavigate();
  const [reply, setReply] = useState("");
  const c = conversation.data;
  const escalationId = escalation?.escalation_id;
  const send = useMutation({
    mutationFn: () =>
      call(api.POST("/api/v1/orchestration/conversations/{conversation_id}/agent-replies", { params: { path: { conversation_id: conversationId } }, body: { message: reply } })),
    onSuccess: (answer) => {
      notePosition(answer);
      setReply("");
    },
  });
  const resolve = useMutation({
    mutationFn: (resolution: "returned_to_ai" | "closed") =>
      call(
        api.POST("/api/v1/orchestration/conversations/{conversation_id}/escalations/{escalation_id}/resolve", {
          params: { path: { conversation_id: conversationId, escalation_id: escalationId! } },
          body: { resolution },
        }),
      ),
    onSuccess: async (answer) => {
      notePosition(answer);
      await client.invalidateQueries({ queryKey: [ESCALATIONS] });
      await client.invalidateQueries({ queryKey: [AGENTS] });
      navigate("/inbox");
    },
  });
  if (conversation.isPending) return <Loading what="the conversation" />;
  if (conversation.error || !c) return <ErrorNotice error={conversation.error} />;
  const said = c.messages.filter((m) => m.content).slice(-6);
  const trajectory = c.sentiment_trajectory;
  return (
    <section className="panel stack" aria-labelledby="open-conversation">
      <h2 id="open-conversation" style={{ marginTop: 0 }}>
        {c.user_id} <span className="muted small">· {c.channel} · {c.status}</span>
      </h2>
      <details open>
        <summary>Handoff summary</summary>
        <div className="stack" aria-label="Handoff summary">
          {escalation && (
            <div>
              Escalated for <strong>{escalation.reason || escalation.trigger}</strong> ({escalation.urgency}
              {escalation.skill ? `, needs ${escalation.skill}` : ""})
            </div>
          )}
          <div>
            Tools used: {c.tools_executed.map((t) => `${t.tool} ×${t.count}`).join(", ") || "none"} · sentiment{" "}
            {trajectory.length ? trajectory[trajectory.length - 1]!.toFixed(2) : "—"}
          </div>
          <div className="muted small">Last said: {said.map((m) => `${m.role}: ${m.content}`).join(" | ")}</div>
          <div>
            <strong>Personal data</strong>
            <PiiList pii={c.pii_collected} />
          </div>
        </div>
      </details>
      <Messages messages={c.messages} />
      <form
        className="stack"
        aria-label="Reply"
        onSubmit={(e) => {
          e.preventDefault();
          if (reply.trim()) send.mutate();
        }}
      >
        <Field label="Your reply">{(p) => <textarea {...p} rows={3} value={reply} onChange={(e) => setReply(e.target.value)} />}</Field>
        <div className="row">
          <button type="submit" disabled={!reply.trim() || send.isPending}>
            Send reply
          </button>
          {escalationId && (
            <>
              <button type="button" className="secondary" onClick={() => resolve.mutate("returned_to_ai")} disabled={resolve.isPending}>
                Hand back to AI
              </button>
              <button type="button" className="secondary" onClick={() => resolve.mutate("closed")} disabled={resolve.isPending}>
                Resolve and close
              </button>
            </>
          )}
        </div>
        <ErrorNotice error={send.error ?? resolve.error} />
      </form>
    </section>
  );
}
