// The visual editor's sections. Each control reads its value from the draft and writes a new draft;
// its error and warning come from the API's validation of the whole draft, by field name.
import type { ReactNode } from "react";
import { Field, Slider, Toggle } from "../ui/components";
import { pathKey, VOICE_DEFAULTS, type Draft, type Path } from "./model";
import type { Validation } from "./validation";

export interface SectionProps {
  draft: Draft;
  onChange: (next: Draft) => void;
  validation: Validation;
  disabled: boolean;
}

function issue(validation: Validation, path: Path) {
  return validation.byField[pathKey(path)] ?? {};
}

function TextInput({ label, path, hint, draft, onChange, validation, disabled, multiline }: SectionProps & { label: string; path: Path; hint?: string; multiline?: boolean }) {
  const value = draft.get<string | number>(path, "");
  const { error, warning } = issue(validation, path);
  return (
    <Field label={label} hint={hint} error={error} warning={warning}>
      {(props) =>
        multiline ? (
          <textarea {...props} value={String(value)} disabled={disabled} rows={6} onChange={(e) => onChange(draft.set(path, e.target.value))} />
        ) : (
          <input {...props} type="text" value={String(value)} disabled={disabled} onChange={(e) => onChange(draft.set(path, e.target.value === "" ? undefined : e.target.value))} />
        )
      }
    </Field>
  );
}

function Select({ label, path, options, fallback, draft, onChange, validation, disabled }: SectionProps & { label: string; path: Path; options: readonly string[]; fallback: string }) {
  const value = draft.get<string>(path, fallback);
  const { error, warning } = issue(validation, path);
  return (
    <Field label={label} error={error} warning={warning}>
      {(props) => (
        <select {...props} value={value} disabled={disabled} onChange={(e) => onChange(draft.set(path, e.target.value))}>
          {options.map((o) => (
            <option key={o} value={o}>
              {o}
            </option>
          ))}
        </select>
      )}
    </Field>
  );
}

function NumberInput({ label, path, fallback, step, hint, draft, onChange, validation, disabled }: SectionProps & { label: string; path: Path; fallback: number | null; step?: number; hint?: string }) {
  const value = draft.get<number | null>(path, fallback);
  const { error, warning } = issue(validation, path);
  return (
    <Field label={label} error={error} warning={warning} hint={hint}>
      {(props) => (
        <input
          {...props}
          type="number"
          step={step ?? 1}
          value={value ?? ""}
          disabled={disabled}
          onChange={(e) => onChange(draft.set(path, e.target.value === "" ? undefined : Number(e.target.value)))}
        />
      )}
    </Field>
  );
}

function DraftSlider({ label, path, min, max, step, fallback, hint, draft, onChange, validation, disabled }: SectionProps & { label: string; path: Path; min: number; max: number; step?: number; fallback: number; hint?: string }) {
  const { error } = issue(validation, path);
  return (
    <Slider
      label={label}
      hint={hint}
      value={draft.get<number>(path, fallback)}
      min={min}
      max={max}
      step={step}
      error={error}
      disabled={disabled}
      onChange={(v) => onChange(draft.set(path, Number.isNaN(v) ? undefined : v))}
    />
  );
}

function DraftToggle({ label, path, fallback, draft, onChange, disabled }: SectionProps & { label: string; path: Path; fallback: boolean }) {
  return <Toggle label={label} checked={draft.get<boolean>(path, fallback)} disabled={disabled} onChange={(v) => onChange(draft.set(path, v))} />;
}

function ListSection({ title, path, item, newItem, addLabel, props, render }: { title: string; path: Path; item: string; newItem: () => unknown; addLabel: string; props: SectionProps; render: (index: number) => ReactNode }) {
  const count = props.draft.count(path);
  const { error, warning } = issue(props.validation, path);
  return (
    <fieldset>
      <legend>{title}</legend>
      {error && <p className="field-error">{error}</p>}
      {warning && <p className="field-warning">{warning}</p>}
      {count === 0 && <p className="muted">None.</p>}
      {Array.from({ length: count }, (_, i) => (
        <div key={i} className="panel stack" role="group" aria-label={`${item} ${i + 1}`}>
          {render(i)}
          <div>
            <button type="button" className="secondary" disabled={props.disabled} onClick={() => props.onChange(props.draft.remove(path, i))}>
              Remove {item} {i + 1}
            </button>
          </div>
        </div>
      ))}
      <button type="button" className="secondary" disabled={props.disabled} onClick={() => props.onChange(props.draft.append(path, newItem()))}>
        {addLabel}
      </button>
    </fieldset>
  );
}

