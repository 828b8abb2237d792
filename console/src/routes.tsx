// The console's routes, each section loaded when first visited (the first load carries the shell only).
import type { ComponentType, ReactNode } from "react";
import { createBrowserRouter, Navigate, type RouteObject } from "react-router";
import { hasRole, useSession, type Role } from "./api/session";
import { Layout } from "./ui/Layout";
import { sectionsFor, SECTIONS } from "./ui/nav";
import { SignIn } from "./ui/SignIn";

function Root() {
  const session = useSession();
  if (!session) return <SignIn />;
  return <Layout session={session} />;
}

function Home() {
  const session = useSession();
  const first = session ? sectionsFor(session.roles)[0] : undefined;
  if (!first) {
    return (
      <div className="notice warn" role="alert">
        Your roles ({session?.roles.join(", ") || "none"}) include no section of the console.
      </div>
    );
  }
  return <Navigate to={first.path} replace />;
}

function Guard({ roles, children }: { roles: Role[]; children: ReactNode }) {
  const session = useSession();
  if (!hasRole(session, ...roles)) {
    return (
      <div className="notice warn" role="alert">
        This section is not available to your roles.
      </div>
    );
  }
  return <>{children}</>;
}

function rolesOf(path: string): Role[] {
  return SECTIONS.find((s) => s.path === path)?.roles ?? [];
}

function guarded(path: string, load: () => Promise<ComponentType>): RouteObject["lazy"] {
  return async () => {
    const Page = await load();
    return {
      Component: () => (
        <Guard roles={rolesOf(path)}>
          <Page />
        </Guard>
      ),
    };
  };
}

export const routes: RouteObject[] = [
  {
    path: "/",
    element: <Root />,
    children: [
      { index: true, element: <Home /> },
      { path: "inbox/:conversationId?", lazy: guarded("/inbox", async () => (await import("./inbox/InboxPage")).InboxPage) },
      {
        path: "conversations",
        lazy: guarded("/conversations", async () => (await import("./conversations/ConversationsPage")).ConversationsPage),
      },
      {
        path: "conversations/:conversationId",
        lazy: guarded("/conversations", async () => (await import("./conversations/ConversationPage")).ConversationPage),
      },
      { path: "configs", lazy: guarded("/configs", async () => (await import("./configs/ConfigsPage")).ConfigsPage) },
      {
        path: "configs/permissions",
        lazy: guarded("/configs", async () => (await import("./configs/PermissionsPage")).PermissionsPage),
      },
      {
        path: "configs/:configId/:tab?",
        lazy: guarded("/configs", async () => (await import("./configs/ConfigPage")).ConfigPage),
      },
      { path: "analytics", lazy: guarded("/analytics", async () => (await import("./analytics/AnalyticsPage")).AnalyticsPage) },
      {
        path: "operations",
        lazy: guarded("/operations", async () => (await import("./operations/OperationsPage")).OperationsPage),
      },
      { path: "*", element: <p role="alert">No such page.</p> },
    ],
  },
];

export const router = createBrowserRouter(routes, { basename: "/console" });
