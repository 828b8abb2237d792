// The seed's permission matrix: what each role may do by default, and each member's overrides
// (organization admins with manage_permissions change them; a change is an event, like any other).
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { api, call } from "../api/client";
import { PERMISSIONS, type Permission } from "../api/types";
import { ErrorNotice, Field, Loading } from "../ui/components";
import { ROLE_LABELS } from "../ui/nav";
import { keys, usePermissions } from "./queries";

// domain/config_permissions.py ROLE_DEFAULTS, shown for reference (the API applies them).
const ROLE_DEFAULTS: Record<string, Permission[]> = {
  org_admin: [...PERMISSIONS],
  platform_engineer: [...PERMISSIONS],
  config_manager: ["view_config", "edit_system_prompt", "add_remove_tools", "change_voice_params", "rollback_versions"],
  config_viewer: ["view_config"],
  support_agent: ["view_config"],
};

const label = (p: string) => p.replace(/_/g, " ");

export function PermissionsPage() {
  const permissions = usePermissions();
  const client = useQueryClient();
  const [edits, setEdits] = useState<Record<string, Partial<Record<Permission, boolean>>>>({});
  const [newMember, setNewMember] = useState("");
  const canManage = !!permissions.data?.you.config_permissions.manage_permissions;
  const save = useMutation({
    mutationFn: ({ userId, matrix }: { userId: string; matrix: Partial<Record<Permission, boolean>> }) =>
      call(api.PUT("/api/v1/client-config/permissions/{user_id}", { params: { path: { user_id: userId } }, body: { config_permissions: matrix } })),
    onSuccess: async (_, { userId }) => {
      setEdits((previous) => Object.fromEntries(Object.entries(previous).filter(([id]) => id !== userId)));
      await client.invalidateQueries({ queryKey: keys.permissions });
    },
  });
  if (permissions.isPending) return <Loading what="permissions" />;
  if (permissions.error) return <ErrorNotice error={permissions.error} />;
  const members = [...permissions.data.members];
  for (const userId of Object.keys(edits)) if (!members.some((m) => m.user_id === userId)) members.push({ user_id: userId, config_permissions: {} });

  return (
    <div className="stack">
      <h1>Config permissions</h1>
      <section aria-labelledby="defaults">
        <h2 id="defaults">Role defaults</h2>
        <table aria-label="Role defaults">
          <thead>
            <tr>
              <th scope="col">Role</th>
              {PERMISSIONS.map((p) => (
                <th key={p} scope="col">
                  {label(p)}
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {Object.entries(ROLE_DEFAULTS).map(([role, granted]) => (
              <tr key={role}>
                <th scope="row">{ROLE_LABELS[role] ?? role}</th>
                {PERMISSIONS.map((p) => (
                  <td key={p}>{granted.includes(p) ? "✓" : "—"}</td>
                ))}
              </tr>
            ))}
            <tr>
              <th scope="row">You ({permissions.data.you.user_id})</th>
              {PERMISSIONS.map((p) => (
                <td key={p}>{permissions.data.you.config_permissions[p] ? "✓" : "—"}</td>
              ))}
            </tr>
          </tbody>
        </table>
      </section>
      <section aria-labelledby="overrides">
        <h2 id="overrides">Member overrides</h2>
        {members.length === 0 && <p>No member has overrides.</p>}
        {members.length > 0 && (
          <table aria-label="Member overrides">
            <thead>
              <tr>
                <th scope="col">Member</th>
                {PERMISSIONS.map((p) => (
                  <th key={p} scope="col">
                    {label(p)}
                  </th>
                ))}
                <th scope="col">Save</th>
              </tr>
            </thead>
            <tbody>
              {members.map((m) => {
                const current = { ...m.config_permissions, ...edits[m.user_id] };
                return (
                  <tr key={m.user_id}>
                    <th scope="row">{m.user_id}</th>
                    {PERMISSIONS.map((p) => (
                      <td key={p}>
                        <select
                          aria-label={`${label(p)} for ${m.user_id}`}
                          disabled={!canManage}
                          value={current[p] === undefined ? "" : current[p] ? "grant" : "revoke"}
                          onChange={(e) =>
                            setEdits({
                              ...edits,
                              [m.user_id]: { ...edits[m.user_id], [p]: e.target.value === "" ? undefined : e.target.value === "grant" },
                            })
                          }
                        >
                          <option value="">role default</option>
                          <option value="grant">grant</option>
                          <option value="revoke">revoke</option>
                        </select>
                      </td>
                    ))}
                    <td>
                      {canManage && (
                        <button
                          type="button"
                          disabled={!edits[m.user_id] || save.isPending}
                          onClick={() =>
                            save.mutate({
                              userId: m.user_id,
                              matrix: Object.fromEntries(Object.entries(current).filter(([, v]) => v !== undefined)) as Partial<Record<Permission, boolean>>,
                            })
                          }
                        >
                          Save {m.user_id}
                        </button>
                      )}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        )}
        <ErrorNotice error={save.error} />
        {canManage && (
          <form
            className="row"
            onSubmit={(e) => {
              e.preventDefault();
              if (newMember.trim()) setEdits({ ...edits, [newMember.trim()]: {} });
              setNewMember("");
            }}
          >
            <Field label="Add a member by user id">{(p) => <input {...p} type="text" value={newMember} onChange={(e) => setNewMember(e.target.value)} />}</Field>
            <button type="submit" className="secondary" style={{ alignSelf: "end" }}>
              Add member
            </button>
          </form>
        )}
      </section>
    </div>
  );
}
