// Each change of a comparison with its own risk, as the API gives it (``change_risks``: the rules
// of domain/bot_changes.py decide each one's level, and the comparison's level is the highest).
import type { ChangeRisk, Comparison, RiskLevel } from "../api/types";

export type ChangeKind = ChangeRisk["kind"];

export interface Change {
  kind: ChangeKind;
  path: string;
  old: unknown;
  new: unknown;
  risk: RiskLevel;
  reasons: string[];
  breaking: boolean;
}

/** The comparison's changes, each with its risk (a whole item added or removed: its section as
 * the path, the item as its value). */
export function changesOf(comparison: Comparison): Change[] {
  return comparison.change_risks.map((c) => ({
    kind: c.kind,
    path: c.path,
    old: c.old,
    new: c.new,
    risk: c.risk_level,
    reasons: c.reasons,
    breaking: c.breaking,
  }));
}
