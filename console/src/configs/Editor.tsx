// The visual editor: a draft of the config's YAML, edited through controls or as text, validated by
// the API as you type; then reviewed (the YAML side by side, the risk and the replay from a sandbox
// preview) and saved as a new version, which applies at once or waits for its approvals.
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Link } from "react-router";
import { api, call } from "../api/client";
import type { ConfigView, ReplayEvidence, RiskLevel, VersionOutcome } from "../api/types";
import { ErrorNotice, Field, Progress, RiskBadge } from "../ui/components";
import { YamlSideBySide } from "./DiffView";
import { Draft } from "./model";
import { keys, notePosition, useBranches, useMyPermissions } from "./queries";
import { ReplaySummary } from "./Replay";
import {
  CrossSellSection,
  EscalationSection,
  IntegrationsSection,
  PromptSection,
  TemplatesSection,
  ToolsSection,
  VoiceSection,
  type SectionProps,
} from "./sections";
import { useValidation, type Validation } from "./validation";

interface Preview {
  risk_assessment: { risk_level: RiskLevel; reasons: string[] };
  breaking_change: boolean;
  changes: string[];
  replay: ReplayEvidence | null;
}

export function ValidationStatus({ validation }: { validation: Validation }) {
  const { state, errors, warnings } = validation;
  return (
    <div aria-live="polite" className="stack" aria-label="Validation">
      {state === "checking" && <span className="muted">Checking…</span>}
      {state === "valid" && <div className="notice ok">Valid{warnings.length ? `, with ${warnings.length} warning${warnings.length > 1 ? "s" : ""}` : ""}.</div>}
      {state === "invalid" && (
        <div className="notice error" role="alert">
          <strong>
            {errors.length} error{errors.length > 1 ? "s" : ""}
          </strong>
          <ul>
            {errors.map((e) => (
              <li key={e.field + e.message}>
                <span className="mono">{e.field}</span>: {e.message}
              </li>
            ))}
          </ul>
        </div>
      )}
      {state === "unavailable" && <ErrorNotice error={validation.problem} title="Could not validate" />}
      {warnings.length > 0 && state !== "checking" && (
        <details>
          <summary>
            {warnings.length} warning{warnings.length > 1 ? "s" : ""}
          </summary>
          <ul>
            {warnings.map((w) => (
              <li key={w.field + w.message}>
                <span className="mono">{w.field}</span>: {w.message}
              </li>
            ))}
          </ul>
        </details>
      )}
    </div>
  );
}

export function ConfigEditor({ config }: { config: ConfigView }) {
  const [draft, setDraft] = useState(() => new Draft(config.yaml_content));
  const [mode, setMode] = useState<"visual" | "yaml">("visual");
  const validation = useValidation(draft.text, config.config_id);
  const { can, loaded } = useMyPermissions();
  const product = draft.get<string>(["product_type"], config.product_type);
  const changed = draft.text !== config.yaml_content;
  const anyEdit = can("edit_system_prompt") || can("add_remove_tools") || can("change_voice_params") || can("modify_integrations");

  const props = (permission: Parameters<typeof can>[0]): SectionProps => ({
    draft,
    onChange: setDraft,
    validation,
    disabled: !can(permission),
  });

  return (
    <div className="stack">
      {loaded && !anyEdit && <div className="notice">Your permissions let you view this config, not change it.</div>}
      <div className="row" role="group" aria-label="Editor mode">
        <button type="button" className={mode === "visual" ? undefined : "secondary"} aria-pressed={mode === "visual"} onClick={() => setMode("visual")}>
          Visual
        </button>
        <button type="button" className={mode === "yaml" ? undefined : "secondary"} aria-pressed={mode === "yaml"} onClick={() => setMode("yaml")}>
          YAML
        </button>
        <span className="muted">
          Editing from v{config.version} ({product}){changed ? " · unsaved changes" : ""}
        </span>
        {changed && (
          <button type="button" className="secondary right" onClick={() => setDraft(new Draft(config.yaml_content))}>
            Discard changes
          </button>
        )}
      </div>
      <ValidationStatus validation={validation} />
      {mode === "yaml" ? (
        <Field label="Config YAML" error={validation.byField["$"]?.error} hint={draft.parseError ?? undefined}>
          {(p) => (
            <textarea {...p} className="mono" rows={28} value={draft.text} readOnly={!anyEdit} onChange={(e) => setDraft(new Draft(e.target.value))} spellCheck={false} />
          )}
        </Field>
      ) : draft.parseError ? (
        <div className="notice error">The YAML does not parse ({draft.parseError}); fix it in the YAML view.</div>
      ) : (
        <div>
          {product === "voicebot" && <VoiceSection {...props("change_voice_params")} />}
          <PromptSection {...props("edit_system_prompt")} />
          <ToolsSection {...props("add_remove_tools")} />
          <EscalationSection {...props("edit_system_prompt")} />
          <TemplatesSection {...props("edit_system_prompt")} />
          <CrossSellSection {...props("edit_system_prompt")} />
          {product === "chatbot" && <IntegrationsSection {...props("modify_integrations")} />}
        </div>
      )}
      {anyEdit && (
        <SaveVersion
          config={config}
          draft={draft}
          validation={validation}
          changed={changed}
          onSaved={(outcome) => {
            // Applied: the draft is the new active version. Waiting for approval: back to what is live.
            if (outcome.status !== "active") setDraft(new Draft(config.yaml_content));
          }}
        />
      )}
    </div>
  );
}

