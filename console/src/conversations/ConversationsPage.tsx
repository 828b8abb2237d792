// The tenant's conversations: filter by status, channel, config and version, escalation, dates, an
// agent or a customer; newest first, a page at a time; new activity arrives over the tenant's SSE.
import { useInfiniteQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { Link, useNavigate, useSearchParams } from "react-router";
import { getJson } from "../api/client";
import { hasRole, useSession } from "../api/session";
import { useEventStream } from "../api/sse";
import type { ConversationList } from "../api/types";
import { Badge, ErrorNotice, Field, fmtTime, Loading } from "../ui/components";
import { STAFF_ROLES } from "../ui/nav";
import { isMissingEndpoint, LIST_PATH } from "./queries";

const FILTERS = ["status", "channel", "config_id", "config_version", "escalated", "assigned_agent", "user_id", "start_date", "end_date"] as const;

export function ConversationsPage() {
  const [params, setParams] = useSearchParams();
  const session = useSession();
  const client = useQueryClient();
  const navigate = useNavigate();
  const [openId, setOpenId] = useState("");
  const filters = Object.fromEntries(FILTERS.map((f) => [f, params.get(f) ?? ""]).filter(([, v]) => v)) as Record<string, string>;
  const list = useInfiniteQuery({
    queryKey: [LIST_PATH, "page", filters],
    queryFn: ({ pageParam }) => getJson<ConversationList>(LIST_PATH, { ...filters, limit: 50, cursor: pageParam ?? undefined }),
    initialPageParam: null as string | null,
    getNextPageParam: (last) => last.next_cursor,
    retry: false,
  });
  const live = useEventStream(hasRole(session, ...STAFF_ROLES) ? "/api/v1/orchestration/events" : null, {
    onMessage: () => void client.invalidateQueries({ queryKey: [LIST_PATH, "page"] }),
  });
  const rows = list.data?.pages.flatMap((p) => p.conversations) ?? [];

  function apply(e: FormEvent<HTMLFormElement>) {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    const next = new URLSearchParams();
    for (const f of FILTERS) {
      const v = String(form.get(f) ?? "").trim();
      if (v) next.set(f, v);
    }
    setParams(next);
  }

  return (
    <div className="stack">
      <div className="row">
        <h1 style={{ margin: 0 }}>Conversations</h1>
        {live === "live" && <span className="live on right">Live</span>}
      </div>
      <form className="panel stack" aria-label="Filter conversations" onSubmit={apply} key={params.toString()}>
        <div className="grid3">
          <Field label="Status">
            {(p) => (
              <select {...p} name="status" defaultValue={filters.status ?? ""}>
                <option value="">any</option>
                <option value="active">active</option>
                <option value="escalated">escalated</option>
                <option value="closed">closed</option>
              </select>
            )}
          </Field>
          <Field label="Channel">{(p) => <input {...p} name="channel" type="text" defaultValue={filters.channel} />}</Field>
          <Field label="Escalated">
            {(p) => (
              <select {...p} name="escalated" defaultValue={filters.escalated ?? ""}>
                <option value="">either</option>
                <option value="true">escalated</option>
                <option value="false">never escalated</option>
              </select>
            )}
          </Field>
          <Field label="Config">{(p) => <input {...p} name="config_id" type="text" defaultValue={filters.config_id} />}</Field>
          <Field label="Config version">{(p) => <input {...p} name="config_version" type="number" min={1} defaultValue={filters.config_version} />}</Field>
          <Field label="Assigned agent" hint="An agent id, or me.">
            {(p) => <input {...p} name="assigned_agent" type="text" defaultValue={filters.assigned_agent} />}
          </Field>
          <Field label="Customer">{(p) => <input {...p} name="user_id" type="text" defaultValue={filters.user_id} />}</Field>
          <Field label="From">{(p) => <input {...p} name="start_date" type="date" defaultValue={filters.start_date} />}</Field>
          <Field label="To">{(p) => <input {...p} name="end_date" type="date" defaultValue={filters.end_date} />}</Field>
        </div>
        <div className="row">
          <button type="submit">Apply filters</button>
          <button type="button" className="secondary" onClick={() => setParams(new URLSearchParams())}>
            Clear
          </button>
        </div>
      </form>
      {list.isPending && <Loading what="conversations" />}
      {list.error &&
        (isMissingEndpoint(list.error) ? (
          <div className="notice">The conversation list is not available on this API yet: open a conversation by its id.</div>
        ) : (
          <ErrorNotice error={list.error} />
        ))}
      {list.data && (
        <table aria-label="Conversations">
          <thead>
            <tr>
              <th scope="col">Conversation</th>
              <th scope="col">Customer</th>
              <th scope="col">Channel</th>
              <th scope="col">Config</th>
              <th scope="col">Status</th>
              <th scope="col">Turns</th>
              <th scope="col">Agent</th>
              <th scope="col">Last message</th>
              <th scope="col">Updated</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((c) => (
              <tr key={c.conversation_id}>
                <td>
                  <Link to={`/conversations/${c.conversation_id}`} className="mono">
                    {c.conversation_id.slice(0, 8)}
                  </Link>
                </td>
                <td>{c.user_id}</td>
                <td>{c.channel}</td>
                <td>
                  {c.config_id} v{c.config_version}
                </td>
                <td>
                  {c.status} {c.open_escalation_id && <Badge>escalation open</Badge>}
                </td>
                <td>{c.turn_count}</td>
                <td>{c.assigned_agent?.name ?? "—"}</td>
                <td>{c.last_message ? `${c.last_message.role}: ${(c.last_message.content ?? "").slice(0, 80)}` : "—"}</td>
                <td>{fmtTime(c.updated_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {list.data && rows.length === 0 && <p>No conversation matches.</p>}
      {list.hasNextPage && (
        <div>
          <button type="button" className="secondary" onClick={() => void list.fetchNextPage()} disabled={list.isFetchingNextPage}>
            Load more
          </button>
        </div>
      )}
      <form
        className="row"
        aria-label="Open a conversation"
        onSubmit={(e) => {
          e.preventDefault();
          if (openId.trim()) navigate(`/conversations/${openId.trim()}`);
        }}
      >
        <Field label="Open a conversation by id">{(p) => <input {...p} type="text" value={openId} onChange={(e) => setOpenId(e.target.value)} />}</Field>
        <button type="submit" className="secondary" style={{ alignSelf: "end" }} disabled={!openId.trim()}>
          Open
        </button>
      </form>
    </div>
  );
}
