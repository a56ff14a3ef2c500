# websockets echo server for scripts/autobahn.sh: `echo_websockets.py HOST PORT`.
import asyncio, sys, websockets
async def echo(ws):
    try:
        async for m in ws:
            await ws.send(m)
    except websockets.ConnectionClosed:
        pass
async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    async with websockets.serve(echo, host, port, max_size=None, max_queue=None, ping_interval=None):
        await asyncio.Future()
asyncio.run(main())
