// A client of the types openapi-typescript generates from the served
// description (api.d.ts, beside this file in the test's directory): it must
// type-check under tsc --strict. Free JSON (args) takes any keys, a
// command's result is read as the unknown JSON it is, and a request may
// leave out what has a default.
import type { components, paths } from "./api";

type SendCommand = paths["/v1/devices/{id}/commands"]["post"];
type CommandRequest = SendCommand["requestBody"]["content"]["application/json"];
type Command = SendCommand["responses"]["202"]["content"]["application/json"];

export const request: CommandRequest = { name: "set_target", args: { celsius: 21.5 }, timeout: "10s", ttl: 3600 };

export function celsius(c: Command): number | undefined {
  const result: unknown = c.result;
  if (typeof result === "object" && result !== null && "celsius" in result && typeof result.celsius === "number") {
    return result.celsius;
  }
  return undefined;
}

export const job: components["schemas"]["JobRequest"] = {
  name: "set_target",
  args: { celsius: 21.5, modes: ["heat"] },
  target: { label: "room=kitchen" },
};

type Jobs = paths["/v1/jobs"]["get"];
export function nextPage(page: Jobs["responses"]["200"]["content"]["application/json"]): Jobs["parameters"]["query"] {
  return page.next === undefined ? undefined : { limit: 100, cursor: page.next };
}

export const timeout: components["schemas"]["WrittenDuration"] = "1m30s";
