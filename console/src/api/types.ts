// The shapes of the answers the API declares only as objects (dict[str, Any] on the Python side);
// each mirrors the README's tables and the read models' queries. Request bodies and the analytics
// answers come typed from the OpenAPI schema (schema.d.ts).
import type { components } from "./schema";

export type Schemas = components["schemas"];
export type Kpis = Schemas["Kpis"];
export type Outcomes = Schemas["Outcomes"];
export type EscalationReasons = Schemas["EscalationReasons"];
export type VoiceAnalytics = Schemas["VoiceAnalytics"];
export type RebuildReport = Schemas["RebuildReport"];
export type RiskLevel = "low" | "medium" | "high";
export type ProductType = "chatbot" | "voicebot";
export type AuthorType = "client_user" | "platform_engineer" | "ai_agent" | "automation" | "monitor";

export interface Issue {
  field: string;
  message: string;
  severity: "error" | "warning";
}

export interface ValidateAnswer {
  valid: boolean;
  errors: Issue[];
  warnings: Issue[];
  breaking_change_detected: boolean;
  product_type: ProductType | null;
}

export interface ConfigView {
  config_id: string;
  product_type: ProductType;
  version: number;
  active_version: number;
  latest_version: number;
  yaml_content: string;
  metadata: { created_at: string; updated_at: string; status: string; breaking_change: boolean; digest: string };
  revision: number;
  position: number;
}

export interface Approval {
  approver: string;
  role: string;
  at: string;
}

/** A medium or high risk version's evidence: its replay of the config's recorded conversations. */
export interface ReplayEvidence {
  conversations_replayed: number;
  conversations_changed: string[];
  conversations_losing_tool_calls: string[];
  conversations: {
    conversation_id: string;
    turns: number;
    turns_changed: number;
    tool_calls_lost: string[];
    tool_calls_added: string[];
    differences: {
      turn: number;
      user_message: string;
      changed: string[];
      recorded: { reply: string | null; tool_calls: string[]; escalated: boolean };
      candidate: { reply: string; tool_calls: string[]; escalated: boolean };
    }[];
  }[];
}

export interface VersionView {
  version: number;
  branch: string;
  based_on: number;
  status: "pending_approval" | "awaiting_reload" | "active" | "archived" | "rejected" | "draft";
  created_at: string;
  activated_at: string | null;
  created_by: string;
  author_type: AuthorType;
  commit_message: string;
  change_type: string;
  changes: string[];
  risk_level: RiskLevel;
  risk_reasons: string[];
  breaking_change: boolean;
  breaking_reasons: string[];
  approvals_needed: string[];
  approvals_missing: string[];
  approvals: Approval[];
  evidence: ReplayEvidence | null;
  rejected_reason: string | null;
  rolled_back: boolean;
  restores_version: number | null;
  rollback_available: boolean;
}

export interface VersionsView {
  config_id: string;
  product_type: ProductType;
  current_version: number;
  latest_version: number;
  versions: VersionView[];
  total_versions: number;
  pagination: { has_more: boolean; next_offset: number };
  position: number;
}

/** A command's answer on a config version (create, approve, reject, breaking, reload). */
export interface VersionOutcome {
  config_id: string;
  version: number;
  branch: string;
  status: VersionView["status"];
  active_version: number;
  change_type: string;
  changes: string[];
  risk_level: RiskLevel;
  risk_reasons: string[];
  breaking_change: boolean;
  breaking_reasons: string[];
  requires_approval: boolean;
  approvals_missing: string[];
  position: number;
  unchanged?: boolean;
  warnings?: Issue[];
}

export interface Diff {
  added: Record<string, unknown>;
  removed: Record<string, unknown>;
  modified: Record<string, { old: unknown; new: unknown }>;
}

export interface Comparison {
  config_id: string;
  product_type: ProductType;
  version_a: number;
  version_b: number;
  diff: Diff;
  changes: string[];
  change_type: string;
  breaking_changes: boolean;
  breaking_reasons: string[];
  risk_assessment: { risk_level: RiskLevel; reasons: string[] };
}

export interface RollbackAnswer {
  config_id: string;
  rolled_back_from: number;
  rolled_back_to: number;
  new_current_version: number;
  active_version: number;
  commit_message: string;
  initiated_by: string;
  pinned_conversations: string[];
  applied_at: string;
  position: number;
}

