// Who is signed in: the bearer token (kept in this browser's localStorage) and the claims it carries.
// The claims decide what the console offers; the API checks the token's signature and enforces them.
import { useSyncExternalStore } from "react";

export type Role =
  | "support_agent"
  | "supervisor"
  | "org_admin"
  | "config_manager"
  | "config_viewer"
  | "analyst"
  | "platform_engineer"
  | "customer"
  | "service";

export interface Session {
  token: string;
  subject: string;
  tenant: string;
  roles: Role[];
  expires: number | null; // seconds since the epoch
}

const KEY = "parley.console.token";
const listeners = new Set<() => void>();
let current: Session | null = load();

function base64UrlDecode(part: string): string {
  const padded = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
  return new TextDecoder().decode(Uint8Array.from(atob(padded), (c) => c.charCodeAt(0)));
}

/** The claims of a JWT (not verified here: the API does that), or an error saying what is wrong. */
export function parseToken(token: string): Session | string {
  const parts = token.trim().split(".");
  if (parts.length !== 3) return "a token has three parts separated by dots";
  let claims: unknown;
  try {
    claims = JSON.parse(base64UrlDecode(parts[1]!));
  } catch {
    return "the token's claims are not readable JSON";
  }
  if (typeof claims !== "object" || claims === null) return "the token carries no claims";
  const c = claims as Record<string, unknown>;
  // Litestar's tokens carry the tenant and roles under "extras"; other issuers at the top level.
  const extras = c.extras && typeof c.extras === "object" ? (c.extras as Record<string, unknown>) : c;
  if (typeof extras.tenant !== "string") return "the token carries no tenant";
  const roles = Array.isArray(extras.roles) ? extras.roles.filter((r): r is Role => typeof r === "string") : [];
  const expires = typeof c.exp === "number" ? c.exp : null;
  if (expires !== null && expires * 1000 < Date.now()) return "the token has expired";
  return { token: token.trim(), subject: typeof c.sub === "string" ? c.sub : "", tenant: extras.tenant, roles, expires };
}

function load(): Session | null {
  const stored = globalThis.localStorage?.getItem(KEY);
  if (!stored) return null;
  const parsed = parseToken(stored);
  return typeof parsed === "string" ? null : parsed;
}

function emit(): void {
  for (const listener of listeners) listener();
}

export function signIn(session: Session): void {
  current = session;
  localStorage.setItem(KEY, session.token);
  emit();
}

export function signOut(): void {
  current = null;
  localStorage.removeItem(KEY);
  emit();
}

export function getSession(): Session | null {
  return current;
}

function subscribe(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function useSession(): Session | null {
  return useSyncExternalStore(subscribe, getSession, getSession);
}

export function hasRole(session: Session | null, ...roles: Role[]): boolean {
  return !!session && roles.some((r) => session.roles.includes(r));
}
