// The configs' server state: TanStack Query keyed by the API path; a command's success invalidates
// what it changed (the API's answers carry positions; the read-model reads wait for them).
import { useInfiniteQuery, useQuery } from "@tanstack/react-query";
import { api, call } from "../api/client";
import type { Branch, Comparison, ConfigPage, ConfigView, HistoryView, PermissionsView, VersionsView } from "../api/types";

export const keys = {
  config: (id: string, version?: number) => ["/api/v1/configs/{config_id}", id, version ?? "active"] as const,
  versions: (id: string) => ["/api/v1/configs/{config_id}/versions", id] as const,
  history: (id: string, authorType: string) => ["/api/v1/configs/{config_id}/history", id, authorType] as const,
  branches: (id: string) => ["/api/v1/configs/{config_id}/branches", id] as const,
  compare: (id: string, a: number, b: number) => ["/api/v1/configs/{config_id}/versions/compare", id, a, b] as const,
  permissions: ["/api/v1/client-config/permissions"] as const,
};

// Read-your-writes: a command's answer carries the stream position of its events; the reads of
// that config then ask the read model to have passed it (min_position) before answering.
const positions = new Map<string, number>();

/** Remember a config command's position; reads of the config wait for the read model to pass it. */
export function notePosition(configId: string, answer: unknown): void {
  const position = answer && typeof answer === "object" ? (answer as { position?: unknown }).position : undefined;
  if (typeof position === "number" && position > (positions.get(configId) ?? 0)) positions.set(configId, position);
}

function minPosition(configId: string): number | null {
  return positions.get(configId) ?? null;
}

/** The latest position of any config command of this console: what the config list waits for. */
function anyPosition(): number | undefined {
  return positions.size ? Math.max(...positions.values()) : undefined;
}

export function useConfig(id: string, version?: number) {
  return useQuery({
    queryKey: keys.config(id, version),
    queryFn: () =>
      call<ConfigView>(
        api.GET("/api/v1/configs/{config_id}", {
          params: { path: { config_id: id }, query: { version: version ?? null, min_position: minPosition(id) } },
        }),
      ),
  });
}

export function useVersions(id: string) {
  return useQuery({
    queryKey: keys.versions(id),
    queryFn: () =>
      call<VersionsView>(
        api.GET("/api/v1/configs/{config_id}/versions", { params: { path: { config_id: id }, query: { limit: 200, min_position: minPosition(id) } } }),
      ),
  });
}

export function useHistory(id: string, authorType: string) {
  return useQuery({
    queryKey: keys.history(id, authorType),
    queryFn: () =>
      call<HistoryView>(
        api.GET("/api/v1/configs/{config_id}/history", {
          params: { path: { config_id: id }, query: { author_type: authorType as "all", limit: 200, min_position: minPosition(id) } },
        }),
      ),
  });
}

export function useBranches(id: string) {
  return useQuery({
    queryKey: keys.branches(id),
    queryFn: async () =>
      (await call<{ branches: Branch[] }>(api.GET("/api/v1/configs/{config_id}/branches", { params: { path: { config_id: id } } })))
        .branches,
  });
}

export function useCompare(id: string, a: number | null, b: number | null) {
  return useQuery({
    queryKey: keys.compare(id, a ?? 0, b ?? 0),
    queryFn: () =>
      call<Comparison>(
        api.POST("/api/v1/configs/{config_id}/versions/compare", {
          params: { path: { config_id: id } },
          body: { version_a: a!, version_b: b! },
        }),
      ),
    enabled: a !== null && b !== null && a > 0 && b > 0,
    staleTime: Infinity, // versions never change
  });
}

export function usePermissions() {
  return useQuery({
    queryKey: keys.permissions,
    queryFn: () => call<PermissionsView>(api.GET("/api/v1/client-config/permissions")),
  });
}

/** The caller's own config permissions (all false until known). */
export function useMyPermissions() {
  const query = usePermissions();
  const mine = query.data?.you.config_permissions;
  return {
    can: (p: keyof NonNullable<typeof mine>) => !!mine?.[p],
    userId: query.data?.you.user_id,
    loaded: !!mine,
  };
}

const RECENT_KEY = "parley.console.recent-configs";

export function rememberConfig(id: string): void {
  const recent = recentConfigs().filter((c) => c !== id);
  localStorage.setItem(RECENT_KEY, JSON.stringify([id, ...recent].slice(0, 20)));
}

export function recentConfigs(): string[] {
  try {
    const parsed: unknown = JSON.parse(localStorage.getItem(RECENT_KEY) ?? "[]");
    return Array.isArray(parsed) ? parsed.filter((x): x is string => typeof x === "string") : [];
  } catch {
    return [];
  }
}

export const LIST_PATH = "/api/v1/configs";

export interface ConfigFilters {
  product_type?: "chatbot" | "voicebot";
  search?: string;
  pending_approval?: boolean;
}

/** The tenant's configs (``GET /api/v1/configs``), by id, a page at a time. */
export function useConfigList(filters: ConfigFilters = {}) {
  return useInfiniteQuery({
    queryKey: [LIST_PATH, filters],
    queryFn: ({ pageParam }) =>
      call<ConfigPage>(
        api.GET("/api/v1/configs", {
          params: { query: { ...filters, limit: 50, cursor: pageParam ?? undefined, min_position: anyPosition() } },
        }),
      ),
    initialPageParam: null as string | null,
    getNextPageParam: (last) => last.next_cursor,
  });
}
