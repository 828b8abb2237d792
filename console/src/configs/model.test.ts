import { describe, expect, it } from "vitest";
import { Draft, pathKey, starterYaml } from "./model";

describe("a config draft", () => {
  it("changes one value and keeps the comments and the rest of the text", () => {
    const draft = new Draft("# the voice\nvoice_config:\n  model_settings:\n    speed: 1.0 # normal\n    clarity_similarity: 0.75\n");
    const next = draft.set(["voice_config", "model_settings", "speed"], 0.8);
    expect(next.text).toBe("# the voice\nvoice_config:\n  model_settings:\n    speed: 0.8 # normal\n    clarity_similarity: 0.75\n");
    expect(next.get(["voice_config", "model_settings", "speed"], 1)).toBe(0.8);
  });

  it("makes the mappings on the way to a value that was absent", () => {
    const next = new Draft("product_type: voicebot\n").set(["voice_config", "stop_speaking_plan", "number_of_words"], 5);
    expect(next.get(["voice_config", "stop_speaking_plan", "number_of_words"], 0)).toBe(5);
  });

  it("appends to and removes from lists", () => {
    const draft = new Draft(starterYaml("bot", "chatbot")).append(["tools"], { name: "refund", description: "x" });
    expect(draft.count(["tools"])).toBe(1);
    expect(draft.get(["tools", 0, "name"], "")).toBe("refund");
    expect(draft.remove(["tools"], 0).count(["tools"])).toBe(0);
  });

  it("names fields as the API does", () => {
    expect(pathKey(["voice_config", "model_settings", "speed"])).toBe("voice_config.model_settings.speed");
    expect(pathKey(["tools", 0, "name"])).toBe("tools[0].name");
  });
});