export function PromptSection(props: SectionProps) {
  return (
    <fieldset>
      <legend>Behaviour</legend>
      <div className="stack">
        <TextInput {...props} label="Name" path={["name"]} />
        <TextInput {...props} label="System prompt" path={["system_prompt"]} multiline hint="What the bot is and how it should answer." />
      </div>
    </fieldset>
  );
}

const TRIGGERS = ["user_frustrated", "urgent_keywords", "explicit_request", "repeated_tool_failure", "negative_turns"] as const;

export function EscalationSection(props: SectionProps) {
  return (
    <ListSection
      title="Escalation rules"
      path={["escalation_rules"]}
      item="rule"
      addLabel="Add escalation rule"
      newItem={() => ({ trigger: "explicit_request", action: "human_handoff" })}
      props={props}
      render={(i) => {
        const at: Path = ["escalation_rules", i];
        const trigger = props.draft.get<string>([...at, "trigger"], "");
        return (
          <div className="grid2">
            <Select {...props} label="Trigger" path={[...at, "trigger"]} options={TRIGGERS} fallback="explicit_request" />
            <Select {...props} label="Action" path={[...at, "action"]} options={["human_handoff", "flag"]} fallback="human_handoff" />
            <Select {...props} label="Urgency" path={[...at, "urgency"]} options={["low", "medium", "high", "urgent"]} fallback="medium" />
            {trigger === "user_frustrated" && <DraftSlider {...props} label="Sentiment threshold" path={[...at, "threshold"]} min={-1} max={1} step={0.05} fallback={-0.5} />}
            {trigger === "urgent_keywords" && <KeywordsInput {...props} label="Keywords" path={[...at, "keywords"]} />}
            {trigger === "repeated_tool_failure" && <NumberInput {...props} label="Failures" path={[...at, "count"]} fallback={null} />}
            {trigger === "negative_turns" && <NumberInput {...props} label="Negative turns" path={[...at, "turns"]} fallback={null} />}
            <TextInput {...props} label="Message to the customer" path={[...at, "message"]} />
          </div>
        );
      }}
    />
  );
}

function KeywordsInput({ label, path, draft, onChange, validation, disabled }: SectionProps & { label: string; path: Path }) {
  const words = draft.get<string[]>(path, []);
  const { error } = issue(validation, path);
  return (
    <Field label={label} hint="Separated by commas." error={error}>
      {(props) => (
        <input
          {...props}
          type="text"
          defaultValue={words.join(", ")}
          disabled={disabled}
          onBlur={(e) => onChange(draft.set(path, e.target.value.split(",").map((w) => w.trim()).filter(Boolean)))}
        />
      )}
    </Field>
  );
}

export function ToolsSection(props: SectionProps) {
  return (
    <ListSection
      title="Tools"
      path={["tools"]}
      item="tool"
      addLabel="Add tool"
      newItem={() => ({ name: "new_tool", description: "", parameters: { type: "object", properties: {} } })}
      props={props}
      render={(i) => (
        <div className="grid2">
          <TextInput {...props} label="Tool name" path={["tools", i, "name"]} />
          <Select {...props} label="On failure" path={["tools", i, "on_failure"]} options={["fallback", "escalate"]} fallback="fallback" />
          <TextInput {...props} label="Description" path={["tools", i, "description"]} />
          <NumberInput {...props} label="Timeout (seconds)" path={["tools", i, "timeout_seconds"]} fallback={30} step={0.5} />
          <ParametersInput {...props} path={["tools", i, "parameters"]} />
        </div>
      )}
    />
  );
}

