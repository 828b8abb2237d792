// The tenant's configs, and a new one from a starting point (chatbot or voicebot).
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Link, useNavigate } from "react-router";
import { api, call } from "../api/client";
import type { VersionOutcome } from "../api/types";
import { ErrorNotice, Field, fmtTime, Loading } from "../ui/components";
import { starterYaml } from "./model";
import { notePosition, rememberConfig, useConfigList, useMyPermissions } from "./queries";

export function ConfigsPage() {
  const list = useConfigList();
  const navigate = useNavigate();
  const [openId, setOpenId] = useState("");
  const { can } = useMyPermissions();
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
              <th scope="col">Updated</th>
            </tr>
          </thead>
          <tbody>
            {list.data.configs.map((c) => (
              <tr key={c.config_id}>
                <td>
                  <Link to={`/configs/${c.config_id}`}>{c.config_id}</Link>
                </td>
                <td>{c.product_type ?? "—"}</td>
                <td>{c.active_version ? `v${c.active_version}` : "—"}</td>
                <td>{c.latest_version ? `v${c.latest_version}` : "—"}</td>
                <td>{fmtTime(c.updated_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {list.data && !list.data.complete && (
        <p className="muted small">Showing the tenant's latest config and those opened in this browser (the API has no config list yet).</p>
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
      await client.invalidateQueries({ queryKey: ["/api/v1/configs"] });
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
