"""`ulixes-onnx serve`: a local web page and an HTTP API over the Python API (optional extra `serve`).

`jobs` queues uploads and cloaks them with the same function as the `cloak` command; `report` turns a
job into the API's JSON; `app` is the Starlette application; `static/` the page (no build step).
"""