/** A tool's parameters as JSON Schema text; written to the draft once it parses. */
function ParametersInput({ path, draft, onChange, validation, disabled }: SectionProps & { path: Path }) {
  const value = draft.get<unknown>(path, { type: "object", properties: {} });
  const errors = Object.entries(validation.byField)
    .filter(([field]) => field.startsWith(pathKey(path)))
    .map(([field, i]) => (i.error ? `${field}: ${i.error}` : null))
    .filter(Boolean)
    .join("; ");
  return (
    <Field label="Parameters (JSON Schema)" error={errors || undefined} hint="Applied when the JSON is complete.">
      {(props) => (
        <textarea
          {...props}
          className="mono"
          rows={4}
          defaultValue={JSON.stringify(value, null, 1)}
          disabled={disabled}
          onChange={(e) => {
            try {
              onChange(draft.set(path, JSON.parse(e.target.value)));
            } catch {
              /* not JSON yet: keep typing */
            }
          }}
        />
      )}
    </Field>
  );
}

export function TemplatesSection(props: SectionProps) {
  const templates = props.draft.get<Record<string, string>>(["templates"], {});
  const { error } = issue(props.validation, ["templates"]);
  return (
    <fieldset>
      <legend>Reply templates</legend>
      {error && <p className="field-error">{error}</p>}
      <div className="stack">
        {Object.keys(templates).map((key) => (
          <div key={key} className="row" style={{ alignItems: "end" }}>
            <div style={{ flex: 1 }}>
              <TextInput {...props} label={`Template ${key}`} path={["templates", key]} />
            </div>
            <button type="button" className="secondary" disabled={props.disabled} onClick={() => props.onChange(props.draft.set(["templates", key], undefined))}>
              Remove template {key}
            </button>
          </div>
        ))}
        <AddKey label="New template name" disabled={props.disabled} onAdd={(key) => props.onChange(props.draft.set(["templates", key], ""))} />
      </div>
    </fieldset>
  );
}

function AddKey({ label, onAdd, disabled }: { label: string; onAdd: (key: string) => void; disabled: boolean }) {
  return (
    <form
      className="row"
      onSubmit={(e) => {
        e.preventDefault();
        const input = e.currentTarget.elements.namedItem("key") as HTMLInputElement;
        if (input.value.trim()) onAdd(input.value.trim());
        input.value = "";
      }}
    >
      <Field label={label}>{(props) => <input {...props} name="key" type="text" disabled={disabled} />}</Field>
      <button type="submit" className="secondary" disabled={disabled} style={{ alignSelf: "end" }}>
        Add
      </button>
    </form>
  );
}

export function CrossSellSection(props: SectionProps) {
  return (
    <ListSection
      title="Cross-sell"
      path={["cross_sell"]}
      item="offer"
      addLabel="Add cross-sell offer"
      newItem={() => ({ when: { intent: "order_status" }, product: "", suggestion: "", confidence: 0.5 })}
      props={props}
      render={(i) => (
        <div className="grid2">
          <TextInput {...props} label="Product" path={["cross_sell", i, "product"]} />
          <TextInput {...props} label="Suggestion" path={["cross_sell", i, "suggestion"]} />
          <TextInput {...props} label="When the intent is" path={["cross_sell", i, "when", "intent"]} />
          <TextInput {...props} label="When this tool succeeded" path={["cross_sell", i, "when", "tool"]} />
          <KeywordsInput {...props} label="When one of these keywords" path={["cross_sell", i, "when", "keywords"]} />
          <DraftSlider {...props} label="Confidence" path={["cross_sell", i, "confidence"]} min={0} max={1} step={0.05} fallback={0.5} />
        </div>
      )}
    />
  );
}

export function IntegrationsSection(props: SectionProps) {
  return (
    <ListSection
      title="External integrations"
      path={["external_integrations"]}
      item="integration"
      addLabel="Add integration"
      newItem={() => ({ type: "", enabled: true })}
      props={props}
      render={(i) => (
        <div className="grid2">
          <TextInput {...props} label="Type" path={["external_integrations", i, "type"]} />
          <TextInput {...props} label="Credentials reference" path={["external_integrations", i, "credentials_ref"]} />
          <DraftToggle {...props} label="Enabled" path={["external_integrations", i, "enabled"]} fallback={true} />
        </div>
      )}
    />
  );
}

