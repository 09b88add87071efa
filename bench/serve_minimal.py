"""The benchmark's limit: Starlette + uvicorn + ONNX Runtime in a few lines, nothing else (no contract, routing, metrics).

python -m bench.serve_minimal MODEL.onnx PORT
"""

import json
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
feed = session.get_inputs()[0].name
names = [o.name for o in session.get_outputs()]


async def invocations(request: Request) -> Response:
    x = np.asarray(json.loads(await request.body())["inputs"][feed], dtype=np.float32)
    outs = session.run(names, {feed: x})
    return Response(
        json.dumps({"outputs": {n: o.tolist() for n, o in zip(names, outs, strict=True)}}), media_type="application/json"
    )


async def ping(_request: Request) -> Response:
    return Response(b"")


app = Starlette(routes=[Route("/invocations", invocations, methods=["POST"]), Route("/ping", ping)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
