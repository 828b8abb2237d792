// The API's answers, typed from its OpenAPI schema (openapi.json, generated into schema.d.ts by
// `npm run schema`): a renamed or removed field fails the build. The few shapes the API still
// declares only as objects (a conversation and its messages) are written out below.
import type { components } from "./schema";

export type Schemas = components["schemas"];
export type Kpis = Schemas["Kpis"];
export type Outcomes = Schemas["Outcomes"];
export type EscalationReasons = Schemas["EscalationReasons"];
export type VoiceAnalytics = Schemas["VoiceAnalytics"];
export type RebuildReport = Schemas["RebuildReport"];
export type DailySeries = Schemas["Series"];
export type RiskLevel = "low" | "medium" | "high";
export type ProductType = "chatbot" | "voicebot";
export type AuthorType = Schemas["VersionView"]["author_type"];

// Configs
export type Issue = Schemas["Issue"];
export type ValidateAnswer = Schemas["ValidationReport"];
export type ConfigView = Schemas["ConfigView"];
export type ConfigSummary = Schemas["ConfigSummary"];
export type ConfigPage = Schemas["ConfigPage"];
export type Approval = Schemas["Approval"];
/** A medium or high risk version's evidence: its replay of the config's recorded conversations. */
export type ReplayEvidence = Schemas["ReplayReport"];
export type VersionView = Schemas["VersionView"];
export type VersionsView = Schemas["VersionsPage"];
/** A command's answer on a config version (create, approve, reject, breaking, reload). */
export type VersionOutcome = Schemas["VersionOutcome"];
export type Comparison = Schemas["Comparison"];
export type ChangeRisk = Schemas["ChangeRisk"];
export type RollbackAnswer = Schemas["RollbackAnswer"];
export type HistoryChange = Schemas["HistoryChange"];
export type HistoryView = Schemas["History"];
export type Branch = Schemas["BranchView"];
export type PermissionsView = Schemas["PermissionsView"];
export type ChatAnswer = Schemas["ChatAnswer"];
export type DetectedChange = Schemas["DetectedChange"];

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


// Audit
export type AuditEvent = Schemas["AuditEventView"];
export type AuditEvents = Schemas["AuditHistory"];
export type AuditState = Schemas["AuditState"];
export type Turn = Schemas["Turn"];
export type Turns = Schemas["AuditTurns"];

// Operations
export type ProjectorStatus = Schemas["ProjectorHealth"];
export type Health = Schemas["HealthReport"];
