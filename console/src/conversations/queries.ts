// Conversations' server state. The lists come from the lead's list endpoints
// (GET /api/v1/orchestration/conversations, /escalations, /agents); until they are deployed a 404/405
// reads as "not available" and the pages say so.
import { useQuery } from "@tanstack/react-query";
import { api, ApiError, call, getJson } from "../api/client";
import type { AuditEvents, AuditState, ConversationList, ConversationView, Turns } from "../api/types";

export interface ConversationFilters {
  status?: string;
  channel?: string;
  config_id?: string;
  config_version?: number;
  assigned_agent?: string;
  escalated?: boolean;
  user_id?: string;
  start_date?: string;
  end_date?: string;
  limit?: number;
  cursor?: string;
}

export const LIST_PATH = "/api/v1/orchestration/conversations";

export function isMissingEndpoint(error: unknown): boolean {
  return error instanceof ApiError && (error.status === 404 || error.status === 405);
}

export function useConversationList(filters: ConversationFilters, enabled = true) {
  return useQuery({
    queryKey: [LIST_PATH, filters],
    queryFn: () => getJson<ConversationList>(LIST_PATH, { ...filters }),
    enabled,
    retry: false,
  });
}

export function useConversation(id: string | undefined) {
  return useQuery({
    queryKey: ["/api/v1/orchestration/conversations/{conversation_id}", id],
    queryFn: () =>
      call<ConversationView>(
        api.GET("/api/v1/orchestration/conversations/{conversation_id}", { params: { path: { conversation_id: id! } } }),
      ),
    enabled: !!id,
  });
}

export function useAuditEvents(id: string, enabled = true) {
  return useQuery({
    queryKey: ["/api/v1/audit/{aggregate_type}/{aggregate_id}/events", "conversation", id],
    queryFn: () =>
      call<AuditEvents>(
        api.GET("/api/v1/audit/{aggregate_type}/{aggregate_id}/events", {
          params: { path: { aggregate_type: "conversation", aggregate_id: id } },
        }),
      ),
    enabled,
  });
}

export function useTurns(id: string, enabled = true) {
  return useQuery({
    queryKey: ["/api/v1/audit/conversations/{conversation_id}/turns", id],
    queryFn: () =>
      call<Turns>(api.GET("/api/v1/audit/conversations/{conversation_id}/turns", { params: { path: { conversation_id: id } } })),
    enabled,
  });
}

export function useStateAt(id: string, version: number | null) {
  return useQuery({
    queryKey: ["/api/v1/audit/{aggregate_type}/{aggregate_id}/state", "conversation", id, version],
    queryFn: () =>
      call<AuditState>(
        api.GET("/api/v1/audit/{aggregate_type}/{aggregate_id}/state", {
          params: { path: { aggregate_type: "conversation", aggregate_id: id }, query: { version } },
        }),
      ),
    enabled: version !== null,
    staleTime: Infinity, // the past does not change
  });
}
