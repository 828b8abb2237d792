// The diff view: a comparison as the API answers POST /configs/{id}/versions/compare, each change
// with its risk, the overall risk and what breaks, and the two YAMLs side by side.
import { render, screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";
import type { Comparison } from "../api/types";
import { DiffView, sideBySide } from "./DiffView";

const comparison: Comparison = {
  config_id: "voice-bot",
  product_type: "voicebot",
  version_a: 1,
  version_b: 2,
  diff: {
    added: { tools: [{ name: "initiate_refund", description: "Starts a refund" }] },
    removed: { tools: [{ name: "fetch_order_status" }] },
    modified: { "voice_config.model_settings.speed": { old: 1.0, new: 0.8 }, system_prompt: { old: "Be brief.", new: "Be formal." } },
  },
  changes: ["tool_attached:initiate_refund", "tool_removed:fetch_order_status", "voice_param:model_settings.speed", "system_prompt_changed"],
  change_type: "hybrid",
  breaking_changes: true,
  breaking_reasons: ["tool 'fetch_order_status' removed"],
  risk_assessment: { risk_level: "high", reasons: ["tool 'fetch_order_status' removed"] },
  change_risks: [
    { kind: "added", path: "tools", item: "initiate_refund", change: "tool_attached:initiate_refund", type: "tool_change",
      new: { name: "initiate_refund", description: "Starts a refund" }, risk_level: "medium",
      reasons: ["tool 'initiate_refund' attached: a new capability"], breaking: false },
    { kind: "removed", path: "tools", item: "fetch_order_status", change: "tool_removed:fetch_order_status", type: "tool_change",
      old: { name: "fetch_order_status" }, risk_level: "high", reasons: ["tool 'fetch_order_status' removed"], breaking: true },
    { kind: "modified", path: "voice_config.model_settings.speed", item: null, change: "voice_param:model_settings.speed",
      type: "voice_parameter_change", old: 1.0, new: 0.8, risk_level: "low", reasons: ["voice parameters changed"], breaking: false },
    { kind: "modified", path: "system_prompt", item: null, change: "system_prompt_changed", type: "system_prompt_change",
      old: "Be brief.", new: "Be formal.", risk_level: "low", reasons: ["system prompt wording changed"], breaking: false },
  ],
};

const filler = Array.from({ length: 20 }, (_, i) => `k${i}: ${i}`).join("\n");
const before = `${filler}\nvoice_config:\n  model_settings:\n    speed: 1.0\nsystem_prompt: Be brief.\n`;
const after = `${filler}\nvoice_config:\n  model_settings:\n    speed: 0.8\nsystem_prompt: Be formal.\n`;

describe("the diff view", () => {
  it("lists each change with its own risk", () => {
    render(<DiffView comparison={comparison} before={before} after={after} />);
    const rows = within(screen.getByRole("table", { name: "Changes" })).getAllByRole("row").slice(1);
    const byField = Object.fromEntries(rows.map((row) => [within(row).getAllByRole("cell")[1]!.textContent, row.textContent]));
    expect(byField["voice_config.model_settings.speed"]).toMatch(/modified.*1.*0\.8.*low risk/s);
    expect(byField["system_prompt"]).toMatch(/Be brief\..*Be formal\..*low risk/s);
    const tools = rows.filter((r) => within(r).getAllByRole("cell")[1]!.textContent === "tools").map((r) => r.textContent);
    expect(tools).toEqual([expect.stringMatching(/^added.*initiate_refund.*medium risk$/s), expect.stringMatching(/^removed.*fetch_order_status.*high risk$/s)]);
  });

  it("gives the API's overall risk, its reasons and what breaks", () => {
    render(<DiffView comparison={comparison} before={before} after={after} />);
    const risk = screen.getByLabelText("Risk assessment");
    expect(risk).toHaveTextContent("high risk");
    expect(risk).toHaveTextContent("breaking");
    expect(within(risk).getByRole("list", { name: "Risk reasons" })).toHaveTextContent("tool 'fetch_order_status' removed");
  });

  it("shows the two YAMLs side by side, changed lines paired, unchanged ones folded away", async () => {
    render(<DiffView comparison={comparison} before={before} after={after} />);
    const yaml = screen.getByRole("table", { name: "YAML of v1 and v2, side by side" });
    expect(yaml).toHaveTextContent("2 lines differ.");
    const changed = within(yaml).getAllByRole("row").filter((r) => r.getAttribute("data-kind") === "changed");
    expect(changed.map((r) => r.textContent)).toEqual([
      "23removed:     speed: 1.023added:     speed: 0.8",
      "24removed: system_prompt: Be brief.24added: system_prompt: Be formal.",
    ]);
    expect(yaml).not.toHaveTextContent("k0: 0");
    await userEvent.click(within(yaml).getByRole("button", { name: "Show 19 unchanged lines" }));
    expect(yaml).toHaveTextContent("k0: 0");
  });

  it("pairs removed lines with the added lines that replace them", () => {
    expect(sideBySide("a\nb\nc\n", "a\nB\nc\nd\n").map((r) => [r.kind, r.left, r.right])).toEqual([
      ["same", "a", "a"],
      ["changed", "b", "B"],
      ["same", "c", "c"],
      ["added", null, "d"],
    ]);
  });
});
