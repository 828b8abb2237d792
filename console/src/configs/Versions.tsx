// A config's versions; from each, a diff with the active version and a rollback that shows its
// blast radius (what it undoes, the conversations that stay on the current version) before it acts.
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Link } from "react-router";
import { api, call } from "../api/client";
import type { ConfigView, RollbackAnswer, VersionView } from "../api/types";
import { isMissingEndpoint, useConversationList } from "../conversations/queries";
import { ErrorNotice, Field, fmtTime, Loading, RiskBadge } from "../ui/components";
import { DiffView } from "./DiffView";
import { keys, notePosition, useCompare, useConfig, useMyPermissions, useVersions } from "./queries";

export function statusLabel(v: VersionView): string {
  return v.status.replace(/_/g, " ");
}

export function Versions({ config }: { config: ConfigView }) {
  const versions = useVersions(config.config_id);
  const { can } = useMyPermissions();
  // The rollback's versions, fixed when it is opened (the active version changes once it is done).
  const [target, setTarget] = useState<{ from: number; to: number } | null>(null);
  if (versions.isPending) return <Loading what="versions" />;
  if (versions.error) return <ErrorNotice error={versions.error} />;
  const active = versions.data.current_version;
  return (
    <div className="stack">
      <table aria-label="Versions">
        <thead>
          <tr>
            <th scope="col">Version</th>
            <th scope="col">Branch</th>
            <th scope="col">Status</th>
            <th scope="col">Risk</th>
            <th scope="col">Message</th>
            <th scope="col">Author</th>
            <th scope="col">Created</th>
            <th scope="col">Actions</th>
          </tr>
        </thead>
        <tbody>
          {versions.data.versions.map((v) => (
            <tr key={v.version} className={target?.to === v.version ? "selected" : undefined}>
              <td>
                v{v.version}
                {v.version === active && <span className="badge neutral">active</span>}
              </td>
              <td>{v.branch}</td>
              <td>
                {statusLabel(v)}
                {v.rolled_back && <span className="muted small"> (rolled back)</span>}
              </td>
              <td>
                <RiskBadge level={v.risk_level} />
              </td>
              <td>{v.commit_message}</td>
              <td>
                {v.created_by} <span className="muted small">({v.author_type})</span>
              </td>
              <td>{fmtTime(v.created_at)}</td>
              <td className="row">
                {v.version !== active && active > 0 && (
                  <Link className="button secondary" to={`/configs/${config.config_id}/compare?a=${active}&b=${v.version}`}>
                    Compare v{v.version} with v{active}
                  </Link>
                )}
                {v.rollback_available && v.version !== active && can("rollback_versions") && (
                  <button type="button" className="secondary" onClick={() => setTarget({ from: active, to: v.version })}>
                    Roll back to v{v.version}
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {target !== null && <RollbackPanel key={`${target.from}-${target.to}`} config={config} from={target.from} to={target.to} onClose={() => setTarget(null)} />}
    </div>
  );
}

export function RollbackPanel({ config, from, to, onClose }: { config: ConfigView; from: number; to: number; onClose: () => void }) {
  const client = useQueryClient();
  const comparison = useCompare(config.config_id, from, to);
  const before = useConfig(config.config_id, from);
  const after = useConfig(config.config_id, to);
  const open = useConversationList({ config_id: config.config_id, config_version: from, limit: 200 });
  const stillOpen = (open.data?.conversations ?? []).filter((c) => c.status !== "closed");
  const [reason, setReason] = useState("");
  const rollback = useMutation({
    mutationFn: () =>
      call<RollbackAnswer>(
        api.POST("/api/v1/configs/{config_id}/rollback", {
          params: { path: { config_id: config.config_id } },
          body: { reason, target_version: to, initiated_by: "client_user", notify_team: false },
        }),
      ),
    onSuccess: async (answer) => {
      notePosition(config.config_id, answer);
      await client.invalidateQueries({ queryKey: keys.versions(config.config_id) });
      await client.invalidateQueries({ queryKey: ["/api/v1/configs/{config_id}", config.config_id] });
      await client.invalidateQueries({ queryKey: ["/api/v1/configs/{config_id}/history", config.config_id] });
    },
  });
  const done = rollback.data;
  return (
    <section className="panel stack" aria-labelledby="rollback-title">
      <h2 id="rollback-title">
        Roll back v{from} → v{to}: blast radius
      </h2>
      {done ? (
        <div className="notice ok" role="status">
          <strong>
            Rolled back from v{done.rolled_back_from} to v{done.rolled_back_to}
          </strong>
          : v{done.new_current_version} is now active with v{done.rolled_back_to}'s content.{" "}
          {done.pinned_conversations.length === 0
            ? "No conversation was still open on the old version."
            : `${done.pinned_conversations.length} conversation(s) still open on v${done.rolled_back_from} keep it until they end.`}
          {done.pinned_conversations.length > 0 && (
            <ul aria-label="Conversations kept on the old version">
              {done.pinned_conversations.slice(0, 50).map((id) => (
                <li key={id} className="mono">
                  {id}
                </li>
              ))}
            </ul>
          )}
        </div>
      ) : (
        <>
          <section aria-label="Conversations affected">
            <h3>Conversations on v{from}</h3>
            {open.isPending && <Loading what="open conversations" />}
            {open.error &&
              (isMissingEndpoint(open.error) ? (
                <p className="muted">The conversation list is not available on this API yet; the rollback's answer will name the conversations still open on v{from}.</p>
              ) : (
                <ErrorNotice error={open.error} />
              ))}
            {open.data && (
              <p>
                <strong>{stillOpen.length}</strong> conversation{stillOpen.length === 1 ? "" : "s"} still open on v{from}: they keep v{from} until they end; new conversations start on
                the restored content at once.
              </p>
            )}
          </section>
          <section aria-label="What the rollback undoes">
            <h3>What changes back</h3>
            {comparison.isPending && <Loading what="the comparison" />}
            <ErrorNotice error={comparison.error} />
            {comparison.data && <DiffView comparison={comparison.data} before={before.data?.yaml_content} after={after.data?.yaml_content} />}
          </section>
          <Field label="Reason for the rollback">{(p) => <input {...p} type="text" value={reason} onChange={(e) => setReason(e.target.value)} />}</Field>
          <div className="row">
            <button type="button" className="danger" disabled={!reason.trim() || rollback.isPending} onClick={() => rollback.mutate()}>
              Confirm rollback to v{to}
            </button>
            <button type="button" className="secondary" onClick={onClose}>
              Cancel
            </button>
          </div>
          <ErrorNotice error={rollback.error} />
        </>
      )}
    </section>
  );
}
