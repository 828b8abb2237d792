// For platform engineers: every dependency's health, each projector's checkpoint, lag and dead
// letters (GET /health), the metrics as Prometheus reads them, and the analytics rebuild.
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useState } from "react";
import { api, call, ORIGIN } from "../api/client";
import type { Health, RebuildReport } from "../api/types";
import { ErrorNotice, Loading, Progress } from "../ui/components";

async function health(): Promise<Health> {
  // /health answers 503 with the same report when something is down: that is still the report.
  const response = await fetch(`${ORIGIN}/health`, { headers: { Accept: "application/json" } });
  return (await response.json()) as Health;
}

/** Seconds since ``since`` (epoch ms), ticking while ``running``: a clock for the progress, not a poll. */
function useElapsed(running: boolean, since: number): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!running) return;
    const timer = setInterval(() => setNow(Date.now()), 250);
    return () => clearInterval(timer);
  }, [running]);
  return running ? Math.max(0, (now - since) / 1000) : 0;
}

export function OperationsPage() {
  const client = useQueryClient();
  const report = useQuery({ queryKey: ["/health"], queryFn: health });
  const metrics = useQuery({
    queryKey: ["/metrics"],
    queryFn: async () => (await fetch(`${ORIGIN}/metrics`)).text(),
  });
  const rebuild = useMutation({
    mutationFn: () => call<RebuildReport>(api.POST("/api/v1/admin/projections/analytics/rebuild")),
    onSettled: () => client.invalidateQueries({ queryKey: ["/health"] }),
  });
  const elapsed = useElapsed(rebuild.isPending, rebuild.submittedAt);
  const analytics = report.data?.projectors.find((p) => p.name === "analytics");
  const streamSeq = report.data?.projectors[0]?.stream_last_seq;

  return (
    <div className="stack">
      <div className="row">
        <h1 style={{ margin: 0 }}>Operations</h1>
        <button
          type="button"
          className="secondary right"
          onClick={() => {
            void report.refetch();
            void metrics.refetch();
          }}
          disabled={report.isFetching}
        >
          Refresh
        </button>
      </div>
      {report.isPending && <Loading what="health" />}
      <ErrorNotice error={report.error} />
      {report.data && (
        <>
          <div className={`notice ${report.data.status === "ok" ? "ok" : "error"}`} role="status">
            Platform {report.data.status === "ok" ? "healthy" : "degraded"}
            {streamSeq !== undefined && <> · event stream at sequence {streamSeq.toLocaleString()}</>}
          </div>
          <section aria-labelledby="deps">
            <h2 id="deps">Dependencies</h2>
            <table aria-label="Dependencies">
              <thead>
                <tr>
                  <th scope="col">Dependency</th>
                  <th scope="col">State</th>
                  <th scope="col">Answered in</th>
                </tr>
              </thead>
              <tbody>
                {report.data.dependencies.map((d) => (
                  <tr key={d.name}>
                    <td>{d.name}</td>
                    <td>{d.ok ? "ok" : <span className="field-error">down: {d.error}</span>}</td>
                    <td>{d.ms !== undefined ? `${d.ms} ms` : "—"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </section>
          <section aria-labelledby="projectors">
            <h2 id="projectors">Projectors</h2>
            <table aria-label="Projectors">
              <thead>
                <tr>
                  <th scope="col">Projector</th>
                  <th scope="col">Schema</th>
                  <th scope="col">Checkpoint</th>
                  <th scope="col">Last event it follows</th>
                  <th scope="col">Lag</th>
                  <th scope="col">Dead letters</th>
                </tr>
              </thead>
              <tbody>
                {report.data.projectors.map((p) => (
                  <tr key={p.name}>
                    <td>{p.name}</td>
                    <td className="mono">{p.schema}</td>
                    <td>{p.checkpoint.toLocaleString()}</td>
                    <td>{p.last_event_seq.toLocaleString()}</td>
                    <td>{p.lag === 0 ? "caught up" : p.lag.toLocaleString()}</td>
                    <td>{p.dead_letters > 0 ? <span className="field-error">{p.dead_letters}</span> : 0}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </section>
        </>
      )}
      <section className="panel stack" aria-labelledby="rebuild">
        <h2 id="rebuild" style={{ marginTop: 0 }}>
          Rebuild analytics
        </h2>
        <p className="muted" style={{ margin: 0 }}>
          Replays the whole event stream into shadow tables while the live ones keep answering, then swaps them in.
          {analytics ? ` The analytics projector is at ${analytics.checkpoint.toLocaleString()}.` : " This API process has no analytics projector."}
        </p>
        <div>
          <button type="button" onClick={() => rebuild.mutate()} disabled={rebuild.isPending}>
            Rebuild analytics
          </button>
        </div>
        {rebuild.isPending && (
          <Progress
            label="Rebuilding the analytics tables"
            detail={`${elapsed.toFixed(0)} s so far, replaying ${streamSeq !== undefined ? `${streamSeq.toLocaleString()} stream sequences` : "the stream"}; the live tables keep answering.`}
          />
        )}
        <ErrorNotice error={rebuild.error} />
        {rebuild.data && (
          <div className="notice ok" role="status">
            Rebuilt in {rebuild.data.seconds.toFixed(1)} s: {rebuild.data.events.toLocaleString()} events ({rebuild.data.commits.toLocaleString()} commits),{" "}
            {Math.round(rebuild.data.events_per_second).toLocaleString()} events/s, live projector paused {rebuild.data.paused_ms.toFixed(0)} ms, checkpoint{" "}
            {rebuild.data.checkpoint.toLocaleString()}, {rebuild.data.dead_letters} dead letters.
          </div>
        )}
      </section>
      <details className="panel">
        <summary>Metrics (Prometheus)</summary>
        {metrics.data ? <pre className="mono">{metrics.data}</pre> : <Loading what="metrics" />}
      </details>
    </div>
  );
}
