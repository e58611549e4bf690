"""A minimal aiocoap server for benches/compare.sh.

    python aiocoap_server.py [HOST] [PORT]

- GET /bench answers 2.05 with the 5-byte payload "hello".
- /obs is observable: GET (with or without Observe) returns the last value PUT to it, and a PUT
  stores the payload, answers 2.04 and notifies every observer, so
  `coap-bench --observe N coap://HOST:PORT/obs` works against it.

HOST defaults to 127.0.0.1 and PORT to 5683. The bound address is printed once the server is up.
"""

import asyncio
import sys

import aiocoap
import aiocoap.resource as resource


class Bench(resource.Resource):
    """A tiny constant resource: the request/response benchmark's target."""

    async def render_get(self, request):
        return aiocoap.Message(code=aiocoap.CONTENT, payload=b"hello")


class Observable(resource.ObservableResource):
    """A resource whose value is set by PUT and pushed to its observers."""

    def __init__(self):
        super().__init__()
        self.value = b"0"

    async def render_get(self, request):
        return aiocoap.Message(code=aiocoap.CONTENT, payload=self.value)

    async def render_put(self, request):
        self.value = request.payload
        self.updated_state()
        return aiocoap.Message(code=aiocoap.CHANGED)


async def main(host, port):
    site = resource.Site()
    site.add_resource(["bench"], Bench())
    site.add_resource(["obs"], Observable())
    await aiocoap.Context.create_server_context(site, bind=(host, port))
    print(f"aiocoap server listening on {host}:{port}", flush=True)
    await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    h = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    p = int(sys.argv[2]) if len(sys.argv) > 2 else 5683
    asyncio.run(main(h, p))
