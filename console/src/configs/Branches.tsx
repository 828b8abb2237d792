// Branches: made from a version, edited by saving to them in the editor, merged into main.
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { api, call } from "../api/client";
import type { ConfigView } from "../api/types";
import { ErrorNotice, Field, fmtTime, Loading } from "../ui/components";
import { keys, notePosition, useBranches, useMyPermissions } from "./queries";

export function Branches({ config }: { config: ConfigView }) {
  const branches = useBranches(config.config_id);
  const client = useQueryClient();
  const { can } = useMyPermissions();
  const mayEdit = can("edit_system_prompt") || can("add_remove_tools") || can("change_voice_params");
  const [name, setName] = useState("");
  const [base, setBase] = useState(config.active_version || config.latest_version);
  const [description, setDescription] = useState("");
  const refresh = async () => {
    await client.invalidateQueries({ queryKey: keys.branches(config.config_id) });
    await client.invalidateQueries({ queryKey: keys.versions(config.config_id) });
    await client.invalidateQueries({ queryKey: ["/api/v1/configs/{config_id}", config.config_id] });
  };
  const create = useMutation({
    mutationFn: () =>
      call(
        api.POST("/api/v1/configs/{config_id}/branches", {
          params: { path: { config_id: config.config_id } },
          body: { branch_name: name, base_version: base, description },
        }),
      ),
    onSuccess: async (answer) => {
      notePosition(config.config_id, answer);
      setName("");
      setDescription("");
      await refresh();
    },
  });
  const merge = useMutation({
    mutationFn: (branch: string) =>
      call<{ new_version: number; status: string }>(
        api.POST("/api/v1/configs/{config_id}/branches/{branch}/merge", { params: { path: { config_id: config.config_id, branch } } }),
      ),
    onSuccess: async (answer) => {
      notePosition(config.config_id, answer);
      await refresh();
    },
  });
  return (
    <div className="stack">
      {branches.isPending && <Loading what="branches" />}
      <ErrorNotice error={branches.error} />
      {branches.data && branches.data.length === 0 && <p>No branches.</p>}
      {branches.data && branches.data.length > 0 && (
        <table aria-label="Branches">
          <thead>
            <tr>
              <th scope="col">Branch</th>
              <th scope="col">From</th>
              <th scope="col">Head</th>
              <th scope="col">Status</th>
              <th scope="col">Description</th>
              <th scope="col">Created</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {branches.data.map((b) => (
              <tr key={b.branch_name}>
                <td>{b.branch_name}</td>
                <td>v{b.base_version}</td>
                <td>v{b.current_version}</td>
                <td>{b.status === "merged" ? `merged as v${b.merged_into}` : b.status}</td>
                <td>{b.description}</td>
                <td>
                  {fmtTime(b.created_at)} by {b.created_by}
                </td>
                <td>
                  {b.status === "active" && mayEdit && (
                    <button type="button" className="secondary" disabled={merge.isPending} onClick={() => merge.mutate(b.branch_name)}>
                      Merge {b.branch_name} into main
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {merge.data && (
        <div className="notice ok" role="status">
          Merged as v{merge.data.new_version} ({merge.data.status.replace(/_/g, " ")}).
        </div>
      )}
      <ErrorNotice error={merge.error} />
      {mayEdit && (
        <form
          className="panel stack"
          aria-label="New branch"
          onSubmit={(e) => {
            e.preventDefault();
            create.mutate();
          }}
        >
          <h2>New branch</h2>
          <div className="grid3">
            <Field label="Branch name" hint="lowercase letters, digits, - and _">
              {(p) => <input {...p} type="text" value={name} onChange={(e) => setName(e.target.value)} />}
            </Field>
            <Field label="From version">
              {(p) => <input {...p} type="number" min={1} max={config.latest_version} value={base} onChange={(e) => setBase(Number(e.target.value))} />}
            </Field>
            <Field label="Description">{(p) => <input {...p} type="text" value={description} onChange={(e) => setDescription(e.target.value)} />}</Field>
          </div>
          <div>
            <button type="submit" disabled={!name || create.isPending}>
              Create branch
            </button>
          </div>
          <ErrorNotice error={create.error} />
        </form>
      )}
    </div>
  );
}
