"""The lab view: a local web page of runs, live while they train (``satlab view``).

Needs the ``view`` extra (Starlette, uvicorn, sse-starlette, Plotly); the rest of satlab
never imports this package.
"""