function SaveVersion({ config, draft, validation, changed, onSaved }: { config: ConfigView; draft: Draft; validation: Validation; changed: boolean; onSaved: (outcome: VersionOutcome) => void }) {
  const client = useQueryClient();
  const branches = useBranches(config.config_id);
  const [message, setMessage] = useState("");
  const [branch, setBranch] = useState("main");
  const [reviewing, setReviewing] = useState(false);
  const preview = useQuery({
    queryKey: ["/api/v1/configs/{config_id}/preview", config.config_id, draft.text],
    queryFn: () =>
      call<Preview>(
        api.POST("/api/v1/configs/{config_id}/preview", {
          params: { path: { config_id: config.config_id } },
          body: { yaml_content: draft.text, replay_recorded: 5 },
        }),
      ),
    enabled: reviewing && validation.state === "valid",
    staleTime: Infinity,
    retry: false,
  });
  const save = useMutation({
    mutationFn: () =>
      call<VersionOutcome>(
        api.POST("/api/v1/configs/{config_id}/versions", {
          params: { path: { config_id: config.config_id } },
          body: { yaml_content: draft.text, commit_message: message, author_type: "client_user", based_on: config.version, branch },
        }),
      ),
    onSuccess: async (outcome) => {
      notePosition(config.config_id, outcome);
      setReviewing(false);
      setMessage("");
      onSaved(outcome);
      await client.invalidateQueries({ queryKey: keys.versions(config.config_id) });
      await client.invalidateQueries({ queryKey: ["/api/v1/configs/{config_id}", config.config_id] });
      await client.invalidateQueries({ queryKey: ["/api/v1/configs/{config_id}/history", config.config_id] });
    },
  });
  const risk = preview.data?.risk_assessment.risk_level;
  // The API's rule (domain/agent_config.approvals_for): low risk applies at once, medium needs an
  // organization admin, high an admin and a platform engineer. The saved version's status says so too.
  const needsApproval = branch === "main" && !!risk && risk !== "low";
  const active = (branches.data ?? []).filter((b) => b.status === "active");
  const result = save.data;

  return (
    <section className="panel stack" aria-labelledby="save-version">
      <h2 id="save-version">Save as a new version</h2>
      {result && (
        <div className="notice ok" role="status">
          {result.unchanged ? (
            "Nothing changed: no version was made."
          ) : (
            <>
              Saved as <strong>v{result.version}</strong> on {result.branch}: {result.status.replace("_", " ")} · <RiskBadge level={result.risk_level} />
              {result.approvals_missing.length > 0 && <> · waiting for approval by {result.approvals_missing.join(" and ")} </>}{" "}
              {result.status === "pending_approval" && <Link to={`/configs/${config.config_id}/approvals`}>See the approval request</Link>}
            </>
          )}
        </div>
      )}
      <div className="grid2">
        <Field label="Commit message" hint="What changed and why.">
          {(p) => <input {...p} type="text" value={message} onChange={(e) => setMessage(e.target.value)} />}
        </Field>
        <Field label="Branch">
          {(p) => (
            <select {...p} value={branch} onChange={(e) => setBranch(e.target.value)}>
              <option value="main">main</option>
              {active.map((b) => (
                <option key={b.branch_name} value={b.branch_name}>
                  {b.branch_name}
                </option>
              ))}
            </select>
          )}
        </Field>
      </div>
      <div className="row">
        <button type="button" className="secondary" disabled={!changed || validation.state !== "valid"} onClick={() => setReviewing(true)}>
          Review changes
        </button>
        {!changed && <span className="muted">No changes yet.</span>}
        {changed && validation.state === "invalid" && <span className="field-error">Fix the errors above to review and save.</span>}
      </div>
      {reviewing && changed && (
        <section className="stack" aria-labelledby="review">
          <h3 id="review">Review: v{config.version} → draft</h3>
          {preview.isFetching && <Progress label="Replaying recorded conversations in the sandbox" />}
          <ErrorNotice error={preview.error} />
          {preview.data && (
            <div className="stack" aria-label="Risk of the draft">
              <div className="row">
                <strong>Risk:</strong> <RiskBadge level={preview.data.risk_assessment.risk_level} />
                {preview.data.breaking_change && <span className="badge risk-high">breaking</span>}
                <span className="muted">{preview.data.changes.join(", ")}</span>
              </div>
              <ul aria-label="Risk reasons">
                {preview.data.risk_assessment.reasons.map((r) => (
                  <li key={r}>{r}</li>
                ))}
              </ul>
              {needsApproval && (
                <div className="notice warn">
                  This change needs approval before it goes live ({risk} risk: {risk === "high" ? "an organization admin and a platform engineer" : "an organization admin"}).
                </div>
              )}
              {preview.data.replay && <ReplaySummary replay={preview.data.replay} />}
            </div>
          )}
          <YamlSideBySide before={config.yaml_content} after={draft.text} leftLabel={`v${config.version}`} rightLabel="Draft" />
          <div className="row">
            <button type="button" disabled={!message.trim() || save.isPending || !preview.data} onClick={() => save.mutate()}>
              {branch !== "main" ? `Save to ${branch}` : needsApproval ? "Request approval" : "Save and apply"}
            </button>
            {!message.trim() && <span className="muted">A commit message is needed.</span>}
          </div>
          <ErrorNotice error={save.error} />
        </section>
      )}
    </section>
  );
}
