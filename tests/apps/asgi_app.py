"""A FastAPI app behind uvicorn with ttm's ASGI middleware, for the lab:
answers GET / and the /ws WebSocket with the client it sees as
"host port". Prints "listening" once uvicorn serves.

Usage: asgi_app.py HOST PORT
"""
import sys

import uvicorn
from fastapi import FastAPI, Request, WebSocket

from ttm_client import TtmMiddleware

app = FastAPI()
app.add_middleware(TtmMiddleware)


@app.get("/")
def root(request: Request):
    return {"client": f"{request.client.host} {request.client.port}"}


@app.websocket("/ws")
async def ws(websocket: WebSocket):
    await websocket.accept()
    client = websocket.client
    await websocket.send_text(f"{client.host} {client.port}")
    # The client reads its own address before the connection may close.
    await websocket.receive_text()
    await websocket.close()


class Server(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets)
        print("listening", flush=True)


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
