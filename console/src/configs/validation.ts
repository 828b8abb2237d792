// Validation as you type: the draft goes to POST /api/v1/configs/validate once typing pauses; the
// seed's rules answer with errors and warnings by field. A 400 is the usual answer to a bad draft.
import { useQuery } from "@tanstack/react-query";
import { useEffect, useState } from "react";
import { api, ApiError, call } from "../api/client";
import type { Issue, ValidateAnswer } from "../api/types";

export const VALIDATE_DELAY_MS = 400;

export interface Validation {
  state: "idle" | "checking" | "valid" | "invalid" | "unavailable";
  errors: Issue[];
  warnings: Issue[];
  breaking: boolean;
  /** The errors and warnings by field name (``voice_config.model_settings.speed``). */
  byField: Record<string, { error?: string; warning?: string }>;
  problem: unknown;
}

export function useDebounced<T>(value: T, delay: number): T {
  const [settled, setSettled] = useState(value);
  useEffect(() => {
    const timer = setTimeout(() => setSettled(value), delay);
    return () => clearTimeout(timer);
  }, [value, delay]);
  return settled;
}

function issuesOf(error: ApiError): { errors: Issue[]; warnings: Issue[] } {
  const body = error.body;
  const asIssues = (value: unknown, severity: Issue["severity"]): Issue[] =>
    Array.isArray(value)
      ? value.filter((i): i is Issue => !!i && typeof i === "object" && "field" in i).map((i) => ({ ...i, severity }))
      : [];
  let errors = asIssues(body.errors, "error");
  if (errors.length === 0) errors = asIssues(body.issues, "error").filter((i) => i.severity !== "warning");
  if (errors.length === 0) errors = Object.entries(error.fields).map(([field, message]) => ({ field, message, severity: "error" }));
  const warnings = asIssues(body.warnings, "warning");
  return { errors, warnings };
}

export function useValidation(yaml: string, configId: string | undefined, enabled = true): Validation {
  const settled = useDebounced(yaml, VALIDATE_DELAY_MS);
  const query = useQuery({
    queryKey: ["/api/v1/configs/validate", configId ?? null, settled],
    queryFn: async () => {
      try {
        const answer = await call<ValidateAnswer>(
          api.POST("/api/v1/configs/validate", { body: { yaml_content: settled, config_id: configId ?? null } }),
        );
        return { errors: answer.errors ?? [], warnings: answer.warnings ?? [], breaking: answer.breaking_change_detected };
      } catch (error) {
        if (error instanceof ApiError && error.status === 400) return { ...issuesOf(error), breaking: false };
        throw error;
      }
    },
    enabled: enabled && settled.trim().length > 0,
    staleTime: Infinity,
    retry: false,
    placeholderData: (previous) => previous,
  });
  const result = query.data ?? { errors: [], warnings: [], breaking: false };
  const byField: Validation["byField"] = {};
  for (const w of result.warnings) byField[w.field] = { ...byField[w.field], warning: w.message };
  for (const e of result.errors) byField[e.field] = { ...byField[e.field], error: e.message };
  const checking = settled !== yaml || query.isFetching;
  const state: Validation["state"] = query.error
    ? "unavailable"
    : checking
      ? "checking"
      : !query.data
        ? "idle"
        : result.errors.length
          ? "invalid"
          : "valid";
  return { state, errors: result.errors, warnings: result.warnings, breaking: result.breaking, byField, problem: query.error };
}
