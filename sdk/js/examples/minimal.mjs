// A minimal device: answers "echo" with its arguments and reports its
// desired state as applied. The README runs it against scripts/dev.
import { Client } from "@switchboard-iot/device";

const client = new Client({
  url: process.env.SWITCHBOARD_URL,
  id: process.env.SWITCHBOARD_DEVICE_ID,
  secret: process.env.SWITCHBOARD_DEVICE_SECRET,
  caFile: process.env.SWITCHBOARD_CA, // the node's certificate to trust
});
client.handle("echo", (args) => ({ echo: args }));
client.onDesired((desired) => client.report(desired));
process.on("SIGTERM", () => client.stop());
await client.run(); // until stop(); rejects with UnauthorizedError if refused
