"""``vlm serve``: an OpenAI-compatible HTTP API and a web chat page for a VLM.

One file per part: ``schema`` (request and response bodies), ``errors`` (OpenAI error objects),
``images`` (data: URLs under limits), ``conversation`` (messages -> the prompt ``vlm chat``
builds), ``jobs`` (a request's generation and its events),
``engine`` (dynamic batching), ``rows`` (per-row streaming and stopping of a batch), ``middleware``
(body size, API key), ``app`` (the FastAPI routes), ``command`` (the command line), and
``static/`` (the page).
"""
