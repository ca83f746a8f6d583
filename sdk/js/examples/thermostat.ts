/**
 * A thermostat, as the simulated ones of `switchboard device` and
 * `scripts/dev` (app/sim/thermostat): it answers get_state, set_target and
 * set_mode, takes target_celsius (5-30) and mode (heat, cool, off) from
 * the desired state, reports celsius, mode and target_celsius, and sends
 * its temperature as a `telemetry` event every SWITCHBOARD_TELEMETRY_MS
 * (10000). It reads the environment of examples/env.ts.
 *
 *   node sdk/js/dist/examples/thermostat.js
 */
import { Client, UnauthorizedError } from "../src";
import { configFromEnv } from "./env";

type Mode = "heat" | "cool" | "off";
interface State {
  celsius: number;
  target: number;
  mode: Mode;
}

const client = new Client(configFromEnv());
const state: State = { celsius: 18 + Math.random() * 4, target: 20, mode: "heat" };
const modes: readonly string[] = ["heat", "cool", "off"];

/** The reported-state patch of the state. */
const reported = () => ({ celsius: Math.round(state.celsius * 10) / 10, mode: state.mode, target_celsius: state.target });

client.handle("get_state", () => ({ ...state }));

client.handle("set_target", (args) => {
  const celsius = args?.celsius;
  if (typeof celsius !== "number") throw new Error('want args {"celsius": <number>}');
  if (celsius < 5 || celsius > 30) throw new Error(`target ${celsius.toFixed(1)}°C is outside 5-30°C`);
  state.target = celsius;
  client.report(reported());
  return { ...state };
});

client.handle("set_mode", (args) => {
  if (!modes.includes(args?.mode)) throw new Error('want args {"mode": "heat" | "cool" | "off"}');
  state.mode = args.mode;
  client.report(reported());
  return { ...state };
});

// The target (5-30°C) and mode of the desired state, reported once
// applied. A value out of range or of the wrong kind is left out: the
// delta then shows it was not applied.
client.onDesired((desired) => {
  const { target_celsius: target, mode } = desired;
  if (typeof target === "number" && target >= 5 && target <= 30) state.target = target;
  if (typeof mode === "string" && modes.includes(mode)) state.mode = mode as Mode;
  client.report(reported());
});

const every = Number(process.env.SWITCHBOARD_TELEMETRY_MS ?? 10_000);
const telemetry =
  every > 0
    ? setInterval(() => {
        if (state.mode !== "off") state.celsius += (state.target - state.celsius) * 0.2;
        state.celsius += (Math.random() - 0.5) * 0.1;
        // Not connected: skip this reading, and its report (reports are
        // kept for the next session, and a stale temperature is not worth it).
        if (!client.connected) return;
        client.event("telemetry", { ...state });
        client.report(reported());
      }, every)
    : undefined;

const stop = () => {
  clearInterval(telemetry);
  void client.stop();
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

client.run().then(
  () => process.exit(0),
  (err) => {
    console.error(err instanceof UnauthorizedError ? `refused: ${err.message}` : err);
    process.exit(err instanceof UnauthorizedError ? 3 : 1);
  },
);
