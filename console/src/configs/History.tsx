// The change history, filtered by who made the change (a person, a platform engineer, the AI, automation, the monitor).
import { useState } from "react";
import type { ConfigView } from "../api/types";
import { ErrorNotice, Field, fmtTime, Loading, RiskBadge } from "../ui/components";
import { useHistory } from "./queries";

const AUTHOR_TYPES = ["all", "client_user", "platform_engineer", "ai_agent", "automation", "monitor"];

export function History({ config }: { config: ConfigView }) {
  const [authorType, setAuthorType] = useState("all");
  const history = useHistory(config.config_id, authorType);
  return (
    <div className="stack">
      <Field label="Author type">
        {(p) => (
          <select {...p} value={authorType} onChange={(e) => setAuthorType(e.target.value)} style={{ maxWidth: "16rem" }}>
            {AUTHOR_TYPES.map((t) => (
              <option key={t} value={t}>
                {t}
              </option>
            ))}
          </select>
        )}
      </Field>
      {history.isPending && <Loading what="the history" />}
      <ErrorNotice error={history.error} />
      {history.data && (
        <>
          <table aria-label="Changes">
            <thead>
              <tr>
                <th scope="col">Version</th>
                <th scope="col">Change</th>
                <th scope="col">Message</th>
                <th scope="col">Author</th>
                <th scope="col">Risk</th>
                <th scope="col">Approved by</th>
                <th scope="col">Applied</th>
                <th scope="col">Status</th>
              </tr>
            </thead>
            <tbody>
              {history.data.changes.map((c) => (
                <tr key={c.change_id}>
                  <td>{c.version}</td>
                  <td>{c.change_type}</td>
                  <td>{c.commit_message}</td>
                  <td>
                    {c.author} <span className="muted small">({c.author_type})</span>
                  </td>
                  <td>
                    <RiskBadge level={c.risk_level} />
                  </td>
                  <td>{c.approved_by ?? "—"}</td>
                  <td>{fmtTime(c.applied_at)}</td>
                  <td>
                    {c.status.replace(/_/g, " ")}
                    {c.rolled_back && " (rolled back)"}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          {history.data.changes.length === 0 && <p>No changes by this author type.</p>}
          {history.data.rollbacks.length > 0 && (
            <>
              <h2>Rollbacks</h2>
              <ul>
                {history.data.rollbacks.map((r) => (
                  <li key={r.new_version}>
                    v{r.rolled_back_from} → v{r.rolled_back_to} as v{r.new_version}, {fmtTime(r.at)}, by {r.initiated_by}
                    {r.user_id ? ` (${r.user_id})` : ""}: {r.reason} · {r.pinned_conversations.length} conversation(s) kept the old version
                  </li>
                ))}
              </ul>
            </>
          )}
        </>
      )}
    </div>
  );
}
