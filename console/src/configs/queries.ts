// The configs' server state: TanStack Query keyed by the API path; a command's success invalidates
// what it changed (the API's answers carry positions; the read-model reads wait for them).
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { api, ApiError, call, getJson } from "../api/client";
import type { Branch, Comparison, ConfigView, HistoryView, PermissionsView, VersionsView } from "../api/types";

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

export interface ConfigSummary {
  config_id: string;
  product_type?: string;
  active_version?: number;
  latest_version?: number;
  updated_at?: string;
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

/** The tenant's configs: ``GET /api/v1/configs`` when the API has it; until then the tenant's
 * latest config and the ones opened in this browser. */
export function useConfigList() {
  const client = useQueryClient();
  return useQuery({
    queryKey: ["/api/v1/configs"],
    queryFn: async (): Promise<{ configs: ConfigSummary[]; complete: boolean }> => {
      try {
        const listed = await getJson<{ configs: ConfigSummary[] }>("/api/v1/configs");
        if (Array.isArray(listed.configs)) return { configs: listed.configs, complete: true };
      } catch (error) {
        if (!(error instanceof ApiError) || ![404, 405].includes(error.status)) throw error;
      }
      const ids = new Set(recentConfigs());
      try {
        const latest = await call<ConfigView>(api.GET("/api/v1/configs/latest"));
        ids.add(latest.config_id);
        client.setQueryData(keys.config(latest.config_id), latest);
      } catch (error) {
        if (!(error instanceof ApiError) || error.status !== 404) throw error;
      }
      const found = await Promise.all(
        [...ids].map(async (id): Promise<ConfigSummary | null> => {
          try {
            const c = await call<ConfigView>(api.GET("/api/v1/configs/{config_id}", { params: { path: { config_id: id } } }));
            return {
              config_id: c.config_id,
              product_type: c.product_type,
              active_version: c.active_version,
              latest_version: c.latest_version,
              updated_at: c.metadata.updated_at,
            };
          } catch {
            return null;
          }
        }),
      );
      return { configs: found.filter((c): c is ConfigSummary => c !== null), complete: false };
    },
  });
}
