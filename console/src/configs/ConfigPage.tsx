// One config: the editor and the chat panel beside it, its versions (diff, rollback), approvals,
// branches and history, as tabs.
import { NavLink, useParams } from "react-router";
import { useEffect } from "react";
import { ErrorNotice, Loading } from "../ui/components";
import { Approvals } from "./Approvals";
import { Branches } from "./Branches";
import { ConfigChat } from "./ConfigChat";
import { Compare } from "./Compare";
import { ConfigEditor } from "./Editor";
import { History } from "./History";
import { rememberConfig, useConfig, useVersions } from "./queries";
import { Versions } from "./Versions";

const TABS = [
  { tab: "", label: "Editor" },
  { tab: "versions", label: "Versions" },
  { tab: "compare", label: "Compare" },
  { tab: "approvals", label: "Approvals" },
  { tab: "branches", label: "Branches" },
  { tab: "history", label: "History" },
];

export function ConfigPage() {
  const { configId = "", tab = "" } = useParams();
  const config = useConfig(configId);
  const versions = useVersions(configId);
  const pending = (versions.data?.versions ?? []).filter((v) => v.status === "pending_approval").length;
  useEffect(() => {
    if (config.data) rememberConfig(configId);
  }, [config.data, configId]);

  return (
    <div>
      <h1>
        Config {configId}
        {config.data && (
          <span className="muted small">
            {" "}
            · {config.data.product_type} · active v{config.data.active_version} · latest v{config.data.latest_version}
          </span>
        )}
      </h1>
      <nav className="tabs" aria-label="Config sections">
        {TABS.map((t) => (
          <NavLink key={t.tab} to={`/configs/${configId}${t.tab ? `/${t.tab}` : ""}`} end>
            {t.label}
            {t.tab === "approvals" && pending > 0 ? ` (${pending})` : ""}
          </NavLink>
        ))}
      </nav>
      {config.isPending && <Loading what="the config" />}
      <ErrorNotice error={config.error} />
      {config.data && tab === "" && (
        <div className="split" style={{ gridTemplateColumns: "1fr minmax(260px, 30%)" }}>
          <ConfigEditor key={config.data.config_id} config={config.data} />
          <ConfigChat config={config.data} />
        </div>
      )}
      {config.data && tab === "versions" && <Versions config={config.data} />}
      {config.data && tab === "compare" && <Compare config={config.data} />}
      {config.data && tab === "approvals" && <Approvals config={config.data} />}
      {config.data && tab === "branches" && <Branches config={config.data} />}
      {config.data && tab === "history" && <History config={config.data} />}
    </div>
  );
}
