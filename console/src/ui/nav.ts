// What each role is offered. The API enforces the same roles; a section a role may not use is not shown.
import type { Role } from "../api/session";

export interface Section {
  path: string;
  label: string;
  roles: Role[];
}

export const SECTIONS: Section[] = [
  { path: "/inbox", label: "Inbox", roles: ["support_agent", "supervisor", "org_admin"] },
  { path: "/conversations", label: "Conversations", roles: ["support_agent", "supervisor", "org_admin", "analyst"] },
  {
    path: "/configs",
    label: "Configs",
    roles: ["org_admin", "config_manager", "config_viewer", "platform_engineer", "support_agent"],
  },
  { path: "/analytics", label: "Analytics", roles: ["analyst", "org_admin", "platform_engineer"] },
  { path: "/operations", label: "Operations", roles: ["platform_engineer"] },
];

export function sectionsFor(roles: readonly Role[]): Section[] {
  return SECTIONS.filter((s) => s.roles.some((r) => roles.includes(r)));
}

/** Who may read a conversation's audit trail (time travel, turns, export): the API's AUDITORS. */
export const AUDIT_ROLES: Role[] = ["org_admin", "platform_engineer", "analyst"];
/** Who may reply, resolve and set availability: the API's STAFF. */
export const STAFF_ROLES: Role[] = ["support_agent", "supervisor", "org_admin"];
/** Who may speak for an escalation assigned to someone else. */
export const SUPERVISOR_ROLES: Role[] = ["supervisor", "org_admin"];
/** Who approves: medium risk an org admin, high risk an org admin and a platform engineer. */
export const APPROVER_ROLES: Role[] = ["org_admin", "platform_engineer"];

export const ROLE_LABELS: Record<string, string> = {
  support_agent: "Support agent",
  supervisor: "Supervisor",
  org_admin: "Organization admin",
  config_manager: "Config manager",
  config_viewer: "Config viewer",
  analyst: "Analyst",
  platform_engineer: "Platform engineer",
  customer: "Customer",
  service: "Service",
};
