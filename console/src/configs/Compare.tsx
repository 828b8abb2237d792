// Any two versions side by side, with each change's risk.
import { useSearchParams } from "react-router";
import type { ConfigView } from "../api/types";
import { ErrorNotice, Field, Loading } from "../ui/components";
import { DiffView } from "./DiffView";
import { useCompare, useConfig, useVersions } from "./queries";

export function Compare({ config }: { config: ConfigView }) {
  const [params, setParams] = useSearchParams();
  const versions = useVersions(config.config_id);
  const numbers = (versions.data?.versions ?? []).map((v) => v.version);
  const a = Number(params.get("a") ?? Math.max(1, config.active_version - 1)) || null;
  const b = Number(params.get("b") ?? config.latest_version) || null;
  const comparison = useCompare(config.config_id, a, b);
  const before = useConfig(config.config_id, a ?? undefined);
  const after = useConfig(config.config_id, b ?? undefined);
  const pick = (key: "a" | "b", value: string) => {
    const next = new URLSearchParams(params);
    next.set(key, value);
    setParams(next, { replace: true });
  };
  return (
    <div className="stack">
      <div className="row">
        {(["a", "b"] as const).map((key) => (
          <Field key={key} label={key === "a" ? "Before (version A)" : "After (version B)"}>
            {(p) => (
              <select {...p} value={String(key === "a" ? a : b)} onChange={(e) => pick(key, e.target.value)}>
                {numbers.map((n) => (
                  <option key={n} value={n}>
                    v{n}
                  </option>
                ))}
              </select>
            )}
          </Field>
        ))}
      </div>
      {comparison.isFetching && <Loading what="the comparison" />}
      <ErrorNotice error={comparison.error} />
      {comparison.data && <DiffView comparison={comparison.data} before={before.data?.yaml_content} after={after.data?.yaml_content} />}
    </div>
  );
}
