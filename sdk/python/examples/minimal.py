# A minimal device: answers "echo" with its arguments and reports its
# desired state as applied. The README runs it against scripts/dev.
import asyncio
import os
import signal

from switchboard_device import Client, Config

client = Client(Config(
    url=os.environ["SWITCHBOARD_URL"],
    id=os.environ["SWITCHBOARD_DEVICE_ID"],
    secret=os.environ["SWITCHBOARD_DEVICE_SECRET"],
    ca_file=os.environ["SWITCHBOARD_CA"],  # the node's certificate to trust
))
client.handle("echo", lambda cmd: {"echo": cmd.args})
client.on_desired(lambda desired, version: client.report(desired))


async def main() -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, client.close)
    await client.run()  # until close(); raises Unauthorized if refused


asyncio.run(main())
