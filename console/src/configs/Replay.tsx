// The what-if replay: how a candidate config answers the config's recorded conversations.
import type { ReplayEvidence } from "../api/types";

export function ReplaySummary({ replay }: { replay: ReplayEvidence }) {
  // Evidence recorded by an older version of the replay may lack a list: read as empty.
  const conversations = (replay.conversations ?? []).map((c) => ({
    ...c,
    turns: c.turns ?? 0,
    turns_changed: c.turns_changed ?? 0,
    tool_calls_lost: c.tool_calls_lost ?? [],
    tool_calls_added: c.tool_calls_added ?? [],
    differences: c.differences ?? [],
  }));
  const changed = conversations.filter((c) => c.turns_changed > 0);
  const replayed = replay.conversations_replayed ?? 0;
  const answeredDifferently = replay.conversations_changed ?? [];
  const losing = replay.conversations_losing_tool_calls ?? [];
  return (
    <section className="panel stack" aria-label="Replay of recorded conversations">
      <h4 style={{ margin: 0 }}>Replay of recorded conversations</h4>
      <p style={{ margin: 0 }}>
        {replayed} conversation{replayed === 1 ? "" : "s"} replayed, {answeredDifferently.length} would be answered differently
        {losing.length > 0 && <>, {losing.length} would lose tool calls</>}.
      </p>
      {changed.map((c) => (
        <details key={c.conversation_id}>
          <summary>
            <span className="mono">{c.conversation_id}</span>: {c.turns_changed} of {c.turns} turns differ
            {c.tool_calls_lost.length > 0 && <> · loses {c.tool_calls_lost.join(", ")}</>}
            {c.tool_calls_added.length > 0 && <> · adds {c.tool_calls_added.join(", ")}</>}
          </summary>
          <table>
            <thead>
              <tr>
                <th scope="col">Turn</th>
                <th scope="col">Customer</th>
                <th scope="col">Recorded</th>
                <th scope="col">With this version</th>
              </tr>
            </thead>
            <tbody>
              {c.differences.map((d) => (
                <tr key={d.turn}>
                  <td>{d.turn}</td>
                  <td>{d.user_message}</td>
                  <td>
                    {d.recorded.reply}
                    {(d.recorded.tool_calls ?? []).length > 0 && <div className="muted small">tools: {(d.recorded.tool_calls ?? []).join(", ")}</div>}
                  </td>
                  <td>
                    {d.candidate.reply}
                    {(d.candidate.tool_calls ?? []).length > 0 && <div className="muted small">tools: {(d.candidate.tool_calls ?? []).join(", ")}</div>}
                    {d.candidate.escalated && <div className="muted small">escalates</div>}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </details>
      ))}
    </section>
  );
}
