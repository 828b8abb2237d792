// The tenant's configs, and a new one from a starting point (chatbot or voicebot).
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { Link, useNavigate, useSearchParams } from "react-router";
import { api, call } from "../api/client";
import type { VersionOutcome } from "../api/types";
import { ErrorNotice, Field, fmtTime, Loading } from "../ui/components";
import { starterYaml } from "./model";
import { LIST_PATH, notePosition, rememberConfig, useConfigList, useMyPermissions, type ConfigFilters } from "./queries";

export function ConfigsPage() {
  const [params, setParams] = useSearchParams();
  const filters: ConfigFilters = {
    ...(params.get("product_type") ? { product_type: params.get("product_type") as "chatbot" | "voicebot" } : {}),
    ...(params.get("search") ? { search: params.get("search")! } : {}),
    ...(params.get("pending_approval") ? { pending_approval: params.get("pending_approval") === "true" } : {}),
  };
  const list = useConfigList(filters);
  const navigate = useNavigate();
  const [openId, setOpenId] = useState("");
  const { can } = useMyPermissions();
  const rows = list.data?.pages.flatMap((p) => p.configs) ?? [];

  function apply(e: FormEvent<HTMLFormElement>) {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    const next = new URLSearchParams();
    for (const f of ["product_type", "search", "pending_approval"]) {
      const v = String(form.get(f) ?? "").trim();
      if (v) next.set(f, v);
    }
    setParams(next);
  }

  return (
    <div className="stack">
      <div className="row">
        <h1 style={{ margin: 0 }}>Configs</h1>
        {can("manage_permissions") || can("view_config") ? (
          <Link className="right" to="/configs/permissions">
            Permissions
          </Link>
        ) : null}
      </div>
      <form className="panel row" aria-label="Filter configs" onSubmit={apply} key={params.toString()}>
        <Field label="Product">
          {(p) => (
            <select {...p} name="product_type" defaultValue={filters.product_type ?? ""}>
              <option value="">any</option>
              <option value="chatbot">chatbot</option>
              <option value="voicebot">voicebot</option>
            </select>
          )}
        </Field>
        <Field label="Id contains">{(p) => <input {...p} name="search" type="text" maxLength={64} defaultValue={filters.search} />}</Field>
        <Field label="Approvals">
          {(p) => (
            <select {...p} name="pending_approval" defaultValue={params.get("pending_approval") ?? ""}>
              <option value="">any</option>
              <option value="true">waiting for approval</option>
              <option value="false">nothing waiting</option>
            </select>
          )}
        </Field>
        <button type="submit" className="secondary" style={{ alignSelf: "end" }}>
          Filter
        </button>
      </form>
      {list.isPending && <Loading what="configs" />}
      <ErrorNotice error={list.error} />
      {list.data && (
        <table aria-label="Configs">
          <thead>
            <tr>
              <th scope="col">Config</th>
              <th scope="col">Product</th>
              <th scope="col">Active</th>
              <th scope="col">Latest</th>
              <th scope="col">Waiting for approval</th>
              <th scope="col">Updated</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((c) => (
              <tr key={c.config_id}>
                <td>
                  <Link to={`/configs/${c.config_id}`}>{c.config_id}</Link>
                </td>
                <td>{c.product_type}</td>
                <td>{c.active_version ? `v${c.active_version}` : "—"}</td>
                <td>{c.latest_version ? `v${c.latest_version}` : "—"}</td>
                <td>{c.pending_approvals || "—"}</td>
                <td>{fmtTime(c.updated_at ?? undefined)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {list.data && rows.length === 0 && <p className="muted">No config matches.</p>}
      {list.hasNextPage && (
        <div>
          <button type="button" className="secondary" onClick={() => void list.fetchNextPage()} disabled={list.isFetchingNextPage}>
            More configs
          </button>
        </div>
      )}
      <form
        className="row"
        aria-label="Open a config"
        onSubmit={(e) => {
          e.preventDefault();
          if (openId.trim()) navigate(`/configs/${openId.trim()}`);
        }}
      >
        <Field label="Open a config by id">{(p) => <input {...p} type="text" value={openId} onChange={(e) => setOpenId(e.target.value)} />}</Field>
        <button type="submit" className="secondary" style={{ alignSelf: "end" }} disabled={!openId.trim()}>
          Open
        </button>
      </form>
      {can("edit_system_prompt") && <NewConfig />}
    </div>
  );
}

function NewConfig() {
  const navigate = useNavigate();
  const client = useQueryClient();
  const [id, setId] = useState("");
  const [product, setProduct] = useState<"chatbot" | "voicebot">("chatbot");
  const create = useMutation({
    mutationFn: () =>
      call<VersionOutcome>(api.POST("/api/v1/configs", { body: { config_id: id, yaml_content: starterYaml(id.replace(/-/g, "_"), product), commit_message: "initial_generation", author_type: "client_user" } })),
    onSuccess: async (answer) => {
      notePosition(id, answer);
      rememberConfig(id);
      await client.invalidateQueries({ queryKey: [LIST_PATH] });
      navigate(`/configs/${id}`);
    },
  });
  return (
    <form
      className="panel stack"
      aria-label="New config"
      onSubmit={(e) => {
        e.preventDefault();
        create.mutate();
      }}
    >
      <h2 style={{ marginTop: 0 }}>New config</h2>
      <div className="grid2">
        <Field label="Config id" hint="lowercase letters, digits, - and _">
          {(p) => <input {...p} type="text" value={id} onChange={(e) => setId(e.target.value)} />}
        </Field>
        <Field label="Product">
          {(p) => (
            <select {...p} value={product} onChange={(e) => setProduct(e.target.value as "chatbot" | "voicebot")}>
              <option value="chatbot">chatbot</option>
              <option value="voicebot">voicebot</option>
            </select>
          )}
        </Field>
      </div>
      <div>
        <button type="submit" disabled={!id || create.isPending}>
          Create config
        </button>
      </div>
      <ErrorNotice error={create.error} />
    </form>
  );
}
