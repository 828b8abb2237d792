// The inbox's server state: the queue, my escalations, the agents; kept current by the tenant's
// live events (GET /api/v1/orchestration/events), which also patch an open conversation at once.
import { useQuery, type QueryClient } from "@tanstack/react-query";
import type { EventSourceMessage } from "eventsource-parser";
import { api, call, getJson } from "../api/client";
import { eventData } from "../api/sse";
import type { ConversationView, EscalationList, HumanAgent, MessageView } from "../api/types";

export const ESCALATIONS = "/api/v1/orchestration/escalations";
export const AGENTS = "/api/v1/orchestration/agents";
export const TENANT_EVENTS = "/api/v1/orchestration/events";
export const conversationKey = (id: string) => ["/api/v1/orchestration/conversations/{conversation_id}", id] as const;

// Read-your-writes: the stream position of the latest command this console sent or event it saw;
// the inbox's reads ask the read models to have passed it (min_position) before they answer.
let position = 0;

export function notePosition(answer: unknown): void {
  const p = answer && typeof answer === "object" ? (answer as { position?: unknown }).position : undefined;
  if (typeof p === "number" && p > position) position = p;
}

const since = () => (position > 0 ? position : undefined);

export function useEscalations(query: { status?: string; agent_id?: string; skill?: string }) {
  return useQuery({
    queryKey: [ESCALATIONS, query],
    queryFn: () => getJson<EscalationList>(ESCALATIONS, { ...query, limit: 100, min_position: since() }),
    retry: false,
  });
}

export function useAgents() {
  return useQuery({
    queryKey: [AGENTS],
    queryFn: () => getJson<{ agents: HumanAgent[] }>(AGENTS, { min_position: since() }),
    retry: false,
  });
}

/** A conversation event's message, as the read model will show it (null for other events). */
export function messageOf(type: string | undefined, data: Record<string, unknown>): MessageView | null {
  const id = typeof data.message_id === "string" ? data.message_id : null;
  if (!id) return null;
  const content = typeof data.content === "string" ? data.content : null;
  if (type === "UserMessageReceived") {
    return { message_id: id, role: "user", content, timestamp: String(data.received_at ?? new Date().toISOString()) };
  }
  if (type === "AgentReplied") {
    const author = String(data.author ?? "ai");
    return {
      message_id: id,
      role: author === "ai" ? "assistant" : "agent",
      content,
      timestamp: String(data.replied_at ?? new Date().toISOString()),
      ...(author !== "ai" ? { agent: { agent_id: author.replace(/^human:/, ""), name: String(data.agent_name ?? "") } } : {}),
    };
  }
  return null;
}

/** Apply one live event: patch the open conversation's messages at once, then refetch what it changed. */
export function applyTenantEvent(client: QueryClient, message: EventSourceMessage): string | null {
  const data = eventData(message);
  const conversationId = data && typeof data.conversation_id === "string" ? data.conversation_id : null;
  if (!data || !conversationId) return null;
  const seq = Number((message.id ?? "").split(".")[0]);
  if (Number.isFinite(seq)) notePosition({ position: seq });
  const added = messageOf(message.event, data);
  if (added) {
    client.setQueryData<ConversationView>(conversationKey(conversationId), (old) =>
      old && !old.messages.some((m) => m.message_id === added.message_id) ? { ...old, messages: [...old.messages, added] } : old,
    );
  }
  // Then the read model's view, once it has passed this event (min_position: the event's stream sequence).
  if (client.getQueryData(conversationKey(conversationId)) !== undefined) {
    void call<ConversationView>(
      api.GET("/api/v1/orchestration/conversations/{conversation_id}", {
        params: { path: { conversation_id: conversationId }, query: { min_position: Number.isFinite(seq) && seq > 0 ? seq : null } },
      }),
    ).then(
      (view) =>
        client.setQueryData<ConversationView>(conversationKey(conversationId), (old) => {
          const missing = (old?.messages ?? []).filter((m) => !view.messages.some((v) => v.message_id === m.message_id));
          return { ...view, messages: [...view.messages, ...missing] };
        }),
      () => undefined,
    );
  }
  if (message.event?.startsWith("Escalation") || message.event === "ConversationClosed") {
    void client.invalidateQueries({ queryKey: [ESCALATIONS] });
    void client.invalidateQueries({ queryKey: [AGENTS] });
  }
  return conversationId;
}
