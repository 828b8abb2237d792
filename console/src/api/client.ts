// The API client: paths and request bodies typed from the OpenAPI schema (openapi.json, generated
// into schema.d.ts), the signed-in token on every call, and every error turned into an ApiError
// that keeps the API's code, message and field-level reasons.
import createClient, { type Middleware } from "openapi-fetch";
import type { paths } from "./schema";
import { getSession, signOut } from "./session";

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly fields: Record<string, string>;
  readonly body: Record<string, unknown>;

  constructor(status: number, body: Record<string, unknown>) {
    const message = typeof body.message === "string" ? body.message : `the API answered ${status}`;
    super(message);
    this.status = status;
    this.code = typeof body.code === "string" ? body.code : "http_error";
    const fields = body.fields;
    this.fields =
      fields && typeof fields === "object"
        ? Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, String(v)]))
        : {};
    this.body = body;
  }
}

const auth: Middleware = {
  onRequest({ request }) {
    const session = getSession();
    if (session) request.headers.set("Authorization", `Bearer ${session.token}`);
    return request;
  },
  onResponse({ response }) {
    // A token the API no longer accepts: back to sign-in rather than a page of errors.
    if (response.status === 401 && getSession()) signOut();
    return response;
  },
};

/** The API's origin: the console is served by the API, so its own (absolute, for fetch outside a browser too). */
export const ORIGIN = globalThis.location?.origin ?? "";

// fetch looked up at each call (not captured once), so that whatever stands in for it is used.
export const api = createClient<paths>({ baseUrl: ORIGIN, fetch: (request) => globalThis.fetch(request) });
api.use(auth);

interface Answer {
  data?: unknown;
  error?: unknown;
  response: Response;
}

/** The answer's body as ``T`` (the API declares most bodies as objects; their shapes are in types.ts),
 * or an ApiError. */
export async function call<T>(request: Promise<Answer>): Promise<T> {
  const { data, error, response } = await request;
  if (!response.ok || error !== undefined) {
    const body = error && typeof error === "object" ? (error as Record<string, unknown>) : { message: String(error ?? "") };
    throw new ApiError(response.status, body);
  }
  return data as T;
}

/** A GET of a path the schema does not have yet (endpoints being added); same auth and errors. */
export async function getJson<T>(path: string, query: Record<string, string | number | boolean | undefined> = {}): Promise<T> {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== "") params.set(k, String(v));
  const session = getSession();
  const response = await fetch(`${ORIGIN}${params.size ? `${path}?${params}` : path}`, {
    headers: session ? { Authorization: `Bearer ${session.token}` } : {},
  });
  const body: unknown = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401 && session) signOut();
    throw new ApiError(response.status, (body ?? {}) as Record<string, unknown>);
  }
  return body as T;
}
