// Server-sent events with the bearer token: EventSource cannot send an Authorization header, so the
// stream is read with fetch and parsed by eventsource-parser. A dropped stream reconnects (with
// backoff); nothing here polls.
import { createParser, type EventSourceMessage } from "eventsource-parser";
import { useEffect, useRef, useState } from "react";
import { ORIGIN } from "./client";
import { getSession } from "./session";

export type StreamState = "connecting" | "live" | "reconnecting" | "unavailable";

export interface StreamOptions {
  /** Called for every message, in order. */
  onMessage: (message: EventSourceMessage) => void;
  /** Called after each (re)connection, before its first message: the place to refetch what a gap may have missed. */
  onOpen?: () => void;
}

/** Follow ``url`` (null: nothing) while mounted; returns the connection's state. A 404 or 403 is
 * final ("unavailable"): the stream does not exist or the role may not read it. */
export function useEventStream(url: string | null, options: StreamOptions): StreamState {
  const [state, setState] = useState<StreamState>("connecting");
  const latest = useRef(options);
  useEffect(() => {
    latest.current = options;
  });

  useEffect(() => {
    if (url === null) return;
    const abort = new AbortController();
    let attempt = 0;

    async function run(): Promise<void> {
      while (!abort.signal.aborted) {
        setState(attempt === 0 ? "connecting" : "reconnecting");
        try {
          const session = getSession();
          const response = await fetch(`${ORIGIN}${url!}`, {
            headers: { Accept: "text/event-stream", ...(session ? { Authorization: `Bearer ${session.token}` } : {}) },
            signal: abort.signal,
            cache: "no-store",
          });
          if ([401, 403, 404, 405].includes(response.status)) {
            setState("unavailable");
            return;
          }
          if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`);
          attempt = 0;
          setState("live");
          latest.current.onOpen?.();
          const parser = createParser({ onEvent: (message) => latest.current.onMessage(message) });
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            parser.feed(value);
          }
        } catch (error) {
          if (abort.signal.aborted) return;
          void error;
        }
        attempt += 1;
        const wait = Math.min(10_000, 250 * 2 ** Math.min(attempt, 6));
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
    }

    void run();
    return () => abort.abort();
  }, [url]);

  return url === null ? "unavailable" : state;
}

/** The JSON of an event's data, or null when it is not JSON. */
export function eventData(message: EventSourceMessage): Record<string, unknown> | null {
  try {
    const parsed: unknown = JSON.parse(message.data);
    return parsed && typeof parsed === "object" ? (parsed as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}
