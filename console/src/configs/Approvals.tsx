// Versions waiting for approval, each with what it changes, its risk and the what-if replay of
// recorded conversations; approve or reject (approvers only, never the author).
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { api, call } from "../api/client";
import { useSession } from "../api/session";
import type { ConfigView, ReplayEvidence, VersionOutcome, VersionView } from "../api/types";
import { ErrorNotice, Field, fmtTime, Loading, Progress, RiskBadge } from "../ui/components";
import { DiffView } from "./DiffView";
import { keys, notePosition, useCompare, useConfig, useVersions } from "./queries";
import { ReplaySummary } from "./Replay";

export function Approvals({ config }: { config: ConfigView }) {
  const versions = useVersions(config.config_id);
  const [decided, setDecided] = useState<string | null>(null);
  if (versions.isPending) return <Loading what="versions" />;
  if (versions.error) return <ErrorNotice error={versions.error} />;
  const pending = versions.data.versions.filter((v) => v.status === "pending_approval");
  const history = versions.data.versions.filter((v) => v.approvals.length > 0 || v.status === "rejected").slice(0, 10);
  return (
    <div className="stack">
      {decided && (
        <div className="notice ok" role="status">
          {decided}
        </div>
      )}
      {pending.length === 0 && <p>No version is waiting for approval.</p>}
      {pending.map((v) => (
        <ApprovalRequest key={v.version} config={config} version={v} active={versions.data.current_version} onDecided={setDecided} />
      ))}
      {history.length > 0 && (
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
              {history.map((v) => (
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

function ApprovalRequest({
  config,
  version,
  active,
  onDecided,
}: {
  config: ConfigView;
  version: VersionView;
  active: number;
  onDecided: (what: string) => void;
}) {
  const session = useSession();
  const client = useQueryClient();
  const base = version.based_on || active;
  const comparison = useCompare(config.config_id, base, version.version);
  const before = useConfig(config.config_id, base);
  const after = useConfig(config.config_id, version.version);
  // A low-risk version carries no replay (the API makes one for medium and high risk); the
  // approver gets one all the same, run now in the sandbox against the version's content.
  const replayNow = useQuery({
    queryKey: ["/api/v1/configs/{config_id}/preview", config.config_id, "replay", version.version],
    queryFn: async () =>
      (
        await call<{ replay: ReplayEvidence | null }>(
          api.POST("/api/v1/configs/{config_id}/preview", {
            params: { path: { config_id: config.config_id } },
            body: { yaml_content: after.data!.yaml_content, replay_recorded: 20 },
          }),
        )
      ).replay,
    enabled: !version.evidence && !!after.data,
    staleTime: Infinity,
  });
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
    onSuccess: async (outcome) => {
      notePosition(config.config_id, outcome);
      onDecided(
        `Approved: v${outcome.version} is ${outcome.status.replace(/_/g, " ")}${outcome.approvals_missing.length ? `, still waiting for ${outcome.approvals_missing.join(" and ")}` : ""}.`,
      );
      await refresh();
    },
  });
  const reject = useMutation({
    mutationFn: () =>
      call<VersionOutcome>(
        api.POST("/api/v1/configs/{config_id}/versions/{version}/reject", {
          params: { path: { config_id: config.config_id, version: version.version } },
          body: { reason },
        }),
      ),
    onSuccess: async (outcome) => {
      notePosition(config.config_id, outcome);
      onDecided(`Rejected: v${outcome.version} will not go live.`);
      await refresh();
    },
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
      {version.evidence && <ReplaySummary replay={version.evidence} />}
      {!version.evidence && (
        <>
          <p className="muted small" style={{ margin: 0 }}>
            Its risk did not call for a recorded replay; this one is run now in the sandbox.
          </p>
          {replayNow.isPending && <Progress label="Replaying recorded conversations" />}
          <ErrorNotice error={replayNow.error} />
          {replayNow.data && <ReplaySummary replay={replayNow.data} />}
        </>
      )}
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
    </section>
  );
}