const V = ["voice_config"];
const D = VOICE_DEFAULTS;

/** The seed's VoicebotConfigPanel: additional configuration, model settings, stop speaking plan, and turn detection. */
export function VoiceSection(props: SectionProps) {
  const sound = props.draft.get<string>([...V, "background_sound", "type"], D.background_sound.type);
  return (
    <>
      <fieldset>
        <legend>Additional configuration</legend>
        <div className="grid2">
          <Select {...props} label="Background sound" path={[...V, "background_sound", "type"]} options={["office", "cafe", "silence", "custom"]} fallback={D.background_sound.type} />
          {sound === "custom" && <TextInput {...props} label="Background sound URL" path={[...V, "background_sound", "custom_url"]} hint="https://…" />}
          <DraftSlider {...props} label="Input min characters" path={[...V, "input_min_characters"]} min={10} max={100} fallback={D.input_min_characters} />
          <NumberInput {...props} label="Max tokens" path={[...V, "max_tokens"]} fallback={D.max_tokens} />
        </div>
      </fieldset>
      <fieldset>
        <legend>Model settings</legend>
        <div className="grid2">
          <TextInput {...props} label="Model" path={[...V, "model_settings", "model"]} hint="Empty: the provider's default." />
          <DraftSlider {...props} label="Clarity + similarity" path={[...V, "model_settings", "clarity_similarity"]} min={0} max={1} step={0.01} fallback={D.model_settings.clarity_similarity} />
          <DraftSlider {...props} label="Speed" path={[...V, "model_settings", "speed"]} min={0} max={2} step={0.05} fallback={D.model_settings.speed} />
          <DraftSlider {...props} label="Style exaggeration" path={[...V, "model_settings", "style_exaggeration"]} min={0} max={1} step={0.01} fallback={D.model_settings.style_exaggeration} />
          <DraftSlider {...props} label="Optimize streaming latency" path={[...V, "model_settings", "optimize_streaming_latency"]} min={0} max={4} fallback={D.model_settings.optimize_streaming_latency} />
          <div className="stack">
            <DraftToggle {...props} label="Use speaker boost" path={[...V, "model_settings", "use_speaker_boost"]} fallback={D.model_settings.use_speaker_boost} />
            <DraftToggle {...props} label="Auto mode" path={[...V, "model_settings", "auto_mode"]} fallback={D.model_settings.auto_mode} />
          </div>
        </div>
      </fieldset>
      <fieldset>
        <legend>Stop speaking plan</legend>
        <div className="grid3">
          <DraftSlider {...props} label="Number of words" path={[...V, "stop_speaking_plan", "number_of_words"]} min={0} max={10} fallback={D.stop_speaking_plan.number_of_words} />
          <DraftSlider {...props} label="Voice seconds" path={[...V, "stop_speaking_plan", "voice_seconds"]} min={0} max={1} step={0.1} fallback={D.stop_speaking_plan.voice_seconds} />
          <DraftSlider {...props} label="Back off seconds" path={[...V, "stop_speaking_plan", "back_off_seconds"]} min={0} max={10} step={0.5} fallback={D.stop_speaking_plan.back_off_seconds} />
        </div>
      </fieldset>
      <fieldset>
        <legend>Speech and turn detection</legend>
        <div className="grid2">
          <NumberInput {...props} label="Turn detection threshold (ms)" path={[...V, "turn_detection_threshold_ms"]} fallback={D.turn_detection_threshold_ms} hint="Silence that ends the caller's turn." />
          <TextInput {...props} label="Speech-to-text provider" path={[...V, "stt_provider"]} />
          <TextInput {...props} label="Text-to-speech provider" path={[...V, "tts_provider"]} />
          <TextInput {...props} label="Voice id" path={[...V, "voice_id"]} hint="Empty: the provider's default voice." />
        </div>
      </fieldset>
    </>
  );
}
