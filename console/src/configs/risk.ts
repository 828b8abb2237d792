// The risk of one change in a comparison, for showing beside it. The API gives the comparison's
// overall level and reasons (domain/config_rules.py decides them); this table repeats that module's
// per-key levels (FIELDS) so that each line of a diff can carry its own badge.
import type { Comparison, RiskLevel } from "../api/types";

const BY_KEY: Record<string, RiskLevel> = {
  system_prompt: "low",
  name: "low",
  templates: "low",
  intents: "low",
  voice_config: "low",
  cross_sell: "medium",
  tools: "medium",
  max_tool_rounds: "medium",
  llm: "medium",
  escalation_rules: "medium",
  external_integrations: "high",
  product_type: "high",
};

export type ChangeKind = "added" | "removed" | "modified";

export interface Change {
  kind: ChangeKind;
  path: string;
  old: unknown;
  new: unknown;
  risk: RiskLevel;
}

export function changeRisk(kind: ChangeKind, path: string, breakingReasons: readonly string[] = []): RiskLevel {
  const top = path.split(".")[0] ?? path;
  if (top === "product_type" || top === "external_integrations") return "high";
  if (kind === "removed" && (top === "tools" || top === "external_integrations")) return "high"; // breaking
  if (top === "tools") {
    const tool = path.split(".")[1];
    if (tool && breakingReasons.some((r) => r.startsWith(`tool '${tool}'`))) return "high";
  }
  return BY_KEY[top] ?? "medium";
}

/** The comparison's diff as one list of changes, each with its risk. */
export function changesOf(comparison: Comparison): Change[] {
  const { diff, breaking_reasons } = comparison;
  const out: Change[] = [];
  for (const [path, value] of Object.entries(diff.added)) {
    for (const item of Array.isArray(value) && BY_KEY[path] ? value : [value]) {
      out.push({ kind: "added", path, old: undefined, new: item, risk: changeRisk("added", path, breaking_reasons) });
    }
  }
  for (const [path, value] of Object.entries(diff.removed)) {
    for (const item of Array.isArray(value) && BY_KEY[path] ? value : [value]) {
      out.push({ kind: "removed", path, old: item, new: undefined, risk: changeRisk("removed", path, breaking_reasons) });
    }
  }
  for (const [path, { old, new: next }] of Object.entries(diff.modified)) {
    out.push({ kind: "modified", path, old, new: next, risk: changeRisk("modified", path, breaking_reasons) });
  }
  return out;
}
