import { useQueryClient } from "@tanstack/react-query";
import { Suspense } from "react";
import { NavLink, Outlet } from "react-router";
import { signOut, type Session } from "../api/session";
import { Loading } from "./components";
import { ROLE_LABELS, sectionsFor } from "./nav";

export function Layout({ session }: { session: Session }) {
  const client = useQueryClient();
  const sections = sectionsFor(session.roles);
  return (
    <div className="shell">
      <a className="skip" href="#main">
        Skip to content
      </a>
      <aside className="sidebar">
        <div className="brand">Parley</div>
        <nav aria-label="Sections">
          <ul>
            {sections.map((s) => (
              <li key={s.path}>
                <NavLink to={s.path}>{s.label}</NavLink>
              </li>
            ))}
          </ul>
        </nav>
        <div className="who">
          <div>
            <strong>{session.subject || "signed in"}</strong>
          </div>
          <div>tenant {session.tenant}</div>
          <div>{session.roles.map((r) => ROLE_LABELS[r] ?? r).join(", ")}</div>
          <button
            type="button"
            className="secondary"
            onClick={() => {
              signOut();
              client.clear();
            }}
          >
            Sign out
          </button>
        </div>
      </aside>
      <main id="main" tabIndex={-1}>
        <Suspense fallback={<Loading what="the page" />}>
          <Outlet />
        </Suspense>
      </main>
    </div>
  );
}
