// The editor validates as you type: each pause sends the draft to POST /api/v1/configs/validate
// and the API's errors appear beside the fields they name. The API is played by MSW here, answering
// with the validate endpoint's real shapes (a 400 with errors by field, or 200 valid).
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { http, HttpResponse } from "msw";
import { setupServer } from "msw/node";
import { MemoryRouter } from "react-router";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import type { ConfigView } from "../api/types";
import { ConfigEditor } from "./Editor";
import { starterYaml } from "./model";

const MATRIX = (grant: boolean) =>
  Object.fromEntries(
    ["view_config", "edit_system_prompt", "add_remove_tools", "modify_integrations", "change_voice_params", "deploy_to_production", "rollback_versions", "manage_permissions"].map(
      (p) => [p, p === "view_config" || grant],
    ),
  );

let grant = true;
const validated: string[] = [];

const server = setupServer(
  http.post("*/api/v1/configs/validate", async ({ request }) => {
    const { yaml_content } = (await request.json()) as { yaml_content: string };
    validated.push(yaml_content);
    const speed = parse(yaml_content)?.voice_config?.model_settings?.speed;
    if (typeof speed === "number" && (speed < 0 || speed > 2)) {
      const error = { field: "voice_config.model_settings.speed", message: "must be a number from 0 to 2", severity: "error" };
      return HttpResponse.json(
        { code: "validation_error", message: "agent config has 1 error(s)", fields: { [error.field]: error.message }, valid: false, errors: [error], warnings: [] },
        { status: 400 },
      );
    }
    return HttpResponse.json({ valid: true, errors: [], warnings: [], schema_version: "1.0", breaking_change_detected: false, product_type: "voicebot" });
  }),
  http.get("*/api/v1/client-config/permissions", () =>
    HttpResponse.json({ organization_id: "demo", you: { user_id: "u", config_permissions: MATRIX(grant) }, members: [] }),
  ),
  http.get("*/api/v1/configs/:id/branches", () => HttpResponse.json({ config_id: "voice-bot", branches: [] })),
);

beforeAll(() => server.listen({ onUnhandledRequest: "error" }));
afterEach(() => {
  server.resetHandlers();
  validated.length = 0;
  grant = true;
});
afterAll(() => server.close());

const yaml = starterYaml("voice_bot", "voicebot");
const config: ConfigView = {
  config_id: "voice-bot",
  organization_id: "demo",
  tenant_slug: "demo",
  product_type: "voicebot",
  version: 1,
  active_version: 1,
  latest_version: 1,
  yaml_content: yaml,
  metadata: { created_at: "", updated_at: "", status: "active", breaking_change: false, digest: "" },
  revision: 1,
  position: 1,
  cached: false,
};

function renderEditor() {
  const client = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  return render(
    <QueryClientProvider client={client}>
      <MemoryRouter>
        <ConfigEditor config={config} />
      </MemoryRouter>
    </QueryClientProvider>,
  );
}

describe("the config editor", () => {
  it("shows the API's error under the field as you type, once typing pauses, and clears it when fixed", async () => {
    const user = userEvent.setup();
    renderEditor();
    await screen.findByText(/^Valid/);
    const speed = screen.getByRole("spinbutton", { name: "Speed value" });
    await waitFor(() => expect(speed).toBeEnabled());
    const before = validated.length;

    await user.clear(speed);
    await user.type(speed, "2.5");
    const error = await screen.findByText("must be a number from 0 to 2", { selector: ".field-error" });
    expect(error).toBeVisible();
    expect(screen.getByRole("slider", { name: "Speed" })).toHaveAttribute("aria-invalid", "true");
    expect(screen.getByRole("alert")).toHaveTextContent("voice_config.model_settings.speed: must be a number from 0 to 2");
    // one request for the pause after typing, not one per keystroke
    expect(validated.length - before).toBeLessThanOrEqual(2);
    expect(validated.at(-1)).toContain("speed: 2.5");

    await user.clear(speed);
    await user.type(speed, "0.8");
    await screen.findByText(/^Valid/);
    expect(screen.queryByText("must be a number from 0 to 2")).not.toBeInTheDocument();
    expect(speed).toHaveAttribute("aria-invalid", "false");
    expect(screen.getByRole("button", { name: "Review changes" })).toBeEnabled();
  });

  it("keeps the rest of the YAML as written when a slider moves", async () => {
    const user = userEvent.setup();
    renderEditor();
    const speed = screen.getByRole("spinbutton", { name: "Speed value" });
    await waitFor(() => expect(speed).toBeEnabled());
    await user.clear(speed);
    await user.type(speed, "0.7");
    await waitFor(() => expect(validated.at(-1)).toContain("speed: 0.7"));
    const sent = validated.at(-1)!;
    expect(sent.split("\n").filter((line, i) => line !== yaml.split("\n")[i])).toEqual(["    speed: 0.7"]);
  });

  it("offers a viewer the config to read, with no control to change it", async () => {
    grant = false;
    renderEditor();
    await screen.findByText("Your permissions let you view this config, not change it.");
    expect(screen.getByRole("spinbutton", { name: "Speed value" })).toBeDisabled();
    expect(screen.queryByRole("button", { name: "Review changes" })).not.toBeInTheDocument();
  });
});
