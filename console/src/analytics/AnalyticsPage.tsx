// The KPIs over a chosen period, drawn with Recharts from the analytics endpoints (ClickHouse):
// conversations over time, resolution and escalation rates, CSAT and NPS, by channel and by config
// version; escalation reasons; voice analytics. Each chart has its numbers in a table beside it.
import { useQuery } from "@tanstack/react-query";
import { useState, type ReactNode } from "react";
import { Bar, BarChart, CartesianGrid, Legend, Line, LineChart, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { api, call } from "../api/client";
import type { DailySeries, EscalationReasons, Kpis, VoiceAnalytics } from "../api/types";
import { ErrorNotice, Field, fmtPct, Loading } from "../ui/components";

const DAY = 86_400_000;

export function isoDay(d: Date): string {
  return d.toISOString().slice(0, 10);
}

/** The first day of the ``days`` days ending with ``end`` (both ISO dates). */
export function daysBefore(end: string, days: number): string {
  return isoDay(new Date(Date.parse(`${end}T00:00:00Z`) - (days - 1) * DAY));
}

/** The period cut into at most 31 buckets: days, or weeks for a longer period. */
export function buckets(start: string, end: string): { start: string; end: string; label: string }[] {
  const first = Date.parse(`${start}T00:00:00Z`);
  const last = Date.parse(`${end}T00:00:00Z`);
  if (!(first <= last)) return [];
  const days = Math.round((last - first) / DAY) + 1;
  const step = days <= 31 ? 1 : 7;
  const out = [];
  for (let t = first; t <= last; t += step * DAY) {
    const to = Math.min(last, t + (step - 1) * DAY);
    out.push({ start: isoDay(new Date(t)), end: isoDay(new Date(to)), label: isoDay(new Date(t)).slice(5) });
  }
  return out;
}

function kpis(start: string, end: string) {
  return call<Kpis>(api.GET("/api/v1/analytics/kpis", { params: { query: { start, end, top: 10 } } }));
}

function Figure({ title, children, table }: { title: string; children: ReactNode; table: ReactNode }) {
  return (
    <figure className="panel" style={{ margin: 0 }} aria-label={title}>
      <figcaption>
        <h2 style={{ marginTop: 0 }}>{title}</h2>
      </figcaption>
      <div style={{ width: "100%", height: 260 }}>{children}</div>
      <details>
        <summary>{title}: the numbers</summary>
        {table}
      </details>
    </figure>
  );
}

function Table({ caption, head, rows }: { caption: string; head: string[]; rows: (string | number)[][] }) {
  return (
    <table aria-label={caption}>
      <thead>
        <tr>
          {head.map((h) => (
            <th key={h} scope="col">
              {h}
            </th>
          ))}
        </tr>
      </thead>
      <tbody>
        {rows.map((r, i) => (
          <tr key={i}>
            {r.map((c, k) => (
              <td key={k}>{c}</td>
            ))}
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function Tile({ label, value }: { label: string; value: string | number }) {
  return (
    <div className="panel kpi">
      <span className="muted small">{label}</span>
      <span className="value">{value}</span>
    </div>
  );
}

export function AnalyticsPage() {
  const [today] = useState(() => isoDay(new Date()));
  const [start, setStart] = useState(() => daysBefore(today, 30));
  const [end, setEnd] = useState(today);
  const total = useQuery({ queryKey: ["/api/v1/analytics/kpis", start, end], queryFn: () => kpis(start, end) });
  const reasons = useQuery({
    queryKey: ["/api/v1/analytics/escalation-reasons", start, end],
    queryFn: () => call<EscalationReasons>(api.GET("/api/v1/analytics/escalation-reasons", { params: { query: { start, end, limit: 10 } } })),
  });
  const voice = useQuery({
    queryKey: ["/api/v1/voice/analytics", start, end],
    queryFn: () => call<VoiceAnalytics>(api.GET("/api/v1/voice/analytics", { params: { query: { start_date: start, end_date: end } } })),
  });
  // One request for the period, a row a day; a longer period is drawn by week (at most 31 points).
  const daily = useQuery({
    queryKey: ["/api/v1/analytics/kpis/daily", start, end],
    queryFn: () => call<DailySeries>(api.GET("/api/v1/analytics/kpis/daily", { params: { query: { start_date: start, end_date: end } } })),
  });
  const overTime = buckets(start, end).map((p) => {
    const days = (daily.data?.days ?? []).filter((d) => d.day >= p.start && d.day <= p.end);
    const sum = (f: "conversations" | "closed" | "resolved" | "escalated") => days.reduce((n, d) => n + d[f], 0);
    const [n, closed] = [sum("conversations"), sum("closed")];
    return {
      period: p.label,
      conversations: n,
      resolution: closed ? Math.round((sum("resolved") / closed) * 1000) / 10 : 0,
      escalation: n ? Math.round((sum("escalated") / n) * 1000) / 10 : 0,
    };
  });
  const seriesLoading = daily.isPending;
  const t = total.data?.totals;
  const preset = (days: number) => {
    setEnd(today);
    setStart(daysBefore(today, days));
  };

  return (
    <div className="stack">
      <h1>Analytics</h1>
      <form className="row panel" aria-label="Period" onSubmit={(e) => e.preventDefault()}>
        <Field label="From">{(p) => <input {...p} type="date" value={start} max={end} onChange={(e) => setStart(e.target.value)} />}</Field>
        <Field label="To">{(p) => <input {...p} type="date" value={end} min={start} onChange={(e) => setEnd(e.target.value)} />}</Field>
        <div className="row" style={{ alignSelf: "end" }}>
          {[7, 30, 90].map((d) => (
            <button key={d} type="button" className="secondary" onClick={() => preset(d)}>
              Last {d} days
            </button>
          ))}
        </div>
      </form>
      {total.isPending && <Loading what="KPIs" />}
      <ErrorNotice error={total.error} />
      {t && (
        <div className="grid3" aria-label="Totals">
          <Tile label="Conversations" value={t.conversations} />
          <Tile label="Resolution rate" value={fmtPct(t.resolution_rate)} />
          <Tile label="Escalation rate" value={fmtPct(t.escalation_rate)} />
          <Tile label="Average turns" value={t.avg_turns?.toFixed(1) ?? "—"} />
          <Tile label={`CSAT (${t.csat.responses} answers)`} value={t.csat.average?.toFixed(2) ?? "—"} />
          <Tile label={`NPS (${t.nps.responses} answers)`} value={t.nps.score?.toFixed(0) ?? "—"} />
        </div>
      )}
      <Figure
        title="Conversations over time"
        table={<Table caption="Conversations over time" head={["Period from", "Conversations", "Resolution %", "Escalation %"]} rows={overTime.map((r) => [r.period, r.conversations, r.resolution, r.escalation])} />}
      >
        {daily.error ? (
          <ErrorNotice error={daily.error} />
        ) : seriesLoading ? (
          <Loading what="the series" />
        ) : (
          <ResponsiveContainer>
            <LineChart data={overTime}>
              <CartesianGrid strokeDasharray="3 3" />
              <XAxis dataKey="period" />
              <YAxis yAxisId="n" allowDecimals={false} />
              <YAxis yAxisId="pct" orientation="right" domain={[0, 100]} unit="%" />
              <Tooltip />
              <Legend />
              <Line yAxisId="n" type="linear" dataKey="conversations" name="Conversations" stroke="#0b5cad" strokeWidth={2} />
              <Line yAxisId="pct" type="linear" dataKey="resolution" name="Resolution %" stroke="#17643a" />
              <Line yAxisId="pct" type="linear" dataKey="escalation" name="Escalation %" stroke="#a3161c" />
            </LineChart>
          </ResponsiveContainer>
        )}
      </Figure>
      {total.data && (
        <div className="grid2">
          <Figure
            title="By channel"
            table={
              <Table
                caption="By channel"
                head={["Channel", "Conversations", "Resolved", "Escalated", "CSAT", "NPS"]}
                rows={total.data.by_channel.map((c) => [c.channel, c.conversations, c.resolved, c.escalated, c.csat.average?.toFixed(2) ?? "—", c.nps.score ?? "—"])}
              />
            }
          >
            <ResponsiveContainer>
              <BarChart data={total.data.by_channel}>
                <CartesianGrid strokeDasharray="3 3" />
                <XAxis dataKey="channel" />
                <YAxis allowDecimals={false} />
                <Tooltip />
                <Legend />
                <Bar dataKey="resolved" name="Resolved" stackId="a" fill="#17643a" />
                <Bar dataKey="escalated" name="Escalated" stackId="a" fill="#a3161c" />
                <Bar dataKey="conversations" name="All" fill="#0b5cad" />
              </BarChart>
            </ResponsiveContainer>
          </Figure>
          <Figure
            title="By config version"
            table={
              <Table
                caption="By config version"
                head={["Config", "Version", "Conversations", "Resolution", "Escalation", "CSAT"]}
                rows={total.data.by_config_version.map((c) => [c.config_id, `v${c.config_version}`, c.conversations, fmtPct(c.resolution_rate), fmtPct(c.escalation_rate), c.csat.average?.toFixed(2) ?? "—"])}
              />
            }
          >
            <ResponsiveContainer>
              <BarChart data={total.data.by_config_version.map((c) => ({ ...c, name: `${c.config_id} v${c.config_version}`, resolution: c.resolution_rate * 100, escalation: c.escalation_rate * 100 }))}>
                <CartesianGrid strokeDasharray="3 3" />
                <XAxis dataKey="name" />
                <YAxis unit="%" domain={[0, 100]} />
                <Tooltip />
                <Legend />
                <Bar dataKey="resolution" name="Resolution %" fill="#17643a" />
                <Bar dataKey="escalation" name="Escalation %" fill="#a3161c" />
              </BarChart>
            </ResponsiveContainer>
          </Figure>
          <Figure
            title="CSAT and NPS by channel"
            table={
              <Table
                caption="CSAT and NPS by channel"
                head={["Channel", "CSAT average", "CSAT answers", "NPS", "Promoters", "Detractors"]}
                rows={total.data.by_channel.map((c) => [c.channel, c.csat.average?.toFixed(2) ?? "—", c.csat.responses, c.nps.score ?? "—", c.nps.promoters, c.nps.detractors])}
              />
            }
          >
            <ResponsiveContainer>
              <BarChart data={total.data.by_channel.map((c) => ({ channel: c.channel, csat: c.csat.average ?? 0, nps: c.nps.score ?? 0 }))}>
                <CartesianGrid strokeDasharray="3 3" />
                <XAxis dataKey="channel" />
                <YAxis yAxisId="csat" domain={[0, 5]} />
                <YAxis yAxisId="nps" orientation="right" domain={[-100, 100]} />
                <Tooltip />
                <Legend />
                <Bar yAxisId="csat" dataKey="csat" name="CSAT (1-5)" fill="#0b5cad" />
                <Bar yAxisId="nps" dataKey="nps" name="NPS" fill="#7a4d00" />
              </BarChart>
            </ResponsiveContainer>
          </Figure>
          <Figure
            title="Escalation reasons"
            table={<Table caption="Escalation reasons" head={["Reason", "Escalations", "Share"]} rows={(reasons.data?.reasons ?? []).map((r) => [r.reason, r.count, fmtPct(r.share)])} />}
          >
            <ResponsiveContainer>
              <BarChart data={reasons.data?.reasons ?? []} layout="vertical" margin={{ left: 8, right: 16 }}>
                <CartesianGrid strokeDasharray="3 3" />
                <XAxis type="number" allowDecimals={false} />
                <YAxis type="category" dataKey="reason" width={120} />
                <Tooltip />
                <Bar dataKey="count" name="Escalations" fill="#a3161c" />
              </BarChart>
            </ResponsiveContainer>
          </Figure>
        </div>
      )}
      <ErrorNotice error={reasons.error} />
      <section className="panel" aria-labelledby="voice">
        <h2 id="voice" style={{ marginTop: 0 }}>
          Voice
        </h2>
        <ErrorNotice error={voice.error} />
        {voice.data && (
          <div className="grid3">
            <Tile label="Calls" value={voice.data.total_calls} />
            <Tile label="Average call" value={`${voice.data.avg_call_duration_seconds.toFixed(0)} s`} />
            <Tile label="Completion rate" value={fmtPct(voice.data.completion_rate)} />
            <Tile label="Transfer rate" value={fmtPct(voice.data.transfer_rate)} />
            <Tile label="Latency (avg)" value={`${voice.data.performance_metrics.avg_latency_ms} ms`} />
            <Tile label="Cost per call" value={voice.data.cost_analysis.cost_per_call.toFixed(3)} />
          </div>
        )}
        {voice.data && voice.data.total_calls === 0 && <p className="muted">No voice calls in this period.</p>}
      </section>
    </div>
  );
}
