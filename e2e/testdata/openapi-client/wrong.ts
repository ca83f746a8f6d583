// What the generated types must refuse: args that are not an object. If
// this type-checks, the types let anything through and client.ts proves
// nothing.
import type { components } from "./api";

export const request: components["schemas"]["CommandRequest"] = { name: "set_target", args: "celsius=21.5" };
