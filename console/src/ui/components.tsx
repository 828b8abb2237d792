// Shared pieces: errors with their field-level reasons, progress, risk badges, form controls.
import { useId, useState, type ReactNode } from "react";
import { ApiError } from "../api/client";
import type { RiskLevel } from "../api/types";

export function ErrorNotice({ error, title }: { error: unknown; title?: string }) {
  if (!error) return null;
  const api = error instanceof ApiError ? error : null;
  const message = error instanceof Error ? error.message : String(error);
  const fields = api ? Object.entries(api.fields) : [];
  return (
    <div className="notice error" role="alert">
      <strong>{title ?? (api ? `The API refused (${api.status} ${api.code})` : "Something went wrong")}</strong>
      <div>{message}</div>
      {fields.length > 0 && (
        <ul aria-label="Field errors">
          {fields.map(([field, reason]) => (
            <li key={field}>
              <span className="mono">{field}</span>: {reason}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

export function Loading({ what }: { what: string }) {
  return (
    <div role="status" aria-live="polite" className="muted">
      Loading {what}…
    </div>
  );
}

/** A long operation: an indeterminate bar (no value known) or a determinate one, with what it is doing. */
export function Progress({ label, value, max, detail }: { label: string; value?: number; max?: number; detail?: ReactNode }) {
  return (
    <div role="status" aria-live="polite" className="stack">
      <div>{label}</div>
      <progress aria-label={label} {...(value !== undefined ? { value, max } : {})} />
      {detail && <div className="muted small">{detail}</div>}
    </div>
  );
}

export function RiskBadge({ level, label }: { level: RiskLevel | string; label?: string }) {
  const known = level === "low" || level === "medium" || level === "high";
  return <span className={`badge ${known ? `risk-${level}` : "neutral"}`}>{label ?? `${level} risk`}</span>;
}

export function Badge({ children }: { children: ReactNode }) {
  return <span className="badge neutral">{children}</span>;
}

interface FieldProps {
  label: string;
  error?: string;
  warning?: string;
  hint?: string;
  children: (props: { id: string; "aria-invalid": boolean; "aria-describedby"?: string }) => ReactNode;
}

/** A labelled control with its hint and its error (announced and tied to the control). */
export function Field({ label, error, warning, hint, children }: FieldProps) {
  const id = useId();
  const described = [hint && `${id}-hint`, error && `${id}-error`, warning && `${id}-warning`].filter(Boolean).join(" ");
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      {hint && (
        <span id={`${id}-hint`} className="hint">
          {hint}
        </span>
      )}
      {children({ id, "aria-invalid": !!error, ...(described ? { "aria-describedby": described } : {}) })}
      {error && (
        <span id={`${id}-error`} className="field-error">
          {error}
        </span>
      )}
      {warning && (
        <span id={`${id}-warning`} className="field-warning">
          {warning}
        </span>
      )}
    </div>
  );
}

interface SliderProps {
  label: string;
  value: number;
  min: number;
  max: number;
  step?: number;
  error?: string;
  hint?: string;
  disabled?: boolean;
  onChange: (value: number) => void;
}

/** The seed's slider: a range and a number box for the same value (either can be used from the keyboard). */
export function Slider({ label, value, min, max, step = 1, error, hint, disabled, onChange }: SliderProps) {
  // What is typed in the number box, while it is being typed ("0." is on its way to 0.8, "" to a number).
  const [typing, setTyping] = useState<string | null>(null);
  return (
    <Field label={label} error={error} hint={hint}>
      {(props) => (
        <div className="slider">
          <input
            type="range"
            {...props}
            min={min}
            max={max}
            step={step}
            value={value}
            disabled={disabled}
            onChange={(e) => onChange(Number(e.target.value))}
          />
          <input
            type="number"
            aria-label={`${label} value`}
            aria-invalid={props["aria-invalid"]}
            min={min}
            max={max}
            step={step}
            value={typing ?? (Number.isFinite(value) ? value : "")}
            disabled={disabled}
            onChange={(e) => {
              setTyping(e.target.value);
              const typed = Number(e.target.value);
              if (e.target.value.trim() !== "" && Number.isFinite(typed)) onChange(typed);
            }}
            onBlur={() => setTyping(null)}
          />
        </div>
      )}
    </Field>
  );
}

export function Toggle({
  label,
  checked,
  disabled,
  onChange,
}: {
  label: string;
  checked: boolean;
  disabled?: boolean;
  onChange: (value: boolean) => void;
}) {
  const id = useId();
  return (
    <div className="row">
      <input id={id} type="checkbox" role="switch" checked={checked} disabled={disabled} onChange={(e) => onChange(e.target.checked)} />
      <label htmlFor={id}>{label}</label>
    </div>
  );
}

export function fmtTime(value: string | null | undefined): string {
  if (!value) return "—";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? value : d.toLocaleString();
}

export function fmtPct(value: number | null | undefined): string {
  return value === null || value === undefined ? "—" : `${(value * 100).toFixed(1)} %`;
}

export function fmtWait(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

export function JsonBlock({ value }: { value: unknown }) {
  return <pre className="mono" style={{ whiteSpace: "pre-wrap", margin: 0 }}>{JSON.stringify(value, null, 2)}</pre>;
}
