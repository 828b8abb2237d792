// Refresh console/openapi.json (the API's OpenAPI schema) and the types generated from it.
//
//   npm run schema                              build the app in Python, without starting it
//   PARLEY_API_URL=http://127.0.0.1:8000 npm run schema   ask a running API
//
// Then src/api/schema.d.ts is regenerated with openapi-typescript: a renamed field fails the build.
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const consoleDir = resolve(here, "..");
const repo = resolve(consoleDir, "..");

// The schema as the API serves it at /schema/openapi.json: the app is built (its lifespan never
// runs, so nothing connects) and its schema encoded by Litestar's own encoder.
const PYTHON = `
import json, sys
from litestar.serialization import encode_json
from gateways.http.app import create_app
from gateways.http.settings import ApiSettings
settings = ApiSettings.from_env(jwt_secret="schema-only", database_url="postgresql://unused", redis_url="redis://unused")
sys.stdout.write(encode_json(create_app(settings).openapi_schema.to_schema()).decode())
`;

async function fromApi(url) {
  const response = await fetch(`${url.replace(/\/$/, "")}/schema/openapi.json`);
  if (!response.ok) throw new Error(`${url}/schema/openapi.json answered ${response.status}`);
  return await response.json();
}

function fromCode() {
  const python = process.env.PARLEY_PYTHON_BIN ?? resolve(repo, ".venv/bin/python");
  const out = execFileSync(python, ["-c", PYTHON], { cwd: repo, maxBuffer: 64 * 1024 * 1024 });
  return JSON.parse(out.toString("utf8"));
}

/** Keys sorted at every level, so that a refresh with no change leaves the file as it was. */
function sorted(value) {
  if (Array.isArray(value)) return value.map(sorted);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sorted(value[k])]));
  }
  return value;
}

const url = process.env.PARLEY_API_URL;
const schema = url ? await fromApi(url) : fromCode();
writeFileSync(resolve(consoleDir, "openapi.json"), JSON.stringify(sorted(schema), null, 2) + "\n");
execFileSync("npx", ["openapi-typescript", "openapi.json", "-o", "src/api/schema.d.ts"], {
  cwd: consoleDir,
  stdio: "inherit",
});
console.log(`openapi.json refreshed from ${url ?? "the code"} (${Object.keys(schema.paths).length} paths)`);
