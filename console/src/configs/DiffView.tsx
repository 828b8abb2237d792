// Two versions side by side: the API's comparison (each change with its own risk, as the API rates
// it; the overall risk and its reasons, what breaks) and the YAML of both, line by line, changed lines marked.
import { diffLines } from "diff";
import { Fragment, useState } from "react";
import type { Comparison } from "../api/types";
import { RiskBadge } from "../ui/components";
import { normalizeYaml } from "./model";
import { changesOf } from "./risk";

export interface Row {
  kind: "same" | "changed" | "removed" | "added";
  left: string | null;
  right: string | null;
  leftNo: number | null;
  rightNo: number | null;
}

function lines(text: string): string[] {
  const out = text.split("\n");
  if (out[out.length - 1] === "") out.pop();
  return out;
}

/** The rows of a side-by-side diff: removed lines paired with the added lines that replace them. */
export function sideBySide(before: string, after: string): Row[] {
  const rows: Row[] = [];
  let l = 0;
  let r = 0;
  const parts = diffLines(before, after);
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    if (!part.added && !part.removed) {
      for (const line of lines(part.value)) rows.push({ kind: "same", left: line, right: line, leftNo: ++l, rightNo: ++r });
    } else if (part.removed) {
      const next = parts[i + 1];
      const gone = lines(part.value);
      const came = next?.added ? lines(next.value) : [];
      if (next?.added) i++;
      for (let k = 0; k < Math.max(gone.length, came.length); k++) {
        const left = gone[k] ?? null;
        const right = came[k] ?? null;
        rows.push({
          kind: left !== null && right !== null ? "changed" : left !== null ? "removed" : "added",
          left,
          right,
          leftNo: left !== null ? ++l : null,
          rightNo: right !== null ? ++r : null,
        });
      }
    } else {
      for (const line of lines(part.value)) rows.push({ kind: "added", left: null, right: line, leftNo: null, rightNo: ++r });
    }
  }
  return rows;
}

const CONTEXT = 3;

export function YamlSideBySide({ before, after, leftLabel, rightLabel }: { before: string; after: string; leftLabel: string; rightLabel: string }) {
  const rows = sideBySide(normalizeYaml(before), normalizeYaml(after));
  const [expanded, setExpanded] = useState<Set<number>>(new Set());
  const near = rows.map((_, i) => rows.slice(Math.max(0, i - CONTEXT), i + CONTEXT + 1).some((x) => x.kind !== "same"));
  const blocks: { start: number; end: number; hidden: boolean }[] = [];
  for (let i = 0; i < rows.length; ) {
    const hidden = !near[i];
    let j = i;
    while (j < rows.length && !near[j] === hidden) j++;
    blocks.push({ start: i, end: j, hidden: hidden && j - i > 1 });
    i = j;
  }
  const changed = rows.filter((x) => x.kind !== "same").length;
  return (
    <table className="diff" aria-label={`YAML of ${leftLabel} and ${rightLabel}, side by side`}>
      <caption className="muted small" style={{ textAlign: "left" }}>
        {changed === 0 ? "The YAML is the same." : `${changed} line${changed === 1 ? "" : "s"} differ.`}
      </caption>
      <thead>
        <tr>
          <th scope="col" style={{ width: "3rem" }}>#</th>
          <th scope="col">{leftLabel}</th>
          <th scope="col" style={{ width: "3rem" }}>#</th>
          <th scope="col">{rightLabel}</th>
        </tr>
      </thead>
      <tbody>
        {blocks.map((block) =>
          block.hidden && !expanded.has(block.start) ? (
            <tr key={block.start}>
              <td colSpan={4}>
                <button type="button" className="secondary" onClick={() => setExpanded(new Set([...expanded, block.start]))}>
                  Show {block.end - block.start} unchanged lines
                </button>
              </td>
            </tr>
          ) : (
            <Fragment key={block.start}>
              {rows.slice(block.start, block.end).map((row, k) => (
                <tr key={block.start + k} data-kind={row.kind}>
                  <td className="muted">{row.leftNo ?? ""}</td>
                  <td className={row.kind === "changed" || row.kind === "removed" ? "old" : undefined}>
                    {row.kind !== "same" && row.left !== null && <span className="sr-only">removed: </span>}
                    {row.left ?? ""}
                  </td>
                  <td className="muted">{row.rightNo ?? ""}</td>
                  <td className={row.kind === "changed" || row.kind === "added" ? "new" : undefined}>
                    {row.kind !== "same" && row.right !== null && <span className="sr-only">added: </span>}
                    {row.right ?? ""}
                  </td>
                </tr>
              ))}
            </Fragment>
          ),
        )}
      </tbody>
    </table>
  );
}

function show(value: unknown): string {
  if (value === undefined || value === null) return "";
  if (typeof value === "string") return value;
  return JSON.stringify(value, null, 1);
}

export function ChangesTable({ comparison }: { comparison: Comparison }) {
  const changes = changesOf(comparison);
  if (changes.length === 0) return <p>These versions are the same.</p>;
  return (
    <table aria-label="Changes">
      <thead>
        <tr>
          <th scope="col">Change</th>
          <th scope="col">Field</th>
          <th scope="col">Before</th>
          <th scope="col">After</th>
          <th scope="col">Risk</th>
        </tr>
      </thead>
      <tbody>
        {changes.map((c, i) => (
          <tr key={i}>
            <td>{c.kind}</td>
            <td className="mono">{c.path}</td>
            <td className="mono">{show(c.old)}</td>
            <td className="mono">{show(c.new)}</td>
            <td title={c.reasons.join("; ")}>
              <RiskBadge level={c.risk} />
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function RiskSummary({ comparison }: { comparison: Comparison }) {
  const { risk_assessment: risk, breaking_changes, breaking_reasons, change_type } = comparison;
  return (
    <div className="stack" aria-label="Risk assessment">
      <div className="row">
        <strong>Overall:</strong> <RiskBadge level={risk.risk_level} />
        <span className="muted">change type {change_type}</span>
        {breaking_changes && <span className="badge risk-high">breaking</span>}
      </div>
      {risk.reasons.length > 0 && (
        <ul aria-label="Risk reasons">
          {risk.reasons.map((r) => (
            <li key={r}>{r}</li>
          ))}
        </ul>
      )}
      {breaking_reasons.length > 0 && (
        <div className="notice error">
          <strong>Breaking:</strong>
          <ul>
            {breaking_reasons.map((r) => (
              <li key={r}>{r}</li>
            ))}
          </ul>
        </div>
      )}
    </div>
  );
}

/** The whole comparison of version A (before) and version B (after). */
export function DiffView({ comparison, before, after }: { comparison: Comparison; before?: string; after?: string }) {
  const a = `v${comparison.version_a}`;
  const b = `v${comparison.version_b}`;
  return (
    <section className="stack" aria-label={`Differences between ${a} and ${b}`}>
      <RiskSummary comparison={comparison} />
      <ChangesTable comparison={comparison} />
      {before !== undefined && after !== undefined && <YamlSideBySide before={before} after={after} leftLabel={a} rightLabel={b} />}
    </section>
  );
}