export interface HistoryChange {
  change_id: string;
  version: string;
  author: string;
  author_type: AuthorType;
  change_type: string;
  commit_message: string;
  risk_level: RiskLevel;
  approved_by: string | null;
  applied_at: string | null;
  status: string;
  rolled_back: boolean;
}

export interface HistoryView {
  config_id: string;
  product_type: ProductType;
  total_changes: number;
  changes: HistoryChange[];
  rollbacks: {
    rolled_back_from: number;
    rolled_back_to: number;
    new_version: number;
    reason: string;
    initiated_by: string;
    user_id: string | null;
    pinned_conversations: string[];
    at: string;
  }[];
}

export interface Branch {
  branch_name: string;
  config_id: string;
  base_version: number;
  current_version: number;
  description: string;
  status: "active" | "merged";
  merged_into: number | null;
  created_by: string;
  created_at: string;
}

export const PERMISSIONS = [
  "view_config",
  "edit_system_prompt",
  "add_remove_tools",
  "modify_integrations",
  "change_voice_params",
  "deploy_to_production",
  "rollback_versions",
  "manage_permissions",
] as const;
export type Permission = (typeof PERMISSIONS)[number];
export type PermissionMatrix = Record<Permission, boolean>;

export interface PermissionsView {
  organization_id: string;
  you: { user_id: string; config_permissions: PermissionMatrix };
  members: { user_id: string; config_permissions: Partial<PermissionMatrix> }[];
}

export interface ToolCall {
  tool: string;
  input: Record<string, unknown>;
  output: Record<string, unknown> | null;
  execution_time_ms: number | null;
  error: string | null;
}

export interface MessageView {
  message_id: string;
  role: "user" | "assistant" | "agent" | "system" | string;
  content: string | null;
  tool_calls?: ToolCall[];
  agent?: AgentRef;
  timestamp: string;
}

export interface ConversationView {
  conversation_id: string;
  product_type: ProductType;
  config_id: string;
  config_version: number;
  status: string;
  channel: string;
  user_id: string;
  turn_count: number;
  messages: MessageView[];
  pii_collected: Record<string, string>;
  tools_executed: { tool: string; count: number }[];
  sentiment_trajectory: number[];
  created_at: string;
  updated_at: string;
  position: number;
}

export interface AgentRef {
  agent_id: string;
  name: string;
}

// The lists (conversations, escalations, agents): typed by the API's schema.
export type ConversationSummary = Schemas["ConversationSummary"];
export type ConversationList = Schemas["ConversationPage"];
export type EscalationSummary = Schemas["QueuedEscalation"];
export type EscalationList = Schemas["EscalationPage"];
export type HumanAgent = Schemas["HumanAgentView"];

export interface AuditEvent {
  seq: number;
  version: number;
  type: string;
  recorded_at: string;
  occurred_at: string | null;
  command: string | null;
  command_id: string | null;
  actor: string | null;
  correlation_id: string | null;
  event: Record<string, unknown>;
  redacted?: string[];
}

export interface AuditEvents {
  tenant: string;
  aggregate_type: string;
  aggregate_id: string;
  version: number;
  events: AuditEvent[];
}

export interface AuditState {
  version: number;
  seq: number;
  recorded_at: string | null;
  latest_version: number;
  events_folded: number;
  state: Record<string, unknown>;
}

export interface Turn {
  turn: number;
  message_id: string;
  seq: number;
  version: number;
  received_at: string;
  status: string;
  config_id: string;
  config_version: number;
  active_config_version: number | null;
  replies: { message_id: string; author: string; provider: string | null; replied_at: string }[];
}

export interface Turns {
  conversation_id: string;
  config_id: string;
  config_version: number;
  version: number;
  turns: Turn[];
}

export interface ProjectorStatus {
  name: string;
  schema: string;
  checkpoint: number;
  stream_last_seq: number;
  last_event_seq: number;
  lag: number;
  dead_letters: number;
}

export interface Health {
  status: "ok" | "degraded";
  dependencies: { name: string; ok: boolean; ms?: number; error?: string }[];
  projectors: ProjectorStatus[];
}
