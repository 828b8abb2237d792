// Sign-in: paste a token, or on a local platform (PARLEY_DEV_SIGNIN=1) one click per role.
import { useMutation, useQuery } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { api, ApiError, call } from "../api/client";
import { parseToken, signIn } from "../api/session";
import { ErrorNotice, Field } from "./components";
import { ROLE_LABELS } from "./nav";

interface DevRoles {
  tenant: string;
  roles: string[];
}

export function SignIn() {
  const [token, setToken] = useState("");
  const [problem, setProblem] = useState<string | null>(null);
  const dev = useQuery({
    queryKey: ["/api/v1/dev/token"],
    queryFn: () => call<DevRoles>(api.GET("/api/v1/dev/token")),
    retry: false,
  });
  const devSignIn = useMutation({
    mutationFn: (role: string) =>
      call<{ token: string }>(api.POST("/api/v1/dev/token", { body: { role: role as "org_admin" } })),
    onSuccess: ({ token }) => {
      const parsed = parseToken(token);
      if (typeof parsed === "string") setProblem(parsed);
      else signIn(parsed);
    },
  });

  function submit(e: FormEvent) {
    e.preventDefault();
    const parsed = parseToken(token);
    if (typeof parsed === "string") setProblem(parsed);
    else signIn(parsed);
  }

  const devOff = dev.error instanceof ApiError && dev.error.status === 404;
  return (
    <main className="signin" id="main">
      <h1>Sign in to the Parley console</h1>
      <form className="panel stack" onSubmit={submit} aria-label="Sign in with a token">
        <Field label="Access token" hint="A bearer JWT with your tenant and roles (./parley token prints one)." error={problem ?? undefined}>
          {(props) => (
            <textarea
              {...props}
              value={token}
              rows={4}
              onChange={(e) => {
                setToken(e.target.value);
                setProblem(null);
              }}
            />
          )}
        </Field>
        <div>
          <button type="submit" disabled={!token.trim()}>
            Sign in
          </button>
        </div>
      </form>
      {dev.data && (
        <section className="panel" aria-labelledby="dev-signin">
          <h2 id="dev-signin">Development sign-in</h2>
          <p className="muted">
            This platform runs locally: sign in to tenant <strong>{dev.data.tenant}</strong> with one role.
          </p>
          <div className="row">
            {dev.data.roles
              .filter((r) => r !== "customer")
              .map((role) => (
                <button key={role} type="button" className="secondary" onClick={() => devSignIn.mutate(role)} disabled={devSignIn.isPending}>
                  Sign in as {ROLE_LABELS[role] ?? role}
                </button>
              ))}
          </div>
          <ErrorNotice error={devSignIn.error} />
        </section>
      )}
      {dev.error && !devOff && <ErrorNotice error={dev.error} title="Could not reach the API" />}
    </main>
  );
}
