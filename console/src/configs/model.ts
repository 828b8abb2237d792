// A config draft is its YAML text; the visual editor reads and writes it through the `yaml`
// library's document model, so a slider changes one line and comments and order stay as written.
import { isMap, isScalar, isSeq, parseDocument, type Document } from "yaml";

export type Path = (string | number)[];

// How a draft is written back: no re-folding of long lines, flow mappings as written ({a: b}).
const WRITE = { lineWidth: 0, flowCollectionPadding: false } as const;

/** The YAML as the editor writes it: comparing two texts in this form shows their changes, not
 * differences of layout (folded lines, spacing) between a hand-written version and a saved one. */
export function normalizeYaml(text: string): string {
  const doc = parseDocument(text);
  return doc.errors.length ? text : doc.toString(WRITE);
}

/** The API's field names: ``voice_config.model_settings.speed``, ``tools[0].name``. */
export function pathKey(path: Path): string {
  return path.reduce<string>((key, part) => (typeof part === "number" ? `${key}[${part}]` : key ? `${key}.${part}` : part), "");
}

export class Draft {
  readonly text: string;
  readonly doc: Document;

  constructor(text: string) {
    this.text = text;
    this.doc = parseDocument(text);
  }

  get parseError(): string | null {
    return this.doc.errors[0]?.message ?? null;
  }

  /** The plain value at ``path`` (a mapping or list as JS), or ``fallback`` when absent or null. */
  get<T>(path: Path, fallback: T): T {
    const node: unknown = this.doc.getIn(path, false);
    if (node === undefined || node === null) return fallback;
    if (isMap(node) || isSeq(node)) return node.toJSON() as T;
    return node as T;
  }

  /** How many items the list at ``path`` has (0 when absent). */
  count(path: Path): number {
    const node: unknown = this.doc.getIn(path, true);
    return isSeq(node) ? node.items.length : 0;
  }

  /** A new draft with ``value`` at ``path`` (mappings made on the way); ``undefined`` removes the key. */
  set(path: Path, value: unknown): Draft {
    const doc = this.doc.clone();
    const node: unknown = doc.getIn(path, true);
    if (value === undefined) doc.deleteIn(path);
    else if (isScalar(node) && (value === null || typeof value !== "object")) node.value = value; // keeps its comment
    else doc.setIn(path, doc.createNode(value));
    return new Draft(doc.toString(WRITE));
  }

  /** A new draft with ``item`` appended to the list at ``path`` (made if absent). */
  append(path: Path, item: unknown): Draft {
    const doc = this.doc.clone();
    const node: unknown = doc.getIn(path, true);
    if (isSeq(node)) node.add(doc.createNode(item));
    else doc.setIn(path, doc.createNode([item]));
    return new Draft(doc.toString(WRITE));
  }

  /** A new draft without the list item at ``path`` + ``index``. */
  remove(path: Path, index: number): Draft {
    const doc = this.doc.clone();
    doc.deleteIn([...path, index]);
    return new Draft(doc.toString(WRITE));
  }
}

export const VOICE_DEFAULTS = {
  stt_provider: "deepgram",
  tts_provider: "elevenlabs",
  voice_id: "",
  turn_detection_threshold_ms: 300,
  background_sound: { type: "office", custom_url: null },
  input_min_characters: 10,
  max_tokens: 150,
  model_settings: {
    model: null,
    clarity_similarity: 0.75,
    speed: 1.0,
    style_exaggeration: 0.0,
    optimize_streaming_latency: 4,
    use_speaker_boost: true,
    auto_mode: false,
  },
  stop_speaking_plan: { number_of_words: 3, voice_seconds: 0.5, back_off_seconds: 2.0 },
} as const;

/** A new config's starting point: valid as it is (the API's rules), to be edited. */
export function starterYaml(name: string, product: "chatbot" | "voicebot"): string {
  const common = `name: ${name}
product_type: ${product}
system_prompt: >-
  You are a helpful assistant. Be brief and friendly.
tools: []
escalation_rules:
  - trigger: explicit_request
    action: human_handoff
templates:
  greeting: "Hello! How can I help you today?"
`;
  if (product === "chatbot") return `${common}external_integrations: []\n`;
  return `${common}voice_config:
  stt_provider: deepgram
  tts_provider: elevenlabs
  turn_detection_threshold_ms: 300
  background_sound:
    type: office
  input_min_characters: 10
  model_settings:
    clarity_similarity: 0.75
    speed: 1.0
    style_exaggeration: 0
    optimize_streaming_latency: 4
    use_speaker_boost: true
    auto_mode: false
  max_tokens: 150
  stop_speaking_plan:
    number_of_words: 3
    voice_seconds: 0.5
    back_off_seconds: 2
`;
}
