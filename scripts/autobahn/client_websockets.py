# Autobahn fuzzingserver client for scripts/autobahn.sh (the websockets library as the client):
# `client_websockets.py BASE_URL AGENT` runs every case, echoing what the server sends.
import asyncio, sys, websockets
async def main(base, agent):
    async with websockets.connect(base + "/getCaseCount") as ws:
        n = int(await ws.recv())
    for i in range(1, n + 1):
        try:
            async with websockets.connect(f"{base}/runCase?case={i}&agent={agent}", max_size=None, ping_interval=None, open_timeout=10, close_timeout=5) as ws:
                async for m in ws:
                    await ws.send(m)
        except Exception as e:
            pass
    async with websockets.connect(f"{base}/updateReports?agent={agent}") as ws:
        pass
asyncio.run(main(sys.argv[1], sys.argv[2]))
