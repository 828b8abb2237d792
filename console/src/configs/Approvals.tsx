// Versions waiting for approval, each with what it changes, its risk and the what-if replay of
// recorded conversations; approve or reject (approvers only, never the author).
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { api, call } from "../api/client";
import { useSession } from "../api/session";
import type { ConfigView, VersionOutcome, VersionView } from "../api/types";
import { ErrorNotice, Field, fmtTime, Loading, RiskBadge } from "../ui/components";
import { DiffView } from "./DiffView";
import { keys, useCompare, useConfig, useVersions } from "./queries";
import { ReplaySummary } from "./Replay";

export function Approvals({ config }: { config: ConfigView }) {
  const versions = useVersions(config.config_id);
  if (versions.isPending) return <Loading what="versions" />;
  if (versions.error) return <ErrorNotice error={versions.error} />;
  const pending = versions.data.versions.filter((v) => v.status === "pending_approval");
  const decided = versions.data.versions.filter((v) => v.approvals.length > 0 || v.status === "rejected").slice(0, 10);
  return (
    <div className="stack">
      {pending.length === 0 && <p>No version is waiting for approval.</p>}
      {pending.map((v) => (
        <ApprovalRequest key={v.version} config={config} version={v} active={versions.data.current_version} />
      ))}
      {decided.length > 0 && (
        <section>
          <h2>Decided</h2>
          <table aria-label="Decided approval requests">
            <thead>
              <tr>
                <th scope="col">Version</th>
                <th scope="col">Status</th>
                <th scope="col">Approvals</th>
                <th scope="col">Rejection</th>
              </tr>
            </thead>
            <tbody>
              {decided.map((v) => (
                <tr key={v.version}>
                  <td>v{v.version}</td>
                  <td>{v.status.replace(/_/g, " ")}</td>
                  <td>{v.approvals.map((a) => `${a.approver} (${a.role}, ${fmtTime(a.at)})`).join("; ") || "—"}</td>
                  <td>{v.rejected_reason ?? "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
      )}
    </div>
  );
}

function ApprovalRequest({ config, version, active }: { config: ConfigView; version: VersionView; active: number }) {
  const session = useSession();
  const client = useQueryClient();
  const base = version.based_on || active;
  const comparison = useCompare(config.config_id, base, version.version);
  const before = useConfig(config.config_id, base);
  const after = useConfig(config.config_id, version.version);
  const [reason, setReason] = useState("");
  const mine = session?.subject === version.created_by;
  const canApprove = !mine && version.approvals_missing.some((role) => session?.roles.includes(role as never));
  const refresh = async () => {
    await client.invalidateQueries({ queryKey: keys.versions(config.config_id) });
    await client.invalidateQueries({ queryKey: ["/api/v1/configs/{config_id}", config.config_id] });
  };
  const approve = useMutation({
    mutationFn: () =>
      call<VersionOutcome>(
        api.POST("/api/v1/configs/{config_id}/versions/{version}/approve", {
          params: { path: { config_id: config.config_id, version: version.version } },
        }),
      ),
    onSuccess: refresh,
  });
  const reject = useMutation({
    mutationFn: () =>
      call<VersionOutcome>(
        api.POST("/api/v1/configs/{config_id}/versions/{version}/reject", {
          params: { path: { config_id: config.config_id, version: version.version } },
          body: { reason },
        }),
      ),
    onSuccess: refresh,
  });
  return (
    <section className="panel stack" aria-labelledby={`request-${version.version}`}>
      <h2 id={`request-${version.version}`}>
        Approval request: v{version.version} <RiskBadge level={version.risk_level} />
      </h2>
      <p style={{ margin: 0 }}>
        “{version.commit_message}” by <strong>{version.created_by}</strong> ({version.author_type}), {fmtTime(version.created_at)}. Needs{" "}
        {version.approvals_needed.join(" and ")}; still missing: <strong>{version.approvals_missing.join(" and ") || "none"}</strong>.
        {version.approvals.length > 0 && <> Approved so far by {version.approvals.map((a) => `${a.approver} (${a.role})`).join(", ")}.</>}
      </p>
      <h3>Evidence: what-if replay</h3>
      {version.evidence ? <ReplaySummary replay={version.evidence} /> : <p className="muted">This version carries no replay (its risk did not call for one).</p>}
      <h3>
        Changes from v{base}
      </h3>
      {comparison.isPending && <Loading what="the comparison" />}
      <ErrorNotice error={comparison.error} />
      {comparison.data && <DiffView comparison={comparison.data} before={before.data?.yaml_content} after={after.data?.yaml_content} />}
      {mine && <div className="notice">You wrote this version: someone else approves it.</div>}
      {canApprove && (
        <div className="stack">
          <div className="row">
            <button type="button" onClick={() => approve.mutate()} disabled={approve.isPending}>
              Approve v{version.version}
            </button>
          </div>
          <div className="row" style={{ alignItems: "end" }}>
            <Field label="Reason to reject">{(p) => <input {...p} type="text" value={reason} onChange={(e) => setReason(e.target.value)} />}</Field>
            <button type="button" className="danger" disabled={!reason.trim() || reject.isPending} onClick={() => reject.mutate()}>
              Reject v{version.version}
            </button>
          </div>
        </div>
      )}
      {!canApprove && !mine && <p className="muted">Your roles cannot give the approvals still missing.</p>}
      <ErrorNotice error={approve.error ?? reject.error} />
      {approve.data && (
        <div className="notice ok" role="status">
          Approved: v{approve.data.version} is {approve.data.status.replace(/_/g, " ")}.
        </div>
      )}
    </section>
  );
}
